"""lit-gpt beside Lightning-AI's litgpt on this machine: the CPU config trained end to end by each project's own
training loop, and KV-cached generation, in one run.

litgpt is not a dependency of lit-gpt. Install it beside lit-gpt without its pins (its huggingface-hub<1.4 would
downgrade what datasets uses; the parts run here, its model, ``pretrain`` loop and ``generate``, need only torch and
lightning):

    pip install --no-deps litgpt==0.5.13 psutil
    python scripts/bench_litgpt.py --source ../shared/data/tinyshakespeare.txt [--rounds 2] [--write]

Training: nanoGPT's CPU config (4 layers, 4 heads, 128 wide, block 64, batch 12, 2000 steps, lr 1e-3 to 1e-4 after
100 warm-up steps, AdamW betas (0.9, 0.99), weight decay 0.1, clip 1.0, fp32, validation every 250 steps on 20
batches) as one architecture both can build: litgpt has no learned position embeddings, so both use rotary ones,
with LayerNorm, a GELU MLP, tied embeddings and no biases. Both see the same batches: lit-gpt's windows for the
seed, fed to litgpt's loop by a litgpt ``DataModule``, and the same validation batches. litgpt's ``pretrain`` always
compiles the model, so lit-gpt runs with ``--model.compile true`` too (and without, for reference, and with GPT-2's
initialisation instead of the config's GPT-NeoX one, which litgpt's ``pretrain`` also uses). Every run is its
own process, started as a user would, and the two alternate. Each final model is also scored on the whole
validation split by one shared function.

Generation: new tokens/s with each project's KV-cached decoding, the same shapes (rotary), random weights,
interleaved in this process. litgpt cannot decode past block_size, so a sample is block_size - 1 tokens long.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from bench_cpu_run import tensorboard_scalars  # noqa: E402
from bench_generate import time_generation  # noqa: E402
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.data import FixedWindows, RandomWindows, Share  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402
from lit_gpt.prepare import prepare  # noqa: E402
from lit_gpt.tokenizer import Tokenizer  # noqa: E402

SHAPE = dict(n_layer=4, n_head=4, n_embd=128, block_size=64)  # nanoGPT's CPU config
BATCH, WARMUP, LR, MIN_LR, BETAS, EVAL_BATCHES = 12, 100, 1e-3, 1e-4, [0.9, 0.99], 20
GEN_SHAPES = {
    "shakespeare_char (6L/6H/384, block 256, vocab 65)": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "GPT-2 124M (12L/12H/768, block 1024, vocab 50304)": dict(
        n_layer=12, n_head=12, n_embd=768, block_size=1024, vocab_size=50304
    ),
}


def read_meta(folder: Path) -> dict:
    """A prepared corpus's meta.json, with its vocabulary size."""
    meta = json.loads((folder / "meta.json").read_text())
    return {**meta, "vocab_size": Tokenizer.from_dict(meta["tokenizer"]).vocab_size}


def litgpt_config(vocab_size: int, **shape):
    """litgpt's ``Config`` for lit-gpt's ``GPTConfig(position="rotary", bias=False)``."""
    from litgpt.config import Config

    return Config(
        name="lit-gpt-cpu", vocab_size=vocab_size, padded_vocab_size=vocab_size, bias=False, parallel_residual=False,
        norm_class_name="LayerNorm", mlp_class_name="GptNeoxMLP", intermediate_size=4 * shape["n_embd"],
        rotary_percentage=1.0, **shape,
    )  # fmt: skip


