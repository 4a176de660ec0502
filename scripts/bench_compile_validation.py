"""Does validating through the compiled model repay its compile? The question behind ``--model.compile_validation``,
whose default (empty) compiles validation on a GPU and not on a CPU.

One compiled fit on synthetic tokens validates three times: twice through the compiled model (the first validation
compiles its inference graph, the second shows the compiled speed), then uncompiled, as ``compile_validation false``
validates. Lightning validates under inference mode, so the inference graph is one of its own, compiled at the
first validation. The figures say after how many validation batches the compile has paid for itself, and what that
means for ``configs/gpt2_124m.yaml`` (200 batches a validation, 20 validations a run).

    python scripts/bench_compile_validation.py              # GPT-2 124M on the GPU, micro-batch 16
    python scripts/bench_compile_validation.py --tiny       # a tiny model on the CPU: checks the script works
    python scripts/bench_compile_validation.py --write      # also write the figures into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_gpt2 import GPT2, TINY, RandomTokens  # noqa: E402
from benchmarks_doc import write_section  # noqa: E402

from lit_gpt.lightning_module import LitGPT  # noqa: E402

GPT2_VALIDATIONS, GPT2_VAL_BATCHES = 20, 200  # configs/gpt2_124m.yaml: max_steps / val_check_interval, val_batches


class ValidationTimer(L.Callback):
    """Wall time of each validation; the last one runs uncompiled (``compile_validation`` turned off before it)."""

    def __init__(self, validations: int) -> None:
        self.validations = validations
        self.seconds: list[float] = []
        self._start = 0.0

    def on_validation_start(self, trainer: L.Trainer, pl_module: LitGPT) -> None:
        if len(self.seconds) == self.validations - 1:
            pl_module.hparams["compile_validation"] = False  # read by LitGPT at every validation batch
        self._sync(pl_module)
        self._start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: LitGPT) -> None:
        self._sync(pl_module)
        self.seconds.append(time.perf_counter() - self._start)

    @staticmethod
    def _sync(pl_module: LitGPT) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()


def measure(tiny: bool, batch: int, val_batches: int, every: int) -> tuple[list[float], str]:
    """Seconds of the three validations (compiling, compiled, uncompiled) and the device's name."""
    config = TINY if tiny else GPT2
    accelerator = "cpu" if tiny or not torch.cuda.is_available() else "gpu"
    torch.manual_seed(1337)
    model = LitGPT(config, warmup_steps=10, compile=True, compile_validation=True)
    timer = ValidationTimer(validations=3)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision="bf16-mixed" if accelerator == "gpu" else "32-true",
        max_steps=3 * every, val_check_interval=every, limit_val_batches=val_batches, num_sanity_val_steps=0,
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer],
    )  # fmt: skip
    train = DataLoader(RandomTokens(batch, config.block_size, config.vocab_size), batch_size=None, pin_memory=True)
    val = DataLoader(RandomTokens(batch, config.block_size, config.vocab_size), batch_size=None, pin_memory=True)
    trainer.fit(model, train, val)
    name = torch.cuda.get_device_name() if accelerator == "gpu" else platform.processor() or "CPU"
    return timer.seconds, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=16, help="sequences per batch (configs/gpt2_124m.yaml: 16)")
    parser.add_argument("--val-batches", type=int, default=50, help="batches per validation")
    parser.add_argument("--every", type=int, default=5, help="training steps between validations")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, to check the script")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # as lit-gpt's CLI does
    (first, compiled, eager), name = measure(args.tiny, args.batch, args.val_batches, args.every)
    n = args.val_batches
    compile_s = first - compiled  # the first compiled validation, less what its batches took once compiled
    saved = (eager - compiled) / n  # seconds a batch saves compiled
    config = TINY if args.tiny else GPT2
    lines = [
        f"- {'tiny test model' if args.tiny else 'GPT-2 124M'}, {args.batch} x {config.block_size} tokens a batch, "
        f"{n} batches a validation, synthetic tokens; {name}",
        "",
        "| validation | seconds | ms a batch |",
        "|---|---|---|",
        f"| 1st, compiled (compiles the inference graph) | {first:.2f} | {first / n * 1e3:.1f} |",
        f"| 2nd, compiled | {compiled:.2f} | {compiled / n * 1e3:.1f} |",
        f"| 3rd, uncompiled (`compile_validation false`) | {eager:.2f} | {eager / n * 1e3:.1f} |",
        "",
        f"- compiling the inference graph: **{compile_s:.1f} s**; a compiled batch runs **{eager / compiled:.2f}x** as "
        "fast as an uncompiled one",
    ]
    if saved > 0:
        breakeven = compile_s / saved
        total = GPT2_VALIDATIONS * GPT2_VAL_BATCHES
        lines.append(
            f"- the compile is repaid after **{breakeven:,.0f} validation batches**; `configs/gpt2_124m.yaml` runs "
            f"{GPT2_VALIDATIONS} x {GPT2_VAL_BATCHES} = {total:,} at this batch size, and compiling saves "
            f"{(total * saved - compile_s):,.0f} s over the run"
        )
    else:
        lines.append("- a compiled batch is no faster: compiling validation does not pay at this size")
    print("\n".join(lines))
    if args.write:
        machine = f"{name}, torch {torch.__version__}, Lightning {L.__version__}"
        cmd = shlex.join(
            ["python", "scripts/bench_compile_validation.py", *(a for a in sys.argv[1:] if a != "--write")]
        )
        title = "compiled validation" + (" (tiny CPU check)" if args.tiny else " (GPU)")
        write_section(title, datetime.date.today().isoformat(), machine, cmd, lines)


if __name__ == "__main__":
    main()
