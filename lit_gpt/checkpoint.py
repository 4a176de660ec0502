"""Reading lit-gpt checkpoints outside the Trainer (generate, export, init_from): safely, with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_gpt.checkpoint_io import check_readable, load_error
from lit_gpt.errors import LitGPTError
from lit_gpt.hub import hub_repo
from lit_gpt.init_from import LIT_META, build_model, load_pretrained
from lit_gpt.lightning_module import CHECKPOINT_KEY
from lit_gpt.lora import merge_lora_state
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.sharded_checkpoint import is_sharded, load_sharded, recover_interrupted_save, recover_interrupted_saves
from lit_gpt.tokenizer import Tokenizer


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file or sharded checkpoint folder, or the newest ``last.ckpt`` (else newest ``*.ckpt``) under a
    run folder. A sharded save killed half-way is finished or undone first (its staging folders are never a
    checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        recover_interrupted_save(p)
    if p.is_file() or is_sharded(p):
        return p
    if p.is_dir():
        recover_interrupted_saves(p)
        for pattern in ("last.ckpt", "*.ckpt"):
            found = sorted(p.rglob(pattern), key=lambda f: f.stat().st_mtime)
            if found:
                return found[-1]
        raise LitGPTError(f"no checkpoint (*.ckpt) under {str(path)!r}: train first, or give the path of a .ckpt file")
    raise LitGPTError(f"checkpoint {str(path)!r} does not exist")


def load_raw(path: str | Path) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True``: a file that would run code when unpickled is refused."""
    p = resolve_checkpoint(path)
    if is_sharded(p):  # a folder written by FSDP: gathered in memory
        return load_sharded(p)
    check_readable(p)
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # one message per kind of bad file, shared with the Trainer's loader
        raise load_error(p, e) from None


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The trained GPT (in eval mode), its tokenizer, and the raw checkpoint."""
    ckpt = load_raw(path)
    saved = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if saved is None:
        raise LitGPTError(f"{str(path)!r} is not a lit-gpt checkpoint (it has no '{CHECKPOINT_KEY}' section)")
    if saved.get("tokenizer") is None:
        raise LitGPTError(f"{str(path)!r} has no tokenizer: it cannot turn generated ids into text")
    model = GPT(GPTConfig(**saved["model_config"]))
    state = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in ckpt["state_dict"].items()}
    state = merge_lora_state({k: v for k, v in state.items() if not k.startswith("val_loss")})  # a LoRA run's
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise LitGPTError(f"checkpoint {str(path)!r} does not match its own model config: {e}") from None
    model.to(device).eval()
    return model, Tokenizer.from_dict(saved["tokenizer"]), ckpt


def load_for_sampling(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer]:
    """The model (in eval mode) and tokenizer to sample from: a lit-gpt checkpoint or run folder, or any pretrained
    model ``--model.init_from`` takes (a ``lit-gpt export`` folder, a Hugging Face GPT-2 folder, a Hub name)."""
    p = Path(path).expanduser()
    if hub_repo(str(path)) or (p.is_dir() and ((p / LIT_META).is_file() or (p / "config.json").is_file())):
        pre = load_pretrained(path)
        if pre.tokenizer is None:
            raise LitGPTError(
                f"{pre.origin} has no tokenizer (tokenizer.json, or vocab.json + merges.txt): it cannot turn "
                "generated ids into text"
            )
        return build_model(pre, pre.config).to(device).eval(), pre.tokenizer
    model, tokenizer, _ = load_model(path, device)
    return model, tokenizer