class AsRows(IterableDataset):
    """lit-gpt's (inputs, targets) batches as litgpt's (B, T + 1) token rows."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        for x, y in self.batches:
            yield torch.cat([x, y[:, -1:]], dim=1)


def run_litgpt(folder: Path, out: Path, steps: int, eval_every: int, seed: int) -> None:
    """One litgpt ``pretrain`` run (in its own process: see ``--litgpt-run``)."""
    import litgpt.pretrain
    from litgpt.args import EvalArgs, TrainArgs
    from litgpt.data import DataModule

    meta = read_meta(folder)

    @dataclass
    class Windows(DataModule):
        def connect(self, tokenizer=None, batch_size: int = BATCH, max_seq_length: int = 64) -> None:
            self.batch_size, self.block = batch_size, max_seq_length

        def train_dataloader(self) -> DataLoader:
            share = Share(block_size=self.block, batch_size=self.batch_size, seed=seed)
            return DataLoader(AsRows(RandomWindows(folder / "train.bin", meta["dtype"], share)), batch_size=None)

        def val_dataloader(self) -> DataLoader:
            val = FixedWindows(folder / "val.bin", meta["dtype"], self.block, self.batch_size, EVAL_BATCHES, seed, 0, 1)
            return DataLoader(AsRows(val), batch_size=None)

    # litgpt saves its hyper-parameters by re-parsing sys.argv as its own CLI: give it a command line it accepts.
    sys.argv = [sys.argv[0], "lit-gpt-cpu"]
    litgpt.pretrain.setup(
        "lit-gpt-cpu", model_config=litgpt_config(meta["vocab_size"], **SHAPE), out_dir=out, precision="32-true",
        data=Windows(), devices=1, logger_name="csv", seed=seed,
        train=TrainArgs(
            save_interval=None, log_interval=10, global_batch_size=BATCH, micro_batch_size=BATCH,
            max_tokens=steps * BATCH * SHAPE["block_size"], lr_warmup_steps=WARMUP, max_norm=1.0, min_lr=MIN_LR,
            tie_embeddings=True,
        ),
        eval=EvalArgs(interval=eval_every, max_iters=EVAL_BATCHES, initial_validation=False, final_validation=False),
        optimizer={"class_path": "torch.optim.AdamW", "init_args": {"lr": LR, "weight_decay": 0.1, "betas": BETAS}},
    )  # fmt: skip
    # Its final checkpoint pickles the DataLoader too: keep just the weights, loadable with weights_only=True.
    final = torch.load(out / "final" / "lit_model.pth", map_location="cpu", weights_only=False)
    torch.save(final["model"], out / "model.pt")


def cold_compile(folder: Path) -> dict[str, str]:
    """An environment whose torch.compile cache is empty: every run compiles from scratch, as a user's first run
    does (a warm cache would flatter whichever project ran before)."""
    return {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(folder / "inductor-cache")}


def train_litgpt(folder: Path, work: Path, steps: int, eval_every: int, seed: int) -> dict:
    out = work / f"litgpt-{time.monotonic_ns()}"
    cmd = [sys.executable, __file__, "--litgpt-run", str(out), "--folder", str(folder), "--steps", str(steps)]
    cmd += ["--eval-every", str(eval_every)]
    t0 = time.perf_counter()
    r = subprocess.run([*cmd, "--seed", str(seed)], capture_output=True, text=True, env=cold_compile(out))
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"litgpt's run failed:\n{r.stderr[-3000:]}")
    rows = list(csv.DictReader(open(next(out.rglob("metrics.csv")))))
    tps = [float(r["device/items_per_sec"]) for r in rows if r.get("device/items_per_sec")]
    val = [float(r["val_loss"]) for r in rows if r.get("val_loss")]
    state = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    return {"wall": wall, "tokens_per_sec": statistics.median(tps), "val": val[-1], "state": state}


def train_ours(source: str, work: Path, steps: int, eval_every: int, seed: int, extra: list[str]) -> dict:
    name = f"lit-gpt-{time.monotonic_ns()}"
    cmd = [
        sys.executable, "-m", "lit_gpt.cli", "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"),
        "--model.config.position", "rotary", "--data.source", source,
        "--data.cache_dir", str(work / "data"), "--seed_everything", str(seed), "--data.seed", str(seed),
        "--trainer.max_steps", str(steps), "--model.lr_decay_steps", str(steps),
        "--trainer.val_check_interval", str(eval_every),
        "--trainer.logger.init_args.save_dir", str(work), "--trainer.logger.init_args.name", name,
        "--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0", *extra,
    ]  # fmt: skip
    t0 = time.perf_counter()
    env = {**cold_compile(work / name)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"lit-gpt's run failed:\n{r.stderr[-3000:]}")
    scalars = tensorboard_scalars(work / name / "version_0")
    ckpt = torch.load(next((work / name).rglob("last.ckpt")), map_location="cpu", weights_only=True)
    state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    return {
        "wall": wall,
        "tokens_per_sec": statistics.median(v for _, v in scalars["train/tokens_per_sec"]),
        "val": scalars["val/loss"][-1][1],
        "state": state,
    }


@torch.no_grad()
def full_val_loss(model: torch.nn.Module, tokens: np.ndarray, block: int) -> float:
    """Mean next-token cross-entropy over every token of the split, in consecutive windows of ``block``."""
    model.eval()
    n = (len(tokens) - 1) // block
    data = torch.from_numpy(tokens[: n * block + 1].astype(np.int64))
    x, y = data[:-1].view(n, block), data[1:].view(n, block)
    total = 0.0
    for i in range(0, n, 256):
        logits = model(x[i : i + 256])
        logits = logits[0] if isinstance(logits, tuple) else logits
        total += F.cross_entropy(logits.flatten(0, 1), y[i : i + 256].flatten(), reduction="sum").item()
    return total / (n * block)


def ours_model(vocab: int, **shape) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab, position="rotary", bias=False, dropout=0.0, **shape))


def theirs_model(vocab: int, **shape):
    from litgpt.model import GPT as LitGPTModel

    return LitGPTModel(litgpt_config(vocab, **shape))


ARMS = {  # lit-gpt's fit options (None: litgpt's own run), and the table's label
    "litgpt": (None, "litgpt 0.5.13 `pretrain` (Fabric; always compiled)"),
    "ours-compiled": (["--model.compile", "true"], "lit-gpt `fit --model.compile true`"),
    "ours-eager": ([], "lit-gpt `fit` (not compiled)"),
    "ours-gpt2-init": (["--model.config.init", "gpt2"], "lit-gpt `fit --model.config.init gpt2` (not compiled)"),
}
COMPARED = ("litgpt", "ours-compiled")  # the table's closing ratio: always run


def parse_arms(text: str) -> tuple[str, ...]:
    """``--arms``: the training runs to make, comma-separated; litgpt's and lit-gpt's compiled ones always."""
    names = [a.strip() for a in text.split(",") if a.strip()]
    unknown = [a for a in names if a not in ARMS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {', '.join(unknown)}: choose from {', '.join(ARMS)}")
    return tuple(a for a in ARMS if a in names or a in COMPARED)


def bench_training(
    source: str, rounds: int, steps: int, eval_every: int, work: Path, arm_names: tuple[str, ...] = tuple(ARMS)
) -> list[str]:
    folder = prepare(source, "char", work / "data")
    meta = read_meta(folder)
    val_tokens = np.fromfile(folder / "val.bin", dtype=meta["dtype"])
    arms = {a: ARMS[a] for a in arm_names}
    runs: dict[str, list[dict]] = {arm: [] for arm in arms}
    for r in range(rounds):  # alternating, so each sees the same machine state
        for arm in list(arms) if r % 2 == 0 else list(arms)[::-1]:
            extra = arms[arm][0]
            if extra is None:
                result = train_litgpt(folder, work, steps, eval_every, 1337)
                model = theirs_model(meta["vocab_size"], **SHAPE)
            else:
                result = train_ours(source, work, steps, eval_every, 1337, extra)
                model = ours_model(meta["vocab_size"], **SHAPE)
            model.load_state_dict(result.pop("state"))
            result["full_val"] = full_val_loss(model, val_tokens, SHAPE["block_size"])
            runs[arm].append(result)
            print(arm, {k: round(v, 4) for k, v in result.items()}, flush=True)
    med = {arm: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for arm, rs in runs.items()}
    lines = [
        f"Training, {steps} steps, validating every {eval_every}, median of {rounds} runs each:",
        "",
        "| | wall time (whole process) | tokens/s (median of the run's log) | val loss (the same 20 batches) "
        "| val loss (whole split) |",
        "|---|---|---|---|---|",
    ]
    for arm, m in med.items():
        tps, val, full = f"{m['tokens_per_sec']:,.0f}", f"{m['val']:.4f}", f"{m['full_val']:.4f}"
        lines.append(f"| {arms[arm][1]} | {m['wall']:.1f} s | {tps} | {val} | {full} |")
    ratio = med["litgpt"]["wall"] / med["ours-compiled"]["wall"]
    speed = med["ours-compiled"]["tokens_per_sec"] / med["litgpt"]["tokens_per_sec"]
    lines += ["", f"Compiled against compiled: lit-gpt's run takes **{1 / ratio:.2f}x** litgpt's wall time, at "
              f"**{speed:.2f}x** its tokens/s."]  # fmt: skip
    return lines


def time_tokens(tokens) -> float:
    t0 = time.perf_counter()
    n = sum(1 for _ in tokens)
    return n / (time.perf_counter() - t0)


def generate_ours(model: GPT, new: int) -> float:
    """New tokens/s for one sample from a one-token prompt, with lit-gpt's KV-cached decoding."""
    return time_generation(model, new, use_cache=True, device="cpu")["tokens_per_sec"]


