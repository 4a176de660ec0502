"""Text -> token files on disk -> batches of windows, as a LightningDataModule.

Preparation tokenizes a corpus once into flat token files (``train.bin``, ``val.bin``) plus ``meta.json`` under a
cache folder named by a fingerprint of the text and the tokenizer settings; a changed corpus or tokenizer gets a new
folder, and a folder only appears once complete (it is written under a temporary name and renamed).

Training batches are windows of ``block_size + 1`` tokens read from a memory map. Which windows make up optimizer
step ``s`` is a function of ``(seed, s)`` alone: the step's *global* batch is drawn at once and each rank and each
accumulation micro-batch takes its own slice. So one process with batch 2B, two DDP ranks with batch B, and batch B
with two accumulation steps all see the same windows, and a resumed run continues the same stream.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lit_gpt.corpus import load_text
from lit_gpt.errors import LitGPTError
from lit_gpt.tokenizer import CharTokenizer, Tokenizer, UnknownCharactersError

FORMAT_VERSION = 1  # bump when the prepared layout changes, so old caches are rebuilt
VAL_STREAM = 2**32  # the "step" whose draw is the validation set; training steps never reach it


def prepare(
    source: str, tokenizer: str | Tokenizer = "char", cache_dir: str | Path = "data", val_fraction: float = 0.1
) -> Path:
    """Tokenize ``source`` into ``cache_dir/<fingerprint>/`` (reused when it already exists); returns that folder."""
    text = load_text(source, cache_dir)
    tok = _build_tokenizer(tokenizer, text)
    key = hashlib.sha256()
    key.update(text.encode("utf-8"))
    key.update(json.dumps([FORMAT_VERSION, tok.to_dict(), val_fraction], sort_keys=True).encode())
    name = Path(source).stem if source not in ("shakespeare", "tinyshakespeare") else source
    out = Path(cache_dir) / f"{name.replace(':', '_')}-{key.hexdigest()[:16]}"
    if (out / "meta.json").exists():
        return out
    try:
        ids = tok.encode_array(text)
    except UnknownCharactersError as e:
        raise LitGPTError(f"{e}; the tokenizer was not built from this corpus") from None
    n_val = int(len(ids) * val_fraction)
    splits = {"train": ids[: len(ids) - n_val], "val": ids[len(ids) - n_val :]}  # by position, as nanoGPT does
    dtype = np.uint16 if tok.vocab_size <= 2**16 else np.uint32
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for split, arr in splits.items():
        arr.astype(dtype).tofile(tmp / f"{split}.bin")
    meta = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "dtype": np.dtype(dtype).name,
        "tokens": {split: int(len(arr)) for split, arr in splits.items()},
        "tokenizer": tok.to_dict(),
    }
    (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    try:
        os.replace(tmp, out)  # atomic: a reader sees no folder or a complete one
    except OSError:  # another process (a second node on a shared disk) finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _build_tokenizer(tokenizer: str | Tokenizer, text: str) -> Tokenizer:
    if isinstance(tokenizer, Tokenizer):
        return tokenizer
    if tokenizer == "char":
        return CharTokenizer.from_text(text)
    if os.path.exists(tokenizer):  # a saved tokenizer JSON, e.g. the one from a pretraining run
        return Tokenizer.load(tokenizer)
    raise LitGPTError(f"unknown tokenizer {tokenizer!r}: use 'char' or the path of a tokenizer JSON file")


def window_starts(seed: int, step: int, count: int, high: int) -> np.ndarray:
    """The start offsets of the ``count`` windows of global batch ``step``: uniform in ``[0, high)``."""
    return np.random.default_rng([seed, step]).integers(0, high, size=count)


def make_batch(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each ``(len(starts), block_size)``."""
    windows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


class RandomWindows(IterableDataset):
    """An endless stream of micro-batches of random windows (nanoGPT's ``get_batch``), reproducible from the seed
    and the optimizer step, whatever the number of ranks, accumulation steps and loader workers."""

    def __init__(
        self,
        path: Path,
        dtype: str,
        block_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        accumulate: int = 1,
        start_step: int = 0,
    ) -> None:
        self.path, self.dtype = path, dtype
        self.block_size, self.batch_size, self.seed = block_size, batch_size, seed
        self.rank, self.world_size, self.accumulate, self.start_step = rank, world_size, accumulate, start_step

    def __iter__(self):
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        high = len(tokens) - self.block_size
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        global_batch = self.batch_size * self.world_size * self.accumulate
        micro = self.start_step * self.accumulate + worker  # micro-batch counter on this rank
        while True:
            step, acc = divmod(micro, self.accumulate)
            first = (acc * self.world_size + self.rank) * self.batch_size
            starts = window_starts(self.seed, step, global_batch, high)[first : first + self.batch_size]
            yield make_batch(tokens, starts, self.block_size)
            micro += n_workers  # the DataLoader takes batches from its workers round-robin, so order is kept


