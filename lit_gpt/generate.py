"""Sampling text from a trained GPT: KV-cached decoding, temperature / top-k / top-p, streaming output; and the
``lit-gpt generate`` command."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import torch
from torch.nn import functional as F

from lit_gpt.cpu_matmul import CpuMatmul, cpu_matmul_problems, onednn_wanted, use_onednn_linears
from lit_gpt.errors import LitGPTError
from lit_gpt.init_from import load_for_sampling
from lit_gpt.malloc import reuse_freed_memory
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer, UnknownCharactersError


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
    oneDNN's GELU costs more per call than ATen's, which made decoding slower. Matmuls use the same BLAS either
    way."""
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
    everything so far grows with the sample's length (figures in docs/benchmarks.md)."""

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


def generate(
    *,
    checkpoint: str,
    prompt: str = "\n",
    prompt_file: str | None = None,
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int = 1337,
    device: str = "auto",
    use_cache: bool = True,
    compile: bool = False,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    cpu_matmul: CpuMatmul = "auto",
    meta: str | None = None,
) -> None:
    """``lit-gpt generate``: sample text from a trained checkpoint or a pretrained model and stream it to the
    terminal.

    Args:
        checkpoint: A .ckpt file or a run folder (its newest last.ckpt is used), a folder written by lit-gpt export,
            a Hugging Face GPT-2 folder, a Hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl or hf:OWNER/REPO
            (downloaded once into the Hugging Face cache), or a nanoGPT ckpt.pt or out_dir.
        prompt: Text to continue; '\\n' in it stands for a newline. Cropped to the last block_size tokens.
        prompt_file: A UTF-8 text file whose whole content is the prompt, read as it is (nanoGPT's
            start='FILE:...'); instead of prompt.
        max_new_tokens: Tokens to generate per sample.
        temperature: Below 1 sharpens the distribution, above 1 flattens it; 0 is greedy.
        top_k: Sample among the k most likely tokens only (empty: all).
        top_p: Nucleus sampling: the smallest set of tokens whose probability reaches top_p (empty: off).
        num_samples: Independent samples to print.
        seed: Random seed, so a sample can be reproduced.
        device: 'cpu', 'cuda', or 'auto' (CUDA when available).
        use_cache: Decode with the KV cache (much faster). Within block_size the output is the same as without it,
            and past it too for a rotary model (its cache keeps the last block_size tokens). With learned positions
            the cache slides by a quarter block past block_size, so each token sees 3/4 to all of the last
            block_size tokens instead of always all of them.
        compile: torch.compile the model first. Compiling takes tens of seconds on a CPU (the prompt, single tokens
            and, past block_size, the window's slide or ring each compile once or twice), counted in the tokens/s
            printed: worth it for long samples.
        dtype: The weights' and activations' type while sampling. On a GPU, bfloat16 or float16 halve the bytes
            each token reads. On a CPU keep float32: bfloat16 decodes slower there (docs/benchmarks.md). Samples
            differ slightly from float32's, as rounding moves the probabilities.
        cpu_matmul: Library for float32 matmuls on a CPU, as for training (--model.cpu_matmul): auto, onednn or
            aten. Only matmuls of at least ~1M multiply-adds use oneDNN (the prompt, a large vocabulary's output
            layer); a token's small ones stay with aten.
        meta: A nanoGPT checkpoint's meta.pkl (its char vocabulary), when it is neither beside ckpt.pt nor in
            data/DATASET/ of the checkpoint's folder, its parents or the working directory.
    """
    problems = []
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        problems.append(f"top_k must be positive, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if num_samples <= 0:
        problems.append(f"num_samples must be positive, got {num_samples}")
    problems += cpu_matmul_problems(cpu_matmul)
    if prompt_file is not None:
        if prompt != "\n":
            problems.append("give --prompt or --prompt_file, not both")
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"--prompt_file {prompt_file!r} does not exist")
        except IsADirectoryError:
            problems.append(f"--prompt_file {prompt_file!r} is a folder: give a text file")
        except UnicodeDecodeError as e:
            problems.append(f"--prompt_file {prompt_file!r} is not UTF-8 (byte {e.start}): re-encode it")
    else:
        prompt = prompt.replace("\\n", "\n")
    if problems:
        raise LitGPTError("; ".join(problems))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    reuse_freed_memory()  # as for training: each token's activations are malloc'd and freed
    model, tokenizer = load_for_sampling(checkpoint, device, meta)
    model.to(getattr(torch, dtype))
    if onednn_wanted(cpu_matmul, device):
        use_onednn_linears(model)
    if compile:
        model.compile()
    try:
        tokenizer.encode(prompt)
    except UnknownCharactersError as e:
        raise LitGPTError(
            f"the prompt has characters this model never saw: {e.chars}; remove or replace them"
        ) from None
    if not prompt:
        raise LitGPTError("the prompt is empty: give at least one token to start from, e.g. --prompt '\\n'")
    torch.manual_seed(seed)
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1}/{num_samples}", flush=True)
        stats = stream(
            model,
            tokenizer,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            use_cache=use_cache,
        )
        print(f"--- {stats['tokens']} tokens at {stats['tokens_per_sec']:.0f} tokens/s", file=sys.stderr)
