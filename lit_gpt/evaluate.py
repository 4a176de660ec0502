"""``lit-gpt evaluate``: how well any model ``generate`` loads predicts a text (loss, perplexity and bits per byte),
and its scores on lm-evaluation-harness's tasks (``--tasks``, through ``lit_gpt.lm_eval_adapter``).

On a text, every token of the text is scored once (all but the first, which has no context): the tokens are cut into
consecutive windows of ``block_size`` predictions, each window's inputs the tokens before its targets, so the first
target of a window sees no earlier context. Bits per byte divide the summed loss by the UTF-8 bytes the scored
tokens stand for, so models with different tokenizers compare.
"""

from __future__ import annotations

import importlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch.nn import functional as F

from lit_gpt.errors import LitGPTError
from lit_gpt.init_from import load_for_sampling
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer, UnknownCharactersError


@dataclass
class EvalData:
    """The text to score."""

    source: str
    """A file, folder, glob, hf:NAME or built-in corpus, as fit's --data.source."""
    cache_dir: str = "data"
    """Where hf: datasets and downloads are cached."""


@torch.no_grad()
def score_tokens(model: GPT, tokens: torch.Tensor, token_bytes: torch.Tensor, batch_size: int = 8) -> dict[str, float]:
    """Summed loss (nats), scored tokens and their UTF-8 bytes of a 1-D token tensor, every target once."""
    T = model.config.block_size
    device = next(model.parameters()).device
    starts = list(range(0, tokens.numel() - 1, T))
    nats, count, n_bytes = 0.0, 0, 0
    full = [s for s in starts if s + T + 1 <= tokens.numel()]  # whole windows, batched
    rest = starts[len(full) :]  # the shorter last window
    for group in [full[i : i + batch_size] for i in range(0, len(full), batch_size)] + [[s] for s in rest]:
        x = torch.stack([tokens[s : min(s + T, tokens.numel() - 1)] for s in group]).to(device)
        y = torch.stack([tokens[s + 1 : s + 1 + x.size(1)] for s in group]).to(device)
        logits, _ = model(x)
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
        n_bytes += int(token_bytes[y.cpu()].sum())
    return {"nats": nats, "tokens": count, "bytes": n_bytes}


def evaluate(
    *,
    checkpoint: str,
    data: EvalData | None = None,
    tasks: str | None = None,
    tasks_dir: str | None = None,
    num_fewshot: int | None = None,
    limit: float | None = None,
    out: str | None = None,
    batch_size: int = 8,
    device: str = "auto",
    meta: str | None = None,
    log_dir: str | None = None,
) -> dict:
    """Score a model on a text (loss, perplexity, bits per byte) and on lm-evaluation-harness tasks.

    The text's loss is in nats per token, every token scored once; the tasks' metrics are the harness's own.

    Args:
        checkpoint: Any model generate takes: a .ckpt or run folder, an export, a Hugging Face GPT-2 folder, a Hub
            name (gpt2, hf:OWNER/REPO) or a nanoGPT ckpt.pt or out_dir.
        data: The text to score (--data.source PATH).
        tasks: lm-evaluation-harness tasks, groups or tags, comma-separated (hellaswag,arc_easy); needs
            pip install 'lit-gpt[eval]'. The harness downloads their datasets from the Hugging Face Hub.
        tasks_dir: A folder of your own task YAML (the harness's format) that --tasks may name.
        num_fewshot: Examples put before each question (the task's own default when not given).
        limit: Score only the first N examples of each task (a fraction below 1: that share of them).
        out: Also write the results to this JSON file.
        batch_size: Windows of block_size tokens scored at once.
        device: 'cpu', 'cuda', or 'auto' (CUDA when available).
        meta: A nanoGPT checkpoint's meta.pkl, when it is not where lit-gpt looks (see generate --help).
        log_dir: Add the figures to this TensorBoard folder (e.g. the run's runs/NAME/version_0) as eval/loss,
            eval/ppl and eval/bpb, at the checkpoint's step (0 for a model that records none), and each task's
            metrics as eval/TASK/METRIC.
    """
    names = [t.strip() for t in (tasks or "").split(",") if t.strip()]
    if data is None and not names:
        raise LitGPTError(
            "nothing to evaluate on: give --data.source PATH (a file, folder, glob or hf:NAME) or --tasks NAMES"
        )
    if batch_size <= 0:
        raise LitGPTError(f"batch_size must be positive, got {batch_size}")
    if limit is not None and limit <= 0:
        raise LitGPTError(f"--limit must be positive (a count, or a fraction below 1), got {limit}")
    if num_fewshot is not None and num_fewshot < 0:
        raise LitGPTError(f"--num_fewshot must be 0 or more, got {num_fewshot}")
    harness = _harness() if names else None  # before any loading: a missing extra is said at once
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if data is not None:
        from lit_gpt.sources import load_text

        text = load_text(data.source, data.cache_dir)  # a missing text is said before the model loads
    model, tokenizer = load_for_sampling(checkpoint, device, meta)
    results: dict = {} if data is None else _score_text(model, tokenizer, text, data.source, batch_size)
    if harness is not None:
        from lm_eval.utils import make_table

        scored = harness.run_tasks(model, tokenizer, names, tasks_dir, num_fewshot, limit, batch_size)
        print(make_table(scored))
        results["tasks"] = harness.task_scores(scored)
        results["n-shot"] = scored.get("n-shot", {})
    if out is not None:
        source = {} if data is None else {"source": data.source}
        _write_json(Path(out).expanduser(), {"checkpoint": checkpoint, **source, **results})
    if log_dir is not None:
        _log(Path(log_dir).expanduser(), results, _global_step(checkpoint))
    return results


