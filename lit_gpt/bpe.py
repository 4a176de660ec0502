"""Byte-level BPE tokenizers behind the ``Tokenizer`` interface.

- ``bpe``: trained on the training split with Hugging Face ``tokenizers`` (GPT-2's byte-level scheme, any vocabulary
  size, ``<|endoftext|>`` between documents).
- ``hf``: any local ``tokenizer.json`` (the Hugging Face format), e.g. GPT-2's, Llama's or one trained elsewhere.
- ``gpt2``: GPT-2's 50,257-token BPE through ``tiktoken``, whose files are downloaded at first use.

The state stored in checkpoints is JSON: the ``tokenizer.json`` text for ``bpe``/``hf``, the encoding's name for
``gpt2``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lit_gpt.errors import LitGPTError
from lit_gpt.tokenizer import Tokenizer

EOT = "<|endoftext|>"
# End-of-text tokens by tokenizer family, tried in order when a tokenizer.json comes from elsewhere.
EOT_CANDIDATES = (EOT, "<|end_of_text|>", "</s>", "<eos>", "[SEP]")
MIN_BPE_VOCAB = 257  # the 256 byte tokens and end-of-text


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` tokenizer, kept as its ``tokenizer.json`` text."""

    kind = "hf"

    def __init__(self, json_str: str) -> None:
        from tokenizers import Tokenizer as _HF

        self.json = json_str
        self.hf = _HF.from_str(json_str)
        self._eot = next((i for t in EOT_CANDIDATES if (i := self.hf.token_to_id(t)) is not None), None)

    @classmethod
    def from_file(cls, path: str | Path) -> HFTokenizer:
        p = Path(path).expanduser()
        if not p.is_file():
            raise LitGPTError(f"tokenizer file {str(path)!r} does not exist: give the path of a tokenizer.json")
        try:
            return cls(p.read_text(encoding="utf-8"))
        except Exception as e:  # tokenizers raises a plain Exception on malformed JSON
            raise LitGPTError(f"{str(path)!r} is not a Hugging Face tokenizer.json ({e})") from None

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int | None:
        return self._eot

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self.hf.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode(list(ids), skip_special_tokens=False)

    def token_bytes(self) -> np.ndarray:
        """Exact for byte-level BPE (GPT-2's scheme, ``bpe``): each character of a token's string stands for one
        byte. Other schemes decode each id alone."""
        if json.loads(self.json).get("decoder", {}).get("type") != "ByteLevel":
            return super().token_bytes()
        special = {t.content for t in self.hf.get_added_tokens_decoder().values() if t.special}
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for token, i in self.hf.get_vocab(with_added_tokens=True).items():
            out[i] = 0 if token in special else len(token)
        return out

    def state(self) -> dict[str, Any]:
        return {"json": self.json}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> HFTokenizer:
        return cls(state["json"])

    def save_pretrained(self, path: str | Path) -> None:
        """Write the Hugging Face ``tokenizer.json`` (loadable with ``--data.tokenizer hf:PATH`` or transformers)."""
        Path(path).write_text(self.json, encoding="utf-8")


class BPETokenizer(HFTokenizer):
    """Byte-level BPE trained on the corpus: every byte is a token, so any text encodes and decodes exactly."""

    kind = "bpe"

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        from tokenizers import Tokenizer as _HF
        from tokenizers import decoders, models, pre_tokenizers, trainers

        if vocab_size < MIN_BPE_VOCAB:
            raise LitGPTError(f"bpe_vocab_size must be at least {MIN_BPE_VOCAB} (256 bytes + end-of-text)")
        tok = _HF(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)  # GPT-2's regex split
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[EOT],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen in the corpus or not
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer)
        return cls(tok.to_str())


class GPT2Tokenizer(Tokenizer):
    """GPT-2's BPE (50,257 tokens, ``<|endoftext|>`` = 50256) through ``tiktoken``."""

    kind = "gpt2"

    def __init__(self, encoding: Any = None) -> None:
        self.enc = encoding if encoding is not None else load_tiktoken("gpt2")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def eot_id(self) -> int | None:
        return self.enc.eot_token

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Not tiktoken's encode_ordinary_batch: its thread pool costs more than short texts take to encode, and
        # preparation already runs one process per core.
        return [self.enc.encode_ordinary(t) for t in texts]

    def decode(self, ids: Sequence[int]) -> str:
        return self.enc.decode(list(ids))

    def token_bytes(self) -> np.ndarray:
        special = self.enc.special_tokens_set
        out = np.zeros(self.vocab_size, dtype=np.int64)
        for i in range(self.vocab_size):
            try:
                out[i] = len(self.enc.decode_single_token_bytes(i))
            except KeyError:  # an id with no token (never in GPT-2's range)
                continue
        for token in special:
            out[self.enc.encode_single_token(token)] = 0
        return out

    def state(self) -> dict[str, Any]:
        return {"encoding": "gpt2"}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> GPT2Tokenizer:
        return cls()

    def fingerprint(self) -> str:
        return hashlib.sha256(b"tiktoken:gpt2").hexdigest()[:16]


def load_tiktoken(name: str) -> Any:
    """``tiktoken.get_encoding(name)``, or one clear error when its files cannot be fetched (offline)."""
    import tiktoken

    try:
        return tiktoken.get_encoding(name)
    except Exception as e:  # requests' ConnectionError, urllib's URLError, a hash mismatch...
        raise LitGPTError(
            f"the {name} tokenizer needs GPT-2's BPE files, which tiktoken downloads at first use, and that failed "
            f'({type(e).__name__}): on a machine with network run `TIKTOKEN_CACHE_DIR=DIR python -c "import tiktoken; '
            f"tiktoken.get_encoding('{name}')\"`, copy DIR here and set TIKTOKEN_CACHE_DIR=DIR; or use "
            "--data.tokenizer hf:PATH with a local copy of GPT-2's tokenizer.json"
        ) from None
