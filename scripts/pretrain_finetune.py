"""The lecture's closing exercise with numbers: does pretraining on a large corpus lower a small corpus's val loss?

    python scripts/pretrain_finetune.py [--seeds 3] [--pretrain-steps 2000] [--finetune-steps 300]
        [--pretrain-source shakespeare:-hamlet] [--finetune-source shakespeare:hamlet] [--logdir runs]

Per seed, through ``lit-gpt fit`` in this process:
1. pretrain: ``configs/shakespeare_char_cpu.yaml`` on every built-in play but Hamlet;
2. finetune: ``configs/finetune_hamlet.yaml`` from that checkpoint (``--model.init_from``) on Hamlet, with fewer
   steps and a third of the learning rate;
3. scratch: the pretraining config on Hamlet alone for the same number of steps (same tokenizer, architecture and
   validation windows);
4. pretrained only: the pretrained model evaluated on Hamlet, no finetuning.
All are scored on Hamlet's whole validation split (its last 10%, every token once: ``--data.val_batches 0``; set
``--val-batches N`` for N batches of random windows on a large corpus). Seeds change the
initialisation and dropout; the data order and validation windows stay fixed. Writes ``docs/pretrain_finetune.md``
(the table) and ``docs/pretrain_finetune.png`` (val curves), and TensorBoard runs side by side:

    tensorboard --logdir runs/pretrain_finetune

On a cluster, pretrain on a Hub corpus instead (e.g. ``--pretrain-source hf:NAME --tokenizer gpt2``, with a GPU
config via ``--pretrain-config``); the finetuning steps are the same.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lit_gpt.init_from import data_tokenizer  # noqa: E402
from lit_gpt.lightning_cli import fit_cli  # noqa: E402

ARMS = {
    "finetune": "pretrained, then finetuned",
    "scratch": "from scratch on the play",
    "pretrained": "pretrained, no finetuning",
}
QUIET = [
    "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
    "--sample.max_new_tokens", "0", "--throughput.measure_cpu_peak", "false",
]  # fmt: skip


def run(args: list[str], validate: bool = False) -> tuple[float, float]:
    """One ``lit-gpt fit`` (or validate) in this process; returns (final val loss, wall seconds)."""
    cli = fit_cli([*args, *QUIET], run=False)
    start = time.perf_counter()
    if validate:
        metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    else:
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        metrics = {k: v.item() for k, v in cli.trainer.callback_metrics.items()}
    return float(metrics["val/loss"]), time.perf_counter() - start


def curve(logdir: Path) -> list[tuple[int, float]]:
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("val/loss")] if "val/loss" in acc.Tags()["scalars"] else []


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--pretrain-steps", type=int, default=2000)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--eval-every", type=int, default=50, help="finetune/scratch validation interval (steps)")
    p.add_argument("--pretrain-source", default="shakespeare:-hamlet")
    p.add_argument("--finetune-source", default="shakespeare:hamlet")
    p.add_argument("--pretrain-config", default=str(ROOT / "configs" / "shakespeare_char_cpu.yaml"))
    p.add_argument("--finetune-config", default=str(ROOT / "configs" / "finetune_hamlet.yaml"))
    p.add_argument("--val-batches", type=int, default=0, help="small-corpus validation batches (0: the whole split)")
    p.add_argument("--tokenizer", default="char", help="the pretraining tokenizer (char, bpe, gpt2, hf:PATH)")
    p.add_argument("--logdir", default="runs")
    p.add_argument("--cache-dir", default="data")
    p.add_argument("--docs", default=str(ROOT / "docs"), help="where pretrain_finetune.md and .png go")
    p.add_argument("--label", default="", help="a note for the doc's header, e.g. 'reduced run'")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more lit-gpt options for every run")
    a = p.parse_args(argv)
    logdir = Path(a.logdir) / "pretrain_finetune"
    common = ["--data.cache_dir", a.cache_dir, "--trainer.logger.init_args.save_dir", str(logdir), *a.extra]
    rows, curves, walls = [], {arm: [] for arm in ARMS}, {"pretrain": [], "finetune": [], "scratch": []}
    for seed in range(1337, 1337 + a.seeds):
        tag = ["--seed_everything", str(seed), "--trainer.logger.init_args.version", f"seed{seed}"]
        for arm in ("pretrain", *ARMS):  # a re-run replaces its runs instead of appending to their event files
            shutil.rmtree(logdir / arm / f"seed{seed}", ignore_errors=True)
        # 1. pretrain on the large corpus
        pre_args = ["--config", a.pretrain_config, "--data.source", a.pretrain_source, "--data.tokenizer", a.tokenizer]
        pre_args += ["--trainer.max_steps", str(a.pretrain_steps), "--model.lr_decay_steps", str(a.pretrain_steps)]
        pre_args += ["--trainer.val_check_interval", str(min(250, a.pretrain_steps))]
        pre_args += ["--trainer.logger.init_args.name", "pretrain", *tag, *common]
        _, wall = run(pre_args)
        walls["pretrain"].append(wall)
        ckpt = logdir / "pretrain" / f"seed{seed}" / "checkpoints" / "last.ckpt"
        small = ["--data.source", a.finetune_source, "--trainer.max_steps", str(a.finetune_steps)]
        small += ["--model.lr_decay_steps", str(a.finetune_steps), "--trainer.val_check_interval", str(a.eval_every)]
        small += ["--data.val_batches", str(a.val_batches)]
        # 2. finetune it on the small corpus
        ft_args = ["--config", a.finetune_config, "--model.init_from", str(ckpt), *small]
        ft_args += ["--trainer.logger.init_args.name", "finetune", *tag, *common]
        ft, wall = run(ft_args)
        walls["finetune"].append(wall)
        # 3. the same steps from scratch, with the pretrained model's tokenizer (same token ids, same val windows)
        tok = data_tokenizer(str(ckpt), "char", a.cache_dir)
        sc_args = ["--config", a.pretrain_config, "--data.tokenizer", tok, *small, "--model.warmup_steps", "20"]
        sc_args += ["--trainer.logger.init_args.name", "scratch", *tag, *common]
        sc, wall = run(sc_args)
        walls["scratch"].append(wall)
        # 4. the pretrained model alone, scored on the small corpus
        pr_args = ["--config", a.finetune_config, "--model.init_from", str(ckpt), *small]
        pr_args += ["--model.config.dropout", "0", "--trainer.logger.init_args.name", "pretrained", *tag, *common]
        pr, _ = run(pr_args, validate=True)
        rows.append({"seed": seed, "finetune": ft, "scratch": sc, "pretrained": pr})
        curves["finetune"].append([(0, pr), *curve(logdir / "finetune" / f"seed{seed}")])  # step 0: the pretrained
        curves["scratch"].append(curve(logdir / "scratch" / f"seed{seed}"))
        print(f"seed {seed}: finetune {ft:.4f}  scratch {sc:.4f}  pretrained only {pr:.4f}", flush=True)
        # After every seed, so a run cut short still leaves its table (it says how many seeds it has).
        summary = write_docs(a, rows, curves, walls, Path(a.docs))
    return summary


def _mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def write_docs(a: argparse.Namespace, rows: list[dict], curves: dict, walls: dict, docs: Path) -> dict:
    docs.mkdir(parents=True, exist_ok=True)
    gaps = [r["scratch"] - r["finetune"] for r in rows]
    gains = [r["pretrained"] - r["finetune"] for r in rows]
    summary = {
        "gap_mean": statistics.mean(gaps),
        "gap_sd": statistics.stdev(gaps) if len(gaps) > 1 else 0.0,
        "rows": rows,
    }
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cmd = "python scripts/pretrain_finetune.py " + " ".join(
        [f"--seeds {a.seeds}", f"--pretrain-steps {a.pretrain_steps}", f"--finetune-steps {a.finetune_steps}"]
        + ([f"--eval-every {a.eval_every}"] if a.eval_every != 50 else [])
        + ([f"--val-batches {a.val_batches}"] if a.val_batches != 0 else [])
        + ([f"--pretrain-source {a.pretrain_source}"] if a.pretrain_source != "shakespeare:-hamlet" else [])
        + ([f"--finetune-source {a.finetune_source}"] if a.finetune_source != "shakespeare:hamlet" else [])
        + (["--extra", *a.extra] if a.extra else [])
    )
    lines = [
        "# Pretrain, then finetune: the lecture's exercise with numbers",
        "",
        f"Generated by `{cmd}` on {when} ({platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__})."
        + (f" **{a.label}.**" if a.label else ""),
        "",
        f"Pretraining: `{Path(a.pretrain_config).name}` on `{a.pretrain_source}` for {a.pretrain_steps} steps. "
        f"Finetuning: `{Path(a.finetune_config).name}` (`--model.init_from` the pretrained checkpoint) on "
        f"`{a.finetune_source}` for {a.finetune_steps} steps. From scratch: the pretraining config on "
        f"`{a.finetune_source}` alone for the same {a.finetune_steps} steps, with the same tokenizer. Validation loss "
        f"(nats per token) on the last 10% of `{a.finetune_source}`, "
        + ("every token of it once" if a.val_batches == 0 else f"the same {a.val_batches} batches of windows")
        + " for every run; "
        f"{len(rows)} seeds (initialisation and dropout).",
        "",
        "| seed | " + " | ".join(ARMS.values()) + " | scratch − finetuned |",
        "|---|" + "---:|" * (len(ARMS) + 1),
    ]
    for r, gap in zip(rows, gaps, strict=True):
        lines.append(f"| {r['seed']} | " + " | ".join(f"{r[k]:.4f}" for k in ARMS) + f" | {gap:.4f} |")
    lines.append(
        "| **mean ± sd** | " + " | ".join(_mean_sd([r[k] for r in rows]) for k in ARMS) + f" | {_mean_sd(gaps)} |"
    )
    lines += [
        "",
        f"Finetuning from the pretrained model ends {statistics.mean(gaps):.3f} nats below training from scratch for "
        f"the same {a.finetune_steps} steps (range {min(gaps):.3f} to {max(gaps):.3f} over {len(rows)} seeds), and "
        f"{statistics.mean(gains):.3f} below the pretrained model without finetuning.",
        "",
        "![val loss on the held-out play](pretrain_finetune.png)",
        "",
        "Wall time per run (mean over seeds): "
        + ", ".join(f"{k} {statistics.mean(v):.0f} s" for k, v in walls.items() if v)
        + ". TensorBoard: `tensorboard --logdir "
        + str(Path(a.logdir) / "pretrain_finetune")
        + "` shows every run side by side.",
        "",
    ]
    (docs / "pretrain_finetune.md").write_text("\n".join(lines), encoding="utf-8")
    plot(curves, rows, a, docs / "pretrain_finetune.png")
    print("\n".join(lines))
    return summary


def plot(curves: dict, rows: list[dict], a: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colors = {"finetune": "tab:blue", "scratch": "tab:orange", "pretrained": "tab:green"}
    for arm in ("finetune", "scratch"):
        for i, c in enumerate(curves[arm]):
            if c:
                steps, values = zip(*c, strict=True)
                ax.plot(steps, values, color=colors[arm], alpha=0.8, label=ARMS[arm] if i == 0 else None)
    pre = statistics.mean(r["pretrained"] for r in rows)
    ax.axhline(pre, color=colors["pretrained"], linestyle="--", label=f"{ARMS['pretrained']} (mean)")
    ax.set_xlabel(f"optimizer steps on {a.finetune_source}")
    ax.set_ylabel(f"val loss on {a.finetune_source}")
    ax.set_title(f"Pretrained on {a.pretrain_source} ({a.pretrain_steps} steps) vs from scratch, {len(rows)} seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