def _harness() -> ModuleType:
    """``lit_gpt.lm_eval_adapter``, or a one-line error when lm-eval is not installed."""
    try:
        return importlib.import_module("lit_gpt.lm_eval_adapter")
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("lm_eval"):
            raise
        raise LitGPTError(
            "--tasks runs lm-evaluation-harness, which is not installed: pip install 'lit-gpt[eval]'"
        ) from None


def _score_text(model: GPT, tokenizer: Tokenizer, text: str, source: str, batch_size: int) -> dict:
    """Loss, perplexity and bits per byte of ``text``, printed and returned."""
    tokens = _encode(tokenizer, text, source)
    if tokens.numel() < 2:
        raise LitGPTError(f"--data.source {source!r} has fewer than 2 tokens: give a longer text")
    token_bytes = torch.as_tensor(tokenizer.token_bytes())
    s = score_tokens(model, tokens, token_bytes, batch_size)
    loss = s["nats"] / s["tokens"]
    results = {
        "loss": loss,
        "ppl": math.exp(loss),
        "bpb": s["nats"] / math.log(2) / s["bytes"] if s["bytes"] else float("nan"),
        "tokens": s["tokens"],
        "bytes": s["bytes"],
    }
    print(f"{'source':<8} {source}")
    for key in ("loss", "ppl", "bpb"):
        print(f"{key:<8} {results[key]:.4f}")
    print(f"{'tokens':<8} {s['tokens']:,} scored ({s['bytes']:,} bytes)")
    return results


def _global_step(checkpoint: str) -> int:
    """The optimizer step a lit-gpt checkpoint file was saved at; 0 for anything else (an export, the Hub)."""
    from lit_gpt.checkpoints.read import resolve_checkpoint, torch_load

    path = Path(checkpoint).expanduser()
    if not path.exists() or (path.is_dir() and not any(path.rglob("*.ckpt"))):
        return 0
    file = resolve_checkpoint(path)
    saved = torch_load(file, mmap=True) if file.is_file() else {}  # memory-mapped: the weights are not read
    step = saved.get("global_step", saved.get("iter_num", 0)) if isinstance(saved, dict) else 0
    return step if isinstance(step, int) else 0


def _log(log_dir: Path, results: dict, step: int) -> None:
    from torch.utils.tensorboard import SummaryWriter

    tags = {f"eval/{key}": results[key] for key in ("loss", "ppl", "bpb") if key in results}
    for task, metrics in results.get("tasks", {}).items():
        tags.update({f"eval/{task}/{name}": value for name, value in metrics.items()})
    with SummaryWriter(str(log_dir)) as writer:
        for tag, value in tags.items():
            writer.add_scalar(tag, value, step)
    print(f"added {', '.join(tags)} at step {step} to {log_dir}")


def _encode(tokenizer: Tokenizer, text: str, source: str) -> torch.Tensor:
    try:
        return torch.as_tensor(tokenizer.encode_array(text), dtype=torch.long)
    except UnknownCharactersError as e:
        raise LitGPTError(
            f"--data.source {source!r} has {e}, which this model's vocabulary lacks: score a text in its alphabet"
        ) from None


def _write_json(path: Path, results: dict) -> None:
    """Written whole or not at all: a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(results, indent=1), encoding="utf-8")
    os.replace(tmp, path)
