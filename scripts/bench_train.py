"""Training speed of a config: ms/step and tokens/s through Lightning's Trainer, and the same model, batches and
optimizer stepped by a plain PyTorch loop (nanoGPT's ``train.py`` loop), interleaved in one process (blocks of 10 steps
of each, in turn) so the ratio is fair on a noisy machine. For a GPT-2 block, nanoGPT's own model and optimizer
(``scripts/nanogpt_reference.py``) are stepped in the same blocks too: the comparison with nanoGPT from one run,
not against a figure measured on another machine.

    python scripts/bench_train.py --config configs/shakespeare_char_cpu.yaml --steps 200 [--write]

``--write`` replaces this script's section of docs/benchmarks.md. Extra arguments go to ``lit-gpt fit``
(e.g. ``--trainer.precision bf16-mixed``). The plain loop steps AdamW whatever the config's optimizer, so with
``--model.optimizer muon`` the Trainer/plain ratio measures Muon's step cost against AdamW's in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import nanogpt_reference  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.attention_kernel import attend_in_float32  # noqa: E402
from lit_gpt.cpu_matmul import OneDNNLinear, use_onednn_linears  # noqa: E402
from lit_gpt.flops import peak_flops  # noqa: E402
from lit_gpt.lightning_cli import fit_cli  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402
from lit_gpt.optim import configure_adamw, warmup_cosine  # noqa: E402


class Interleaved(L.Callback):
    """Times the Trainer's optimizer steps and, in blocks between them, the same number of plain-loop steps.

    A run alternates ``block`` Trainer steps with ``block`` plain steps, so both see the same machine state (other
    processes, clock speed, heat) and their ratio is not at the mercy of a noisy machine. A Trainer step is the wall
    time from the end of one optimizer step to the end of the next, less any plain steps run in between. The first
    step after each switch is dropped from both, as it pays for caches the other just filled.
    """

    def __init__(self, block: int = 10) -> None:
        self.block = block
        self.lit: list[float] = []
        self.plain: list[float] = []
        self.eager: list[float] = []  # with --model.compile: an uncompiled plain loop too, for compile's gain
        self.nanogpt: list[float] = []  # nanoGPT's model and optimizer, uncompiled (its CPU default)
        self.aten: list[float] = []  # with oneDNN linears (lit_gpt/cpu_matmul.py): the plain loop on ATen's too
        self._last: float | None = None
        self._plain_steps = self._eager_steps = self._nanogpt_steps = self._aten_steps = None

    def on_train_start(self, trainer, pl_module) -> None:
        self._plain_steps = plain_loop(trainer, pl_module, pl_module.hparams.compile)
        if pl_module.hparams.compile:
            self._eager_steps = plain_loop(trainer, pl_module, compile=False)
        if isinstance(pl_module.model.lm_head, OneDNNLinear):
            self._aten_steps = plain_loop(trainer, pl_module, pl_module.hparams.compile, aten=True)
        if nanogpt_can_run(pl_module.model.config):
            self._nanogpt_steps = plain_loop(trainer, pl_module, compile=False, nanogpt=True)
        self._count = 0

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.fit_loop._should_accumulate():  # mid-accumulation: the optimizer step is not done yet
            return
        now = time.perf_counter()
        if self._last is not None and self._count % self.block != 0:
            self.lit.append(now - self._last)
        self._count += 1
        if self._count % self.block == 0:
            times = [next(self._plain_steps) for _ in range(self.block)]
            self.plain += times[1:]
            if self._eager_steps is not None:
                self.eager += [next(self._eager_steps) for _ in range(self.block)][1:]
            if self._aten_steps is not None:
                self.aten += [next(self._aten_steps) for _ in range(self.block)][1:]
            if self._nanogpt_steps is not None:
                self.nanogpt += [next(self._nanogpt_steps) for _ in range(self.block)][1:]
        self._last = time.perf_counter()


def lightning_steps(config: str, steps: int, extra: list[str], workdir: str) -> tuple[Interleaved, object]:
    args = [
        "--config", config, "--trainer.max_steps", str(steps), "--trainer.limit_val_batches", "0",
        "--trainer.enable_model_summary", "false", "--sample.max_new_tokens", "0",
        "--throughput.measure_cpu_peak", "false", "--trainer.logger.init_args.save_dir", workdir, *extra,
    ]  # fmt: skip
    cli = fit_cli(args + ["--trainer.val_check_interval", str(steps + 1)], run=False)
    timer = Interleaved()
    cli.trainer.callbacks.append(timer)  # last, so a Trainer step includes every other callback
    cli.trainer.fit(cli.model, cli.datamodule)
    return timer, cli


def nanogpt_can_run(config) -> bool:
    """nanoGPT's model has GPT-2's block only (and ties its output layer)."""
    default = GPTConfig(vocab_size=config.vocab_size)
    block = ("bigram", "residual", "projections", "norm", "mlp", "mlp_hidden", "tie_weights", "position", "qk_norm")
    return all(getattr(config, f) == getattr(default, f) for f in block)


def plain_loop(trainer, pl_module, compile: bool, nanogpt: bool = False, aten: bool = False):
    """nanoGPT's loop: same model class, batches, optimizer, schedule and clipping; no Trainer. Yields the wall
    time of each optimizer step. ``nanogpt``: nanoGPT's own model and ``configure_optimizers`` instead of
    lit-gpt's (same shape, weights, batches, schedule and clipping). ``aten``: ATen's matmuls, not oneDNN's."""
    with torch.random.fork_rng():  # the Trainer's run draws the same random numbers as without this benchmark
        torch.manual_seed(1337)
        device = trainer.strategy.root_device
        model = GPT(pl_module.model.config).to(device)
    hp = pl_module.hparams
    if nanogpt:
        c = pl_module.model.config
        shape = {
            k: getattr(c, k) for k in ("block_size", "vocab_size", "n_layer", "n_head", "n_embd", "dropout", "bias")
        }
        reference = nanogpt_reference.GPT(nanogpt_reference.GPTConfig(**shape)).to(device)
        reference.load_state_dict(model.state_dict())
        model = reference
        optimizer = model.configure_optimizers(hp.weight_decay, hp.learning_rate, (hp.beta1, hp.beta2), device.type)
    else:
        if isinstance(pl_module.model.lm_head, OneDNNLinear) and not aten:  # as the Trainer's model does
            use_onednn_linears(model)
        if any(getattr(m, "attention_dtype", None) for m in pl_module.model.modules()):  # as the Trainer's model
            attend_in_float32(model)
        if compile:
            model.compile()
        optimizer = configure_adamw(model, hp.learning_rate, hp.weight_decay, (hp.beta1, hp.beta2))
    decay = hp.lr_decay_steps or trainer.max_steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, hp.warmup_steps, decay, hp.min_lr / hp.learning_rate)
    )
    batches = iter(trainer.datamodule.train_dataloader())
    accumulate = trainer.accumulate_grad_batches
    clip = trainer.gradient_clip_val
    # The same autocast as the Trainer's precision; nanoGPT's train.py never autocasts on a CPU (float32 there).
    as_nanogpt_on_cpu = nanogpt and device.type == "cpu"
    forward_context = contextlib.nullcontext if as_nanogpt_on_cpu else trainer.precision_plugin.forward_context
    while True:
        start = time.perf_counter()
        for _ in range(accumulate):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with forward_context():
                _, loss = model(x, y)
            (loss / accumulate).backward()
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()  # nanoGPT reads the loss every log interval; the Trainer's loss guard reads it every step
        if device.type == "cuda":
            torch.cuda.synchronize()
        yield time.perf_counter() - start


