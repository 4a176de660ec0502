"""Time to a target loss: runs `lit-gpt fit` configs ("arms") side by side on the same data, each validated on the
whole validation split (every token once: ``--data.val_batches 0``) every ``--eval_every`` steps, for several
seeds, and reports for each arm the steps, tokens and training seconds to first reach ``--target`` val loss.

Training seconds are the run's ``train/seconds`` (validation excluded), with the first logging interval, which
holds compilation and warm-up, replaced by the steady step time; that overhead and the process's start-up are
reported apart. Runs go one after another, seeds interleaved across arms, so a noisy machine slows every arm alike.

    python scripts/time_to_loss.py --target 1.80 --eval_every 100 --seeds 1337 1 2 \\
        --arm adamw "--config configs/shakespeare_char_cpu.yaml" \\
        --arm muon "--config configs/shakespeare_char_cpu.yaml --model.optimizer muon" \\
        --common "--data.source ../shared/data/tinyshakespeare.txt" --write

``--write`` replaces the ``--section`` of docs/speedrun.md (between its markers) and draws beside it a plot of val
loss against training seconds and against tokens, every seed of every arm.
"""

from __future__ import annotations

import argparse
import datetime
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cpu_run import tensorboard_scalars  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

DOC = ROOT / "docs" / "speedrun.md"
HEADER = "# Fastest to a given loss\n"


@dataclass
class Run:
    arm: str
    seed: int
    val: list[tuple[int, float]]  # (step, exact val loss)
    train_s: list[tuple[int, float]]  # (step, training seconds, overhead removed)
    tokens: list[tuple[int, float]]  # (step, tokens trained on)
    overhead_s: float  # first logging interval's excess over the steady step time: compile, warm-up
    wall_s: float  # the whole process
    reached: dict[str, float] = field(default_factory=dict)  # steps, tokens, seconds at the first val <= target


def at(series: list[tuple[int, float]], step: int) -> float:
    """The value logged at ``step``, or linearly between the nearest steps either side."""
    for (s0, v0), (s1, v1) in zip(series, series[1:], strict=False):
        if s0 <= step <= s1:
            return v0 if s1 == s0 else v0 + (v1 - v0) * (step - s0) / (s1 - s0)
    return series[-1][1] if step >= series[-1][0] else series[0][1] * step / max(series[0][0], 1)


def run_arm(arm: str, args: list[str], seed: int, eval_every: int, log_every: int, workdir: Path) -> Run:
    name = f"{arm}-seed{seed}"
    cmd = [
        sys.executable, "-m", "lit_gpt.cli", "fit", *args, "--seed_everything", str(seed), "--data.seed", str(seed),
        "--data.val_batches", "0", "--trainer.val_check_interval", str(eval_every),
        "--trainer.log_every_n_steps", str(log_every), "--trainer.logger.init_args.save_dir", str(workdir),
        "--trainer.logger.init_args.name", name, "--trainer.enable_progress_bar", "false",
        "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
        "--trainer.num_sanity_val_steps", "0",  # no exact validation before the first step: it reaches no target
    ]  # fmt: skip
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"time_to_loss: arm {arm!r} (seed {seed}) failed: {r.stderr.strip().splitlines()[-1:]}")
    s = tensorboard_scalars(workdir / name / "version_0")
    times, tokens = s["train/seconds"], s["train/tokens"]
    # The first interval holds compilation and warm-up: count it at the median interval's pace instead.
    paces = [(t1 - t0) / (s1 - s0) for (s0, t0), (s1, t1) in zip(times[1:], times[2:], strict=False)]
    pace = statistics.median(paces) if paces else times[0][1] / times[0][0]
    overhead = max(0.0, times[0][1] - pace * times[0][0])
    train_s = [(step, t - overhead) for step, t in times]
    return Run(arm, seed, s["val/loss"], train_s, tokens, overhead, wall)


def first_reach(run: Run, target: float) -> dict[str, float]:
    for step, loss in run.val:
        if loss <= target:
            return {"steps": step, "tokens": at(run.tokens, step), "seconds": at(run.train_s, step)}
    return {}


def mean_text(values: list[float], fmt: str, unit: str = "") -> str:
    if not values:
        return "-"
    text = format(statistics.mean(values), fmt) + unit
    return text + (f" ± {format(statistics.stdev(values), fmt)}{unit}" if len(values) > 1 else "")


