"""Preparation throughput on a ~100 MB text corpus, and what data loading costs a training step.

The corpus is the built-in Shakespeare repeated to ~100 MB (one .txt file, read line by line). For each tokenizer,
``prepare`` (load_dataset -> datasets.map(num_proc) -> token files) is compared with a plain single-process loop
over the same tokenizer (encode line by line, write the ids), in the same run. Each measurement runs in a fresh
child process, so its peak RSS (the process and its tokenizing children) is its own.

- ``bpe``: a byte-level BPE of 8192 tokens (HF tokenizers), trained on the plays beforehand.
- ``gpt2-style``: tiktoken's engine (what the ``gpt2`` tokenizer runs) with GPT-2's regex, over the merges of a
  16,384-token BPE trained on the plays: GPT-2's own files cannot be downloaded here.

    python scripts/bench_prepare.py [--mb 100] [--num_proc 2] [--rounds 2] [--write]
"""

from __future__ import annotations

import argparse
import array
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiktoken_from_hf(path: Path):
    """A tiktoken Encoding with the merges of a byte-level HF BPE (its token ids are its merge ranks; the byte
    alphabet below is GPT-2's, which HF's ByteLevel uses too)."""
    import tiktoken

    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    unicode_to_byte = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    spec = json.loads(path.read_text())
    special = {t["content"] for t in spec["added_tokens"]}
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if t not in special}
    ranks = {bytes(unicode_to_byte[ch] for ch in tok): i for tok, i in vocab.items()}
    return tiktoken.Encoding("gpt2-style", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={"<|endoftext|>": 0})  # fmt: skip


def make_tokenizer(kind: str, work: Path):
    from lit_gpt.bpe import GPT2Tokenizer, HFTokenizer

    if kind == "bpe":
        return HFTokenizer.from_file(work / "bpe8192.json")
    return GPT2Tokenizer(tiktoken_from_hf(work / "bpe16384.json"))


def child(mode: str, kind: str, work: Path, num_proc: int) -> dict:
    """One measurement, in this (fresh) process."""
    import numpy as np

    from lit_gpt.prepare import prepare

    corpus = work / "corpus.txt"
    tok = make_tokenizer(kind, work)
    import datasets  # imported before the clock starts, like the loop's tokenizer

    datasets.disable_progress_bars()
    t0 = time.perf_counter()
    if mode == "loop":
        ids = array.array("I")  # compact, unlike a list of Python ints
        with open(corpus, encoding="utf-8") as f:
            for line in f:
                ids.extend(tok.encode(line))
        np.frombuffer(ids, dtype=np.uint32).astype(np.uint16).tofile(work / f"loop-{kind}.bin")
        n = len(ids)
    else:
        cache = Path(tempfile.mkdtemp(dir=work))  # fresh: nothing prepared, nothing in datasets' cache
        out = prepare(str(corpus), tok, cache, 0.1, num_proc=num_proc if mode == "prepare" else 1)
        meta = json.loads((out / "meta.json").read_text())
        n = meta["tokens"]["train"] + meta["tokens"]["val"]
    seconds = time.perf_counter() - t0
    # VmHWM, not getrusage(RUSAGE_SELF): Linux carries ru_maxrss over exec, so it would report the parent's peak.
    hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # datasets' forked tokenizing processes
    cpu = sum(
        r.ru_utime + r.ru_stime for r in map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    )
    return {"seconds": seconds, "cpu_seconds": cpu, "tokens": n, "peak_rss_mb": max(hwm, workers) / 1024}


