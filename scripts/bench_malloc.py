"""What lit_gpt/malloc.py's glibc thresholds do to a CPU training step: ms/step, page faults per step and peak RSS,
with and without them, in alternating processes (a process's malloc settings are its own: two arms cannot share one).

    python scripts/bench_malloc.py [--steps 150] [--rounds 5] [--write]

Each arm steps the CPU config's model (4 layers, 4 heads, 128 wide, block 64, batch 12) with lit-gpt's AdamW and
clipping on random tokens, as a plain loop: the Trainer adds the same work to both.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.malloc import reuse_freed_memory  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402
from lit_gpt.optim import configure_adamw  # noqa: E402


def cpu_config_model() -> tuple[GPT, torch.optim.Optimizer]:
    """The CPU config's model (4 layers, 4 heads, 128 wide, block 64, 65 characters) and lit-gpt's AdamW, seeded."""
    torch.manual_seed(1337)
    model = GPT(GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    return model, configure_adamw(model, 1e-3, 0.1, (0.9, 0.99))


def cpu_config_step(model: GPT, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    """One plain-loop training step as nanoGPT's loop takes it: forward, backward, clip, AdamW, free the grads."""
    _, loss = model(x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    loss.item()


def arm(steps: int, reuse: bool) -> dict[str, float]:
    """One process's figures after 20 warm-up steps: median ms/step, page faults per step (the mean, and the median
    step's count, which a burst of the kernel's own faults on a loaded machine does not move) and peak RSS."""
    applied = reuse_freed_memory() if reuse else False
    model, optimizer = cpu_config_model()
    data = torch.randint(0, 65, (steps + 20, 12, 65))
    times, faults = [], []
    for i in range(steps + 20):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        cpu_config_step(model, optimizer, data[i, :, :-1], data[i, :, 1:])
        times.append(time.perf_counter() - start)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)
    return {
        "ms": statistics.median(times[20:]) * 1e3,
        "faults": statistics.mean(faults[20:]),
        "median_step_faults": statistics.median(faults[20:]),
        "peak": peak,
        "applied": applied,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--arm", choices=("default", "reuse"), help=argparse.SUPPRESS)  # a child process
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(arm(args.steps, args.arm == "reuse")))
        return
    results: dict[str, list[dict[str, float]]] = {"default": [], "reuse": []}
    for _ in range(args.rounds):  # alternating, so both arms see the same machine
        for name in results:
            cmd = [sys.executable, __file__, "--arm", name, "--steps", str(args.steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[name].append(json.loads(out.splitlines()[-1]))
    if not all(r["applied"] for r in results["reuse"]):
        raise SystemExit("the thresholds were not set (not glibc, or MALLOC_* / LD_PRELOAD set): nothing to compare")
    med = {n: {k: statistics.median(r[k] for r in rs) for k in ("ms", "faults", "peak")} for n, rs in results.items()}
    lines = [
        "| glibc malloc | ms/step | page faults/step | peak RSS |",
        "|---|---|---|---|",
        *(
            f"| {label} | {med[n]['ms']:.2f} | {med[n]['faults']:,.0f} | {med[n]['peak']:,.0f} MiB |"
            for n, label in (
                ("default", "its defaults (nanoGPT, any plain PyTorch script)"),
                ("reuse", "lit-gpt's thresholds (`lit_gpt/malloc.py`)"),
            )
        ),
        "",
        f"Steps **{med['default']['ms'] / med['reuse']['ms']:.3f}x** as fast; CPU config's model, plain loop, "
        f"median of {args.steps} steps per process, {args.rounds} alternating rounds.",
    ]
    print("\n".join(lines))
    if args.write:
        host = machine()
        cmd = "python scripts/bench_malloc.py " + " ".join(sys.argv[1:])
        write_section("glibc malloc thresholds (cpu)", datetime.date.today().isoformat(), host, cmd, lines)


if __name__ == "__main__":
    main()
