"""Continuous batching: sequences join and leave a running batch between decoding steps, so a server decodes one
token for every request in flight with one forward pass, whatever their lengths.

The model's KV cache holds one row per sequence in flight, rows ``0..n-1`` in use. A sequence that joins is
prefilled alone into the next free row (its prompt in one forward pass); one that leaves hands its row to the last
row's sequence, so the rows in use stay the first ``n`` and a step decodes only them. Each row decodes at its own
position (``GPT.forward``'s per-row ``input_pos``) and samples with its own ``torch.Generator``: a seeded sequence
draws the same tokens alone or beside others. Past ``block_size`` a row behaves as ``generate_tokens`` does: a
rotary model's cache is a ring of the last ``block_size`` tokens; with learned positions the row is re-read from
its last 3/4 window when its window is full.

Plain PyTorch; the server (``lit_gpt.serve``) decides who joins, who leaves and when.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from lit_gpt.generate import _aten_elementwise, sample_next
from lit_gpt.model import GPT


@dataclass
class Sampling:
    """How one sequence draws its tokens; ``seed`` None draws a fresh seed."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None


@dataclass
class _Row:
    key: Hashable
    sampling: Sampling
    generator: torch.Generator
    window: list[int]  # the last block_size tokens (learned positions re-read it when it is full)
    length: int  # positions filled in the cache: the next token's position
    logits: torch.Tensor | None = None  # (1, vocab) to sample the next token from; None: its last token is unfed
    last: int = -1  # the token drawn last


class RunningBatch:
    """Up to ``max_batch_size`` sequences decoded together; ``vocab_size`` is the tokenizer's (a padded vocabulary's
    extra ids are never sampled)."""

    def __init__(self, model: GPT, max_batch_size: int, vocab_size: int | None = None) -> None:
        self.model, self.max_batch_size, self.vocab_size = model, max_batch_size, vocab_size
        self.block = model.config.block_size
        self.keep = max(1, self.block - self.block // 4)  # as generate_tokens: the window slides by a quarter
        self.rows: list[_Row] = []
        self.device = next(model.parameters()).device
        model.set_kv_cache(max_batch_size)
        self.ring = model.decodes_past_block()

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, key: Hashable) -> bool:
        return any(row.key == key for row in self.rows)

    def has_room(self) -> bool:
        return len(self.rows) < self.max_batch_size

    @torch.no_grad()
    def add(self, key: Hashable, ids: Sequence[int], sampling: Sampling) -> None:
        """Prefill ``ids`` (1 to block_size tokens) into the next free row; the next ``step`` draws its first token."""
        if not self.has_room():
            raise ValueError(f"the batch is full ({self.max_batch_size} sequences)")
        if not 0 < len(ids) <= self.block:
            raise ValueError(f"a prompt needs 1 to {self.block} tokens, got {len(ids)}")
        generator = torch.Generator(device=self.device)
        if sampling.seed is None:
            generator.seed()
        else:
            generator.manual_seed(sampling.seed)
        row = _Row(key, sampling, generator, list(ids), len(ids))
        self.rows.append(row)
        row.logits = self._prefill(len(self.rows) - 1, row.window)

    def remove(self, key: Hashable) -> None:
        """Take a sequence out of the batch; the last row's sequence moves into its row."""
        r = next(i for i, row in enumerate(self.rows) if row.key == key)
        last = len(self.rows) - 1
        if r != last:
            self.model.move_kv_cache_row(last, r)
            self.rows[r] = self.rows[last]
        self.rows.pop()

    def clear(self) -> None:
        """Drop every sequence (their rows' contents are overwritten by whoever joins next)."""
        self.rows.clear()

    @torch.no_grad()
    def step(self) -> dict[Hashable, int]:
        """One new token for every sequence in the batch: feed each its last token (one forward pass for all), then
        sample each from its own logits."""
        unfed = [i for i, row in enumerate(self.rows) if row.logits is None]
        if unfed:
            self._feed(unfed)
        drawn = {}
        for row in self.rows:
            s = row.sampling
            token = int(sample_next(row.logits, s.temperature, s.top_k, s.top_p, row.generator)[0])
            row.logits, row.last = None, token
            row.window = (row.window + [token])[-self.block :]
            drawn[row.key] = token
        return drawn

    def _prefill(self, r: int, ids: Sequence[int]) -> torch.Tensor:
        idx = torch.tensor([list(ids)], dtype=torch.long, device=self.device)
        with self.model.kv_cache_rows(r, r + 1), _aten_elementwise(self.device):
            return self.model(idx, input_pos=0)[0][:, -1, : self.vocab_size]  # (1, vocab)

    def _feed(self, unfed: list[int]) -> None:
        n = len(self.rows)
        full = [not self.ring and row.length >= self.block for row in self.rows]  # learned positions, window full
        if not all(full[i] for i in unfed):
            # All n rows in use take part: they are one view of the cache. A row that joined since the last step
            # (its logits are ready) or whose window is full is a placeholder, written to a slot that is rewritten
            # before anything attends to it: its next free slot, or slot 0 of a window about to be re-read.
            tokens = torch.zeros(n, 1, dtype=torch.long)
            pos = torch.zeros(n, dtype=torch.long)
            for i, row in enumerate(self.rows):
                if row.logits is None:
                    tokens[i, 0] = row.last
                pos[i] = 0 if full[i] else row.length
            # Attend over the positions in use only, unless a row's ring has wrapped (its slots are modulo block).
            span = min(int(pos.max()) + 1, self.block)
            with self.model.kv_cache_rows(0, n, span), _aten_elementwise(self.device):
                logits = self.model(tokens.to(self.device), input_pos=pos.to(self.device))[0][:, -1, : self.vocab_size]
        for i in unfed:
            row = self.rows[i]
            if full[i]:  # re-read the window's last 3/4, as generate_tokens does
                row.logits = self._prefill(i, row.window[-self.keep :])
                row.length = self.keep
            else:
                row.logits = logits[i : i + 1]
                row.length += 1