class FixedWindows(Dataset):
    """The validation set: the same ``n_batches`` batches at every evaluation, split across ranks."""

    def __init__(
        self, path: Path, dtype: str, block_size: int, batch_size: int, n_batches: int, seed: int, rank: int, world: int
    ) -> None:
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        starts = window_starts(seed, VAL_STREAM, n_batches * batch_size, len(self.tokens) - block_size)
        self.batches = [starts[i * batch_size : (i + 1) * batch_size] for i in range(rank, n_batches, world)]
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return make_batch(self.tokens, self.batches[i], self.block_size)


class TextDataModule(L.LightningDataModule):
    def __init__(
        self,
        source: str = "shakespeare",
        tokenizer: str = "char",
        batch_size: int = 12,
        block_size: int = 64,
        val_fraction: float = 0.1,
        val_batches: int = 20,
        seed: int = 1337,
        cache_dir: str = "data",
        num_workers: int = 0,
    ) -> None:
        """Char-level text for language modelling.

        Args:
            source: 'shakespeare' (built in, offline; 'shakespeare:hamlet' for one play, 'shakespeare:-hamlet' for
                all but one), 'tinyshakespeare' (nanoGPT's corpus, downloaded once), or the path of a UTF-8 text file.
            tokenizer: 'char' (a vocabulary of the corpus's characters) or the path of a saved tokenizer JSON.
            batch_size: Windows per micro-batch on each device.
            block_size: Window length in tokens; set from model.config.block_size.
            val_fraction: Share of the corpus, taken from its end, held out for validation.
            val_batches: Validation batches per evaluation (nanoGPT's eval_iters); the same windows every time.
            seed: Seed of the window sampling, separate from the model's so data order is fixed across model changes.
            cache_dir: Where tokenized corpora (and downloads) are kept.
            num_workers: DataLoader worker processes; 0 reads batches in the training process (fast enough for
                memory-mapped tokens).
        """
        super().__init__()
        problems = [
            f"{name} must be a positive integer, got {value!r}"
            for name, value in (("batch_size", batch_size), ("block_size", block_size), ("val_batches", val_batches))
            if not isinstance(value, int) or value <= 0
        ]
        if not 0.0 < val_fraction < 1.0:
            problems.append(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        if num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {num_workers!r}")
        if problems:
            raise LitGPTError("invalid data config: " + "; ".join(problems))
        self.save_hyperparameters()
        self.source, self.tokenizer_spec = source, tokenizer
        self.batch_size, self.block_size, self.val_fraction, self.val_batches = (
            batch_size,
            block_size,
            val_fraction,
            val_batches,
        )
        self.seed, self.cache_dir, self.num_workers = seed, cache_dir, num_workers
        self.prepared_dir: Path | None = None
        self.meta: dict[str, Any] = {}
        self.tokenizer: Tokenizer | None = None

    def prepare_data(self) -> None:
        # Once per node, before any rank reads (Lightning calls this on local rank 0 only).
        prepare(self.source, self.tokenizer_spec, self.cache_dir, self.val_fraction)

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        # Every rank computes the same folder name; prepare() finds it complete and returns at once.
        self.prepared_dir = prepare(self.source, self.tokenizer_spec, self.cache_dir, self.val_fraction)
        self.meta = json.loads((self.prepared_dir / "meta.json").read_text(encoding="utf-8"))
        self.tokenizer = Tokenizer.from_dict(self.meta["tokenizer"])
        need = self.block_size + 1
        for split, n in self.meta["tokens"].items():
            if n < need:
                raise LitGPTError(
                    f"the {split} split of {self.source!r} has {n} tokens, fewer than block_size + 1 = {need}: "
                    f"use a longer corpus, a smaller --model.config.block_size, or change --data.val_fraction"
                )

    @property
    def vocab_size(self) -> int:
        if self.tokenizer is None:
            self.setup()
        return self.tokenizer.vocab_size

    def _split(self, split: str) -> tuple[Path, str]:
        return self.prepared_dir / f"{split}.bin", self.meta["dtype"]

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        # Called after a checkpoint is restored, so global_step puts a resumed run where it left off.
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        accumulate = trainer.accumulate_grad_batches if trainer else 1
        start = trainer.global_step if trainer else 0
        path, dtype = self._split("train")
        ds = RandomWindows(path, dtype, self.block_size, self.batch_size, self.seed, rank, world, accumulate, start)
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        path, dtype = self._split("val")
        ds = FixedWindows(path, dtype, self.block_size, self.batch_size, self.val_batches, self.seed, rank, world)
        return DataLoader(ds, batch_size=None, num_workers=0)
