"""Text -> token files on disk -> batches of windows, as a LightningDataModule.

Preparation (``lit_gpt.prepare``) tokenizes a corpus once into flat token files (``train.bin``, ``val.bin``) plus
``meta.json`` under a cache folder named by a fingerprint of the source and the tokenizer settings; a changed corpus
or tokenizer gets a new folder, and a folder only appears once complete (it is written under a temporary name and
renamed).

Training batches are windows of ``block_size + 1`` tokens read from a memory map. Which windows make up optimizer
step ``s`` is a function of ``(seed, s)`` alone: the step's *global* batch is drawn at once and each rank and each
accumulation micro-batch takes its own slice. So one process with batch 2B, two DDP ranks with batch B, and batch B
with two accumulation steps all see the same windows, and a resumed run continues the same stream. Windows are drawn
at random offsets (``RandomWindows``, nanoGPT's) or as a seeded permutation per epoch (``PermutedWindows``). With
streaming, ``StreamingWindows`` tokenizes the corpus as it reads it instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info

from lit_gpt.errors import LitGPTError
from lit_gpt.fused_loss import IGNORE_INDEX
from lit_gpt.prepare import encode_document, prepare
from lit_gpt.sources import Source, split_sources
from lit_gpt.tokenizer import CharTokenizer, PlaceholderCharTokenizer, Tokenizer
from lit_gpt.tokenizer_spec import TokenizerSpec, load_tokenizer, tokenizer_from_dict

__all__ = ["prepare", "window_starts", "permuted_starts", "Share", "RandomWindows", "PermutedWindows", "TextDataModule"]

VAL_STREAM = 2**32  # the "step" whose draw is the validation set; training steps never reach it
Sampling = Literal["random", "permutation"]
SAMPLING: tuple[str, ...] = get_args(Sampling)


def window_starts(seed: int, step: int, count: int, high: int) -> np.ndarray:
    """The start offsets of the ``count`` windows of global batch ``step``: uniform in ``[0, high)``."""
    return np.random.default_rng([seed, step]).integers(0, high, size=count)


def permuted_starts(seed: int, step: int, count: int, n_tokens: int, block_size: int, cache: dict | None = None):
    """The start offsets of the ``count`` windows of global batch ``step`` when windows are drawn without
    replacement: the corpus is cut into windows every ``block_size`` tokens (so each token is a target once per
    epoch), and epoch ``e`` visits them in the order of a permutation seeded by ``(seed, e)``. Global batches take
    consecutive runs of that order, so the windows of one epoch are all different, across steps and across ranks."""
    n_windows = (n_tokens - 1) // block_size
    positions = step * count + np.arange(count, dtype=np.int64)
    epochs, index = np.divmod(positions, n_windows)
    out = np.empty(count, dtype=np.int64)
    cache = {} if cache is None else cache
    for epoch in np.unique(epochs):
        if epoch not in cache:
            cache.clear()  # keep one epoch's permutation (8 bytes a window)
            cache[epoch] = np.random.default_rng([seed, 1 << 40, int(epoch)]).permutation(n_windows)
        sel = epochs == epoch
        out[sel] = cache[epoch][index[sel]] * block_size
    return out


def make_batch(tokens: np.ndarray, starts: np.ndarray, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets, each ``(len(starts), block_size)``."""
    windows = np.stack([tokens[s : s + block_size + 1] for s in starts]).astype(np.int64)
    batch = torch.from_numpy(windows)
    return batch[:, :-1].contiguous(), batch[:, 1:].contiguous()


def placeholder_tokenizer(path: str | Path, placeholder: str) -> Tokenizer:
    """The tokenizer saved at ``path``; a char one maps unknown characters to ``placeholder``. The prepared data
    keeps its cache key: where the plain tokenizer succeeds the two give the same tokens."""
    tok = load_tokenizer(path)
    if not isinstance(tok, CharTokenizer):
        return tok  # byte-level BPE encodes any text
    if placeholder not in tok.stoi:
        raise LitGPTError(
            f"--data.placeholder {placeholder!r} is not in the tokenizer's vocabulary; choose one of "
            + repr("".join(tok.chars))
        )
    return PlaceholderCharTokenizer(tok.chars, placeholder)


