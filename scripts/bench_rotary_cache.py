"""What the rotary KV-cache ring saves past ``block_size``: one rotary model decodes 500 tokens from a one-token
prompt with its cache as a ring of the last ``block_size`` tokens (lit-gpt's default for rotary models), with the
window sliding in quarter-block steps as learned positions need (the same model, the ring turned off), and without
a cache (nanoGPT's algorithm), in interleaved rounds in one process.

    python scripts/bench_rotary_cache.py [--model shakespeare_char] [--tokens 500] [--rounds 5] [--write]

The ring and the uncached run see the whole window for every token; the slide sees 3/4 to all of it and re-reads
3/4 of a block every quarter block. Weights are random: speed depends on the shapes.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_generate import time_generation  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.malloc import reuse_freed_memory  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402

SHAPES = {
    "shakespeare_char": dict(block_size=256, n_layer=6, n_head=6, n_embd=384),
    "shakespeare_char_cpu": dict(block_size=64, n_layer=4, n_head=4, n_embd=128),
}
ARMS = ("ring", "slide", "no cache")


def sample(model: GPT, tokens: int, use_cache: bool) -> tuple[float, int]:
    """Tokens/s of one sample (bench_generate's timing: one-token prompt, top-k 200), and the tokens its forward
    passes read."""
    read = []
    hook = model.register_forward_pre_hook(lambda _, args: read.append(args[0].size(1)))
    try:
        tokens_per_sec = time_generation(model, tokens, use_cache, "cpu")["tokens_per_sec"]
    finally:
        hook.remove()
    return tokens_per_sec, sum(read)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(SHAPES), default="shakespeare_char")
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    reuse_freed_memory()  # as `lit-gpt generate` does
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=65, dropout=0.0, bias=False, position="rotary", **SHAPES[args.model])
    ring = GPT(config).eval()
    slide = GPT(config).eval()
    slide.load_state_dict(ring.state_dict())
    slide.decodes_past_block = lambda T=1: False  # the learned-position algorithm, on the same rotary weights
    models = {"ring": (ring, True), "slide": (slide, True), "no cache": (ring, False)}
    sample(ring, 20, True)  # warm-up: allocator, thread pool
    speed: dict[str, list[float]] = {arm: [] for arm in ARMS}
    read = {}
    for _ in range(args.rounds):
        for arm, (model, use_cache) in models.items():
            tokens_per_sec, read[arm] = sample(model, args.tokens, use_cache)
            speed[arm].append(tokens_per_sec)
    # each round's samples ran back to back: their ratio cancels the machine's drift between rounds
    ratio = statistics.median(r / s for r, s in zip(speed["ring"], speed["slide"], strict=True))
    lines = [
        f"- {args.model}'s shape (block {config.block_size}, {config.n_layer} layers, {config.n_embd} wide) with "
        f"rotary positions, {args.tokens} new tokens from a one-token prompt, batch 1, top-k 200, float32; median of "
        f"{args.rounds} interleaved rounds",
    ]
    for arm, label in zip(ARMS, ("cache as a ring (the default)", "cache, window sliding", "no cache"), strict=True):
        tokens_per_sec = statistics.median(speed[arm])
        lines.append(f"- {label}: {tokens_per_sec:,.0f} tokens/s, forward passes over {read[arm]:,} tokens")
    lines.append(f"- the ring over the slide: **{ratio:.3f}x** tokens/s (median of the rounds' ratios)")
    print("\n".join(lines))
    if args.write:
        cmd = "python scripts/bench_rotary_cache.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        write_section("bench_rotary_cache", datetime.date.today().isoformat(), machine(), cmd, lines)


if __name__ == "__main__":
    main()
