"""Sharded (FSDP) checkpoint folders: what every reader checks, and the crash recovery every reader shares.

Under ``--trainer.strategy fsdp`` each checkpoint is a torch distributed-checkpoint folder: ``.metadata``, one
``__<rank>_0.distcp`` per rank, and Lightning's ``meta.pt`` with everything else (step, hyper-parameters, our
``lit_gpt`` section). ``check_sharded`` checks a folder without reading its tensors (every shard there and long
enough, nothing that runs code when unpickled); ``load_sharded`` consolidates one into the dict a single-device run
saves.

A folder is saved under a hidden temporary name and swapped in (``FSDP2Strategy.save_checkpoint``);
``recover_interrupted_save`` finishes or undoes a swap that a killed job left half-done, so readers always find a
complete checkpoint under its own name.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import shutil
from pathlib import Path
from typing import Any

import torch

from lit_gpt.checkpoint_io import TMP_MARK, _fsync_dir, _pid_alive, check_readable, load_error
from lit_gpt.errors import LitGPTError, first_line

DCP_METADATA = ".metadata"  # written by torch.distributed.checkpoint; marks a sharded checkpoint folder
META_FILE = "meta.pt"  # Lightning's non-tensor part of the checkpoint, written last (so it marks a complete save)
OLD_MARK = ".old"  # suffix of the previous checkpoint while a save swaps the new one in
EARLIER = "use an earlier checkpoint, e.g. another step*.ckpt folder in the same folder"


def is_sharded(path: str | Path) -> bool:
    """Whether ``path`` is a distributed-checkpoint folder."""
    return (Path(path) / DCP_METADATA).is_file()


# --- checking a folder before any rank reads it ----------------------------------------------------------------------

# What a torch distributed checkpoint's .metadata pickles: its own dataclasses and enums, torch.Size, dtypes, a path.
# torch unpickles the file with plain pickle, so anything else (a callable: code to run) is refused before it does.
_DCP_MODULES = ("torch.distributed.checkpoint.metadata", "torch.distributed.checkpoint.filesystem")
_PLAIN_GLOBALS = {
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # returns a torch.layout by name
    ("pathlib", "PosixPath"),
    ("pathlib", "WindowsPath"),
    ("pathlib", "PurePosixPath"),
    ("pathlib", "PureWindowsPath"),
    ("collections", "OrderedDict"),
}


class _MetadataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _PLAIN_GLOBALS:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module in _DCP_MODULES:
            found = super().find_class(module, name)
            if isinstance(found, type) and (dataclasses.is_dataclass(found) or issubclass(found, enum.Enum)):
                return found
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _read_dcp_metadata(folder: Path) -> Any:
    path = folder / DCP_METADATA
    try:
        with open(path, "rb") as f:
            return _MetadataUnpickler(f).load()
    except pickle.UnpicklingError as e:
        if str(e).startswith("global "):
            raise LitGPTError(
                f"refused to load {str(folder)!r}: its {DCP_METADATA} file would call {str(e).removeprefix('global ')}"
                " when unpickled, i.e. run code, not read data. Load only checkpoints you trust"
            ) from None
        raise _corrupt(folder, f"its {DCP_METADATA} file is unreadable ({e})") from None
    except (EOFError, OSError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise _corrupt(folder, f"its {DCP_METADATA} file is unreadable ({type(e).__name__}: {e})") from None


def _corrupt(folder: Path, why: str) -> LitGPTError:
    return LitGPTError(f"sharded checkpoint {str(folder)!r} is incomplete or corrupt: {why}; {EARLIER}")


def check_sharded(path: str | Path) -> dict[str, Any]:
    """Check a sharded checkpoint folder without reading its tensors, and return its ``meta.pt`` (step, lit_gpt
    section, ...). Every shard named in ``.metadata`` must exist and hold all the bytes recorded for it, and no file
    may run code when read. A ``LitGPTError`` says what is wrong otherwise.

    Cheap (two small files and a ``stat`` per shard), so it runs before any rank starts, and again where a folder
    is read: torch's own loader fails on every rank with a traceback, and unpickles ``.metadata`` unchecked."""
    folder = Path(path)
    if not is_sharded(folder):
        raise LitGPTError(f"{str(path)!r} is not a sharded checkpoint folder (it has no {DCP_METADATA} file)")
    metadata = _read_dcp_metadata(folder)
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(storage, dict):
        raise _corrupt(folder, f"its {DCP_METADATA} file lists no shards")
    needed: dict[str, int] = {}  # shard file -> bytes it must have
    for info in storage.values():
        name, offset, length = (getattr(info, k, None) for k in ("relative_path", "offset", "length"))
        if not isinstance(name, str) or Path(name).name != name:  # a path out of the folder is no shard of it
            raise _corrupt(folder, f"its {DCP_METADATA} file names a shard {name!r} outside the folder")
        if not isinstance(offset, int) or not isinstance(length, int):
            raise _corrupt(folder, f"its {DCP_METADATA} file has no byte range for a part of {name}")
        needed[name] = max(needed.get(name, 0), offset + length)
    for name, size in sorted(needed.items()):
        shard = folder / name
        if not shard.is_file():
            raise _corrupt(folder, f"the shard {name} is missing")
        have = shard.stat().st_size
        if have < size:
            raise _corrupt(folder, f"the shard {name} is truncated ({have} of {size} bytes)")
    meta = folder / META_FILE
    if not meta.is_file():
        raise _corrupt(folder, f"it has no {META_FILE} (the save did not finish)")
    check_readable(meta)
    try:
        loaded = torch.load(meta, map_location="cpu", weights_only=True)
    except Exception as e:
        raise load_error(meta, e) from None
    if not isinstance(loaded, dict):
        raise _corrupt(folder, f"its {META_FILE} is not a checkpoint dictionary")
    return loaded


