"""Training speed of a config: ms/step and tokens/s through Lightning's Trainer, and the same model, batches and
optimizer stepped by a plain PyTorch loop (nanoGPT's ``train.py`` loop), interleaved in one process so the ratio
is fair on a noisy machine.

    python scripts/bench_train.py --config configs/shakespeare_char_cpu.yaml --steps 200 [--write]

``--write`` replaces this script's section of docs/benchmarks.md. Extra arguments go to ``lit-gpt fit``
(e.g. ``--trainer.precision bf16-mixed``).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import write_section  # noqa: E402

from lit_gpt.cli import fit_cli  # noqa: E402
from lit_gpt.flops import peak_flops  # noqa: E402
from lit_gpt.optim import configure_adamw, warmup_cosine  # noqa: E402


class StepTimer(L.Callback):
    """Wall time between consecutive optimizer steps: everything the Trainer does per step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.fit_loop._should_accumulate():  # mid-accumulation: the optimizer step is not done yet
            return
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


def lightning_steps(config: str, steps: int, extra: list[str], workdir: str) -> tuple[list[float], object]:
    args = [
        "--config", config, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false", "--sample.max_new_tokens", "0",
        "--throughput.measure_cpu_peak", "false", "--trainer.logger.init_args.save_dir", workdir, *extra,
    ]  # fmt: skip
    cli = fit_cli(args + ["--trainer.val_check_interval", str(steps + 1)], run=False)
    timer = StepTimer()
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer.times, cli


def plain_steps(cli, steps: int) -> list[float]:
    """nanoGPT's loop: same model class, batches, optimizer, schedule and clipping; no Trainer."""
    from lit_gpt.model import GPT

    torch.manual_seed(1337)
    device = cli.trainer.strategy.root_device  # after fit the Trainer has moved the module back to the CPU
    model = GPT(cli.model.model.config).to(device)
    hp = cli.model.hparams
    if hp.compile:
        model.compile()
    optimizer = configure_adamw(model, hp.learning_rate, hp.weight_decay, (hp.beta1, hp.beta2))
    decay = hp.lr_decay_steps or steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, hp.warmup_steps, decay, hp.min_lr / hp.learning_rate)
    )
    batches = iter(cli.datamodule.train_dataloader())
    accumulate = cli.trainer.accumulate_grad_batches
    times, last = [], time.perf_counter()
    for _ in range(steps):
        for _ in range(accumulate):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with cli.trainer.precision_plugin.forward_context():  # the same autocast as the Trainer's precision
                _, loss = model(x, y)
            (loss / accumulate).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log interval; reading it every step is the Trainer's cost too
        now = time.perf_counter()
        times.append(now - last)
        last = now
    return times


def measure(config: str, steps: int, rounds: int, extra: list[str]) -> list[str]:
    """Markdown lines: the Trainer's and the plain loop's ms/step and tokens/s, their ratio, and MFU."""
    os.environ.setdefault("LIGHTNING_DISABLE_TIPS", "1")
    warm = max(1, steps // 10)
    lit_times: list[float] = []
    plain_times: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(rounds):
            times, cli = lightning_steps(config, steps, extra, workdir)
            lit_times += times[warm:]
            plain_times += plain_steps(cli, steps)[warm:]
    tokens = cli.datamodule.batch_size * cli.datamodule.block_size * cli.trainer.accumulate_grad_batches
    lit_ms, plain_ms = statistics.median(lit_times) * 1e3, statistics.median(plain_times) * 1e3
    lines = [
        f"- config `{Path(config).name}` {' '.join(extra)}: {tokens} tokens/step, "
        f"{sum(p.numel() for p in cli.model.model.parameters()) / 1e6:.2f}M parameters, "
        f"precision {cli.trainer.precision}, device {cli.trainer.strategy.root_device}",
        f"- Lightning Trainer: **{lit_ms:.1f} ms/step, {tokens / lit_ms * 1e3:,.0f} tokens/s** (median of "
        f"{len(lit_times)} steps after warm-up)",
        f"- plain PyTorch loop, same model/batches/optimizer: {plain_ms:.1f} ms/step, "
        f"{tokens / plain_ms * 1e3:,.0f} tokens/s",
        f"- Trainer / plain loop step time: **{lit_ms / plain_ms:.3f}x** "
        f"({(lit_ms / plain_ms - 1) * 100:+.1f}% overhead)",
    ]
    device = cli.trainer.strategy.root_device
    dtype = torch.bfloat16 if "bf16" in str(cli.trainer.precision) else torch.float32
    peak = peak_flops(device, dtype)
    if peak:
        achieved = cli.model.model.flops_per_token() * tokens / (lit_ms / 1e3)
        lines.append(
            f"- model FLOPs {achieved / 1e9:,.0f} GFLOP/s = **MFU {achieved / peak:.1%}** of {peak / 1e9:,.0f} GFLOP/s "
            f"({'a matmul measured in this run' if device.type == 'cpu' else 'spec sheet'}, {dtype})"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=200, help="steps per measurement (the first 10% are warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of plain loop and Trainer")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args, extra = parser.parse_known_args()
    lines = measure(args.config, args.steps, args.rounds, extra)
    print("\n".join(lines))
    if args.write:
        when = datetime.date.today().isoformat()
        machine = f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
        cmd = "python scripts/bench_train.py " + " ".join(sys.argv[1:])
        write_section(f"bench_train {Path(args.config).stem} {' '.join(extra)}".strip(), when, machine, cmd, lines)


if __name__ == "__main__":
    main()
