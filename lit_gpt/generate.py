"""Sampling text from a trained GPT: KV-cached decoding, temperature / top-k / top-p, streaming output."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch.nn import functional as F

from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer


def sample_next(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """One token id per row of ``logits`` (B, vocab); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, [-1]]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(-1)  # (B,)


@contextmanager
def _aten_elementwise(device: torch.device) -> Iterator[None]:
    """On a CPU, ATen's own elementwise kernels rather than oneDNN's while decoding: on one token's activations
    oneDNN's GELU costs about 36 us a call against ATen's 10 us, which made decoding 10% slower. Matmuls use the
    same BLAS either way."""
    if device.type != "cpu" or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


@torch.no_grad()
def generate_tokens(
    model: GPT,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
    vocab_size: int | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``max_new_tokens`` new token ids (B,), one step at a time, continuing the prompts ``idx`` (B, T).

    ``vocab_size`` is the tokenizer's: a model whose vocabulary is padded beyond it (GPT-2's 50257 to 50304, for
    faster matmuls) never samples a padding id, which no tokenizer could decode.

    Prompts longer than ``block_size`` are cropped to their last ``block_size`` tokens. Without the KV cache, every
    step re-reads the last ``block_size`` tokens, as nanoGPT's ``generate`` does. With it, a rotary model goes on
    past ``block_size`` one token at a time, its cache a ring of the last ``block_size`` tokens: the same window
    as without the cache, nothing re-read. With learned positions, once the context fills ``block_size`` the cache
    is rebuilt from the last 3/4 of the window (a window that slides in steps, so the absolute positions stay
    valid).
    """
    block = model.config.block_size
    keep = max(1, block - block // 4)
    seq = idx[:, -block:]

    def last_logits(x: torch.Tensor, input_pos: int | None) -> torch.Tensor:  # (B, vocab_size)
        with _aten_elementwise(x.device):
            return model(x, input_pos=input_pos)[0][:, -1, :vocab_size]

    if use_cache:
        model.set_kv_cache(idx.size(0))
    ring = use_cache and model.decodes_past_block()
    try:
        logits = last_logits(seq, 0 if use_cache else None)
        cached = seq.size(1)
        for i in range(max_new_tokens):
            nxt = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
            yield nxt
            if i == max_new_tokens - 1:
                break
            seq = torch.cat([seq, nxt[:, None]], dim=1)[:, -block:]
            if not use_cache:
                logits = last_logits(seq, None)
            elif cached < block or ring:
                logits = last_logits(nxt[:, None], cached)
                cached += 1
            else:  # the window is full: slide it
                logits = last_logits(seq[:, -keep:], 0)
                cached = keep
    finally:
        if use_cache:
            model.set_kv_cache(None)


def generate_text(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    use_cache: bool = True,
    generator: torch.Generator | None = None,
) -> str:
    """The prompt followed by its continuation, decoded."""
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    tokens = generate_tokens(
        model, idx, max_new_tokens, temperature, top_k, top_p, use_cache, generator, tokenizer.vocab_size
    )
    new = [int(t[0]) for t in tokens]
    return tokenizer.decode(ids + new)


class StreamDecoder:
    """Turns token ids arriving one by one into text pieces, holding back an incomplete UTF-8 sequence (byte-level
    BPE can split a character across tokens).

    Each push decodes only the ids not printed yet, after the ids of the last piece printed as context for decoders
    whose output depends on the previous token (a leading space, say): a constant cost per token, where decoding
    everything so far made a 12,000-token sample spend 160 us a token here."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer, self.ids = tokenizer, []
        self.prefix = self.read = 0  # ids[prefix:read] is context already printed; ids[read:] is not printed yet

    def push(self, ids: Sequence[int]) -> str:
        self.ids.extend(ids)
        printed = self.tokenizer.decode(self.ids[self.prefix : self.read])
        text = self.tokenizer.decode(self.ids[self.prefix :])
        if text.endswith("\ufffd") or len(text) <= len(printed):
            return ""
        self.prefix, self.read = self.read, len(self.ids)
        return text[len(printed) :]


def stream(
    model: GPT,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int,
    out=None,
    **kwargs,
) -> dict[str, float]:
    """Print the prompt and its continuation to ``out`` (default: the current ``sys.stdout``, so a redirection made
    after import is honoured) as tokens arrive; returns timing figures."""
    out = sys.stdout if out is None else out
    device = next(model.parameters()).device
    ids = tokenizer.encode(prompt)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out.write(prompt)
    out.flush()
    decoder = StreamDecoder(tokenizer)
    t0 = time.perf_counter()
    first = None
    n = 0
    for tok in generate_tokens(model, idx, max_new_tokens, vocab_size=tokenizer.vocab_size, **kwargs):
        if first is None:
            first = time.perf_counter() - t0
        n += 1
        out.write(decoder.push([int(tok[0])]))
        out.flush()
    out.write("\n")
    elapsed = time.perf_counter() - t0
    return {"tokens": n, "seconds": elapsed, "tokens_per_sec": n / elapsed, "time_to_first_token": first or 0.0}