def table(runs: list[Run], arms: list[str], target: float) -> list[str]:
    lines = [
        f"| arm | seeds at val <= {target:.4f} | steps | tokens | training s | best val (step) | compile/warm-up s | "
        "process s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        mine = [r for r in runs if r.arm == arm]
        done = [r.reached for r in mine if r.reached]
        best = [min(r.val, key=lambda sv: sv[1]) for r in mine]
        lines.append(
            f"| {arm} | {len(done)}/{len(mine)} | {mean_text([d['steps'] for d in done], '.0f')} | "
            f"{mean_text([d['tokens'] / 1e6 for d in done], '.2f', 'M')} | "
            f"{mean_text([d['seconds'] for d in done], '.1f')} | "
            f"{statistics.mean(v for _, v in best):.4f} ({statistics.mean(s for s, _ in best):.0f}) | "
            f"{statistics.mean(r.overhead_s for r in mine):.1f} | {statistics.mean(r.wall_s for r in mine):.0f} |"
        )
    return lines


def plot(runs: list[Run], arms: list[str], target: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, arm in enumerate(arms):
        for j, r in enumerate(x for x in runs if x.arm == arm):
            steps, losses = zip(*r.val, strict=True)
            seconds = [at(r.train_s, s) for s in steps]
            tokens = [at(r.tokens, s) / 1e6 for s in steps]
            label = arm if j == 0 else None
            axes[0].plot(seconds, losses, color=colors[i % len(colors)], alpha=0.8, label=label)
            axes[1].plot(tokens, losses, color=colors[i % len(colors)], alpha=0.8, label=label)
    for ax, xlabel in zip(axes, ("training seconds", "tokens (millions)"), strict=True):
        ax.axhline(target, color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("val loss (whole split)")
    axes[0].legend()
    lows = [v for r in runs for _, v in r.val]
    axes[0].set_ylim(min(lows) - 0.05, min(max(lows), target + 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> list[Run]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arm", nargs=2, action="append", metavar=("NAME", "ARGS"), required=True,
                        help="a name and the `lit-gpt fit` arguments of one arm, quoted")  # fmt: skip
    parser.add_argument("--common", default="", help="arguments added to every arm (the data source, say)")
    parser.add_argument(
        "--target",
        required=True,
        help="the val loss to reach, or an arm's name: that arm's final val loss (mean of seeds)",
    )
    parser.add_argument("--eval_every", type=int, default=100, help="steps between exact validations")
    parser.add_argument("--log_every", type=int, default=10, help="steps between train/seconds readings")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337])
    parser.add_argument("--write", action="store_true", help="write docs/speedrun.md's section and its plot")
    parser.add_argument("--section", default="Time to loss", help="the heading of the section --write replaces")
    parser.add_argument("--doc", type=Path, default=DOC, help="the Markdown file --write updates")
    args = parser.parse_args(argv)
    if args.eval_every % args.log_every:
        parser.error("--eval_every must be a multiple of --log_every")
    arms = [name for name, _ in args.arm]
    if len(set(arms)) != len(arms):
        parser.error("every --arm needs its own name")
    try:
        target: float | str = float(args.target)
    except ValueError:
        target = args.target
        if target not in arms:
            parser.error(f"--target must be a loss or one of the arms ({', '.join(arms)}), got {target!r}")
    runs = []
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            for name, arm_args in args.arm:
                cmd = shlex.split(arm_args) + shlex.split(args.common)
                run = run_arm(name, cmd, seed, args.eval_every, args.log_every, Path(workdir))
                print(f"{name} seed {seed}: final val {run.val[-1][1]:.4f} at step {run.val[-1][0]}", flush=True)
                runs.append(run)
    target_text = f"val loss {target}"
    if isinstance(target, str):  # the reference arm's final exact val loss, averaged over its seeds
        ref = [r for r in runs if r.arm == target]
        target = statistics.mean(r.val[-1][1] for r in ref)  # unrounded: the arm itself must reach it
        target_text = f"{args.target}'s final val loss (step {ref[0].val[-1][0]}, mean of its seeds), {target:.4f}"
    print(f"target: {target_text}")
    for run in runs:
        run.reached = first_reach(run, target)
    lines = table(runs, arms, target)
    print("\n".join(lines))
    if args.write:
        slug = re.sub(r"[^a-z0-9]+", "_", args.section.lower()).strip("_")
        png = args.doc.with_name(f"{args.doc.stem}_{slug}.png")
        plot(runs, arms, target, png)
        command = "python scripts/time_to_loss.py " + shlex.join(argv if argv is not None else sys.argv[1:])
        arms_text = [f"- {name}: `{(a + ' ' + args.common).strip()}`" for name, a in args.arm]
        body = [
            f"Target: {target_text}.",
            f"Exact validation (the whole split) every {args.eval_every} steps; seeds {args.seeds}; mean ± stdev "
            "over the seeds that reached the target. Training seconds exclude validation, compile and warm-up "
            "(stated apart); process seconds are the whole command.", "", *arms_text, "", *lines, "",
            f"![val loss against training time and tokens]({png.name})",
        ]  # fmt: skip
        write_section(args.section, str(datetime.date.today()), machine(), command, body, args.doc, HEADER)
    return runs


if __name__ == "__main__":
    main()
