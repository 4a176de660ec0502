"""lit-gpt: a readable GPT trained by PyTorch Lightning."""

from lit_gpt.model import GPT, GPTConfig
from lit_gpt.tokenizer import CharTokenizer, Tokenizer

__all__ = ["GPT", "GPTConfig", "CharTokenizer", "Tokenizer"]
__version__ = "0.1.0"
