"""GPT-2 124M training speed on one GPU through lit-gpt's Trainer path: ms/step, tokens/s and MFU, with and without
torch.compile, on synthetic tokens (no dataset or tokenizer download needed; the speed does not depend on the data).

The model and step are nanoGPT's ``bench.py``: 12 layers, 12 heads, 768 wide, block 1024, vocab 50304, no biases,
batch 12 x 1024 tokens, bf16 autocast, fused AdamW, gradient clipping at 1.0. nanoGPT's README reports about
250 ms/iter without compile and 135 ms/iter with it on an A100 40GB.

    python scripts/bench_gpt2.py                        # both, on the GPU
    python scripts/bench_gpt2.py --compile on --steps 50 --batch 16
    python scripts/bench_gpt2.py --compile on --batch 32,64 --attention flash,cudnn   # a grid, one row each
    python scripts/bench_gpt2.py --compile on --batch 32 --accumulate 2 --compile-mode max-autotune-no-cudagraphs
    python scripts/bench_gpt2.py --compile on --batch 32,64 --loss-chunk 0,8192   # the loss without full logits
    python scripts/bench_gpt2.py --tiny                 # a tiny model on the CPU: checks the script works
    python scripts/bench_gpt2.py --write                # also write the figures into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import itertools
import platform
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

from lit_gpt.flops import peak_flops  # noqa: E402
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
    """Wall time of every optimizer step (``accumulate`` micro-batches), the GPU synchronized so the time is the
    step's."""

    def __init__(self, accumulate: int = 1) -> None:
        self.accumulate = accumulate
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (batch_idx + 1) % self.accumulate:
            return  # mid-step: the optimizer has not run yet
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self._last is not None:
            self.times.append(now - self._last)
        self._last = now


ATTENTION = ("auto", "flash", "cudnn", "efficient", "math")


def attention_backend(name: str) -> contextlib.AbstractContextManager:
    """Restrict SDPA to one kernel (``auto``: PyTorch's own choice)."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION"}
    return sdpa_kernel(getattr(SDPBackend, backend.get(name, "MATH")))


def measure(
    config: GPTConfig, batch: int, accumulate: int, steps: int, warmup: int, compile: str | None, attention: str,
    precision: str, accelerator: str, loss_chunk: int = 0,
):  # fmt: skip
    """``compile``: None for eager, else a torch.compile mode ("default", "max-autotune-no-cudagraphs", ...)."""
    torch.manual_seed(1337)
    model = LitGPT(
        config, learning_rate=6e-4, min_lr=6e-5, warmup_steps=10, beta2=0.95, compile=compile == "default",
        loss_chunk_size=loss_chunk,
    )  # fmt: skip
    if compile not in (None, "default"):
        model.model.compile(mode=compile)  # in place, as LitGPT's own compile (which takes the default mode)
    timer = StepTimer(accumulate)
    trainer = L.Trainer(
        accelerator=accelerator, devices=1, precision=precision, max_steps=warmup + steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, gradient_clip_val=1.0,
        callbacks=[timer], num_sanity_val_steps=0, limit_val_batches=0, accumulate_grad_batches=accumulate,
    )  # fmt: skip
    loader = DataLoader(RandomTokens(batch, config.block_size, config.vocab_size), batch_size=None, pin_memory=True)
    with attention_backend(attention):
        trainer.fit(model, loader)
    times = timer.times[warmup - 1 :]  # the first steps include compilation and allocator warm-up
    ms = statistics.median(times) * 1e3
    tokens = batch * accumulate * config.block_size
    flops = model.model.flops_per_token(config.block_size) * tokens / (ms / 1e3)
    device = trainer.strategy.root_device
    dtype = torch.bfloat16 if "bf16" in precision else torch.float32
    peak = peak_flops(device, dtype)
    memory = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    return ms, tokens / ms * 1e3, flops, peak, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--compile-mode", default="default", help="torch.compile mode: default, max-autotune-no-cudagraphs, ..."
    )
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps, after the warm-up")
    parser.add_argument("--warmup", type=int, default=10, help="untimed first steps (compilation happens here)")
    parser.add_argument(
        "--batch", default="12", help="sequences of 1024 tokens per micro-batch (nanoGPT: 12); a list, e.g. 32,64"
    )
    parser.add_argument("--accumulate", type=int, default=1, help="micro-batches per optimizer step")
    parser.add_argument("--attention", default="auto", help=f"SDPA kernel(s), a list of {', '.join(ATTENTION)}")
    parser.add_argument(
        "--loss-chunk", default="0", help="LitGPT's loss_chunk_size(s), a list; 0 computes the loss from full logits"
    )
    parser.add_argument("--precision", default="bf16-mixed")
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU, to check the script")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    chunks = [int(c) for c in args.loss_chunk.split(",")]
    attentions = args.attention.split(",")
    if bad := [a for a in attentions if a not in ATTENTION]:
        parser.error(f"--attention {','.join(bad)}: choose from {', '.join(ATTENTION)}")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # as lit-gpt's CLI does
    config = TINY if args.tiny else GPT2
    accelerator = "cpu" if args.tiny or not torch.cuda.is_available() else "gpu"
    device_name = torch.cuda.get_device_name() if accelerator == "gpu" else platform.processor() or "CPU"
    lines = [
        f"- {'tiny test model' if args.tiny else 'GPT-2 124M'} ({config.n_layer}L/{config.n_head}H/{config.n_embd}, "
        f"block {config.block_size}, vocab {config.vocab_size}), {args.precision}, AdamW (fused on CUDA), clip 1.0, "
        f"synthetic tokens; median of {args.steps} optimizer steps after {args.warmup} warm-up steps; {device_name}",
        "",
        "| micro-batch x block x accumulation | torch.compile | attention | loss chunk | ms/step | tokens/s "
        "| model TFLOP/s | MFU | peak memory |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    compiles = {"off": [None], "on": [args.compile_mode], "both": [None, args.compile_mode]}[args.compile]
    for batch, compile, attention, chunk in itertools.product(batches, compiles, attentions, chunks):
        ms, tps, flops, peak, memory = measure(
            config,
            batch,
            args.accumulate,
            args.steps,
            args.warmup,
            compile,
            attention,
            args.precision,
            accelerator,
            chunk,
        )
        mfu = f"**{flops / peak:.1%}**" if peak else "n/a"
        mem = f"{memory:.1f} GiB" if memory is not None else "n/a"
        shape = f"{batch} x {config.block_size} x {args.accumulate}"
        lines.append(
            f"| {shape} | {compile or 'off'} | {attention} | {chunk or 'off'} | {ms:.2f} | {tps:,.0f} "
            f"| {flops / 1e12:.1f} | {mfu} | {mem} |"
        )
        print(lines[-1], flush=True)
    lines += [
        "",
        "MFU = 6N + 12LT FLOPs per token (PaLM appendix B, as nanoGPT) x tokens/s / the device's dense bf16 peak "
        "(Lightning's table for GPUs; a measured matmul on a CPU). nanoGPT on an A100 40GB: ~250 ms/iter without "
        "compile, ~135 ms/iter with it, at this batch.",
    ]
    print("\n".join(lines))
    if args.write:
        when = datetime.date.today().isoformat()
        machine = f"{device_name}, torch {torch.__version__}"
        cmd = "python scripts/bench_gpt2.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        write_section(
            "GPT-2 124M training speed" + (" (tiny CPU check)" if args.tiny else ""), when, machine, cmd, lines
        )


if __name__ == "__main__":
    main()
