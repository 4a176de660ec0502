"""Peak memory and step time of a training step with the loss computed in chunks (``--model.loss_chunk_size``) or
from the full logits (nanoGPT's way), on GPT-2 124M's shape: the case of finetuning GPT-2 on a laptop.

Each variant runs in its own process, since peak RSS is a high-water mark per process; the rounds are interleaved
so the machine's noise falls on every variant alike. Every variant steps the same model on the same batch, so the
losses must agree.

    python scripts/bench_loss_chunks.py                     # GPT-2 124M, batch 4 x 1024, chunk 0 (off) vs 1024 vs 4096
    python scripts/bench_loss_chunks.py --chunks 0,512,2048 --activation-checkpointing both --write
    python scripts/bench_loss_chunks.py --tiny              # a tiny model: checks the script works
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.model import GPT, GPTConfig  # noqa: E402
from lit_gpt.parallel import parallelize  # noqa: E402

GPT2 = GPTConfig(vocab_size=50304, block_size=1024, n_layer=12, n_head=12, n_embd=768, bias=False)
TINY = GPTConfig(vocab_size=4096, block_size=64, n_layer=2, n_head=2, n_embd=64, bias=False)


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run_variant(tiny: bool, batch: int, chunk: int, checkpointing: bool, steps: int) -> dict:
    """Train ``steps`` AdamW steps in this process; the step times, the loss and the peak RSS."""
    torch.manual_seed(0)
    config = TINY if tiny else GPT2
    model = GPT(config)
    model.loss_chunk_size = chunk
    parallelize(model, activation_checkpointing=checkpointing)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=False)
    x, y = torch.randint(0, config.vocab_size, (2, batch, config.block_size))
    before = rss_mib()  # the model's weights; AdamW's state comes with the first step, in every variant alike
    times, losses = [], []
    for _ in range(steps):
        start = time.perf_counter()
        _, loss = model(x, y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return {"times": times[1:], "losses": losses, "peak": rss_mib(), "weights": before}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="0,1024,4096", help="loss_chunk_size values; 0 is the full logits")
    parser.add_argument("--batch", type=int, default=4, help="windows of block_size tokens per step")
    parser.add_argument("--steps", type=int, default=3, help="steps per run; the first is warm-up")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of every variant")
    parser.add_argument("--activation-checkpointing", choices=["off", "on", "both"], default="off")
    parser.add_argument("--tiny", action="store_true", help="a tiny model, to check the script works")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.variant:
        chunk, checkpointing = json.loads(args.variant)
        print(json.dumps(run_variant(args.tiny, args.batch, chunk, checkpointing, args.steps)))
        return

    ac = {"off": [False], "on": [True], "both": [False, True]}[args.activation_checkpointing]
    variants = [(c, a) for a in ac for c in (int(v) for v in args.chunks.split(","))]
    load_start = os.getloadavg()[0]
    results: dict[tuple[int, bool], list[dict]] = {v: [] for v in variants}
    for _ in range(args.rounds):
        for variant in variants:
            command = [sys.executable, __file__, "--variant", json.dumps(variant), "--batch", str(args.batch)]
            command += ["--steps", str(args.steps)] + (["--tiny"] if args.tiny else [])
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[variant].append(json.loads(out.strip().splitlines()[-1]))

    config = TINY if args.tiny else GPT2
    shape = f"{config.n_layer}L/{config.n_head}H/{config.n_embd}, vocab {config.vocab_size}"
    lines = [
        f"- model {shape}; batch {args.batch} x {config.block_size} tokens; fp32 AdamW; {args.steps - 1} timed steps "
        f"after one warm-up, x {args.rounds} interleaved rounds, each variant in a fresh process",
        "",
        "| loss | activation checkpointing | peak RSS | of which above the weights | ms/step (median) | step time vs "
        "full logits | loss after the last step |",
        "|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for chunk, checkpointing in variants:
        runs = results[(chunk, checkpointing)]
        peak = statistics.median(r["peak"] for r in runs)
        above = statistics.median(r["peak"] - r["weights"] for r in runs)
        ms = 1000 * statistics.median(t for r in runs for t in r["times"])
        summary[(chunk, checkpointing)] = {"peak": peak, "above": above, "ms": ms, "loss": runs[0]["losses"][-1]}
    for (chunk, checkpointing), s in summary.items():
        ref = summary.get((0, checkpointing))
        ratio = f"{s['ms'] / ref['ms']:.2f}x" if ref else ""
        name = f"chunks of {chunk} tokens" if chunk else "full logits (nanoGPT)"
        lines.append(
            f"| {name} | {'on' if checkpointing else 'off'} | {s['peak']:,.0f} MiB | {s['above']:,.0f} MiB "
            f"| {s['ms']:,.0f} | {ratio} | {s['loss']:.5f} |"
        )
    lines += [
        "",
        f"Both ways do the same FLOPs. Read the memory columns: the step times come from few steps of a slow model "
        f"on a noisy machine (1-minute load average {load_start:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, on {os.cpu_count()} cores) and vary from run to run.",
    ]
    print("\n".join(lines))
    if args.write:
        today = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
        host = machine(f"{torch.get_num_threads()} threads")
        command = "python " + " ".join([Path(__file__).relative_to(ROOT).as_posix(), *sys.argv[1:]])
        write_section("Loss in chunks: peak memory (cpu)", today, host, command, lines)


if __name__ == "__main__":
    main()
