"""GPT-2 124M training speed on one GPU through lit-gpt's Trainer path: ms/step, tokens/s and MFU, with and without
torch.compile, on synthetic tokens (no dataset or tokenizer download needed; the speed does not depend on the data).

The model and step are nanoGPT's ``bench.py``: 12 layers, 12 heads, 768 wide, block 1024, vocab 50304, no biases,
batch 12 x 1024 tokens, bf16 autocast, fused AdamW, gradient clipping at 1.0. nanoGPT's README reports about
250 ms/iter without compile and 135 ms/iter with it on an A100 40GB.

    python scripts/bench_gpt2.py                        # both, on the GPU
    python scripts/bench_gpt2.py --compile on --steps 50 --batch 16
    python scripts/bench_gpt2.py --compile on --batch 64x1,32x2 --attention flash,cudnn   # a grid, one row each
    python scripts/bench_gpt2.py --compile on --batch 32 --accumulate 2 --compile-mode max-autotune-no-cudagraphs
    python scripts/bench_gpt2.py --compile on --batch 32,64 --loss-chunk 0,8192   # the loss without full logits
    python scripts/bench_gpt2.py --tiny                 # a tiny model on the CPU: checks the script works
    python scripts/bench_gpt2.py --write                # also write the figures into docs/benchmarks.md

A batch ``BxA`` is B sequences per micro-batch and A micro-batches per step (``--accumulate`` for a plain B). Each row
starts from a fresh torch.compile state, so a row never runs another row's graphs (or a graph made dynamic because
an earlier row had another batch size). Steps are timed as a run is, with CUDA events and no synchronization per
step: lit-gpt's fit lets the CPU queue the next step while the GPU works, and waits only at logging steps.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import write_section  # noqa: E402

from lit_gpt.attention_kernel import KERNELS  # noqa: E402
from lit_gpt.flops import measure_matmul_flops, peak_flops  # noqa: E402
from lit_gpt.lightning_module import LitGPT  # noqa: E402
from lit_gpt.model import GPTConfig  # noqa: E402

GPT2 = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=False)
TINY = GPTConfig(vocab_size=512, block_size=64, n_layer=2, n_head=2, n_embd=64, dropout=0.0, bias=False)


class RandomTokens(IterableDataset):
    """Endless (inputs, targets) batches of uniform random token ids."""

    def __init__(self, batch: int, block: int, vocab: int) -> None:
        self.batch, self.block, self.vocab = batch, block, vocab

    def __iter__(self):
        g = torch.Generator().manual_seed(0)
        while True:
            t = torch.randint(0, self.vocab, (self.batch, self.block + 1), generator=g)
            yield t[:, :-1], t[:, 1:]


class StepTimer(L.Callback):
    """The time of every optimizer step (``accumulate`` micro-batches). On a GPU, CUDA events recorded at each step's
    end, read after the run: no synchronization, so the CPU runs ahead as in a real fit, and a step's time is the
    GPU's, idle gaps included. On a CPU, the wall clock."""

    def __init__(self, accumulate: int = 1) -> None:
        self.accumulate = accumulate
        self._marks: list = []

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.accumulate:
            return  # mid-step: the optimizer has not run yet
        if pl_module.device.type == "cuda":
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self._marks.append(event)
        else:
            self._marks.append(time.perf_counter())

    @property
    def times(self) -> list[float]:
        """Seconds of each step after the first."""
        if self._marks and isinstance(self._marks[0], torch.cuda.Event):
            torch.cuda.synchronize()
            return [a.elapsed_time(b) / 1e3 for a, b in itertools.pairwise(self._marks)]
        return [b - a for a, b in itertools.pairwise(self._marks)]


