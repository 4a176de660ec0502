"""``lit-gpt convert``: a sharded checkpoint (a folder written by FSDP2, one shard per rank) -> one ``.ckpt`` file.

Under ``--trainer.strategy fsdp`` each checkpoint is a torch distributed-checkpoint folder: ``.metadata``, one
``__<rank>_0.distcp`` per rank, and Lightning's ``meta.pt`` with everything else (step, hyper-parameters, our
``lit_gpt`` section). Consolidating it gives the same file a single-device run writes, weights only, which
``lit-gpt generate``, ``lit_gpt.checkpoint.load_model`` and fine-tuning read. Resume a sharded run from the folder
itself (``--ckpt_path``): it has the sharded optimizer state.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch

from lit_gpt.errors import LitGPTError

DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint; marks a sharded checkpoint folder


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a distributed-checkpoint folder."""
    return (Path(path) / DCP_METADATA).is_file()


def load_sharded(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint folder gathered into one plain checkpoint dict in CPU memory, without its optimizer
    state: ``state_dict`` with the full (unsharded) tensors, and the rest of Lightning's checkpoint."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    folder = Path(path)
    if not is_sharded(folder):
        raise LitGPTError(f"{str(path)!r} is not a sharded checkpoint folder (it has no {DCP_METADATA} file)")
    try:
        checkpoint = _load_distributed_checkpoint(folder)  # Lightning's reader: no process group needed
    except pickle.UnpicklingError as e:
        raise LitGPTError(
            f"refused to load {str(path)!r}: its meta.pt holds objects that would run code when unpickled "
            f"({str(e).splitlines()[0]}). Load only checkpoints you trust"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise LitGPTError(
            f"sharded checkpoint {str(path)!r} is incomplete or corrupt ({str(e).splitlines()[0]}); use an earlier "
            "checkpoint"
        ) from None
    # Optimizer states are keyed by parameter name (FSDP2's format), which only a sharded resume understands.
    for key in [k for k in checkpoint if k.startswith("optimizer_")]:
        del checkpoint[key]
    checkpoint["state_dict"] = {k: _plain(v) for k, v in checkpoint["state_dict"].items()}
    return checkpoint


def _plain(value: Any) -> Any:
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def convert(*, checkpoint: str, out: str) -> None:
    """Consolidate a sharded (FSDP) checkpoint folder into one .ckpt file that generate and fine-tuning accept.

    Args:
        checkpoint: A sharded checkpoint folder (e.g. runs/NAME/version_0/checkpoints/last.ckpt), or a run folder
            (its newest last.ckpt is used).
        out: The file to write (weights, model config and tokenizer; no optimizer state).
    """
    from lit_gpt.checkpoint import resolve_checkpoint  # imports the LightningModule: only when converting

    source = resolve_checkpoint(checkpoint)
    if not is_sharded(source):
        raise LitGPTError(
            f"{str(source)!r} is already a single-file checkpoint: use it as it is (convert reads sharded folders)"
        )
    target = Path(out).expanduser()
    if target.resolve() == source.resolve() or target.is_dir():
        raise LitGPTError(f"--out {out!r} is a folder: give the path of the file to write, e.g. model.ckpt")
    consolidated = load_sharded(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    torch.save(consolidated, tmp)
    tmp.replace(target)  # atomic: a reader never sees half a file
    n = sum(v.numel() for v in consolidated["state_dict"].values() if isinstance(v, torch.Tensor))
    print(f"wrote {target} ({n:,} weights, step {consolidated.get('global_step', '?')})")