def generate_theirs(model, new: int) -> float:
    """The same with litgpt's (``generate_fn``: its KV cache, sampling and per-token loop), timed as
    bench_generate's ``time_generation`` times lit-gpt's: temperature 1, top-k 200."""
    from litgpt.generate.base import generate_fn

    model.set_kv_cache(batch_size=1)
    with torch.inference_mode():
        prompt = torch.zeros(1, dtype=torch.long)
        rate = time_tokens(
            generate_fn(model, prompt, new + 1, temperature=1.0, top_k=200, include_prompt=False, include_eos=False)
        )
    model.clear_kv_cache()
    return rate


def bench_generation(rounds: int, shapes: dict[str, dict]) -> list[str]:
    lines = ["| model (rotary, random weights) | new tokens | lit-gpt tokens/s | litgpt tokens/s | ratio |",
             "|---|---|---|---|---|"]  # fmt: skip
    for label, shape in shapes.items():
        shape = dict(shape)
        vocab = shape.pop("vocab_size", 65)
        torch.manual_seed(0)
        ours, theirs = ours_model(vocab, **shape).eval(), theirs_model(vocab, **shape).eval()
        new = shape["block_size"] - 1
        generate_ours(ours, 8), generate_theirs(theirs, 8)  # warm-up
        results: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(rounds):  # interleaved
            results["ours"].append(generate_ours(ours, new))
            results["theirs"].append(generate_theirs(theirs, new))
        a, b = statistics.median(results["ours"]), statistics.median(results["theirs"])
        lines.append(f"| {label} | {new} | {a:,.0f} | {b:,.0f} | **{a / b:.2f}x** |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", default=str(ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"))
    parser.add_argument("--rounds", type=int, default=2, help="runs of each training arm, alternating")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--eval-every", type=int, default=250, help="validate every N steps, on 20 batches")
    parser.add_argument("--gen-rounds", type=int, default=3)
    arms_help = f"training runs, comma-separated (default: {','.join(ARMS)}; litgpt and ours-compiled always run)"
    parser.add_argument("--arms", type=parse_arms, default=tuple(ARMS), help=arms_help)
    parser.add_argument("--quick", action="store_true", help="the smallest generation shape only (for the tests)")
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    parser.add_argument("--litgpt-run", type=Path, help=argparse.SUPPRESS)  # internal: one litgpt run
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=1337, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.litgpt_run:
        return run_litgpt(args.folder, args.litgpt_run, args.steps, args.eval_every, args.seed)
    try:
        import litgpt  # noqa: F401
    except ImportError:
        raise SystemExit("litgpt is not installed: pip install --no-deps litgpt==0.5.13 psutil") from None
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as work:
        lines = bench_training(args.source, args.rounds, args.steps, args.eval_every, Path(work), args.arms)
    shapes = dict(list(GEN_SHAPES.items())[:1]) if args.quick else GEN_SHAPES
    lines += ["", f"Generation with the KV cache, batch 1, top-k 200, median of {args.gen_rounds} interleaved rounds:",
              "", *bench_generation(args.gen_rounds, shapes)]  # fmt: skip
    print("\n".join(lines))
    if args.write:
        host = machine(f"litgpt {version('litgpt')}")
        cmd = "python scripts/bench_litgpt.py " + " ".join(a for a in sys.argv[1:] if a != "--write")
        setup = [" ".join(p.split()) for p in __doc__.split("\n\n")[3:5]]  # the Training and Generation paragraphs
        doc = [setup[0], "", setup[1], "", *lines]
        write_section("lit-gpt beside litgpt (cpu)", datetime.date.today().isoformat(), host, cmd, doc)


if __name__ == "__main__":
    main()
