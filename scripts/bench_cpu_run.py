"""The CPU config end to end, as a user runs it: `lit-gpt fit --config configs/shakespeare_char_cpu.yaml` on nanoGPT's
tiny Shakespeare for several seeds, with its wall time, final val loss and tokens/s, beside nanoGPT's figures for the
same run on the same machine kind.

    python scripts/bench_cpu_run.py --source ../shared/data/tinyshakespeare.txt [--seeds 1337 1 2] [--write]
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import machine, write_section  # noqa: E402

NANOGPT = "nanoGPT `train.py`, same config and machine kind: val loss 1.8857 (one seed), 66-71 s wall, 24-26k tokens/s"


def run(source: str, seed: int, workdir: str, extra: list[str]) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "lit_gpt.cli", "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
        "--data.source", source, "--seed_everything", str(seed), "--data.seed", str(seed),
        "--trainer.logger.init_args.save_dir", workdir, "--trainer.logger.init_args.name", f"seed{seed}",
        "--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    wall = time.perf_counter() - t0
    scalars = tensorboard_scalars(Path(workdir) / f"seed{seed}" / "version_0")
    return {
        "val": scalars["val/loss"][-1][1],
        "val_curve": scalars["val/loss"],
        "wall": wall,
        "tokens_per_sec": statistics.median(v for _, v in scalars["train/tokens_per_sec"]),
    }


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series a run logged to TensorBoard, as (step, value) in step order."""
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    shared = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"  # the anchors' corpus, when it is beside us
    parser.add_argument("--source", default=str(shared) if shared.exists() else "tinyshakespeare")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1337, 1, 2])
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--section", default="CPU config end to end (issue 2's target)", help="docs section")
    args, extra = parser.parse_known_args()  # the rest go to `lit-gpt fit`
    with tempfile.TemporaryDirectory() as workdir:
        results = {s: run(args.source, s, workdir, extra) for s in args.seeds}
    lines = [
        "| seed | val loss at step 2000 | wall time (start-up, 8 validations, checkpoints) | tokens/s (median) |",
        "|---|---|---|---|",
    ]
    for seed, r in results.items():
        lines.append(f"| {seed} | {r['val']:.4f} | {r['wall']:.1f} s | {r['tokens_per_sec']:,.0f} |")
    vals = [r["val"] for r in results.values()]
    walls = [r["wall"] for r in results.values()]
    tps = [r["tokens_per_sec"] for r in results.values()]
    lines.append(
        f"| **mean** | **{statistics.mean(vals):.4f}** (spread {max(vals) - min(vals):.4f}) | "
        f"**{statistics.mean(walls):.1f} s** | **{statistics.mean(tps):,.0f}** |"
    )
    lines += ["", f"Anchor: {NANOGPT}."]
    print("\n".join(lines))
    if args.write:
        precision = extra[extra.index("--trainer.precision") + 1] if "--trainer.precision" in extra else "fp32"
        host = machine(precision)
        cmd = "python scripts/bench_cpu_run.py " + shlex.join(sys.argv[1:])
        write_section(args.section, datetime.date.today().isoformat(), host, cmd, lines)


if __name__ == "__main__":
    main()
