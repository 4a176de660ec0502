"""Sharded (FSDP2) checkpoint folders: what every reader checks, the crash recovery every reader shares, and the
strategy hooks that write and resume them.

Under ``--trainer.strategy fsdp`` each checkpoint is a torch distributed-checkpoint folder: ``.metadata``, one
``__<rank>_0.distcp`` per rank, and Lightning's ``meta.pt`` with everything else (step, hyper-parameters, our
``lit_gpt`` section). ``check_sharded`` checks a folder without reading its tensors (every shard there and long
enough, nothing that runs code when unpickled); ``load_sharded`` consolidates one into the dict a single-device run
saves.

A folder is saved under a hidden temporary name and swapped in (``ShardedCheckpointHooks.save_checkpoint``);
``recover_interrupted_save`` finishes or undoes a swap that a killed job left half-done, so readers always find a
complete checkpoint under its own name.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import pickle
import secrets
import shutil
from pathlib import Path
from typing import Any

import torch

from lit_gpt.checkpoints.atomic import (
    TMP_MARK,
    atomic_torch_save,
    check_readable,
    fsync_dir,
    load_error,
    pid_alive,
    save_error,
    write_failure,
)
from lit_gpt.errors import LitGPTError, first_line
from lit_gpt.lightning_private import (
    distributed_checkpoint_save,
    load_distributed_checkpoint,
    saves_distributed_checkpoint,
)

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
    fsync_dir(target.parent)  # the renames are on disk before the previous checkpoint is deleted
    remove_path(old)


def recover_interrupted_save(target: str | Path, clean: bool = False) -> None:
    """Leave ``target`` (e.g. ``.../last.ckpt``) as a complete checkpoint after a save was killed; with ``clean``,
    also delete what dead saves left beside it.

    A save swaps a complete new folder in with two renames: the previous checkpoint to ``<staging>.old``, then the
    new one to ``target``. Killed between the two, ``target`` is missing: the complete new folder is put in its
    place (else the previous one). Only a writer cleans (``ShardedCheckpointHooks.save_checkpoint``): a reader on
    another machine cannot tell a dead save's pid from a running one's."""
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
        if p.exists() and pid is not None and not pid_alive(pid):
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
    from torch.distributed.checkpoint.api import CheckpointException

    folder = Path(path)
    check_sharded(folder)  # every shard there and whole, nothing that runs code: else one line, not a traceback
    try:
        checkpoint = load_distributed_checkpoint(folder)  # Lightning's reader: no process group needed
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


# --- the strategy's hooks --------------------------------------------------------------------------------------------


class ShardedCheckpointHooks:
    """Mixed into a ``ModelParallelStrategy`` (``lit_gpt.parallel.FSDP2Strategy``): crash-safe sharded saves, and
    resumes that check the folder first and fail in one line."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Write a sharded checkpoint so that a kill at any moment leaves the previous one or the new one whole.

        Lightning writes the shards into the existing folder, in place: killed mid-save, ``last.ckpt`` mixes new
        shards with the old ``meta.pt``, or lacks shards. Here every rank writes into one hidden staging folder,
        rank 0 adds ``meta.pt`` last (it marks the folder complete), and only then swaps it in (``swap_in``)."""
        if storage_options is not None or "://" in str(filepath):  # Lightning's refusal, or a remote store
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))  # one path for all ranks, as Lightning does
        if not saves_distributed_checkpoint(self):
            return self._save_full_checkpoint(checkpoint, path)
        # One staging name for all ranks: rank 0's pid (to tell a dead save's leftovers) and a random part.
        staging = staging_path(path, self.broadcast(f"{os.getpid()}-{secrets.token_hex(4)}"))
        if self.global_rank == 0:
            recover_interrupted_saves(path.parent, clean=True)  # what killed earlier saves left in the folder
        from torch.distributed.checkpoint.api import CheckpointException

        state = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        error: BaseException | None = None
        try:
            distributed_checkpoint_save(state, staging)  # collective: a rank's failure fails it on every rank
            if self.global_rank == 0:
                atomic_torch_save(checkpoint, staging / META_FILE)
        except (CheckpointException, OSError, RuntimeError) as e:
            error = e
        # Every rank reaches this vote, so none waits forever for a rank that failed.
        if self.reduce_boolean_decision(error is None, all=True) and self.global_rank == 0:
            try:
                swap_in(staging, path)
            except OSError as e:
                error = e
        if not self.reduce_boolean_decision(error is None, all=True):
            message = None
            if self.global_rank == 0:
                remove_path(staging)
                recover_interrupted_save(path)  # a swap that failed half-way: the previous checkpoint back in place
                message = str(_save_failure(path, error))
            raise LitGPTError(self.broadcast(message))  # rank 0's words on every rank: the CLI prints them once

    def _save_full_checkpoint(self, checkpoint: dict[str, Any], path: Path) -> None:
        # save_distributed_checkpoint=False: rank 0 writes one file (atomically, through the CheckpointIO). Lightning
        # deletes a sharded folder of the same name first; it steps aside instead until the file is written.
        aside = staging_path(path, f"{os.getpid()}-{secrets.token_hex(4)}{OLD_MARK}")
        if self.global_rank == 0 and is_sharded(path):
            os.rename(path, aside)
        self.barrier("FSDP2Strategy.save_checkpoint")  # no rank looks at the path while it moves
        super().save_checkpoint(checkpoint, path)
        if self.global_rank == 0:
            remove_path(aside)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's sharded resume, which reads the weights before the LightningModule sees the checkpoint and
        fails with a traceback on every rank for a bad folder or another model: checked first, in one line."""
        from torch.distributed.checkpoint.api import CheckpointException

        path = Path(self.broadcast(str(checkpoint_path)))
        if is_sharded(path):
            meta = check_sharded(path)  # shards whole, nothing that runs code
            if getattr(self.lightning_module, "model", None) is not None:
                # Its model shape and tokenizer against the module's, before the shards are read into the model.
                self.lightning_module.on_load_checkpoint(meta)
        try:
            return super().load_checkpoint(path, weights_only)
        except (CheckpointException, RuntimeError, OSError, EOFError, ValueError) as e:
            if path.is_file():
                raise LitGPTError(single_file_under_fsdp(path)) from None
            raise LitGPTError(f"could not resume from {str(path)!r} ({first_failure(e)}); {EARLIER}") from None


