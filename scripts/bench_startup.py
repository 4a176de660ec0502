"""How long ``lit-gpt`` takes to start, with lit_gpt/startup.py's hook and without it, in alternating processes.

    python scripts/bench_startup.py [--rounds 5] [--write]

Two commands are timed, each as a whole process: ``lit-gpt fit --help``, and a 1-step ``lit-gpt fit`` of the CPU
config on the built-in plays (parsing, data, model, one step, a checkpoint). "Without the hook" runs the same
``main()`` after importing Lightning first, which is what the CLI did before the hook: torchmetrics then imports
every optional package it finds. The gain depends on which of those are installed; the section names them.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.startup import EXTRAS  # noqa: E402

ARMS = {
    "lit-gpt": [sys.executable, "-m", "lit_gpt.cli"],
    "without the hook": [sys.executable, "-c", "import lightning; from lit_gpt.cli import main; main()"],
}


def commands(work: Path) -> dict[str, list[str]]:
    one_step = [
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), "--trainer.max_steps", "1",
        "--trainer.limit_val_batches", "0", "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
        "--trainer.enable_progress_bar", "false", "--data.cache_dir", str(work / "data"),
        "--trainer.logger.init_args.save_dir", str(work / "runs"),
    ]  # fmt: skip
    return {"`lit-gpt fit --help`": ["fit", "--help"], "a 1-step `lit-gpt fit` of the CPU config": one_step}


def wall(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def installed_extras() -> list[str]:
    found = []
    for package in sorted(EXTRAS):
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return found


def measure(rounds: int, only: str | None = None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        todo = {k: v for k, v in commands(work).items() if only is None or only in k}
        for args in todo.values():  # once unmeasured: the corpus is prepared, the file caches are warm
            wall([*ARMS["lit-gpt"], *args], work)
        times = {(c, a): [] for c in todo for a in ARMS}
        for r in range(rounds):
            for c, args in todo.items():
                for a in ARMS if r % 2 == 0 else list(ARMS)[::-1]:
                    times[c, a].append(wall([*ARMS[a], *args], work))
    extras = installed_extras()
    lines = [
        f"- torchmetrics' optional packages installed here: {', '.join(extras) if extras else 'none'}",
        f"- median of {rounds} alternating rounds, each command a whole process:",
        "",
        "| command | lit-gpt | without the hook | lit-gpt over without, wall time |",
        "|---|---|---|---|",
    ]
    for c in todo:
        ours, before = statistics.median(times[c, "lit-gpt"]), statistics.median(times[c, "without the hook"])
        lines.append(f"| {c} | {ours:.2f} s | {before:.2f} s | **{ours / before:.2f}x** |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", help="time only the command whose label contains this text (e.g. help)")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    lines = measure(args.rounds, args.only)
    print("\n".join(lines))
    if args.write:
        cmd = "python scripts/bench_startup.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        write_section("bench_startup", datetime.date.today().isoformat(), machine(), cmd, lines)


if __name__ == "__main__":
    main()
