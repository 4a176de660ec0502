"""What ``--data.tokenizer`` names, parsed once into a ``TokenizerSpec``; and reading a saved tokenizer of any kind.

The kinds live in ``lit_gpt.tokenizer`` (char) and ``lit_gpt.bpe`` (bpe, hf, gpt2); this module imports both, so
every kind is known to ``tokenizer_from_dict`` without either importing the other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lit_gpt.bpe import GPT2Tokenizer, HFTokenizer
from lit_gpt.errors import LitGPTError
from lit_gpt.tokenizer import Tokenizer

SpecKind = Literal["char", "bpe", "gpt2", "hf", "file"]
NAMED = ("char", "bpe", "gpt2")  # the kinds named by a word; hf:PATH and lit-gpt JSON files name a file


@dataclass(frozen=True)
class TokenizerSpec:
    """A ``--data.tokenizer`` value: ``char`` or ``bpe`` (built from the corpus), ``gpt2`` (tiktoken's), ``hf:PATH``
    (a Hugging Face tokenizer.json) or the path of a tokenizer JSON saved by lit-gpt (``file``)."""

    kind: SpecKind
    path: Path | None = None  # the hf and file kinds' file
    text: str = ""  # as given

    @staticmethod
    def problem(text: str) -> str | None:
        """What is wrong with ``text`` as a spec, found without reading any file but its existence (so
        ``TextDataModule`` reports it with the other data options, before anything is built)."""
        if text in NAMED:
            return None
        if not (text.startswith("hf:") or text.endswith(".json")):
            return (
                f"unknown tokenizer {text!r}: use char, bpe, gpt2, hf:PATH (a Hugging Face tokenizer.json) or the "
                "path of a tokenizer JSON saved by lit-gpt"
            )
        path = text.removeprefix("hf:")
        if not Path(path).expanduser().is_file():
            return f"tokenizer file {path!r} does not exist: give the path of a tokenizer.json"
        return None

    @classmethod
    def parse(cls, text: str) -> TokenizerSpec:
        """The spec ``text`` names, or one ``LitGPTError`` line saying what is wrong with it."""
        if problem := cls.problem(text):
            raise LitGPTError(problem)
        if text in NAMED:
            return cls(text, text=text)  # type: ignore[arg-type]
        kind = "hf" if text.startswith("hf:") else "file"
        return cls(kind, Path(text.removeprefix("hf:")).expanduser(), text)

    def __str__(self) -> str:
        return self.text or self.kind

    @property
    def from_corpus(self) -> bool:
        """Whether the tokenizer is built from the corpus (char's vocabulary, bpe's training)."""
        return self.kind in ("char", "bpe")

    def cache_key(self, bpe_vocab_size: int) -> Any:
        """What identifies the tokenizer in the prepared data's cache key: a file's by its bytes."""
        if self.kind == "bpe":
            return ["bpe", bpe_vocab_size]
        if self.path is None:
            return self.kind
        return ["file", self.text[:3], _sha256(self.path)]  # the text's head, as keys always had

    def load(self) -> Tokenizer:
        """The tokenizer of a spec that needs no corpus: gpt2, hf:PATH or a lit-gpt tokenizer JSON."""
        if self.kind == "gpt2":
            return GPT2Tokenizer()
        if self.kind == "hf":
            return HFTokenizer.from_file(self.path)
        if self.kind == "file":
            try:
                return load_tokenizer(self.path)
            except (ValueError, KeyError) as e:
                raise LitGPTError(
                    f"{str(self.path)!r} is not a tokenizer saved by lit-gpt ({e}); for a Hugging Face "
                    f"tokenizer.json use hf:{self.path}"
                ) from None
        raise ValueError(f"the {self.kind} tokenizer is built from the corpus, not loaded")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def tokenizer_from_dict(d: dict[str, Any]) -> Tokenizer:
    """A tokenizer of any kind from its ``to_dict()``."""
    return Tokenizer.from_dict(d)  # every kind is registered: this module imported lit_gpt.bpe


def load_tokenizer(path: str | Path) -> Tokenizer:
    """A tokenizer saved by ``Tokenizer.save``."""
    return tokenizer_from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