def _save_failure(path: Path, error: BaseException | None) -> LitGPTError:
    """The one line for a sharded save that failed (a full disk, most often); nothing of it was left behind."""
    failures = getattr(error, "failures", None)  # torch's CheckpointException: what failed on each rank
    if isinstance(failures, dict) and failures:
        error = next(iter(failures.values()))[0]
    failure = write_failure(error) if error is not None else None
    if failure is not None:
        return save_error(path, failure)
    why = first_failure(error) if error is not None else "another rank could not write its shard"
    kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint of that name was saved yet"
    return LitGPTError(f"could not save {str(path)} ({why}); {kept}; fix that and resume with --ckpt_path last")


def single_file_under_fsdp(path: str | Path) -> str:
    """The one line for resuming a single-file checkpoint under FSDP."""
    return (
        f"{str(path)!r} is a single-file checkpoint: resume it without --trainer.strategy fsdp (FSDP resumes only "
        f"its own sharded checkpoint folders), or start an FSDP run from its weights with --model.init_from {path}"
    )


def sharded_without_fsdp(path: str | Path) -> str:
    """The one line for resuming a sharded checkpoint folder without FSDP."""
    return (
        f"{str(path)!r} is a sharded (FSDP) checkpoint folder: resume it with --trainer.strategy fsdp, or use its "
        f"weights only: lit-gpt convert --checkpoint {path} --out model.ckpt, or --model.init_from {path}"
    )
