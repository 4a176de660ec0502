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

Rows whose text is null, missing or empty are not documents and are skipped (JSON Lines exports often have a few);
a warning says how many. A text column of another type (numbers, lists, a mix) is an error that names the columns
holding text, as are bad bytes and bad JSON, with the file and the line.
"""

from __future__ import annotations

import codecs
import functools
import glob
import hashlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lit_gpt.corpus import download_tinyshakespeare, read_text_file, shakespeare_documents
from lit_gpt.errors import LitGPTError
from lit_gpt.hub import offline_mode

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
        """Read text and JSON files through once for the problems a user can fix (empty, binary, not UTF-8: with the
        file, byte and line), before they surface as a traceback from deep inside datasets. Costs a read of the
        data: done only when preparing."""
        if self.kind != "files":
            return
        if self.builder in ("text", "json"):
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
        if self.builder == "json":
            _drop_json_parse_logs()
        if not self.rows_are_documents:
            # A lone .txt file: rows are ~1 MB runs of whole lines, exactly as on disk (the text builder's rows are
            # single lines, slower to load, with \r\n turned into \n).
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
        except Exception as e:  # network, missing config or split, malformed JSON/parquet
            raise self.read_error(e) from None
        columns = list(ds.column_names) if ds.column_names is not None else None
        if columns is not None and self.text_field not in columns:
            raise LitGPTError(
                f"data source {self.spec!r} has no column {self.text_field!r}; its columns are {columns}: "
                "set --data.text_field"
            )
        if ds.features is not None:  # a stream of a Hub dataset may know its columns only once read
            self._check_type(ds.features)
        if columns is not None and columns != [self.text_field]:
            ds = ds.select_columns([self.text_field])
        if self.text_field != "text":
            ds = ds.rename_column(self.text_field, "text")
        if streaming:  # rows are checked as they are read: a stream is never read through in advance
            keep = functools.partial(_has_text, spec=self.spec, text_field=self.text_field)
            return ds.filter(keep, input_columns="text")
        return self._without_empty_rows(ds)

    def _check_type(self, features: Any) -> None:
        """The text column must hold strings: say what it holds instead, where (JSON), and which columns do."""
        feature = features[self.text_field]
        if _is_text(feature):
            return
        dtype = getattr(feature, "dtype", None)
        if dtype == "null":
            what = "nothing (it is null in every row)"
        elif type(feature).__name__ == "Json":
            what = "a mix of types (text, and numbers, lists or objects)"
        elif dtype is not None:
            what = f"{dtype} values"
        else:
            what = f"{type(feature).__name__} values"
        where = ""
        if self.builder == "json":
            problem = next(filter(None, (_json_problem(f, self.text_field) for f in self.files)), None)
            where = f" ({problem})" if problem else ""
        text_columns = [name for name, f in features.items() if _is_text(f)]
        raise LitGPTError(
            f"data source {self.spec!r}: column {self.text_field!r} holds {what}, not text{where}; set "
            f"--data.text_field to the column that holds the documents "
            + (f"(columns of text: {text_columns})" if text_columns else "(no column holds text)")
        )

    def _without_empty_rows(self, ds: Any) -> Any:
        """``ds`` less the rows with no text (null, missing or empty), checked for bad UTF-8 on the way (Arrow
        does not check it on reading, and Python would fail on it deep inside tokenizing)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        column = ds.data.column("text")
        start = 0
        for chunk in column.chunks:
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid as e:
                at = re.search(r"string index (\d+)", str(e))  # "Invalid UTF8 sequence at string index N"
                where = f"row {start + int(at[1]) + 1} (its files in order)" if at else f"a row after row {start}"
                raise LitGPTError(
                    f"data source {self.spec!r} holds text that is not UTF-8 in {where}: re-encode it as UTF-8"
                ) from None
            start += len(chunk)
        keep = pc.and_(pc.is_valid(column), pc.greater(pc.binary_length(column), 0))
        n_keep = pc.sum(keep).as_py() or 0
        if n_keep == len(ds):
            return ds
        if n_keep == 0:
            raise LitGPTError(
                f"data source {self.spec!r} holds no text: column {self.text_field!r} is null or empty in every row; "
                "set --data.text_field to the column that holds the documents"
            )
        skipped = len(ds) - n_keep
        print(
            f"lit-gpt: warning: data source {self.spec!r}: skipping {skipped:,} of {len(ds):,} rows whose "
            f"{self.text_field!r} is null, missing or empty",
            file=sys.stderr,
            flush=True,
        )
        return ds.select(pc.indices_nonzero(keep).to_numpy())

    def read_error(self, e: BaseException) -> LitGPTError:
        """A LitGPTError for an error from datasets or Arrow while reading this source, with the cause (the place
        of bad JSON, an empty file, bytes that are not UTF-8) rather than datasets' generic wrapper."""
        what = "dataset" if self.kind == "hub" else "data source"
        if isinstance(e, UnicodeDecodeError):
            return LitGPTError(
                f"{what} {self.spec!r} holds text that is not UTF-8 ({e.reason} at byte {e.start} of a row): "
                "re-encode it as UTF-8"
            )
        if self.builder == "json":  # datasets says "An error occurred while generating the dataset": find where
            problem = next(filter(None, (_json_problem(f, self.text_field) for f in self.files)), None)
            if problem:
                return LitGPTError(f"could not load {what} {self.spec!r}: {problem}")
        cause = e
        while cause.__cause__ is not None and str(cause.__cause__).strip():
            cause = cause.__cause__
        msg = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        if not msg:
            msg = "it holds no rows" if isinstance(cause, StopIteration) else type(cause).__name__
        offline = offline_mode("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
        if self.kind == "hub" and offline:
            return LitGPTError(
                f"offline mode is on ({offline}) and {what} {self.spec!r} is not in the datasets cache (data/hf): "
                "load it once on a machine with network and copy its cache (data/hf) here, give a local copy "
                f"(--data.source PATH), or unset {offline.split('=')[0]} to download it"
            )
        if self.kind == "hub" and ("Couldn't reach" in msg or "LocalEntryNotFound" in msg or "onnection" in msg):
            msg += (
                ": check the network, or load it once on a machine with network and copy its cache (data/hf) here, "
                "then run with HF_DATASETS_OFFLINE=1"
            )
        return LitGPTError(f"could not load {what} {self.spec!r}: {msg}")

    def rows(self, stream: Any) -> Iterator[dict[str, Any]]:
        """The rows of a stream from ``load(streaming=True)``; a read error (bad JSON, bytes that are not UTF-8)
        becomes one LitGPTError, as it does when loading without streaming."""
        import pyarrow as pa
        from datasets.exceptions import DatasetGenerationError

        # Bound before the loop: a stream dropped at interpreter exit is closed after its modules are torn down.
        read_errors = (ValueError, pa.ArrowException, DatasetGenerationError)
        try:
            yield from stream
        except read_errors as e:
            # Raised by the reading itself (the consumer's code runs outside this frame): UnicodeDecodeError is a
            # ValueError, and so is the JSON parser's error for a .json file.
            raise self.read_error(e) from None

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
    return files_source(spec, files, text_field)


def files_source(spec: str, files: list[str] | tuple[str, ...], text_field: str = "text") -> Source:
    """A ``Source`` over the given local files of ``spec``, all of one type."""
    builders = {BUILDERS.get(Path(f).suffix.lower(), "text") for f in files}
    if len(builders) > 1:
        raise LitGPTError(f"data source {spec!r} mixes file types ({', '.join(sorted(builders))}): use one type")
    return Source(spec, "files", builder=builders.pop(), files=tuple(files), text_field=text_field)


def folder_splits(spec: str) -> dict[str, tuple[str, ...]] | None:
    """The files of each split of a local folder laid out like a Hub dataset (files or folders named ``train*``,
    ``validation*``/``valid*``/``val*``/``dev*``, ``test*``/``eval*``), as ``datasets.load_dataset(folder)`` splits
    them; None for anything else, a folder without split names included."""
    p = Path(spec).expanduser()
    if spec.startswith("hf:") or any(c in spec for c in "*?[") or not p.is_dir():
        return None
    from datasets.data_files import DataFilesDict, get_data_patterns

    try:
        patterns = get_data_patterns(str(p))
        found = DataFilesDict.from_patterns(patterns, base_path=str(p))
    except Exception:  # no data files at all: resolve() says so
        return None
    splits = {
        str(split): tuple(sorted(f for f in files if Path(f).suffix.lower() in BUILDERS and "/." not in f))
        for split, files in found.items()
    }
    if list(splits) == ["train"] and list(patterns["train"]) == ["**"]:  # datasets' layout for "no split names"
        return None
    return {split: files for split, files in splits.items() if files}


class _JsonParseLogs(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to load JSON from file")


def _drop_json_parse_logs() -> None:
    """datasets logs a JSON file's parse error and then raises it (reading a stream): lit-gpt reports it, with the
    line, so the log would only be a second, less clear line."""
    logger = logging.getLogger("datasets.packaged_modules.json.json")
    if not any(isinstance(f, _JsonParseLogs) for f in logger.filters):
        logger.addFilter(_JsonParseLogs())


def _is_text(feature: Any) -> bool:
    return getattr(feature, "dtype", None) in ("string", "large_string")


def _has_text(text: Any, spec: str, text_field: str) -> bool:
    """Whether a streamed row is a document (null and empty ones are skipped); a value that is not text is an error
    (the stream's column type may be unknown until it is read)."""
    if text is None or isinstance(text, str):
        return bool(text)
    raise LitGPTError(
        f"data source {spec!r}: a row's {text_field!r} is {str(text)[:40]!r} ({type(text).__name__}), not text; set "
        "--data.text_field to the column that holds the documents"
    )


def _json_problem(path: str, text_field: str) -> str | None:
    """The first problem in a JSON Lines file (or a .json file holding one list of rows), as ``FILE line N: ...``:
    bad JSON, a row that is not an object, a text that is not a string. None if there is none. Reads the file
    through: only called once datasets has failed on it, to say where."""
    with open(path, encoding="utf-8", errors="replace") as f:
        first = True
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as e:
                if first and line.lstrip().startswith(("[", "{")):  # maybe one JSON document over many lines
                    return _json_document_problem(path, text_field)
                return f"{path} line {n}: bad JSON ({_where(e)}); fix or remove that line"
            first = False
            problem = _row_problem(row, text_field)
            if problem:
                return f"{path} line {n}: {problem}"
    return None


def _json_document_problem(path: str, text_field: str) -> str | None:
    try:
        rows = json.loads(Path(path).read_text(encoding="utf-8", errors="replace"))
    except json.JSONDecodeError as e:
        return f"{path} line {e.lineno}: bad JSON ({_where(e)})"
    if not isinstance(rows, list):
        return f"{path} holds one JSON {type(rows).__name__}: give a list of rows, or JSON Lines (one row a line)"
    for i, row in enumerate(rows):
        problem = _row_problem(row, text_field)
        if problem:
            return f"{path} row {i + 1}: {problem}"
    return None


def _where(e: json.JSONDecodeError) -> str:
    # json's messages end in " at" when a position follows ("Unterminated string starting at")
    return f"{e.msg} column {e.colno}" if e.msg.endswith(" at") else f"{e.msg} at column {e.colno}"


def _row_problem(row: Any, text_field: str) -> str | None:
    if not isinstance(row, dict):
        return f"{str(row)[:40]!r} is not a JSON object with a {text_field!r} field"
    text = row.get(text_field)
    if text is not None and not isinstance(text, str):
        return f"{text_field!r} is {json.dumps(text)[:40]} ({type(text).__name__}), not a string"
    return None


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


def load_text(source: str, cache_dir: str | Path = "data") -> str:
    """The whole text of any source string, checked as ``lit-gpt prepare`` checks it (a convenience for notebooks
    and tests: training goes through ``resolve`` directly)."""
    src = resolve(source, cache_dir=cache_dir)
    src.check()
    return src.text(cache_dir)


def split_sources(
    spec: str,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    cache_dir: str | Path = "data",
    val_source: str | None = None,
    val_split: str | None = None,
) -> tuple[Source, Source | None, dict[str, tuple[str, ...]] | None]:
    """What to train on, what to validate on (None: a share of the training text) and, for a folder laid out like a
    Hub dataset, its files per split: one decision, for preparing and for streaming alike."""
    src = resolve(spec, text_field, subset, split, cache_dir)
    if val_source is not None or val_split is not None:
        return src, resolve(val_source or spec, text_field, subset, val_split or split, cache_dir), None
    splits = folder_splits(spec)
    if splits is None:
        return src, None, None
    # A folder of train*/validation*/test* files: those splits, not a 10% cut of them all.
    if not splits.get("train"):
        raise LitGPTError(
            f"data source {spec!r} has {' and '.join(f'{k}* files' for k in splits)} but none named train*: "
            "name the training files train* (as datasets.load_dataset does), or give the training files as "
            "--data.source and the validation files as --data.val_source"
        )
    val = files_source(spec, splits["validation"], text_field) if splits.get("validation") else None
    return files_source(spec, splits["train"], text_field), val, splits
