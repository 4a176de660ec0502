"""Checkpoint files that are never half-written and never run code when read.

``AtomicCheckpointIO`` is Lightning's ``TorchCheckpointIO`` with two changes:

- a save writes a hidden temporary file next to the target, flushes it to disk (``fsync``) and renames it over the
  target (``os.replace``, atomic on POSIX), so a process killed mid-save or a full disk leaves the previous
  checkpoint whole, and a failed write (a full disk) is one ``LitGPTError`` line saying so. Lightning's own save
  buffers the whole checkpoint in memory and does not fsync.
- a load first checks every entry of the archive against the CRC-32 that ``torch.save`` stored, then always uses
  ``torch.load(weights_only=True)``, and turns every failure (a truncated file, a file that is not a checkpoint,
  bytes changed after the save, a pickle that would run code) into one ``LitGPTError`` line.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_private import fsspec_load

TMP_MARK = ".tmp-"  # temporary files are ".<name>.tmp-<pid>-<random>": hidden, and never end in ".ckpt"


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to ``path`` so that a reader sees the old file or the complete new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes owner-only files; a checkpoint gets the usual ones
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)  # ... and so is the rename


@functools.cache
def _umask() -> int:
    """The process's umask, read at the first save (reading it means setting it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename in it) to disk, where the filesystem allows it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some filesystems do not let a folder be opened; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_stale_temporaries(path: Path) -> None:
    """Temporaries of ``path`` left by a process that was killed mid-save (its pid is gone)."""
    pattern = re.compile(rf"^\.{re.escape(path.name)}{re.escape(TMP_MARK)}(\d+)-")
    for candidate in path.parent.glob(f".{path.name}{TMP_MARK}*"):
        m = pattern.match(candidate.name)
        if m and not pid_alive(int(m.group(1))):
            candidate.unlink(missing_ok=True)


def pid_alive(pid: int) -> bool:
    """Whether a process of this pid runs on this machine (a save's temporaries name their writer's pid)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def load_error(path: str | Path, error: BaseException) -> LitGPTError:
    """The one line a user sees when ``torch.load(path, weights_only=True)`` raised ``error``."""
    text = str(error)
    blocked = re.search(r"(?:GLOBAL|global:?) ([\w.]+)", text)
    if "Weights only load failed" in text and blocked:
        return LitGPTError(
            f"refused to load {str(path)!r}: unpickling it would call {blocked.group(1)}, i.e. run code, not read "
            "data. Load only checkpoints you trust; lit-gpt checkpoints hold plain tensors only"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    if "Weights only load failed" in text:
        first = next((line.strip() for line in text.splitlines() if "Unsupported" in line), "unreadable pickle")
        return LitGPTError(
            f"checkpoint {str(path)!r} is corrupt, or not a checkpoint of plain tensors ({first}); use an earlier "
            "checkpoint, e.g. another .ckpt in the same folder"
        )
    if isinstance(error, EOFError) or not text:
        first = "the file is empty or ends early"
    return LitGPTError(
        f"checkpoint {str(path)!r} is truncated or corrupt ({first.split('. ')[0].rstrip('.')}); "
        "use an earlier checkpoint, e.g. another .ckpt in the same folder"
    )


def write_failure(error: BaseException) -> BaseException | None:
    """The file system's error behind a failed save, if that is what failed. torch's zip writer turns an ``OSError``
    from the file (ENOSPC, EDQUOT, EIO...) into a ``RuntimeError`` ("enforce fail at inline_container.cc") whose
    context is the ``OSError``; writing by path it raises only the ``RuntimeError`` ("file write failed")."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError):
            return seen
        seen = seen.__cause__ or seen.__context__
    text = str(error)
    if isinstance(error, RuntimeError) and ("file write failed" in text or "PytorchStreamWriter failed" in text):
        return error
    return None


def save_error(path: str | Path, failure: BaseException) -> LitGPTError:
    """The one line a user sees when a checkpoint could not be written (the atomic save left nothing behind)."""
    if Path(path).exists():
        kept = "the previous checkpoint is kept"
    elif any(Path(path).parent.glob("*.ckpt")):
        kept = "the checkpoints saved before are kept"
    else:
        kept = "no checkpoint was saved yet"
    if isinstance(failure, OSError) and failure.errno in (errno.ENOSPC, errno.EDQUOT):
        reason = "" if failure.errno == errno.ENOSPC else f" ({failure.strerror.lower()})"
        return LitGPTError(
            f"no space left writing {str(path)}{reason}; {kept}; free space and resume with --ckpt_path last"
        )
    if isinstance(failure, OSError):
        why = failure.strerror or str(failure) or type(failure).__name__
    else:  # torch's writer without the OSError behind it: most often a full disk
        why = f"{str(failure).splitlines()[0].strip()}; is the disk full?"
    return LitGPTError(f"could not write {str(path)} ({why}); {kept}; fix that and resume with --ckpt_path last")


_verified: dict[str, tuple[int, int]] = {}  # checkpoints whose CRCs passed, by path: (mtime, size) when checked


def check_readable(path: str | Path) -> None:
    """Fail fast, without unpickling anything, on a file that is not a complete PyTorch (zip) checkpoint, or whose
    bytes changed after it was written (torch.save stores a CRC-32 of every entry, which torch.load does not check:
    a flipped bit inside a tensor would load silently)."""
    if not Path(path).is_file():
        return
    if not zipfile.is_zipfile(path):
        size = Path(path).stat().st_size
        what = "empty" if size == 0 else "truncated, or not a checkpoint at all"
        raise LitGPTError(
            f"checkpoint {str(path)!r} is {what}: it is not a complete PyTorch checkpoint archive ({size} bytes); "
            "use an earlier checkpoint, e.g. another .ckpt in the same folder"
        )
    stat = Path(path).stat()
    key, version = str(Path(path).resolve()), (stat.st_mtime_ns, stat.st_size)
    if _verified.get(key) == version:  # resuming checks the file before the Trainer loads it: read it once
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # reads every entry against its CRC-32
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        bad = f"unreadable ({e})"
    if bad is None:
        _verified[key] = version
    else:
        raise LitGPTError(
            f"checkpoint {str(path)!r} is corrupt: its entry {bad} fails its CRC-32 check (the file changed after it "
            "was written, on disk or in a copy); use an earlier checkpoint, e.g. another .ckpt in the same folder"
        )


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint reader/writer with atomic, fsync'd saves and safe, clearly-failing loads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: fsspec's transaction does it
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        try:
            atomic_torch_save(checkpoint, path)
        except (OSError, RuntimeError) as e:
            failure = write_failure(e)
            if failure is None:  # not the file system: a bug, keep its traceback
                raise
            raise save_error(path, failure) from e

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        if not get_filesystem(path).exists(path):
            raise LitGPTError(f"checkpoint {str(path)!r} does not exist: check --ckpt_path")
        if map_location is None:
            map_location = lambda storage, loc: storage  # noqa: E731  (Lightning's default: keep each device)
        check_readable(path)
        try:
            return fsspec_load(path, map_location=map_location, weights_only=True)  # never run code from a file
        except Exception as e:
            raise load_error(path, e) from None
