"""DDP scaling on this machine: tokens/s of the same global batch trained by one process and by 2 DDP processes (gloo),
through `lit-gpt fit` as a user runs it. Runs are interleaved in rounds so machine noise hits every variant alike.

    python scripts/bench_ddp.py --steps 300 --rounds 2 [--write]

Step time is the median gap between consecutive `train/loss` events (logged every step by rank 0) after the first
10% of steps. ``--write`` replaces the "Scale out" section of docs/benchmarks.md. Extra arguments go to `lit-gpt fit`.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import machine, write_section  # noqa: E402

CONFIG = ROOT / "configs" / "shakespeare_char_cpu.yaml"  # nanoGPT's CPU run: 4L/4H/128, block 64, batch 12


def step_seconds(cwd: Path, name: str, batch: int, threads: int, steps: int, extra: list[str]) -> list[float]:
    args = [
        "fit", "--config", str(CONFIG), "--data.batch_size", str(batch), "--trainer.max_steps", str(steps),
        "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", str(steps + 1),
        "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
        "--trainer.logger.init_args.save_dir", str(cwd / "runs"), "--trainer.logger.init_args.name", name, *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    r = subprocess.run([sys.executable, "-m", "lit_gpt.cli", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
    run = sorted((cwd / "runs" / name).iterdir())[-1]
    acc = EventAccumulator(str(run), size_guidance={"scalars": 0})
    acc.Reload()
    times = [e.wall_time for e in acc.Scalars("train/loss")]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    return gaps[len(gaps) // 10 :]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch", type=int, default=12, help="micro-batch per DDP rank; one process gets twice it")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args, extra = parser.parse_known_args()
    variants = {  # name: (batch, threads per process, extra fit arguments)
        "1 process, 2 threads": (2 * args.batch, 2, []),
        "1 process, 1 thread": (2 * args.batch, 1, []),
        "DDP 2 processes x 1 thread": (args.batch, 1, ["--trainer.strategy", "ddp", "--trainer.devices", "2"]),
    }
    gaps: dict[str, list[float]] = {name: [] for name in variants}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        for _ in range(args.rounds):
            for i, (name, (batch, threads, more)) in enumerate(variants.items()):
                gaps[name] += step_seconds(cwd, f"v{i}", batch, threads, args.steps, more + extra)
    load_after = os.getloadavg()[0]
    tokens = 2 * args.batch * 64  # the global batch: the same windows in every variant
    ms = {name: statistics.median(g) * 1e3 for name, g in gaps.items()}
    base = ms["1 process, 2 threads"]
    lines = [
        f"- `shakespeare_char_cpu.yaml` model (4L/4H/128, block 64), global batch {2 * args.batch} windows = "
        f"{tokens} tokens/step, fp32, {args.steps} steps x {args.rounds} interleaved rounds, median step time "
        "after warm-up",
        "",
        "| variant | ms/step | tokens/s | vs 1 process, 2 threads |",
        "|---|---|---|---|",
        *(f"| {name} | {t:.1f} | {tokens / t * 1e3:,.0f} | {base / t:.2f}x |" for name, t in ms.items()),
        "",
        f"- DDP scaling efficiency over 1 process on 1 thread: **{ms['1 process, 1 thread'] / ms['DDP 2 processes x 1 thread'] / 2:.0%}**"  # noqa: E501
        " (2 ranks would ideally halve the step time)",
        f"- 1-minute load average of the machine: {load_before:.1f} before, {load_after:.1f} after (2 cores; above 2,"
        " other processes competed for the CPU and the absolute figures are low: compare within the table only)",
    ]
    print("\n".join(lines))
    if args.write:
        when = datetime.date.today().isoformat()
        host = machine("gloo")
        cmd = "python scripts/bench_ddp.py " + " ".join(sys.argv[1:])
        write_section("Scale out", when, host, cmd.replace(" --write", ""), lines)


if __name__ == "__main__":
    main()
