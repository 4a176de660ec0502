"""Generation speed: new tokens/s for 500 tokens with and without the KV cache, and time to first token, for the
model shapes of the two Shakespeare configs, interleaved in one process.

    python scripts/bench_generate.py [--tokens 500] [--device cpu] [--write]

Without the cache, every step re-reads the last block_size tokens: that is nanoGPT's ``generate``, the baseline.
Weights are random: speed depends on the shapes, not on what the model learned.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import write_section  # noqa: E402

from lit_gpt.generate import generate_tokens  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402

SHAPES = {
    "shakespeare_char_cpu (4L/4H/128, block 64)": dict(block_size=64, n_layer=4, n_head=4, n_embd=128),
    "shakespeare_char (6L/6H/384, block 256)": dict(block_size=256, n_layer=6, n_head=6, n_embd=384),
}


def time_generation(model: GPT, tokens: int, use_cache: bool, device: str, compile: bool = False) -> dict[str, float]:
    """Tokens/s and time to first token for one 500-token sample from a one-token prompt."""
    import time

    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    first = None
    for i, _ in enumerate(generate_tokens(model, idx, tokens, temperature=1.0, top_k=200, use_cache=use_cache,
                                          generator=generator)):  # fmt: skip
        if i == 0:
            sync()
            first = time.perf_counter() - t0
    sync()
    elapsed = time.perf_counter() - t0
    return {"tokens_per_sec": tokens / elapsed, "ttft_ms": first * 1e3}


def bench(tokens: int, device: str, rounds: int) -> list[str]:
    lines = [
        "| model | KV cache | tokens/s | time to first token | speed-up from the cache |",
        "|---|---|---|---|---|",
    ]
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, dropout=0.0, bias=False, **shape)).to(device).eval()
        results: dict[bool, list[dict[str, float]]] = {True: [], False: []}
        time_generation(model, 20, True, device)  # warm-up: allocator, thread pool
        for _ in range(rounds):  # interleaved, so both see the same machine
            for use_cache in (True, False):
                results[use_cache].append(time_generation(model, tokens, use_cache, device))
        med = {
            c: {k: statistics.median(r[k] for r in results[c]) for k in ("tokens_per_sec", "ttft_ms")} for c in results
        }
        speedup = med[True]["tokens_per_sec"] / med[False]["tokens_per_sec"]
        for c in (True, False):
            lines.append(
                f"| {name} | {'yes' if c else 'no (nanoGPT)'} | {med[c]['tokens_per_sec']:,.0f} | "
                f"{med[c]['ttft_ms']:.1f} ms | {f'**{speedup:.1f}x**' if c else ''} |"
            )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    lines = bench(args.tokens, args.device, args.rounds)
    lines.append("")
    lines.append(f"{args.tokens} new tokens, batch 1, top-k 200, median of {args.rounds} interleaved rounds.")
    print("\n".join(lines))
    if args.write:
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {args.device}"
        cmd = "python scripts/bench_generate.py " + " ".join(sys.argv[1:])
        write_section(f"Generation speed ({args.device})", datetime.date.today().isoformat(), machine, cmd, lines)


if __name__ == "__main__":
    main()
