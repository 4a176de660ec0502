"""The one exception type for problems a user can fix (a bad path, a bad config value, a corrupt checkpoint), and how
its message reaches the user.

The CLI prints its message as one line and exits non-zero; any other exception is a bug and keeps its traceback.
Under multi-process training every rank usually meets the same problem (a bad data split, a diverged loss the ranks
agreed on): rank 0 prints the line, and another rank prints only what rank 0 did not. A preemption, which every
rank reaches at the same step, is reported by rank 0 alone (``report_rank_zero``).
"""

from __future__ import annotations

import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


class LitGPTError(Exception):
    """A problem with the user's input: the message says what is wrong and what to do."""


SAID_BY_RANK_ZERO_WAIT = 2.0  # seconds another rank waits to see whether rank 0 reported the same problem


def report(message: str, prefix: str = "lit-gpt: error") -> None:
    """Print ``prefix: message`` on stderr, once for the whole job on this machine when the ranks agree."""
    rank, marker = _rank(), _marker()
    if marker is None or rank is None:  # one process
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)
        return
    if rank == 0:
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)
        said = {"message": message, "pid": os.getpid(), "ppid": os.getppid(), "time": time.time()}
        tmp = marker.with_name(f".{marker.name}.{os.getpid()}")
        _remove_stale_markers(marker.parent)
        try:
            tmp.write_text(json.dumps(said), encoding="utf-8")
            os.replace(tmp, marker)
        except OSError:
            return
        atexit.register(_remove_marker, marker, time.monotonic())
        return
    deadline = time.monotonic() + SAID_BY_RANK_ZERO_WAIT
    while time.monotonic() < deadline:
        if _said_by_my_rank_zero(marker, message):
            return
        time.sleep(0.05)
    print(f"{prefix} (rank {rank}): {message}", file=sys.stderr, flush=True)


def _rank() -> int | None:
    for name in ("RANK", "LOCAL_RANK"):  # torchrun sets both; Lightning's launcher sets LOCAL_RANK on its children
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    if os.environ.get("WORLD_SIZE", "1") not in ("", "1"):
        return 0  # the process that launched Lightning's children is rank 0 and has no rank variable
    return None


def _marker() -> Path | None:
    port = os.environ.get("MASTER_PORT")
    if not port:
        return None
    host = os.environ.get("MASTER_ADDR", "").replace("/", "_")
    return Path(tempfile.gettempdir()) / f"lit-gpt-error-{host}-{port}.json"


# Run detached at rank 0's exit: sleep, then remove the marker if it is still rank 0's.
_REMOVE_LATER = """
import json, os, sys, time
path, pid, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
time.sleep(delay)
try:
    if json.load(open(path, encoding="utf-8")).get("pid") == pid:
        os.unlink(path)
except (OSError, ValueError):
    pass
"""


def _remove_marker(marker: Path, written: float) -> None:
    """At rank 0's exit: leave the marker as long as the other ranks may look for it, then remove it, so the temp
    folder keeps no litter however the run ends (a SIGKILL's marker is swept by the next report). A detached process
    waits, not rank 0: Lightning's launcher kills a job whose rank 0 lingers after its other ranks were ended."""
    delay = max(0.0, SAID_BY_RANK_ZERO_WAIT - (time.monotonic() - written))
    try:
        subprocess.Popen(
            [sys.executable, "-c", _REMOVE_LATER, str(marker), str(os.getpid()), f"{delay:.2f}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    except OSError:
        pass


def _remove_stale_markers(folder: Path) -> None:
    """Markers no rank can still be waiting for (older than a minute): those of killed jobs."""
    for path in folder.glob("lit-gpt-error-*.json"):
        try:
            if time.time() - path.stat().st_mtime > 60:
                path.unlink()
        except OSError:
            pass


def _said_by_my_rank_zero(marker: Path, message: str) -> bool:
    try:
        said = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    # Rank 0 of this job, not of an earlier one on the same port: it is our parent (Lightning launched us) or our
    # sibling (torchrun launched us both), and it spoke just now.
    same_job = os.getppid() in (said.get("pid"), said.get("ppid")) and time.time() - said.get("time", 0) < 60
    return same_job and said.get("message") == message


def first_line(error: BaseException) -> str:
    """``Type: first line of the message``: what went wrong, short enough for a one-line error."""
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), "")
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def report_rank_zero(message: str, prefix: str = "lit-gpt") -> None:
    """Print ``prefix: message`` on stderr from global rank 0 only: for an outcome every rank reaches together (a
    preemption: all ranks stop at the same step), whose wording may differ per rank (only rank 0 requeues a job)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only  # the strategy sets it to the global rank

    if getattr(rank_zero_only, "rank", 0) == 0:
        print(f"{prefix}: {message}", file=sys.stderr, flush=True)
