"""A Muon step's cost against an AdamW step's, through ``lit-gpt fit`` itself: AdamW, Muon with Newton-Schulz in
bfloat16 (torch's own) and Muon with it in float32, the runs alternating (A B C A B C) on the same machine so the
ratios are fair on a noisy one. Each step time is the run's own training clock (``train/seconds``, validation and
start-up excluded) over its steps after the first logging interval (warm-up), as in bench_precision.py.

    python scripts/bench_muon.py --config configs/shakespeare_char_cpu.yaml --steps 200 --rounds 2 [--write]

Which Newton-Schulz dtype is faster depends on the processor (bf16 matmuls are fast with AMX or on a GPU, emulated
and many times slower on CPUs without bf16 instructions) and on the shape: the figure is for this machine and this
config only. ``--write`` replaces this script's section of docs/benchmarks.md. Run under benchmarks_doc's
``ISA_LIMITS`` (for example ``ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2``), the
libraries use only those instructions, as on a CPU without bf16 ones; the section names them.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_precision import step_ms  # noqa: E402
from benchmarks_doc import isa_limits, machine, repo_path, write_section  # noqa: E402

from lit_gpt.optim import newton_schulz_dtype  # noqa: E402

ARMS = {
    "adamw": ["--model.optimizer", "adamw", "--model.muon_lr", "null"],
    "muon, Newton-Schulz in bfloat16": ["--model.optimizer", "muon", "--model.muon_ns_dtype", "bfloat16"],
    "muon, Newton-Schulz in float32": ["--model.optimizer", "muon", "--model.muon_ns_dtype", "float32"],
}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--precision", default="32-true", help="the runs' --trainer.precision")
    parser.add_argument("--steps", type=int, default=200, help="steps per run")
    parser.add_argument("--log_every", type=int, default=10, help="steps between clock readings")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of the three runs")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args, extra = parser.parse_known_args(argv)
    times: dict[str, list[float]] = {arm: [] for arm in ARMS}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):
            for arm, options in ARMS.items():
                times[arm].append(
                    step_ms(args.config, args.precision, args.steps, args.log_every, Path(tmp), [*extra, *options])
                )
    ms = {arm: statistics.median(v) for arm, v in times.items()}
    config = repo_path(args.config)
    default = str(newton_schulz_dtype(args.precision)).removeprefix("torch.")
    lines = [
        f"`--trainer.precision {args.precision}`, where Muon's Newton-Schulz runs in {default} unless "
        "`--model.muon_ns_dtype` says otherwise.",
        "",
        "| optimizer | ms/step (median of runs) | runs | x AdamW's step |",
        "|---|---|---|---|",
        *(
            f"| {arm} | {ms[arm]:.1f} | {', '.join(f'{t:.1f}' for t in times[arm])} | {ms[arm] / ms['adamw']:.2f}x |"
            for arm in ARMS
        ),
    ]
    print("\n".join(lines))
    if args.write:
        limits = isa_limits()
        options = ["--config", str(config), "--precision", args.precision, "--steps", str(args.steps),
                   "--log_every", str(args.log_every), "--rounds", str(args.rounds), *extra, "--write"]  # fmt: skip
        command = " ".join([limits, "python scripts/bench_muon.py", *options]).strip()
        name = f"Muon's step against AdamW's: {config}, {args.precision}" + (", instructions limited" if limits else "")
        write_section(name, datetime.date.today().isoformat(), machine(), command, lines)
    return ms


if __name__ == "__main__":
    main()