@dataclass(frozen=True)
class Share:
    """What one reader of the training stream takes: its micro-batches of every optimizer step's global batch of
    ``batch_size * world_size * accumulate`` windows, from step ``start_step`` on."""

    block_size: int
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    accumulate: int = 1
    start_step: int = 0

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size * self.accumulate


class RandomWindows(IterableDataset):
    """An endless stream of micro-batches of random windows (nanoGPT's ``get_batch``), reproducible from the seed
    and the optimizer step, whatever the number of ranks, accumulation steps and loader workers."""

    def __init__(self, path: Path, dtype: str, share: Share) -> None:
        self.path, self.dtype, self.share = path, dtype, share

    def __iter__(self):
        tokens = np.memmap(self.path, dtype=self.dtype, mode="r")
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info else (0, 1)
        sh = self.share
        micro = sh.start_step * sh.accumulate + worker  # micro-batch counter on this rank
        while True:
            step, acc = divmod(micro, sh.accumulate)
            first = (acc * sh.world_size + sh.rank) * sh.batch_size
            starts = self._starts(step, sh.global_batch, tokens)[first : first + sh.batch_size]
            yield make_batch(tokens, starts, sh.block_size)
            micro += n_workers  # the DataLoader takes batches from its workers round-robin, so order is kept

    def _starts(self, step: int, count: int, tokens: np.ndarray) -> np.ndarray:
        return window_starts(self.share.seed, step, count, len(tokens) - self.share.block_size)


class PermutedWindows(RandomWindows):
    """Like ``RandomWindows``, but windows are drawn without replacement: a seeded permutation of all windows per
    epoch, so no window repeats within an epoch and no two ranks read the same window."""

    def _starts(self, step: int, count: int, tokens: np.ndarray) -> np.ndarray:
        if not hasattr(self, "_cache"):
            self._cache: dict = {}
        return permuted_starts(self.share.seed, step, count, len(tokens), self.share.block_size, self._cache)


