"""Every speed figure of the project in one process and one run: training through the Trainer vs a plain loop
(ms/step, tokens/s, MFU against a peak measured in the same run on a CPU), generation with and without the KV
cache (tokens/s, time to first token), and the process's peak memory.

    python scripts/bench.py [--config configs/shakespeare_char_cpu.yaml] [--steps 200] [--write] [lit-gpt fit args]
"""

from __future__ import annotations

import argparse
import datetime
import resource
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_generate  # noqa: E402
import bench_train  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402


def peak_memory_line(device: str) -> str:
    if device.startswith("cuda"):
        return f"- peak GPU memory allocated: {torch.cuda.max_memory_allocated() / 2**20:,.0f} MiB"
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    return f"- peak RSS of this process (training + generation): {rss_mib:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=500, help="new tokens per generation sample")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args, extra = parser.parse_known_args()
    training, trained_on = bench_train.measure(args.config, args.steps, args.rounds, extra)
    device = trained_on.type  # where the config trained (its YAML or the command line chose); generation too
    lines = ["Training:", "", *training, "", "Generation:", ""]
    generation, _ = bench_generate.bench(args.tokens, device, args.rounds, compile=False)  # compiled: bench_generate
    lines += generation
    lines += [
        "",
        f"{args.tokens} new tokens per sample, batch 1, top-k 200, median of {args.rounds} interleaved rounds.",
    ]
    lines += ["", peak_memory_line(device)]
    print("\n".join(lines))
    if args.write:
        host = machine(str(device))
        cmd = "python scripts/bench.py " + " ".join(sys.argv[1:])
        write_section(f"All speed figures ({device})", datetime.date.today().isoformat(), host, cmd, lines)


if __name__ == "__main__":
    main()
