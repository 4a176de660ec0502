"""Generation speed: new tokens/s for 500 tokens with and without the KV cache, and time to first token, for the
model shapes of the two Shakespeare configs, interleaved in one process.

    python scripts/bench_generate.py [--tokens 500] [--device cpu] [--no-compile] [--write]

Without the cache, every step re-reads the last block_size tokens: that is nanoGPT's ``generate`` algorithm, run by
lit-gpt's model; nanoGPT's own ``generate`` and model (``scripts/nanogpt_reference.py``) run in the same rounds, the
baseline. Weights are random (the same in both models): speed depends on the shapes, not on what the model learned.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import nanogpt_reference  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.cpu_matmul import onednn_wanted, use_onednn_linears  # noqa: E402
from lit_gpt.generate import generate_tokens  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402

SHAPES = {
    "shakespeare_char_cpu (4L/4H/128, block 64)": dict(block_size=64, n_layer=4, n_head=4, n_embd=128),
    "shakespeare_char (6L/6H/384, block 256)": dict(block_size=256, n_layer=6, n_head=6, n_embd=384),
}


def time_generation(model: GPT, tokens: int, use_cache: bool, device: str) -> dict[str, float]:
    """Tokens/s and time to first token for one 500-token sample from a one-token prompt."""
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    return timed(
        generate_tokens(model, idx, tokens, temperature=1.0, top_k=200, use_cache=use_cache, generator=generator),
        tokens,
        device,
    )


def time_nanogpt(model: nanogpt_reference.GPT, tokens: int, device: str) -> dict[str, float]:
    """The same for nanoGPT's own ``generate``."""
    idx = torch.zeros((1, 1), dtype=torch.long, device=device)
    generator = torch.Generator(device=device).manual_seed(0)
    return timed(nanogpt_reference.generate(model, idx, tokens, top_k=200, generator=generator), tokens, device)


def timed(stream, tokens: int, device: str) -> dict[str, float]:
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0 = time.perf_counter()
    first = None
    for i, _ in enumerate(stream):
        if i == 0:
            sync()
            first = time.perf_counter() - t0
    sync()
    elapsed = time.perf_counter() - t0
    return {"tokens_per_sec": tokens / elapsed, "ttft_ms": first * 1e3}


def bench(tokens: int, device: str, rounds: int, compile: bool) -> tuple[list[str], dict[str, float]]:
    """The table's lines, and each model's compile time (the first, untimed sample of the compiled model)."""
    lines = [
        "| model | KV cache | tokens/s | time to first token | over nanoGPT's own, this run |",
        "|---|---|---|---|---|",
    ]
    compile_seconds = {}
    for name, shape in SHAPES.items():
        torch.manual_seed(0)
        config = GPTConfig(vocab_size=65, dropout=0.0, bias=False, **shape)
        model = GPT(config).to(device).eval()
        theirs = nanogpt_reference.GPT(nanogpt_reference.GPTConfig(vocab_size=65, bias=False, **shape)).to(device)
        theirs.load_state_dict(model.state_dict())
        theirs.eval()
        if onednn_wanted("auto", device):  # as `lit-gpt generate` does (its big matmuls: the prompt's)
            use_onednn_linears(model)
        runs = {"cache": (model, True), "no cache": (model, False)}
        runs["cache, bfloat16"] = (copy.deepcopy(model).to(torch.bfloat16), True)  # `generate --dtype bfloat16`
        if compile:  # `lit-gpt generate --compile`: a copy, so the eager rows stay eager
            compiled = copy.deepcopy(model)
            compiled.compile()
            start = time.perf_counter()
            time_generation(compiled, tokens, True, device)  # compiles the prompt, one-token and slide steps
            compile_seconds[name] = time.perf_counter() - start
            runs["cache, compiled"] = (compiled, True)
        results: dict[str, list[dict[str, float]]] = {c: [] for c in [*runs, "nanoGPT"]}
        time_generation(model, 20, True, device)  # warm-up: allocator, thread pool
        for _ in range(rounds):  # interleaved, so all see the same machine
            for c, (m, use_cache) in runs.items():
                results[c].append(time_generation(m, tokens, use_cache, device))
            results["nanoGPT"].append(time_nanogpt(theirs, tokens, device))
        med = {
            c: {k: statistics.median(r[k] for r in results[c]) for k in ("tokens_per_sec", "ttft_ms")} for c in results
        }
        labels = {
            "cache": "yes",
            "cache, compiled": "yes, `--compile`",
            "cache, bfloat16": "yes, `--dtype bfloat16`",
            "no cache": "no (nanoGPT's algorithm)",
            "nanoGPT": "nanoGPT's own `generate`",
        }
        for c, label in labels.items():
            if c not in med:
                continue
            speedup = med["nanoGPT"]["tokens_per_sec"] / med[c]["tokens_per_sec"]
            lines.append(
                f"| {name} | {label} | {med[c]['tokens_per_sec']:,.0f} | {med[c]['ttft_ms']:.1f} ms | "
                f"{f'**{1 / speedup:.1f}x**' if c != 'nanoGPT' else ''} |"
            )
    return lines, compile_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=True, help="also time a compiled model"
    )
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cold:  # compile times as a fresh install sees them, not from a warm cache
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold
        lines, compile_seconds = bench(args.tokens, args.device, args.rounds, args.compile)
    lines.append("")
    lines.append(f"{args.tokens} new tokens, batch 1, top-k 200, median of {args.rounds} interleaved rounds.")
    if compile_seconds:
        spent = ", ".join(f"{s:.0f} s ({name.split(' ')[0]})" for name, s in compile_seconds.items())
        lines.append(
            f"Compiling is not in the tokens/s: the first sample of the compiled model took {spent}, "
            "from an empty compile cache."
        )
    print("\n".join(lines))
    if args.write:
        host = machine(str(args.device))
        cmd = "python scripts/bench_generate.py " + " ".join(sys.argv[1:])
        write_section(f"Generation speed ({args.device})", datetime.date.today().isoformat(), host, cmd, lines)


if __name__ == "__main__":
    main()