def measure(config: str, steps: int, rounds: int, extra: list[str]) -> tuple[list[str], torch.device]:
    """Markdown lines: the Trainer's and the plain loop's ms/step and tokens/s, their ratio, and MFU; and the device
    the config trained on."""
    warm = max(1, steps // 10)
    lit_times: list[float] = []
    plain_times: list[float] = []
    eager_times: list[float] = []
    aten_times: list[float] = []
    nanogpt_times: list[float] = []
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(rounds):
            timer, cli = lightning_steps(config, steps, extra, workdir)
            lit_times += timer.lit[warm:]
            plain_times += timer.plain[warm:]
            eager_times += timer.eager[warm:]
            aten_times += timer.aten[warm:]
            nanogpt_times += timer.nanogpt[warm:]
    tokens = cli.datamodule.batch_size * cli.datamodule.block_size * cli.trainer.accumulate_grad_batches
    lit_ms, plain_ms = statistics.median(lit_times) * 1e3, statistics.median(plain_times) * 1e3
    lines = [
        f"- config `{Path(config).name}` {' '.join(extra)}: {tokens} tokens/step, "
        f"{sum(p.numel() for p in cli.model.model.parameters()) / 1e6:.2f}M parameters, "
        f"precision {cli.trainer.precision}, device {cli.trainer.strategy.root_device}, float32 matmuls in "
        f"{'oneDNN' if isinstance(cli.model.model.lm_head, OneDNNLinear) else 'ATen'}",
        f"- Lightning Trainer: **{lit_ms:.2f} ms/step, {tokens / lit_ms * 1e3:,.0f} tokens/s** (median of "
        f"{len(lit_times)} steps after warm-up)",
        f"- plain PyTorch loop, same model/batches/optimizer, run in blocks of 10 steps between the Trainer's: "
        f"{plain_ms:.2f} ms/step, {tokens / plain_ms * 1e3:,.0f} tokens/s",
        f"- Trainer / plain loop step time: **{lit_ms / plain_ms:.3f}x** "
        f"({(lit_ms / plain_ms - 1) * 100:+.1f}% overhead)",
    ]
    if cli.model.hparams.get("optimizer", "adamw") == "muon":  # the plain loop always steps AdamW
        lines.append(
            "- the Trainer steps Muon and the plain loop AdamW: the ratio above is Muon's step cost over AdamW's "
            "times the Trainer's overhead (the same config's AdamW run gives that)"
        )
    if eager_times:
        eager_ms = statistics.median(eager_times) * 1e3
        lines += [
            f"- the same plain loop uncompiled, in the same blocks: {eager_ms:.2f} ms/step, "
            f"{tokens / eager_ms * 1e3:,.0f} tokens/s",
            f"- compiled Trainer over uncompiled plain loop: **{eager_ms / lit_ms:.3f}x** tokens/s "
            f"(compile alone, plain loops: {eager_ms / plain_ms:.3f}x)",
        ]
    if aten_times:
        aten_ms = statistics.median(aten_times) * 1e3
        lines += [
            f"- the same plain loop with ATen's float32 matmuls (MKL; `--model.cpu_matmul aten`), in the same blocks: "
            f"{aten_ms:.2f} ms/step, {tokens / aten_ms * 1e3:,.0f} tokens/s: oneDNN's matmuls step "
            f"**{aten_ms / plain_ms:.3f}x** as fast",
        ]
    cpu_autocast = cli.trainer.strategy.root_device.type == "cpu" and str(cli.trainer.precision) != "32-true"
    if nanogpt_times:
        nano_ms = statistics.median(nanogpt_times) * 1e3
        lines += [
            f"- nanoGPT's own model and optimizer (`scripts/nanogpt_reference.py`: its `model.py` and "
            f"`configure_optimizers`, uncompiled{', float32 as it runs on a CPU' if cpu_autocast else ''}), same "
            f"shape, weights, batches and schedule, in the same blocks: "
            f"{nano_ms:.2f} ms/step, {tokens / nano_ms * 1e3:,.0f} tokens/s",
            f"- lit-gpt through the Trainer over nanoGPT, tokens/s, this run: **{nano_ms / lit_ms:.2f}x**",
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
    return lines, device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "configs" / "shakespeare_char_cpu.yaml"))
    parser.add_argument("--steps", type=int, default=200, help="steps per measurement (the first 10%% are warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of plain loop and Trainer")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--section", help="the docs/benchmarks.md section (default: from the config and arguments)")
    args, extra = parser.parse_known_args()
    lines, _ = measure(args.config, args.steps, args.rounds, extra)
    print("\n".join(lines))
    if args.write:
        when = datetime.date.today().isoformat()
        host = machine()
        cmd = shlex.join(["python", "scripts/bench_train.py", *(a for a in sys.argv[1:] if a != "--write")])
        title = args.section or f"bench_train {Path(args.config).stem} {' '.join(extra)}".strip()
        write_section(title, when, host, cmd, lines)


if __name__ == "__main__":
    main()
