"""Step time of a config in float32 and in bf16-mixed, through ``lit-gpt fit`` itself: the runs alternate (A B A B)
on the same machine so the ratio is fair on a noisy one, and each step time is the run's own training clock
(``train/seconds``, validation and start-up excluded) over its steps after the first logging interval (warm-up).

    python scripts/bench_precision.py --config configs/speedrun_cpu.yaml --steps 40 --rounds 2 [--write]

Whether bf16 pays depends on the processor (AVX512-BF16 or AMX on x86) and on the shape: the figure is for this
machine and this config only. ``--write`` replaces this script's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import isa_limits, machine, repo_path, write_section  # noqa: E402

PRECISIONS = ("32-true", "bf16-mixed")


def step_ms(config: str, precision: str, steps: int, log_every: int, work: Path, extra: list[str]) -> float:
    """Milliseconds per optimizer step of one run, from its training clock after the first logging interval."""
    name = f"{precision}-{len(list(work.iterdir()))}"
    cmd = [
        sys.executable, "-m", "lit_gpt.cli", "fit", "--config", config, "--trainer.precision", precision,
        "--trainer.max_steps", str(steps), "--trainer.log_every_n_steps", str(log_every),
        "--trainer.val_check_interval", str(10 * steps), "--trainer.num_sanity_val_steps", "0",
        "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
        "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
        "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name, *extra,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"bench_precision: the {precision} run failed: {r.stderr.strip().splitlines()[-1:]}")
    acc = EventAccumulator(str(work / name / "version_0"), size_guidance={"scalars": 0})
    acc.Reload()
    clock = [(e.step, e.value) for e in acc.Scalars("train/seconds")]
    (s0, t0), (s1, t1) = clock[0], clock[-1]
    return 1000 * (t1 - t0) / (s1 - s0)


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "speedrun_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=40, help="steps per run")
    parser.add_argument("--log_every", type=int, default=5, help="steps between clock readings")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of float32 and bf16 runs")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--section", help="the docs/benchmarks.md section (default: from the config)")
    args, extra = parser.parse_known_args(argv)
    times: dict[str, list[float]] = {p: [] for p in PRECISIONS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for precision in PRECISIONS:
                times[precision].append(step_ms(args.config, precision, args.steps, args.log_every, Path(tmp), extra))
    ms = {p: statistics.median(v) for p, v in times.items()}
    ratio = ms["32-true"] / ms["bf16-mixed"]
    config = repo_path(args.config)
    lines = [
        "| precision | ms/step (median of runs) | runs |",
        "|---|---|---|",
        *(f"| {p} | {ms[p]:.1f} | {', '.join(f'{t:.1f}' for t in times[p])} |" for p in PRECISIONS),
        "",
        f"bf16-mixed steps are **{ratio:.2f}x** as fast as float32 here (float32 ms / bf16 ms, runs alternated).",
    ]
    print("\n".join(lines))
    if args.write:
        section = args.section or f"bf16-mixed against float32: {config}"
        options = ["--config", str(config), "--steps", str(args.steps), "--log_every", str(args.log_every),
                   "--rounds", str(args.rounds), *extra, "--write",
                   *(["--section", shlex.quote(args.section)] if args.section else [])]  # fmt: skip
        command = " ".join([isa_limits(), "python scripts/bench_precision.py", *options]).strip()
        write_section(section, datetime.date.today().isoformat(), machine(), command, lines)
    return ms


if __name__ == "__main__":
    main()
