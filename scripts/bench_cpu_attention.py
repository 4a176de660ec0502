"""bf16 attention on a CPU: why bf16 training there attends in float32 at short contexts (lit_gpt/attention_kernel.py).

    python scripts/bench_cpu_attention.py [--steps 100] [--rounds 3] [--compile] [--write]

1. PyTorch's SDPA kernel, forward and backward, in float32 and in bf16, across context lengths and head sizes.
2. The CPU config's training step (plain loop, lit-gpt's AdamW and clipping) in float32, and under bf16 autocast
   with attention in bf16 (PyTorch's choice) and in float32 (lit-gpt's), in blocks interleaved in one process.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from bench_malloc import cpu_config_model, cpu_config_step  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.attention_kernel import FLOAT32_ATTENTION_UP_TO, attend_in_float32  # noqa: E402
from lit_gpt.malloc import reuse_freed_memory  # noqa: E402

TOKENS = 4096  # per kernel call: batch x context, so each row does comparable work


def time_kernel(T: int, hs: int, dtype: torch.dtype, calls: int) -> float:
    """Median ms of one causal SDPA forward and backward over (TOKENS // T) x 8 heads x T x hs, in ``dtype``."""
    q, k, v = (torch.randn(max(1, TOKENS // T), 8, T, hs, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn_like(q)
    times = []
    for i in range(calls + 3):
        start = time.perf_counter()
        F.scaled_dot_product_attention(q, k, v, is_causal=True).backward(grad)
        if i >= 3:
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def kernel_rows(calls: int) -> list[str]:
    lines = [
        f"SDPA forward and backward, causal, {TOKENS} tokens x 8 heads a call, median of {calls} calls:",
        "",
        "| context | head size | float32 | bf16 | bf16 / float32 time |",
        "|---|---|---|---|---|",
    ]
    for hs in (32, 64):
        for T in (64, 128, 256, 512, 1024):
            fp32, bf16 = time_kernel(T, hs, torch.float32, calls), time_kernel(T, hs, torch.bfloat16, calls)
            lines.append(f"| {T} | {hs} | {fp32:.2f} ms | {bf16:.2f} ms | **{bf16 / fp32:.2f}x** |")
    return lines


def step_rows(steps: int, rounds: int, compile: bool) -> list[str]:
    """The CPU config's step three ways, in blocks of 10 steps interleaved across ``rounds``."""
    arms = {}
    for name in ("float32", "bf16-mixed, attention in bf16", "bf16-mixed, attention in float32 (lit-gpt)"):
        model, optimizer = cpu_config_model()  # the same seed: the same weights for every arm
        if "attention in float32" in name:
            attend_in_float32(model)
        if compile:
            model.compile()
        autocast = name != "float32"
        arms[name] = (model, optimizer, autocast, [])
    data = torch.randint(0, 65, (20, 12, 65))
    blocks = max(1, steps // 10)
    for r in range(rounds + 1):  # round 0 warms up (and compiles)
        for b in range(blocks):
            for model, optimizer, autocast, times in arms.values():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    for i in range(10):
                        x = data[(b * 10 + i) % 20]
                        start = time.perf_counter()
                        cpu_config_step(model, optimizer, x[:, :-1], x[:, 1:])
                        if r > 0:
                            times.append(time.perf_counter() - start)
    base = statistics.median(arms["float32"][3])
    lines = [
        f"The CPU config's training step (4 layers, 4 heads, 128 wide, block 64, batch 12), plain loop, "
        f"{'compiled' if compile else 'uncompiled'}, median of {rounds * blocks * 10} steps per arm:",
        "",
        "| precision | ms/step | tokens/s | over float32 |",
        "|---|---|---|---|",
    ]
    for name, (*_, times) in arms.items():
        ms = statistics.median(times) * 1e3
        lines.append(f"| {name} | {ms:.2f} | {12 * 64 / ms * 1e3:,.0f} | **{base * 1e3 / ms:.2f}x** |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100, help="steps per arm per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=20, help="kernel calls per table row")
    parser.add_argument("--compile", action="store_true", help="compile the step's model (each arm its own)")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    reuse_freed_memory()  # as lit-gpt's training runs
    lines = kernel_rows(args.calls) + [""] + step_rows(args.steps, args.rounds, args.compile)
    lines += [
        "",
        f"lit-gpt attends in float32 when training on a CPU with a context up to {FLOAT32_ATTENTION_UP_TO} tokens "
        "(`lit_gpt/attention_kernel.py`); a float32 run is unaffected.",
    ]
    print("\n".join(lines))
    if args.write:
        cmd = "python scripts/bench_cpu_attention.py " + shlex.join(sys.argv[1:])
        write_section("bf16 attention on a CPU", datetime.date.today().isoformat(), machine("bf16"), cmd, lines)


if __name__ == "__main__":
    main()