# --- saves interrupted by a kill --------------------------------------------------------------------------------------


def staging_path(target: Path, token: str) -> Path:
    """The hidden folder a save of ``target`` writes into: ``.<name>.tmp-<pid>-<token>``, which no checkpoint
    lookup matches (it neither is ``last.ckpt`` nor ends in ``.ckpt``), and whose pid tells a dead save's leftovers
    from a running one."""
    return target.with_name(f".{target.name}{TMP_MARK}{token}")


def _staged(target: Path) -> list[Path]:
    return sorted(target.parent.glob(f".{target.name}{TMP_MARK}*"), key=_mtime)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def _pid_of(staged: Path, target: Path) -> int | None:
    rest = staged.name.removeprefix(f".{target.name}{TMP_MARK}")
    head = rest.split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _complete(folder: Path) -> bool:
    # meta.pt is written (atomically) after every rank's shard and .metadata: its presence means the save finished.
    return is_sharded(folder) and (folder / META_FILE).is_file()


def remove_path(path: Path) -> None:
    """Delete a file or a folder, whichever ``path`` is; gone already is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def swap_in(staging: Path, target: Path) -> None:
    """Make the complete checkpoint folder ``staging`` the checkpoint ``target``, replacing what was there.

    Two renames, each atomic: the previous checkpoint steps aside to ``<staging>.old``, the new one takes its name,
    and only then is the previous one deleted. A kill at any point leaves a complete checkpoint that
    ``recover_interrupted_save`` (run by every lookup) puts under ``target``."""
    old = staging.with_name(staging.name + OLD_MARK)
    if target.exists() or target.is_symlink():
        os.rename(target, old)
    try:
        os.rename(staging, target)
    except FileNotFoundError:
        if not _complete(target):  # else a reader's recovery finished this swap a moment ago
            raise
    _fsync_dir(target.parent)  # the renames are on disk before the previous checkpoint is deleted
    remove_path(old)


def recover_interrupted_save(target: str | Path, clean: bool = False) -> None:
    """Leave ``target`` (e.g. ``.../last.ckpt``) as a complete checkpoint after a save was killed; with ``clean``,
    also delete what dead saves left beside it.

    A save swaps a complete new folder in with two renames: the previous checkpoint to ``<staging>.old``, then the
    new one to ``target``. Killed between the two, ``target`` is missing: the complete new folder is put in its
    place (else the previous one). Only a writer cleans (``FSDP2Strategy.save_checkpoint``): a reader on another
    machine cannot tell a dead save's pid from a running one's."""
    target = Path(target)
    if not target.parent.is_dir():
        return
    staged = _staged(target)
    if not staged:
        return
    if not target.exists():
        new = [p for p in staged if not p.name.endswith(OLD_MARK) and _complete(p)]
        old = [p for p in staged if p.name.endswith(OLD_MARK)]
        for candidate in new[-1:] or old[-1:]:
            try:
                os.rename(candidate, target)
            except OSError:  # another process recovered it first, or the running save finished its swap
                pass
    if not clean:
        return
    for p in staged:
        pid = _pid_of(p, target)
        if p.exists() and pid is not None and not _pid_alive(pid):
            remove_path(p)


def recover_interrupted_saves(root: str | Path, clean: bool = False) -> None:
    """``recover_interrupted_save`` for every checkpoint under ``root`` that a save was writing."""
    root = Path(root)
    if not root.is_dir():
        return
    targets = {
        p.with_name(p.name[1:].split(TMP_MARK, 1)[0]) for p in root.glob(f"**/.*{TMP_MARK}*") if TMP_MARK in p.name
    }
    for target in sorted(targets):
        recover_interrupted_save(target, clean)


# --- reading ---------------------------------------------------------------------------------------------------------


def load_sharded(path: str | Path) -> dict[str, Any]:
    """A sharded checkpoint folder gathered into one plain checkpoint dict in CPU memory, without its optimizer
    state: ``state_dict`` with the full (unsharded) tensors, and the rest of Lightning's checkpoint."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint
    from torch.distributed.checkpoint.api import CheckpointException

    folder = Path(path)
    check_sharded(folder)  # every shard there and whole, nothing that runs code: else one line, not a traceback
    try:
        checkpoint = _load_distributed_checkpoint(folder)  # Lightning's reader: no process group needed
    except (CheckpointException, RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as e:
        # CheckpointException derives from BaseException: it wraps what failed on a rank (bytes changed on disk).
        raise _corrupt(folder, first_failure(e)) from None
    # Optimizer states are keyed by parameter name (FSDP2's format), which only a sharded resume understands.
    for key in [k for k in checkpoint if k.startswith("optimizer_")]:
        del checkpoint[key]
    checkpoint["state_dict"] = {k: _plain(v) for k, v in checkpoint["state_dict"].items()}
    return checkpoint


def first_failure(error: BaseException) -> str:
    """The first line of what went wrong, out of torch's ``CheckpointException`` (a traceback per rank) too."""
    failures = getattr(error, "failures", None)
    if isinstance(failures, dict) and failures:
        error = next(iter(failures.values()))[0]
    return first_line(error)


def _plain(value: Any) -> Any:
    return value.full_tensor() if hasattr(value, "full_tensor") else value