def loading_overhead() -> dict:
    """Micro-batches from the memory map alone vs a full training step of the CPU config (4L/4H/128, block 64,
    batch 12, AdamW), in one process."""
    import torch

    from lit_gpt.data import RandomWindows, Share, prepare
    from lit_gpt.model import GPT, GPTConfig

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        prepared = prepare("shakespeare", "char", d)
        path = prepared / "train.bin"
        vocab = len(json.loads((prepared / "meta.json").read_text())["tokenizer"]["chars"])
        loader = torch.utils.data.DataLoader(RandomWindows(path, "uint16", Share(64, 12, seed=1)), batch_size=None)
        it = iter(loader)
        model = GPT(
            GPTConfig(vocab_size=vocab, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False)
        )
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
        batches = [next(it) for _ in range(20)]

        def step(x, y):
            _, loss = model(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        for x, y in batches[:10]:
            step(x, y)  # warm-up
        load_s, step_s = [], []
        for _ in range(5):  # interleaved rounds: the machine is noisy
            t0 = time.perf_counter()
            fetched = [next(it) for _ in range(200)]
            load_s.append((time.perf_counter() - t0) / 200)
            t0 = time.perf_counter()
            for x, y in fetched[:40]:
                step(x, y)
            step_s.append((time.perf_counter() - t0) / 40)
        it = iter(RandomWindows(path, "uint16", Share(1024, 12, seed=1)))  # GPT-2-sized windows: 12 x 1025 tokens
        t0 = time.perf_counter()
        for _ in range(500):
            next(it)
        big_s = (time.perf_counter() - t0) / 500
    load, step_t = min(load_s), min(step_s)
    return {"load_ms": load * 1e3, "step_ms": step_t * 1e3, "share": load / step_t, "load_1024_ms": big_s * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--num_proc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions; the best of each is kept")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "KIND", "WORK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, kind, work = args.child
        print(json.dumps(child(mode, kind, Path(work), args.num_proc)))
        return

    from lit_gpt.bpe import BPETokenizer
    from lit_gpt.corpus import shakespeare_text

    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        plays = shakespeare_text()
        repeats = max(1, round(args.mb * 1e6 / len(plays.encode())))
        with open(work / "corpus.txt", "w", encoding="utf-8") as f:
            for _ in range(repeats):
                f.write(plays)
        size_mb = (work / "corpus.txt").stat().st_size / 1e6
        for vocab in (8192, 16384):
            BPETokenizer.train([plays], vocab).save_pretrained(work / f"bpe{vocab}.json")
        results: dict[str, dict[str, dict]] = {}
        load_before = os.getloadavg()[0]
        for _ in range(args.rounds):  # interleaved rounds, best of each: the machine is shared and noisy
            for kind in ("bpe", "gpt2-style"):
                for mode in ("loop", "prepare", "prepare1"):
                    cmd = [sys.executable, __file__, "--num_proc", str(args.num_proc), "--child", mode, kind, str(work)]
                    env = {**os.environ, "OMP_NUM_THREADS": "1"}
                    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if r.returncode:
                        sys.exit(r.stderr)
                    res = json.loads(r.stdout.strip().splitlines()[-1])
                    best = results.setdefault(kind, {}).get(mode)
                    if best is None or res["seconds"] < best["seconds"]:
                        results[kind][mode] = res
                    print(f"{kind:11s} {mode:9s} {size_mb / res['seconds']:6.2f} MB/s  {res['seconds']:6.1f} s  "
                          f"{res['cpu_seconds']:6.1f} CPU s  {res['tokens']:,} tokens  "
                          f"peak RSS {res['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
        for kind, r in results.items():
            assert r["loop"]["tokens"] == r["prepare"]["tokens"] == r["prepare1"]["tokens"], f"{kind}: counts differ"
    load_after = os.getloadavg()[0]
    overhead = loading_overhead()
    print(json.dumps(overhead))

    lines = [
        f"Corpus: the built-in Shakespeare repeated {repeats}x = {size_mb:.0f} MB, one `.txt` file (read into a "
        "`datasets.Dataset` in ~1 MB runs of lines). `prepare` = `lit_gpt.prepare.prepare`: that, then "
        f"`datasets.map(batched=True, num_proc={args.num_proc})`, then the token files; `loop` = a plain "
        "single-process loop encoding line by line, then writing the ids (`prepare` encodes "
        "~4 kB pieces cut at line breaks: the same tokens). Each row is the best of "
        f"{args.rounds} interleaved runs, each in a fresh process; peak RSS is the largest of the process and its "
        "tokenizing children.",
        "",
        f"Load average (other jobs on this shared machine): {load_before:.1f} at the start, {load_after:.1f} at the "
        "end; CPU seconds (the process and its children) do not depend on it.",
        "",
        "| tokenizer | path | MB/s | seconds | CPU seconds | tokens | peak RSS | speed-up vs loop |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {"loop": "plain loop", "prepare": f"prepare, num_proc={args.num_proc}", "prepare1": "prepare, num_proc=1"}
    for kind, r in results.items():
        for mode, res in r.items():
            lines.append(
                f"| {kind} | {names[mode]} | {size_mb / res['seconds']:.2f} | {res['seconds']:.1f} | "
                f"{res['cpu_seconds']:.1f} | "
                f"{res['tokens']:,} | {res['peak_rss_mb']:.0f} MB | {r['loop']['seconds'] / res['seconds']:.2f}x |"
            )
    lines += [
        "",
        "`bpe`: byte-level BPE, 8192 tokens, HF `tokenizers`. `gpt2-style`: tiktoken (the engine of the `gpt2` "
        "tokenizer) with GPT-2's regex over a 16,384-token BPE trained on the plays (GPT-2's own files cannot be "
        "downloaded on this machine).",
        "",
        "Training-time data loading, CPU config (4L/4H/128, block 64, batch 12, fp32, AdamW), best of 5 interleaved "
        f"rounds: a micro-batch from the memory map takes {overhead['load_ms']:.3f} ms, a full training step "
        f"{overhead['step_ms']:.1f} ms: loading adds **{100 * overhead['share']:.2f}%** to the step. "
        f"GPT-2-sized windows (12 x 1025 tokens) take {overhead['load_1024_ms']:.3f} ms per micro-batch.",
    ]
    print("\n".join(lines))
    if args.write:
        from benchmarks_doc import machine, write_section

        write_section(
            "Data preparation throughput",
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            machine(f"Python {platform.python_version()}"),
            f"python scripts/bench_prepare.py --mb {args.mb} --num_proc {args.num_proc} --rounds {args.rounds} --write",
            lines,
        )


if __name__ == "__main__":
    main()
