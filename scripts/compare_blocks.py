"""The modern block (rotary embeddings, RMSNorm, SwiGLU) against GPT-2's, on the CPU config: equal parameter count
(the same steps) and equal wall time, several seeds; writes docs/modern_block.md and docs/modern_block.png.

    python scripts/compare_blocks.py [--steps 1000] [--seeds 3] [--data.source PATH] [--logdir runs]

Both variants go through ``lit-gpt fit`` in this process: ``configs/shakespeare_char_cpu.yaml`` (GPT-2's block) and
``configs/modern_cpu.yaml`` (the same with the modern block; its SwiGLU MLP is 8/3 x wide so the parameter counts
match). Runs are interleaved (GPT-2, modern, GPT-2, ...) so a busy machine slows both alike. The equal-wall-time
runs give the modern block the steps it can take in the mean wall time of the GPT-2 runs (its learning-rate
schedule shortened or stretched to match). Every run logs to one TensorBoard folder:

    tensorboard --logdir runs/compare_blocks
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.lightning_cli import fit_cli  # noqa: E402

TINYSHAKESPEARE = ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"
CONFIGS = {"gpt2": ROOT / "configs" / "shakespeare_char_cpu.yaml", "modern": ROOT / "configs" / "modern_cpu.yaml"}
LABELS = {"gpt2": "GPT-2 block", "modern": "modern block", "modern_time": "modern block, equal wall time"}


def train(variant: str, seed: int, steps: int, source: str, logdir: str, version: str) -> dict:
    config = CONFIGS["gpt2" if variant == "gpt2" else "modern"]
    args = [
        "--config", str(config), "--data.source", source, "--seed_everything", str(seed),
        "--trainer.max_steps", str(steps), "--model.lr_decay_steps", str(steps),
        "--trainer.val_check_interval", str(min(100, steps)),
        "--trainer.logger.init_args.save_dir", logdir, "--trainer.logger.init_args.name", "compare_blocks",
        "--trainer.logger.init_args.version", version, "--trainer.enable_progress_bar", "false",
        "--trainer.enable_model_summary", "false", "--trainer.enable_checkpointing", "false",
        "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
    ]  # fmt: skip
    cli = fit_cli(args, run=False)
    start = time.perf_counter()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    wall = time.perf_counter() - start
    data = cli.datamodule
    tokens = cli.trainer.global_step * data.batch_size * cli.model.config.block_size
    return {
        "variant": variant,
        "seed": seed,
        "steps": cli.trainer.global_step,
        "wall": wall,
        "tokens_per_sec": tokens / wall,
        "val": float(cli.trainer.callback_metrics["val/loss"]),
        "params": cli.model.model.num_params(),
        "dir": Path(cli.trainer.logger.log_dir),
    }


def probe_step_times(rounds: int = 5, steps: int = 30) -> dict[str, float]:
    """Median seconds per training step of each block (forward, backward, AdamW; the CPU config's batch), from
    rounds that alternate the two models in one process: a fairer speed ratio than whole runs on a busy machine."""
    import yaml

    from lit_gpt.model import GPT, GPTConfig
    from lit_gpt.optim import configure_adamw

    models, times = {}, {"gpt2": [], "modern": []}
    for name, path in CONFIGS.items():
        cfg = yaml.safe_load(path.read_text())
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, **cfg["model"]["config"]))
        models[name] = (model, configure_adamw(model, 1e-3, 0.1, (0.9, 0.99)), cfg["data"]["batch_size"])
    for _ in range(rounds):
        for name, (model, opt, batch) in models.items():
            x = torch.randint(0, 65, (batch, model.config.block_size))
            for i in range(steps + 3):
                if i == 3:  # after a few warm-up steps
                    start = time.perf_counter()
                _, loss = model(x, x)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def probe_sentence(t: dict[str, float]) -> str:
    return (
        f"An interleaved probe of the training step alone (`--probe_only`: forward, backward and AdamW, median of "
        f"5 alternating rounds of 30 steps, 1 process) takes {t['gpt2'] * 1e3:.1f} ms for the GPT-2 block and "
        f"{t['modern'] * 1e3:.1f} ms for the modern block: {t['modern'] / t['gpt2']:.2f}x."
    )


def curves(run_dir: Path) -> dict[str, list[tuple[int, float, float]]]:
    """(step, seconds since the run's first event, value) per scalar tag."""
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    out = {}
    for tag in ("train/loss", "val/loss"):
        events = acc.Scalars(tag)
        t0 = min(e.wall_time for e in acc.Scalars("train/loss"))
        out[tag] = [(e.step, e.wall_time - t0, e.value) for e in events]
    return out


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {"gpt2": "tab:blue", "modern": "tab:orange", "modern_time": "tab:green"}
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    seen = set()
    for r in runs:
        c = curves(r["dir"])
        label = LABELS[r["variant"]] if r["variant"] not in seen else None
        seen.add(r["variant"])
        color = colors[r["variant"]]
        if r["variant"] != "modern_time":
            steps, _, loss = zip(*c["train/loss"], strict=True)
            k = 10  # a running mean over 10 logged points (100 steps) makes the curves readable
            smooth = [statistics.fmean(loss[max(0, i - k + 1) : i + 1]) for i in range(len(loss))]
            axes[0].plot(steps, smooth, color=color, alpha=0.8, label=label)
            vs, _, vl = zip(*c["val/loss"], strict=True)
            axes[1].plot(vs, vl, color=color, marker="o", ms=3, alpha=0.8, label=label)
        _, vt, vl = zip(*c["val/loss"], strict=True)
        axes[2].plot(vt, vl, color=color, marker="o", ms=3, alpha=0.8, label=label)
    axes[0].set(title="train loss (equal parameters, same steps)", xlabel="step", ylabel="loss")
    axes[1].set(title="val loss (equal parameters, same steps)", xlabel="step", ylabel="val loss")
    axes[2].set(title="val loss against wall time", xlabel="seconds", ylabel="val loss")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    for ax in axes[1:]:
        ax.set_ylim(top=min(3.0, ax.get_ylim()[1]))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def mean_std(values: list[float], fmt: str) -> str:
    if len(values) < 2:
        return format(values[0], fmt)
    return f"{format(statistics.fmean(values), fmt)} ± {format(statistics.stdev(values), fmt)}"


def write_doc(runs: list[dict], out: Path, png: Path, steps: int, source: str, probe: str) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    by = {v: [r for r in runs if r["variant"] == v] for v in LABELS}
    gpt2_val = statistics.fmean(r["val"] for r in by["gpt2"])
    modern_val = statistics.fmean(r["val"] for r in by["modern"])
    speed = statistics.fmean(r["tokens_per_sec"] for r in by["modern"]) / statistics.fmean(
        r["tokens_per_sec"] for r in by["gpt2"]
    )
    lines = [
        "# The modern block, measured",
        "",
        "GPT-2's block (learned position embeddings, LayerNorm, a GELU MLP) against a modern one, as in LLaMA: rotary",
        "position embeddings (RoPE), RMSNorm and a SwiGLU MLP. The switches are `GPTConfig.position`, `norm` and",
        "`mlp` (plus `qk_norm`, off here); `configs/modern_cpu.yaml` is `configs/shakespeare_char_cpu.yaml` with",
        "them on. The SwiGLU MLP is 344 wide (8/3 x 128, rounded up to a multiple of 8) so the two models have the",
        f"same parameter count to 0.5% ({by['gpt2'][0]['params']:,} and {by['modern'][0]['params']:,}, not",
        "counting the GPT-2 block's 8,192 position-embedding weights).",
        "",
        f"Generated by `python scripts/compare_blocks.py --steps {steps} --seeds {len(by['gpt2'])}` on {now}: data",
        f"`{source}`, {platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
        f"{torch.get_num_threads()} torch thread(s), torch {torch.__version__}, load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        f"**{steps} steps, not the config's 2000**, to fit the CPU budget (the learning-rate decay is shortened to",
        "match); val loss is the config's 20 validation batches at the last step; tokens/s is training tokens over",
        "the whole `fit` wall time (validation included). On a shared machine whole-run wall times swing several",
        "fold between runs of one variant; the interleaved probe below is the fairer speed ratio.",
        "",
        "![loss curves](modern_block.png)",
        "",
        "| run | seed | steps | val loss | wall time | tokens/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {LABELS[r['variant']]} | {r['seed']} | {r['steps']} | {r['val']:.4f} | {r['wall']:.1f} s "
            f"| {r['tokens_per_sec']:,.0f} |"
        )
    lines += ["", "| variant | runs | val loss (mean ± std) | wall time | tokens/s |", "|---|---|---|---|---|"]
    for v, rs in by.items():
        if rs:
            val, wall = mean_std([r["val"] for r in rs], ".4f"), mean_std([r["wall"] for r in rs], ".1f")
            speed_v = mean_std([r["tokens_per_sec"] for r in rs], ",.0f")
            lines.append(f"| {LABELS[v]} | {len(rs)} | {val} | {wall} s | {speed_v} |")
    time_val = statistics.fmean(r["val"] for r in by["modern_time"]) if by["modern_time"] else float("nan")
    lines += [
        "",
        f"At equal parameters and steps the modern block ends {gpt2_val - modern_val:+.4f} in val loss below the",
        f"GPT-2 block (mean of the seeds; positive is better), and trains at {speed:.2f}x its tokens/s. Given the",
        f"GPT-2 runs' wall time instead, it reaches {time_val:.4f} against {gpt2_val:.4f}.",
        "",
        probe,
        "",
        "Every curve is in one TensorBoard folder: `tensorboard --logdir runs/compare_blocks` (`train/loss`,",
        "`val/loss`, `train/tokens_per_sec`; one run per `<variant>-seed<n>`).",
    ]
    out.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_source = str(TINYSHAKESPEARE) if TINYSHAKESPEARE.exists() else "shakespeare"
    parser.add_argument("--data.source", dest="source", default=default_source, help="corpus (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=1000, help="training steps of the equal-parameter runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--logdir", default=str(ROOT / "runs"), help="TensorBoard runs go to LOGDIR/compare_blocks")
    parser.add_argument("--out", default=str(ROOT / "docs" / "modern_block.md"))
    parser.add_argument("--probe_only", action="store_true", help="only print the interleaved step-time probe")
    args = parser.parse_args()
    if args.probe_only:
        print(probe_sentence(probe_step_times()))
        return
    seeds = [1337 + i for i in range(args.seeds)]
    runs = []
    for seed in seeds:  # interleaved, so load from other jobs falls on both variants alike
        for variant in ("gpt2", "modern"):
            r = train(variant, seed, args.steps, args.source, args.logdir, f"{variant}-seed{seed}")
            print(f"{variant} seed {seed}: val {r['val']:.4f}, {r['wall']:.1f} s, {r['tokens_per_sec']:,.0f} tok/s")
            runs.append(r)
    # Equal wall time: the steps the modern block takes in the GPT-2 runs' mean time, at its measured step time.
    gpt2_wall = statistics.fmean(r["wall"] for r in runs if r["variant"] == "gpt2")
    modern_step = statistics.fmean(r["wall"] / r["steps"] for r in runs if r["variant"] == "modern")
    time_steps = max(1, round(gpt2_wall / modern_step))
    print(f"equal wall time: {gpt2_wall:.1f} s is {time_steps} modern steps")
    for seed in seeds:
        r = train("modern_time", seed, time_steps, args.source, args.logdir, f"modern_equal_time-seed{seed}")
        print(f"modern (equal time) seed {seed}: val {r['val']:.4f}, {r['wall']:.1f} s")
        runs.append(r)
    out = Path(args.out)
    png = out.with_suffix(".png")
    plot(runs, png)
    source = args.source
    if Path(source).resolve() == TINYSHAKESPEARE.resolve():
        source = "tinyshakespeare.txt"
    write_doc(runs, out, png, args.steps, source, probe_sentence(probe_step_times()))
    print(f"wrote {out} and {png}")


if __name__ == "__main__":
    main()
