"""``lit-gpt convert``: a sharded checkpoint (a folder written by FSDP2, one shard per rank) -> one ``.ckpt`` file.

Consolidating a sharded folder (``lit_gpt.checkpoints.sharded``) gives the same file a single-device run writes,
weights only, which ``lit-gpt generate``, ``lit_gpt.checkpoints.read.load_model`` and fine-tuning read. Resume a sharded
run from the folder itself (``--ckpt_path``): it has the sharded optimizer state.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lit_gpt.checkpoints.atomic import atomic_torch_save
from lit_gpt.checkpoints.read import resolve_checkpoint
from lit_gpt.checkpoints.sharded import is_sharded, load_sharded
from lit_gpt.errors import LitGPTError


def convert(*, checkpoint: str, out: str) -> None:
    """Consolidate a sharded (FSDP) checkpoint folder into one .ckpt file that generate and fine-tuning accept.

    Args:
        checkpoint: A sharded checkpoint folder (e.g. runs/NAME/version_0/checkpoints/last.ckpt), or a run folder
            (its newest last.ckpt is used).
        out: The file to write (weights, model config and tokenizer; no optimizer state).
    """
    source = resolve_checkpoint(checkpoint)
    if not is_sharded(source):
        raise LitGPTError(
            f"{str(source)!r} is already a single-file checkpoint: use it as it is (convert reads sharded folders)"
        )
    target = Path(out).expanduser()
    if target.resolve() == source.resolve() or target.is_dir():
        raise LitGPTError(f"--out {out!r} is a folder: give the path of the file to write, e.g. model.ckpt")
    consolidated = load_sharded(source)
    atomic_torch_save(consolidated, target)  # a reader (or a kill) never sees half a file
    n = sum(v.numel() for v in consolidated["state_dict"].values() if isinstance(v, torch.Tensor))
    print(f"wrote {target} ({n:,} weights, step {consolidated.get('global_step', '?')})")