class KernelProfile(L.Callback):
    """torch.profiler over ``steps`` optimizer steps after ``start``: the GPU's kernel time by family, to say where
    a step's time goes (matmuls, attention, inductor's fused kernels, the optimizer, the rest)."""

    FAMILIES = {  # first match wins; names as CUDA kernels are named by cuBLAS, FlashAttention, cuDNN, Triton
        "matmuls (cuBLAS/CUTLASS)": ("gemm", "nvjet", "cutlass", "xmma", "gemv"),
        "attention (SDPA)": ("flash", "fmha", "cudnn", "attention", "sdpa"),
        "fused elementwise/norms/loss (inductor's Triton)": ("triton",),
        "optimizer and gradient clipping": ("adam", "multi_tensor"),
    }

    def __init__(self, start: int, steps: int, accumulate: int) -> None:
        self.start, self.steps, self.accumulate = start, steps, accumulate
        self.profiler: torch.profiler.profile | None = None
        self.by_family: dict[str, float] = {}
        self._done = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.accumulate:
            return
        step = (batch_idx + 1) // self.accumulate
        if step == self.start:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if pl_module.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()
        elif self.profiler is not None and self._done < self.steps:
            self._done += 1
            if self._done == self.steps:
                if pl_module.device.type == "cuda":
                    torch.cuda.synchronize()
                self.profiler.__exit__(None, None, None)
                self._summarize(pl_module.device.type == "cuda")

    def _summarize(self, cuda: bool) -> None:
        totals: dict[str, float] = {}
        for event in self.profiler.key_averages():
            us = event.device_time_total if cuda else event.self_cpu_time_total
            if not us or (cuda and event.device_type != torch.autograd.DeviceType.CUDA):
                continue
            # Ranges, not kernels: record_function's on the GPU's timeline, such as Lightning's
            # "Optimizer.step#AdamW.step", which spans the forward and backward its closure runs
            if getattr(event, "is_user_annotation", False) or "#" in event.key:
                continue
            name = event.key.lower()
            family = next((f for f, keys in self.FAMILIES.items() if any(k in name for k in keys)), "other")
            totals[family] = totals.get(family, 0.0) + us / 1e3 / self.steps
        self.by_family = dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def measure(
    config: GPTConfig, batch: int, accumulate: int, steps: int, warmup: int, compile: str | None, attention: str,
    precision: str, accelerator: str, loss_chunk: int = 0, coordinate_descent: bool = False, profile: int = 0,
):  # fmt: skip
    """``compile``: None for eager, else a torch.compile mode ("default", "max-autotune-no-cudagraphs", ...)."""
    torch._dynamo.reset()  # this row's graphs only: no cached graph, nor a batch dimension made dynamic by a row before
    torch.manual_seed(1337)
    model = LitGPT(
        config, learning_rate=6e-4, min_lr=6e-5, warmup_steps=10, beta2=0.95, compile=compile == "default",
        loss_chunk_size=loss_chunk, attention_kernel=attention,
    )  # fmt: skip
    if compile not in (None, "default"):
        model.model.compile(mode=compile)  # in place, as LitGPT's own compile (which takes the default mode)
    timer = StepTimer(accumulate)
    profiler = KernelProfile(warmup + steps, profile, accumulate) if profile else None
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=warmup + steps + profile, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
        callbacks=[timer, profiler] if profiler else [timer], num_sanity_val_steps=0, limit_val_batches=0,
        accumulate_grad_batches=accumulate,
    )  # fmt: skip
    loader = DataLoader(RandomTokens(batch, config.block_size, config.vocab_size), batch_size=None, pin_memory=True)
    import torch._inductor.config as inductor

    with inductor.patch(coordinate_descent_tuning=coordinate_descent):
        trainer.fit(model, loader)
    times = timer.times[warmup - 1 : warmup - 1 + steps]  # the first steps compile; the last are profiled
    ms = statistics.median(times) * 1e3
    tokens = batch * accumulate * config.block_size
    flops = model.model.flops_per_token(config.block_size) * tokens / (ms / 1e3)
    device = trainer.strategy.root_device
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return ms, tokens / ms * 1e3, flops, memory, profiler.by_family if profiler else {}


