"""Finding and reading lit-gpt checkpoints outside the Trainer (generate, export, convert, init_from): safely, with
clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_gpt.checkpoints.atomic import check_readable, load_error
from lit_gpt.checkpoints.format import plain_state_dict, read_section, saved_config, saved_tokenizer
from lit_gpt.checkpoints.sharded import is_sharded, load_sharded, recover_interrupted_save, recover_interrupted_saves
from lit_gpt.errors import LitGPTError
from lit_gpt.model import GPT
from lit_gpt.tokenizer import Tokenizer


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file or sharded checkpoint folder, or the newest ``last.ckpt`` (else newest ``*.ckpt``, else a
    nanoGPT out_dir's ``ckpt.pt``) under a run folder. A sharded save killed half-way is finished or undone first
    (its staging folders are never a checkpoint)."""
    p = Path(path).expanduser()
    if not p.exists():
        recover_interrupted_save(p)
    if p.is_file() or is_sharded(p):
        return p
    if p.is_dir():
        recover_interrupted_saves(p)
        for pattern in ("last.ckpt", "*.ckpt", "ckpt.pt"):
            found = sorted(p.rglob(pattern), key=lambda f: f.stat().st_mtime)
            if found:
                return found[-1]
        raise LitGPTError(f"no checkpoint (*.ckpt) under {str(path)!r}: train first, or give the path of a .ckpt file")
    raise LitGPTError(f"checkpoint {str(path)!r} does not exist")


def find_last_checkpoint(root: str | Path) -> Path | None:
    """The newest ``last.ckpt`` anywhere under ``root`` (a run folder with ``version_*`` subfolders). A sharded
    save killed half-way is finished or undone first (its staging folders are never a checkpoint)."""
    recover_interrupted_saves(root)
    found = [p for p in Path(root).glob("**/last.ckpt") if p.is_file() or is_sharded(p)]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def torch_load(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` with ``weights_only=True`` (a file that would run code when unpickled is refused), after the
    archive's CRCs are checked; every failure is one ``LitGPTError`` line."""
    check_readable(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as e:  # one message per kind of bad file, shared with the Trainer's loader
        raise load_error(path, e) from None


def load_raw(path: str | Path) -> dict[str, Any]:
    """A checkpoint file, sharded folder (gathered in memory) or run folder (its newest checkpoint), read safely."""
    p = resolve_checkpoint(path)
    return load_sharded(p) if is_sharded(p) else torch_load(p)


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Tokenizer, dict[str, Any]]:
    """The trained GPT (in eval mode), its tokenizer, and the raw checkpoint."""
    ckpt = load_raw(path)
    where = repr(str(path))
    saved = read_section(ckpt, where)
    tokenizer = saved_tokenizer(saved, where)
    if tokenizer is None:
        raise LitGPTError(f"{where} has no tokenizer: it cannot turn generated ids into text")
    model = GPT(saved_config(saved, where))
    try:
        model.load_state_dict(plain_state_dict(ckpt["state_dict"]), strict=True)
    except RuntimeError as e:
        raise LitGPTError(f"checkpoint {where} does not match its own model config: {e}") from None
    model.to(device).eval()
    return model, tokenizer, ckpt
