"""Tokenizers: text <-> token ids, serialisable to a small JSON dict that travels inside every checkpoint.

Each kind is a subclass registered under a name (``char`` here; the BPE kinds in ``lit_gpt.bpe``), so the
data pipeline, the checkpoints and ``generate`` never special-case one kind.
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np


class UnknownCharactersError(ValueError):
    """Text holds characters that the tokenizer has no id for."""

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = sorted(set(chars))
        shown = ", ".join(repr(c) for c in self.chars[:20]) + (" ..." if len(self.chars) > 20 else "")
        super().__init__(f"{len(self.chars)} character(s) are not in the tokenizer's vocabulary: {shown}")


class Tokenizer(ABC):
    """The interface every tokenizer implements."""

    kind: ClassVar[str]
    _registry: ClassVar[dict[str, type[Tokenizer]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "kind" in cls.__dict__:
            Tokenizer._registry[cls.kind] = cls

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    def encode_array(self, text: str) -> np.ndarray:
        """Encode a whole corpus to a flat array; kinds override this with a faster path."""
        return np.asarray(self.encode(text), dtype=np.int64)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many documents at once; kinds override this with a batched (often multi-threaded) path."""
        return [self.encode(t) for t in texts]

    @property
    def eot_id(self) -> int | None:
        """The end-of-text token that separates documents, or None when the vocabulary has none (``char``)."""
        return None

    def token_bytes(self) -> np.ndarray:
        """UTF-8 bytes of text each id stands for (vocab_size,), 0 for special tokens: val/bpb divides the summed
        loss by these, so that models with different tokenizers compare. This default decodes each id alone, which
        is exact when every token is whole characters; kinds with byte-level tokens override it."""
        return np.array([len(self.decode([i]).encode("utf-8")) for i in range(self.vocab_size)], dtype=np.int64)

    @abstractmethod
    def state(self) -> dict[str, Any]:
        """JSON-serialisable state, enough for ``from_state`` to rebuild an identical tokenizer."""

    @classmethod
    @abstractmethod
    def from_state(cls, state: dict[str, Any]) -> Tokenizer: ...

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **self.state()}

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Tokenizer:
        """A tokenizer of a registered kind (``lit_gpt.tokenizer_spec.tokenizer_from_dict`` knows them all)."""
        kind = d.get("kind")
        if kind not in Tokenizer._registry:
            raise ValueError(f"unknown tokenizer kind {kind!r}; known kinds: {sorted(Tokenizer._registry)}")
        state = {k: v for k, v in d.items() if k != "kind"}
        return Tokenizer._registry[kind].from_state(state)

    def fingerprint(self) -> str:
        """Changes whenever the mapping changes; part of the prepared-data cache key."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1), encoding="utf-8")


class CharTokenizer(Tokenizer):
    """One token per character, the vocabulary being the sorted set of characters of the corpus (the lecture's)."""

    kind = "char"

    def __init__(self, chars: Sequence[str]) -> None:
        self.chars = list(chars)
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("a char vocabulary must be distinct single characters")
        self.stoi = {c: i for i, c in enumerate(self.chars)}
        # Code point -> id lookup table, for encoding megabytes at numpy speed.
        self._table = np.full(max(map(ord, self.chars), default=0) + 1, -1, dtype=np.int64)
        for i, c in enumerate(self.chars):
            self._table[ord(c)] = i

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(codes.shape, -1, dtype=np.int64)
        known = codes < len(self._table)
        ids[known] = self._table[codes[known]]
        if (ids < 0).any():
            raise UnknownCharactersError([chr(c) for c in np.unique(codes[ids < 0])])
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_bytes(self) -> np.ndarray:
        return np.array([len(c.encode("utf-8")) for c in self.chars], dtype=np.int64)

    def save_pretrained(self, path: str | Path) -> None:
        """Write a Hugging Face ``tokenizer.json`` with the same ids, for transformers' ``AutoTokenizer``: a
        word-level vocabulary of single characters after a pre-tokenizer that splits off every character
        (whitespace and newlines too), decoded by joining them with nothing between."""
        from tokenizers import Regex, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        hf = HFTokenizer(models.WordLevel({c: i for i, c in enumerate(self.chars)}, unk_token=None))
        hf.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), "isolated")
        hf.decoder = decoders.Fuse()
        Path(path).write_text(hf.to_str(), encoding="utf-8")

    def state(self) -> dict[str, Any]:
        return {"chars": "".join(self.chars)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> CharTokenizer:
        return cls(list(state["chars"]))


class PlaceholderCharTokenizer(CharTokenizer):
    """A char tokenizer that encodes characters it does not know as ``placeholder`` (``--data.unknown replace``).
    It serialises exactly as the ``CharTokenizer`` it wraps, so the data still matches the model's tokenizer."""

    def __init__(self, chars: Sequence[str], placeholder: str) -> None:
        super().__init__(chars)
        if placeholder not in self.stoi:
            raise ValueError(f"the placeholder {placeholder!r} is not in the tokenizer's vocabulary")
        self.placeholder = placeholder

    def encode_array(self, text: str) -> np.ndarray:
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        ids = np.full(codes.shape, self.stoi[self.placeholder], dtype=np.int64)
        known = codes < len(self._table)
        ids[known] = self._table[codes[known]]
        ids[ids < 0] = self.stoi[self.placeholder]
        return ids
