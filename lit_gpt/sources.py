"""Corpora of any size as Hugging Face ``datasets``: one ``text`` column, one row per document (or per line).

A source is one config string:

- ``shakespeare``, ``shakespeare:hamlet``, ``tinyshakespeare``: the built-in corpora (``lit_gpt.corpus``).
- a local file, folder or glob of ``.txt``, ``.jsonl``/``.json`` or ``.parquet`` files. A ``.txt`` file is one
  document; a single ``.txt`` file is read in runs of lines (exactly as on disk), so a file larger than RAM is fine.
  A ``.jsonl``/``.json``/``.parquet`` row is one document, its text in the ``text_field`` column.
- ``hf:NAME``: a dataset on the Hugging Face Hub (or a local folder laid out like one), with ``subset`` and
  ``split``. Needs network (or the datasets cache, with ``HF_DATASETS_OFFLINE=1``). Never runs remote code.

All of them load through ``datasets.load_dataset``, into ``Dataset`` (memory-mapped Arrow) or, with
``streaming=True``, ``IterableDataset``.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_gpt.corpus import download_tinyshakespeare, read_text_file, shakespeare_documents
from lit_gpt.errors import LitGPTError

BUILDERS = {".txt": "text", ".text": "text", ".jsonl": "json", ".json": "json", ".parquet": "parquet"}
BUILTIN = ("shakespeare", "tinyshakespeare")


@dataclass(frozen=True)
class Source:
    """A resolved, validated source: what to load and how to tell whether it changed."""

    spec: str
    kind: str  # "builtin" | "files" | "hub"
    builder: str | None = None  # for files: "text" | "json" | "parquet"
    files: tuple[str, ...] = ()
    text_field: str = "text"
    subset: str | None = None
    split: str = "train"
    documents: tuple[str, ...] = field(default=(), repr=False)  # built-in corpora, already in memory

    @property
    def rows_are_documents(self) -> bool:
        """False for a single .txt file read in runs of lines: its rows are pieces of one document."""
        return not (self.builder == "text" and len(self.files) == 1)

    @property
    def name(self) -> str:
        """A short, readable name for the prepared folder."""
        if self.kind == "builtin":
            return self.spec.replace(":", "_")
        if self.kind == "hub":
            return self.spec[3:].rstrip("/").split("/")[-1] or "hub"
        return Path(self.spec.split("*")[0].rstrip("/")).stem or "files"

    def fingerprint(self) -> str:
        """Changes when the data may have changed: the text of a built-in corpus; path, size and modification time
        of each local file (cheap for terabytes); name, subset and split of a Hub dataset."""
        h = hashlib.sha256(json.dumps([self.kind, self.text_field, self.subset, self.split]).encode())
        for doc in self.documents:
            h.update(hashlib.sha256(doc.encode("utf-8")).digest())
        for f in self.files:
            st = Path(f).stat()
            h.update(json.dumps([str(Path(f).resolve()), st.st_size, st.st_mtime_ns]).encode())
        if self.kind == "hub":
            h.update(self.spec.encode())
        return h.hexdigest()

    def check(self) -> None:
        """Read text files through once for the problems a user can fix (empty, binary, not UTF-8), before they
        surface as a traceback from deep inside datasets. Costs a read of the data: done only when preparing."""
        if self.builder != "text":
            return
        for f in self.files:
            if len(self.files) == 1 or Path(f).stat().st_size:  # an empty file among many is just skipped
                check_text_file(f)
        if all(Path(f).stat().st_size == 0 for f in self.files):
            raise LitGPTError(f"data source {self.spec!r} is empty: it needs text to train on")

    def load(self, cache_dir: str | Path, streaming: bool = False) -> Any:
        """The documents as a ``datasets`` (Iterable)Dataset with exactly one column, ``text``."""
        import datasets

        if self.kind == "builtin":
            ds = datasets.Dataset.from_dict({"text": list(self.documents)})
            return ds.to_iterable_dataset() if streaming else ds
        kwargs: dict[str, Any] = {"cache_dir": str(Path(cache_dir) / "hf"), "streaming": streaming}
        if not self.rows_are_documents:
            # A lone .txt file: rows are ~1 MB runs of whole lines, exactly as on disk (the text builder's rows are
            # single lines, about 3x slower to load, with \r\n turned into \n).
            gen_kwargs = {"path": self.files[0], "stamp": self.fingerprint()}  # the stamp keys datasets' cache
            if streaming:
                return datasets.IterableDataset.from_generator(_text_pieces, gen_kwargs=gen_kwargs)
            return datasets.Dataset.from_generator(_text_pieces, cache_dir=kwargs["cache_dir"], gen_kwargs=gen_kwargs)
        try:
            if self.kind == "files":
                if self.builder == "text":  # the files of a folder or glob: each one a document, line breaks kept
                    kwargs.update(keep_linebreaks=True, sample_by="document")
                ds = datasets.load_dataset(self.builder, data_files=list(self.files), split="train", **kwargs)
            else:
                ds = datasets.load_dataset(self.spec[3:], self.subset, split=self.split, **kwargs)
        except LitGPTError:
            raise
        except Exception as e:  # network, missing config or split, malformed JSON/parquet: datasets' own message
            what = "dataset" if self.kind == "hub" else "data source"
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise LitGPTError(f"could not load {what} {self.spec!r}: {msg}") from None
        columns = list(ds.column_names) if ds.column_names is not None else None
        if columns is None and self.text_field != "text":  # a stream whose columns are known only once read
            ds = ds.rename_column(self.text_field, "text")
        if columns is not None and self.text_field not in columns:
            raise LitGPTError(
                f"data source {self.spec!r} has no column {self.text_field!r}; its columns are {columns}: "
                "set --data.text_field"
            )
        if columns is not None and columns != ["text"]:
            ds = ds.select_columns([self.text_field])
            if self.text_field != "text":
                ds = ds.rename_column(self.text_field, "text")
        return ds

    def text(self, cache_dir: str | Path) -> str:
        """The whole corpus as one string (for the char tokenizer, whose vocabulary needs every character):
        a single file exactly as it is on disk, documents otherwise separated by a blank line."""
        if self.kind == "builtin":
            return "\n".join(self.documents)  # the layout of the plays joined, as lit_gpt.corpus always had
        if self.builder == "text" and len(self.files) == 1:
            return read_text_file(self.files[0])
        return "\n\n".join(t for t in self.load(cache_dir)["text"] if t)


def resolve(
    spec: str, text_field: str = "text", subset: str | None = None, split: str = "train", cache_dir: str | Path = "data"
) -> Source:
    """Turn a source string into a validated ``Source``, or a LitGPTError that says what is wrong."""
    if spec == "shakespeare" or spec.startswith("shakespeare:"):
        return Source(spec, "builtin", documents=tuple(shakespeare_documents(spec.partition(":")[2])))
    if spec == "tinyshakespeare":
        path = download_tinyshakespeare(Path(cache_dir))
        return Source(spec, "builtin", documents=(read_text_file(path),))
    if spec.startswith("hf:"):
        name = spec[3:]
        if not name:
            raise LitGPTError("source 'hf:' needs a dataset name, e.g. hf:HuggingFaceFW/fineweb-edu")
        local = Path(name).expanduser()
        files = tuple(sorted(str(f) for f in local.rglob("*") if f.is_file())) if local.is_dir() else ()
        return Source(spec, "hub", files=files, text_field=text_field, subset=subset, split=split)
    if any(c in spec for c in "*?["):
        files = sorted(f for f in glob.glob(str(Path(spec).expanduser()), recursive=True) if Path(f).is_file())
        if not files:
            raise LitGPTError(f"data source {spec!r} matches no files")
    else:
        p = Path(spec).expanduser()
        if not p.exists():
            raise LitGPTError(
                f"data source {spec!r} does not exist: give a path to a UTF-8 text file (or a folder or glob of "
                ".txt, .jsonl, .json or .parquet files), a built-in corpus ('shakespeare', 'tinyshakespeare'), or "
                "hf:NAME for a Hugging Face dataset"
            )
        if p.is_dir():
            files = sorted(str(f) for f in p.rglob("*") if f.is_file() and not f.name.startswith("."))
            files = [f for f in files if Path(f).suffix.lower() in BUILDERS]
            if not files:
                raise LitGPTError(
                    f"data source {spec!r} is a folder with no .txt, .jsonl, .json or .parquet files in it: "
                    "give the path of a text file, or a folder that holds some"
                )
        else:
            files = [str(p)]
    builders = {BUILDERS.get(Path(f).suffix.lower(), "text") for f in files}
    if len(builders) > 1:
        raise LitGPTError(f"data source {spec!r} mixes file types ({', '.join(sorted(builders))}): use one type")
    return Source(spec, "files", builder=builders.pop(), files=tuple(files), text_field=text_field)


def _text_pieces(path: str, stamp: str, size: int = 1 << 20):
    """Rows of a text file read as it is on disk: runs of whole lines of about ``size`` characters."""
    with open(path, encoding="utf-8", newline="") as f:
        while piece := f.read(size):
            yield {"text": piece + f.readline()}


def check_text_file(path: str | Path, chunk: int = 1 << 24) -> None:
    """The same checks as ``read_text_file`` (exists, not empty, not binary, UTF-8 with the place of the first bad
    byte), reading in chunks so that a file larger than RAM is fine."""
    p = Path(path)
    size = p.stat().st_size
    if size <= chunk:
        read_text_file(p)  # small: the exact messages of lit_gpt.corpus
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = lines = 0
    with p.open("rb") as f:
        while raw := f.read(chunk):
            if offset == 0 and b"\x00" in raw[:65536]:
                raise LitGPTError(f"data source {str(path)!r} looks like a binary file (it holds NUL bytes)")
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the previous chunk
            try:
                decoder.decode(raw)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                line = lines + raw[: max(at - offset, 0)].count(b"\n") + 1
                raise LitGPTError(
                    f"data source {str(path)!r} is not UTF-8: byte {at} (line {line}) is bad; re-encode it, "
                    "e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
                ) from None
            offset += len(raw)
            lines += raw.count(b"\n")