def batch_shapes(spec: str, accumulate: int) -> list[tuple[int, int]]:
    """``--batch`` as (micro-batch, accumulation) pairs: "64x1,32x2", or "12,16" with ``accumulate`` for each."""
    shapes = []
    for item in spec.split(","):
        b, _, a = item.partition("x")
        shapes.append((int(b), int(a) if a else accumulate))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode: default, max-autotune-no-cudagraphs, ..."
    )
    parser.add_argument(
        "--coordinate-descent", action="store_true", help="inductor's coordinate-descent tuning of its kernels' tiles"
    )
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation happens here)")
    parser.add_argument(
        "--batch",
        default="12",
        help="sequences of 1024 tokens per micro-batch (nanoGPT: 12); a list, e.g. 32,64; BxA for A micro-batches",
    )
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument(
        "--attention", default="auto", help=f"LitGPT's attention_kernel(s), a list of {', '.join(KERNELS)}"
    )
    parser.add_argument(
        "--loss-chunk", default="0", help="LitGPT's loss_chunk_size(s), a list; 0 computes the loss from full logits"
    )
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps after the timed ones")
    parser.add_argument("--budget", type=float, help="seconds: rows not started by then are skipped")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, to check the script")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--section", default="GPT-2 124M training speed", help="docs/benchmarks.md section to write")
    parser.add_argument("--json", type=Path, help="also append each row to this file, one JSON object a line")
    args = parser.parse_args()
    started = time.perf_counter()
    shapes = batch_shapes(args.batch, args.accumulate)
    chunks = [int(c) for c in args.loss_chunk.split(",")]
    attentions = args.attention.split(",")
    if bad := [a for a in attentions if a not in KERNELS]:
        parser.error(f"--attention {','.join(bad)}: choose from {', '.join(KERNELS)}")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # as lit-gpt's CLI does
    config = TINY if args.tiny else GPT2
    accelerator = "cpu" if args.tiny or not torch.cuda.is_available() else "gpu"
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    device_name = torch.cuda.get_device_name() if accelerator == "gpu" else platform.processor() or "CPU"
    dtype = torch.bfloat16 if "bf16" in args.precision else torch.float32
    peak = peak_flops(device, dtype)
    # What the chip's matmuls reach here, besides the spec sheet: MFU is quoted against the sheet, as everyone does.
    measured = measure_matmul_flops(device, dtype, n=8192) if device.type == "cuda" else peak
    tuning = " + coordinate descent" if args.coordinate_descent else ""
    lines = [
        f"- {'tiny test model' if args.tiny else 'GPT-2 124M'} ({config.n_layer}L/{config.n_head}H/{config.n_embd}, "
        f"block {config.block_size}, vocab {config.vocab_size}), {args.precision}, AdamW (fused on CUDA), clip 1.0, "
        f"synthetic tokens; median of {args.steps} optimizer steps after {args.warmup} warm-up steps; {device_name}",
        f"- peak: {peak / 1e12:,.1f} TFLOP/s {dtype} dense "
        f"({'spec sheet); an 8192' if device.type == 'cuda' else 'no spec sheet: measured now); a large'}-square "
        f"matmul measured in this run: {measured / 1e12:,.1f} TFLOP/s",
        "",
        "| micro-batch x block x accumulation | torch.compile | attention | loss chunk | ms/step | tokens/s "
        "| model TFLOP/s | MFU | of measured matmul | peak memory |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    compiles = {"off": [None], "on": [args.compile_mode], "both": [None, args.compile_mode]}[args.compile]
    skipped = []
    profiles: list[tuple[str, float, dict[str, float]]] = []
    for (batch, accumulate), compile, attention, chunk in itertools.product(shapes, compiles, attentions, chunks):
        shape = f"{batch} x {config.block_size} x {accumulate}"
        label = f"{compile}{tuning}" if compile else "off"
        if args.budget is not None and time.perf_counter() - started > args.budget:
            skipped.append(f"{shape} {label} {attention} {chunk or 'off'}")
            print(f"skipped (over --budget): {skipped[-1]}", flush=True)
            continue
        try:
            ms, tps, flops, memory, kernels = measure(
                config, batch, accumulate, args.steps, args.warmup, compile, attention, args.precision, accelerator,
                chunk, coordinate_descent=args.coordinate_descent and compile is not None, profile=args.profile,
            )  # fmt: skip
        except Exception as e:  # one row's failure (a kernel this GPU lacks) must not cost the grid's other rows
            why = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]
            lines.append(f"| {shape} | {label} | {attention} | {chunk or 'off'} | failed: {why} |" + " |" * 5)
            print(lines[-1], flush=True)
            continue
        mfu = f"**{flops / peak:.1%}**" if peak else "n/a"
        mem = f"{memory:.1f} GiB" if memory is not None else "n/a"
        lines.append(
            f"| {shape} | {label} | {attention} | {chunk or 'off'} | {ms:.2f} | {tps:,.0f} "
            f"| {flops / 1e12:.1f} | {mfu} | {flops / measured:.1%} | {mem} |"
        )
        print(lines[-1], flush=True)
        if kernels:
            profiles.append((f"{shape}, {label}, {attention}", ms, kernels))
        if args.json:
            row = dict(batch=batch, accumulate=accumulate, compile=label, attention=attention, loss_chunk=chunk)
            row.update(ms=ms, tokens_per_s=tps, mfu=flops / peak if peak else None, memory_gib=memory)
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")
    lines += [
        "",
        "MFU = 6N + 12LT FLOPs per token (PaLM appendix B, as nanoGPT) x tokens/s / the device's dense bf16 peak "
        "(the spec sheet for GPUs; a measured matmul on a CPU). nanoGPT on an A100 40GB: ~250 ms/iter without "
        "compile, ~135 ms/iter with it, at 12 x 1024. Steps are timed with CUDA events, without synchronizing each "
        "step, as a fit runs.",
    ]
    for row, ms, kernels in profiles:
        total = sum(kernels.values())
        idle = ""
        if device.type == "cuda":  # the profiled steps are a little slower than the timed ones
            idle = f" (the GPU idle {ms - total:.1f} ms)" if total < ms else " (the GPU never idle)"
        lines += [
            "",
            f"Where a step's time goes ({row}; torch.profiler over {args.profile} steps after the timed ones): "
            f"{'GPU kernels' if device.type == 'cuda' else 'CPU ops'} {total:.1f} ms a profiled step, against "
            f"{ms:.1f} ms a timed step{idle}",
            "",
            "| kernels | ms a step | share of the step |",
            "|---|---|---|",
            *[f"| {family} | {t:.1f} | {t / ms:.1%} |" for family, t in kernels.items()],
        ]
    if skipped:
        lines.append(f"Not run (over the {args.budget:.0f} s budget): {'; '.join(skipped)}.")
    print("\n".join(lines))
    if args.write:
        when = datetime.date.today().isoformat()
        machine = f"{device_name}, torch {torch.__version__}, Lightning {L.__version__}"
        argv = [a for i, a in enumerate(sys.argv[1:]) if a != "--write" and "--json" not in sys.argv[i : i + 2]]
        cmd = shlex.join(["python", "scripts/bench_gpt2.py", *argv])
        title = args.section + (" (tiny CPU check)" if args.tiny else "")
        write_section(title, when, machine, cmd, lines)


if __name__ == "__main__":
    main()