class StreamingWindows(IterableDataset):
    """Micro-batches from a ``datasets`` stream, tokenized as it is read: each rank reads its own share of the
    stream (``split_dataset_by_node``), shuffles it in a seeded buffer and packs documents, separated by
    end-of-text, into consecutive windows. Memory stays flat whatever the corpus size. A resumed run replays its
    stream up to the step it stopped at."""

    def __init__(
        self,
        source: Source,
        tokenizer: Tokenizer,
        cache_dir: str,
        skip_documents: int,
        share: Share,
        shuffle_buffer: int = 1000,
    ) -> None:
        self.source, self.tokenizer, self.cache_dir, self.skip = source, tokenizer, cache_dir, skip_documents
        self.share, self.shuffle_buffer = share, shuffle_buffer

    def __iter__(self):
        from datasets.distributed import split_dataset_by_node

        stream = self.source.load(self.cache_dir, streaming=True)
        if self.skip:
            stream = stream.skip(self.skip)  # the documents held out for validation
        sh = self.share
        stream = split_dataset_by_node(stream, rank=sh.rank, world_size=sh.world_size)
        if self.shuffle_buffer > 1:
            stream = stream.shuffle(seed=sh.seed, buffer_size=self.shuffle_buffer)
        need, skip = sh.batch_size * sh.block_size + 1, sh.start_step * sh.accumulate
        info = get_worker_info()
        if info is not None:  # datasets gives each loader worker its own shards; the loader takes them round-robin
            skip = max(0, -(-(skip - info.id) // info.num_workers))
        buf = np.zeros(0, dtype=np.int64)
        epoch = 0
        while True:
            stream.set_epoch(epoch)  # a new shuffle order each pass
            empty = True
            for row in self.source.rows(stream):
                empty = False
                buf = np.concatenate(
                    [buf, encode_document(self.tokenizer, row["text"], self.source.rows_are_documents)]
                )
                while len(buf) >= need:
                    # Windows overlap by one token, so every token is a target once.
                    windows = np.lib.stride_tricks.sliding_window_view(buf[:need], sh.block_size + 1)
                    batch = torch.from_numpy(windows[:: sh.block_size].copy())
                    buf = buf[need - 1 :]
                    if skip:
                        skip -= 1
                        continue
                    yield batch[:, :-1].contiguous(), batch[:, 1:].contiguous()
            if empty:
                if info is not None and info.id > 0:
                    return  # fewer shards than loader workers: datasets leaves this one idle
                raise LitGPTError(f"rank {sh.rank}'s share of the stream {self.source.spec!r} holds no documents")
            epoch += 1


class FixedWindows(Dataset):
    """The validation set: the same ``n_batches`` batches of random windows at every evaluation, or with
    ``n_batches=0`` the whole split in consecutive windows (every token a target once), split across ranks.

    Every rank runs the same number of batches, as FSDP needs (each forward gathers the weights from all ranks): a
    rank with one batch fewer gets a padding batch whose targets are all ``IGNORE_INDEX``, which counts for nothing.
    """

    def __init__(
        self, path: Path, dtype: str, block_size: int, batch_size: int, n_batches: int, seed: int, rank: int, world: int
    ) -> None:
        self.tokens = np.memmap(path, dtype=dtype, mode="r")
        if n_batches == 0:
            starts = np.arange(0, len(self.tokens) - block_size, block_size)
            n_batches = -(-len(starts) // batch_size)  # the last batch may be short
        else:
            starts = window_starts(seed, VAL_STREAM, n_batches * batch_size, len(self.tokens) - block_size)
        self.batches = [starts[i * batch_size : (i + 1) * batch_size] for i in range(rank, n_batches, world)]
        self.padding = -(-n_batches // world) - len(self.batches)  # 0, or 1 on the ranks with a batch fewer
        self.pad_starts = starts[:batch_size]
        self.block_size = block_size

    def __len__(self) -> int:
        return len(self.batches) + self.padding

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if i < len(self.batches):
            return make_batch(self.tokens, self.batches[i], self.block_size)
        x, y = make_batch(self.tokens, self.pad_starts, self.block_size)
        return x, torch.full_like(y, IGNORE_INDEX)


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
        bpe_vocab_size: int = 8192,
        text_field: str = "text",
        subset: str | None = None,
        split: str = "train",
        val_source: str | None = None,
        val_split: str | None = None,
        val_tokens: int = 1_000_000,
        streaming: bool = False,
        sampling: Sampling = "random",
        num_proc: int | None = None,
        unknown: str = "error",
        placeholder: str = " ",
    ) -> None:
        """Text for language modelling: char-level or BPE, from a built-in corpus, local files or the Hub.

        Args:
            source: 'shakespeare' (built in, offline; 'shakespeare:hamlet' for one play, 'shakespeare:-hamlet' for
                all but one), 'tinyshakespeare' (nanoGPT's corpus, downloaded once), a local file, folder or glob of
                .txt, .jsonl, .json or .parquet files, or 'hf:NAME' for a Hugging Face dataset (or a local folder
                laid out like one).
            tokenizer: 'char' (a vocabulary of the corpus's characters), 'bpe' (byte-level BPE trained on the
                training split, bpe_vocab_size tokens), 'gpt2' (GPT-2's BPE through tiktoken), 'hf:PATH' (a Hugging
                Face tokenizer.json), or the path of a tokenizer JSON saved by lit-gpt.
            batch_size: Windows per micro-batch on each device.
            block_size: Window length in tokens; set from model.config.block_size.
            val_fraction: Share of the corpus, taken from its end, held out for validation (unless val_source or
                val_split is given).
            val_batches: Validation batches per evaluation (nanoGPT's eval_iters); the same random windows every
                time. 0: the whole validation split in consecutive windows, every token scored once (exact rather
                than an estimate; slower on a large split).
            seed: Seed of the window sampling, separate from the model's so data order is fixed across model changes.
            cache_dir: Where tokenized corpora, downloads and the datasets cache (cache_dir/hf) are kept.
            num_workers: DataLoader worker processes; 0 reads batches in the training process (fast enough for
                memory-mapped tokens).
            bpe_vocab_size: Vocabulary size of the 'bpe' tokenizer, end-of-text included (at least 257).
            text_field: The column holding the text in .jsonl, .json, .parquet and Hub datasets.
            subset: The Hub dataset's configuration (e.g. 'sample-10BT' for FineWeb), if it has several.
            split: The Hub dataset's split to train on.
            val_source: A separate validation corpus, any kind that source takes; replaces val_fraction.
            val_split: A Hub split to validate on (of val_source, or else of source), e.g. 'validation'.
            val_tokens: With streaming: tokens held out for validation, from val_source or else from the head of
                the stream (which training then skips).
            streaming: Read the corpus as a stream, tokenizing while training, sharded across ranks and nodes: for
                corpora larger than disk or RAM. Needs a tokenizer other than 'char'.
            sampling: 'random': windows at uniformly random offsets, with replacement (nanoGPT's); 'permutation': a
                seeded permutation of all windows per epoch, without replacement and disjoint across ranks.
            num_proc: Processes that tokenize when preparing (default: one per core).
            unknown: Characters that a given char tokenizer (e.g. a pretrained model's) does not know: 'error'
                lists them and stops; 'replace' encodes each as placeholder.
            placeholder: The character that stands for unknown ones with unknown='replace'; must be in the vocabulary.
        """
        super().__init__()
        problems = [
            f"{name} must be a positive integer, got {value!r}"
            for name, value in (
                ("batch_size", batch_size),
                ("block_size", block_size),
                ("bpe_vocab_size", bpe_vocab_size),
                ("val_tokens", val_tokens),
            )
            if not isinstance(value, int) or value <= 0
        ]
        if not isinstance(val_batches, int) or val_batches < 0:
            problems.append(f"val_batches must be a whole number (0: the whole split), got {val_batches!r}")
        if not 0.0 < val_fraction < 1.0:
            problems.append(f"val_fraction must be between 0 and 1, got {val_fraction!r}")
        if num_workers < 0:
            problems.append(f"num_workers must be >= 0, got {num_workers!r}")
        if tokenizer == "bpe" and isinstance(bpe_vocab_size, int) and 0 < bpe_vocab_size < 257:
            problems.append(f"bpe_vocab_size must be at least 257 (256 bytes + end-of-text), got {bpe_vocab_size}")
        if sampling not in SAMPLING:
            problems.append(f"sampling must be one of {', '.join(SAMPLING)}, got {sampling!r}")
        if isinstance(tokenizer, str) and (problem := TokenizerSpec.problem(tokenizer)):
            problems.append(problem)  # here, not when preparing: before a Trainer or a process group is built
        if streaming and tokenizer == "char":
            problems.append("streaming needs a tokenizer other than char (bpe, gpt2 or hf:PATH)")
        if streaming and sampling != "random":
            problems.append("sampling 'permutation' needs prepared token files, not streaming")
        if unknown not in ("error", "replace"):
            problems.append(f"unknown must be 'error' or 'replace', got {unknown!r}")
        if not isinstance(placeholder, str) or len(placeholder) != 1:
            problems.append(f"placeholder must be one character, got {placeholder!r}")
        if num_proc is not None and num_proc <= 0:
            problems.append(f"num_proc must be positive, got {num_proc!r}")
        if problems:
            raise LitGPTError("invalid data config: " + "; ".join(problems))
        self.save_hyperparameters()
        self.source = source
        self.tokenizer_spec = TokenizerSpec.parse(tokenizer)  # checked above: parsed once, here
        self.batch_size, self.block_size, self.val_fraction, self.val_batches = (
            batch_size,
            block_size,
            val_fraction,
            val_batches,
        )
        self.seed, self.cache_dir, self.num_workers = seed, cache_dir, num_workers
        self.streaming, self.sampling = streaming, sampling
        self.unknown, self.placeholder = unknown, placeholder
        self.text_field, self.subset, self.split = text_field, subset, split
        self.prepare_kwargs = dict(
            bpe_vocab_size=bpe_vocab_size,
            text_field=text_field,
            subset=subset,
            split=split,
            val_source=val_source,
            val_split=val_split,
            val_tokens=val_tokens,
            streaming=streaming,
            num_proc=num_proc,
        )
        self.prepared_dir: Path | None = None
        self.meta: dict[str, Any] = {}
        self.tokenizer: Tokenizer | None = None

    def prepare(self) -> Path:
        """Tokenize the corpus (or find it already tokenized); returns the prepared folder."""
        tokenizer = self.tokenizer_spec
        if self.unknown == "replace" and tokenizer.kind == "file":
            tokenizer = placeholder_tokenizer(tokenizer.path, self.placeholder)
        return prepare(self.source, tokenizer, self.cache_dir, self.val_fraction, **self.prepare_kwargs)

    def prepare_data(self) -> None:
        # Once per node, before any rank reads (Lightning calls this on local rank 0 only).
        self.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.tokenizer is not None:
            return
        # Every rank computes the same folder name; prepare() finds it complete and returns at once.
        self.prepared_dir = self.prepare()
        self.meta = json.loads((self.prepared_dir / "meta.json").read_text(encoding="utf-8"))
        self.tokenizer = tokenizer_from_dict(self.meta["tokenizer"])
        if (note := self.splits_note()) and (self.trainer is None or self.trainer.is_global_zero):
            print(note)
        need = self.block_size + 1
        for split, n in self.meta["tokens"].items():
            if n < need:
                raise LitGPTError(
                    f"the {split} split of {self.source!r} has {n} tokens, fewer than block_size + 1 = {need}: "
                    f"use a longer corpus, a smaller --model.config.block_size, or change --data.val_fraction"
                )

    def splits_note(self) -> str | None:
        """For a local folder: one line saying which of its files are trained on and which validated on."""
        kw = self.prepare_kwargs
        if kw["val_source"] or kw["val_split"] or not Path(self.source).expanduser().is_dir():
            return None
        files = self.meta.get("split_files")
        held_out = (
            f"the first {kw['val_tokens']:,} tokens of the stream"
            if self.streaming
            else f"the last {self.val_fraction:.0%} of them"
        )
        if files is None:
            return f"data: {self.source} has no files named train*/validation*: validating on {held_out}"

        def count(split: str) -> str:
            return f"{files[split]} {split}* file{'s' if files[split] > 1 else ''}"

        val = f"validating on its {count('validation')}" if "validation" in files else f"validating on {held_out}"
        unused = f"; {count('test')} not used" if "test" in files else ""
        return f"data: {self.source} is split by file name: training on its {count('train')}, {val}{unused}"

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
        ds = self._train_windows(Share(self.block_size, self.batch_size, self.seed, rank, world, accumulate, start))
        return DataLoader(ds, batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def _train_windows(self, share: Share) -> IterableDataset:
        if self.meta.get("streaming"):
            kw = self.prepare_kwargs
            source, _, _ = split_sources(
                self.source, self.text_field, self.subset, self.split, self.cache_dir, kw["val_source"], kw["val_split"]
            )  # a split folder streams its train* files only
            return StreamingWindows(source, self.tokenizer, self.cache_dir, self.meta["skip_documents"], share)
        windows = PermutedWindows if self.sampling == "permutation" else RandomWindows
        return windows(*self._split("train"), share)

    def val_dataloader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        path, dtype = self._split("val")
        ds = FixedWindows(path, dtype, self.block_size, self.batch_size, self.val_batches, self.seed, rank, world)
        return DataLoader(ds, batch_size=None, num_workers=0)


def prepare_cli(args: list[str]) -> None:
    """``lit-gpt prepare --config CFG [--data.KEY VALUE ...]``: tokenize the ``data:`` section of a training config
    (its other sections are ignored), so that a cluster job finds its data ready, and print where it is."""
    import yaml  # here, not at the top: only this command reads YAML and builds its own parser
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(
        prog="lit-gpt prepare",
        description="Tokenize a config's data once, into cache_dir; `lit-gpt fit` with the same config reuses it.",
    )
    parser.add_argument("--config", type=str, default=None, help="A training config (only its data: section is used).")
    parser.add_class_arguments(TextDataModule, "data")
    config = parser.parse_args(args).config
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise LitGPTError(f"config file {config!r} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        data = dict(loaded.get("data") or {})
        block_size = ((loaded.get("model") or {}).get("config") or {}).get("block_size")
        if block_size is not None:
            data.setdefault("block_size", block_size)  # fit links it from the model
        parser.set_defaults({f"data.{k}": v for k, v in data.items()})
    cfg = parser.parse_args(args)
    dm = TextDataModule(**cfg.data.as_dict())
    out = dm.prepare()
    meta = dm.meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    if note := dm.splits_note():
        print(note)
    counts = ", ".join(f"{split} {n:,} tokens" for split, n in meta["tokens"].items())
    print(f"{out}: {counts} ({meta['tokenizer']['kind']} tokenizer, {meta['dtype']})")
