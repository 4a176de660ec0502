"""Tokenized corpora on disk: a source and a tokenizer in, ``train.bin`` + ``val.bin`` + ``meta.json`` out.

The output folder ``<cache_dir>/<name>-<key>/`` is named by a key of everything that decides its contents (the
source's fingerprint, the tokenizer settings, the validation split, the layout version), so a changed source or
tokenizer gets a new folder and an unchanged one is reused. It is written under a temporary name and renamed when
complete: an interrupted prepare leaves nothing that a later run would trust. The temporary folder of a killed
prepare (``<name>.tmp-<host>-<pid>``) is removed by the next prepare in that cache folder on the same host, once
its process is gone; a live one (another rank, another run) is never touched.

Token files are flat arrays of ``uint16`` (vocabularies up to 65,536) or ``uint32``. BPE tokenizers put their
end-of-text token after every document. Tokenizing runs as ``datasets.map(batched=True, num_proc=N)``.

With ``streaming=True`` nothing but the validation tokens is written: training tokenizes the stream as it reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from lit_gpt.bpe import BPETokenizer, HFTokenizer
from lit_gpt.errors import LitGPTError
from lit_gpt.sources import Source, split_sources
from lit_gpt.tokenizer import CharTokenizer, Tokenizer, UnknownCharactersError
from lit_gpt.tokenizer_spec import TokenizerSpec, tokenizer_from_dict

FORMAT_VERSION = 2  # bump when the prepared layout changes, so old caches are rebuilt
# Text is encoded in pieces of about this many characters, cut at line breaks (or spaces): HF tokenizers is faster
# on such pieces than on 1 MB ones (and than line by line), and memory stays bounded whatever a row's size.
PIECE_CHARS = 4096
# bpe is trained on the training split, up to this many characters (more adds hours, not quality)
BPE_TRAIN_CHARS = 500_000_000


def prepare(
    source: str,
    tokenizer: str | TokenizerSpec | Tokenizer = "char",
    cache_dir: str | Path = "data",
    val_fraction: float = 0.1,
    *,
    bpe_vocab_size: int = 8192,
    text_field: str = "text",
    subset: str | None = None,
    split: str = "train",
    val_source: str | None = None,
    val_split: str | None = None,
    val_tokens: int = 1_000_000,
    streaming: bool = False,
    num_proc: int | None = None,
) -> Path:
    """Tokenize ``source`` into ``cache_dir/<name>-<key>/`` (reused when it already exists); returns that folder.
    The arguments are those of ``TextDataModule``."""
    if val_split is not None and not (val_source or source).startswith("hf:"):
        raise LitGPTError("val_split names a split of an hf: dataset; for local files give --data.val_source PATH")
    src, val, splits = split_sources(source, text_field, subset, split, cache_dir, val_source, val_split)
    if isinstance(tokenizer, str):
        tokenizer = TokenizerSpec.parse(tokenizer)  # once: the functions below get the spec
    tok_key = tokenizer.to_dict() if isinstance(tokenizer, Tokenizer) else tokenizer.cache_key(bpe_vocab_size)
    if streaming and _is(tokenizer, "char"):
        raise LitGPTError(
            "the char tokenizer needs the whole corpus for its vocabulary: with streaming use --data.tokenizer bpe, "
            "gpt2 or hf:PATH"
        )
    key = hashlib.sha256(
        json.dumps(
            [
                FORMAT_VERSION,
                src.fingerprint(),
                val.fingerprint() if val else val_fraction,
                tok_key,
                ["stream", val_tokens] if streaming else None,
            ]
        ).encode()
    ).hexdigest()
    out = Path(cache_dir) / f"{src.name}-{key[:16]}"
    remove_stale_temporaries(Path(cache_dir))
    if (out / "meta.json").exists():
        return out
    if _is(tokenizer, "file"):
        tokenizer = tokenizer.load()  # a lit-gpt tokenizer JSON, of any kind
    src.check()
    if val:
        val.check()
    tmp = temporary_folder(out)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if streaming:
            meta = _prepare_stream(src, val, tokenizer, bpe_vocab_size, val_tokens, cache_dir, tmp)
        elif _is(tokenizer, "char") or (isinstance(tokenizer, Tokenizer) and tokenizer.kind == "char"):
            meta = _prepare_in_memory(src, val, tokenizer, val_fraction, cache_dir, tmp)
        else:
            meta = _prepare_mapped(src, val, tokenizer, bpe_vocab_size, val_fraction, cache_dir, tmp, num_proc)
        tok = tokenizer_from_dict(meta["tokenizer"]) if meta["tokenizer"]["kind"] in ("bpe", "hf") else None
        if isinstance(tok, HFTokenizer):
            tok.save_pretrained(tmp / "tokenizer.json")  # the Hugging Face file, usable as --data.tokenizer hf:PATH
        meta = {"format_version": FORMAT_VERSION, "source": source, "val_source": val.spec if val else None, **meta}
        if splits is not None:
            meta["split_files"] = {k: len(v) for k, v in splits.items()}
        meta["fingerprint"] = src.fingerprint()
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, out)  # atomic: a reader sees no folder or a complete one
    except OSError:  # another process (a second node on a shared disk) finished first; theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return out


# <name>-<16 hex>.tmp-<host>-<pid>; and .tmp<pid>, the name before the host was in it
_TEMPORARY = re.compile(r"^.+-[0-9a-f]{16}\.tmp(?:-(?P<host>.+)-)?(?P<pid>[0-9]+)$")


def temporary_folder(out: Path, pid: int | None = None) -> Path:
    """Where this process writes ``out`` before renaming it. The host is in the name because a cache folder on a
    shared disk is written by several machines, and a pid says whether a process is alive only on its own."""
    return out.with_name(f"{out.name}.tmp-{socket.gethostname()}-{os.getpid() if pid is None else pid}")


def remove_stale_temporaries(cache_dir: Path) -> None:
    """Remove the temporary folders of prepares on this host whose process is gone (killed, out of memory, a node
    that lost power): for FineWeb each can be tens of GB. Another host's folders are left to that host."""
    try:
        entries = list(cache_dir.iterdir()) if cache_dir.is_dir() else []
    except OSError:
        return
    host = socket.gethostname()
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and m["host"] in (None, host) and entry.is_dir() and not _alive(int(m["pid"])):
            shutil.rmtree(entry, ignore_errors=True)  # ignore_errors: another rank may be removing it too


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: no signal, only the check that the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _load_tokenizer(tokenizer: TokenizerSpec | Tokenizer) -> Tokenizer:
    """A given tokenizer, or the one a spec loads (gpt2, hf:PATH, a lit-gpt JSON)."""
    return tokenizer if isinstance(tokenizer, Tokenizer) else tokenizer.load()


def _is(tokenizer: TokenizerSpec | Tokenizer, kind: str) -> bool:
    """Whether ``tokenizer`` is the spec of ``kind`` (char, bpe: built from the corpus here)."""
    return isinstance(tokenizer, TokenizerSpec) and tokenizer.kind == kind


def _prepare_in_memory(
    src: Source,
    val: Source | None,
    tokenizer: TokenizerSpec | Tokenizer,
    val_fraction: float,
    cache_dir: str | Path,
    tmp: Path,
) -> dict[str, Any]:
    """The char tokenizer: the whole text in memory (its vocabulary is the set of the corpus's characters)."""
    text = src.text(cache_dir)
    val_text = val.text(cache_dir) if val else ""
    tok = CharTokenizer.from_text(text + val_text) if _is(tokenizer, "char") else _load_tokenizer(tokenizer)
    try:
        ids = tok.encode_array(text)
        val_ids = tok.encode_array(val_text) if val else None
    except UnknownCharactersError as e:
        raise LitGPTError(
            f"{e}; the tokenizer (e.g. a pretrained model's) was not built from this corpus: remove them, or encode "
            "each as a known character with --data.unknown replace --data.placeholder ' '"
        ) from None
    if val_ids is None:
        n_val = int(len(ids) * val_fraction)
        ids, val_ids = ids[: len(ids) - n_val], ids[len(ids) - n_val :]  # by position, as nanoGPT does
    dtype = token_dtype(tok.vocab_size)
    ids.astype(dtype).tofile(tmp / "train.bin")
    val_ids.astype(dtype).tofile(tmp / "val.bin")
    tokens = {"train": int(len(ids)), "val": int(len(val_ids))}
    return {"dtype": np.dtype(dtype).name, "tokens": tokens, "tokenizer": tok.to_dict()}


def _prepare_mapped(
    src: Source,
    val: Source | None,
    tokenizer: TokenizerSpec | Tokenizer,
    bpe_vocab_size: int,
    val_fraction: float,
    cache_dir: str | Path,
    tmp: Path,
    num_proc: int | None,
) -> dict[str, Any]:
    """BPE kinds: tokenize with ``datasets.map`` in parallel, then concatenate the ids into the token files."""
    ds = src.load(cache_dir)
    val_ds = val.load(cache_dir) if val else None
    if _is(tokenizer, "bpe"):
        train_share = 1.0 if val else 1.0 - val_fraction
        tok: Tokenizer = BPETokenizer.train(_text_batches(ds, share=train_share), bpe_vocab_size)
    else:
        tok = _load_tokenizer(tokenizer)
    dtype = token_dtype(tok.vocab_size)
    ids = tokenize(ds, tok, src.rows_are_documents, tmp / "train_ids.arrow", num_proc)
    val_ids = tokenize(val_ds, tok, val.rows_are_documents, tmp / "val_ids.arrow", num_proc) if val else None
    total = _count(ids)
    n_train = total if val_ids is not None else total - int(total * val_fraction)
    with open(tmp / "train.bin", "wb") as train, open(tmp / "val.bin", "wb") as valf:
        written = 0
        for arr in _id_chunks(ids):
            head = arr[: max(0, n_train - written)]
            train.write(head.astype(dtype).tobytes())
            valf.write(arr[len(head) :].astype(dtype).tobytes())
            written += len(arr)
        for arr in _id_chunks(val_ids) if val_ids is not None else ():
            valf.write(arr.astype(dtype).tobytes())
    n_val = (total - n_train) if val_ids is None else _count(val_ids)
    for f in tmp.glob("*_ids*.arrow"):  # datasets' intermediate files; the .bin files are the product
        f.unlink()
    return {
        "dtype": np.dtype(dtype).name,
        "tokens": {"train": n_train, "val": n_val},
        "documents": {"train": len(ds), **({"val": len(val_ds)} if val_ds is not None else {})},
        "tokenizer": tok.to_dict(),
    }


def _prepare_stream(
    src: Source,
    val: Source | None,
    tokenizer: TokenizerSpec | Tokenizer,
    bpe_vocab_size: int,
    val_tokens: int,
    cache_dir: str | Path,
    tmp: Path,
) -> dict[str, Any]:
    """Streaming: the tokenizer (bpe: trained on the head of the stream) and the validation tokens, taken from the
    val source or else from the first documents of the stream, which training then skips."""
    stream = src.load(cache_dir, streaming=True)
    if _is(tokenizer, "bpe"):
        tok: Tokenizer = BPETokenizer.train(_head_texts(src.rows(stream), BPE_TRAIN_CHARS), bpe_vocab_size)
    else:
        tok = _load_tokenizer(tokenizer)
    val_stream = (val or src).rows(val.load(cache_dir, streaming=True) if val else stream)
    rows_are_docs = (val or src).rows_are_documents
    chunks, n, docs = [], 0, 0
    for row in val_stream:
        ids = encode_document(tok, row["text"], rows_are_docs)
        chunks.append(ids)
        n, docs = n + len(ids), docs + 1
        if n >= val_tokens:
            break
    if val is None and docs and n < val_tokens:
        raise LitGPTError(
            f"the stream of {src.spec!r} holds only {n} tokens, fewer than val_tokens = {val_tokens} for "
            "validation: lower --data.val_tokens, give --data.val_source, or prepare it without streaming"
        )
    dtype = token_dtype(tok.vocab_size)
    (np.concatenate(chunks) if chunks else np.zeros(0, np.int64)).astype(dtype).tofile(tmp / "val.bin")
    return {
        "dtype": np.dtype(dtype).name,
        "tokens": {"val": n},
        "streaming": True,
        "skip_documents": 0 if val else docs,
        "tokenizer": tok.to_dict(),
    }


def token_dtype(vocab_size: int) -> type:
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_document(tok: Tokenizer, text: str, is_document: bool = True) -> np.ndarray:
    """The ids of one row, long ones in pieces cut at line breaks, with end-of-text after a whole document."""
    pieces = _pieces(text)
    ids = [np.asarray(x, dtype=np.int64) for x in tok.encode_batch(pieces)] if pieces else []
    if is_document and tok.eot_id is not None:
        ids.append(np.asarray([tok.eot_id], dtype=np.int64))
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)


def _encode_rows(batch: dict[str, list[str]], tok: Tokenizer, is_document: bool) -> dict[str, list[np.ndarray]]:
    # Module level, so datasets can pickle it for its worker processes.
    pieces = [_pieces(t) for t in batch["text"]]  # one encode_batch call for all the batch's documents
    flat = tok.encode_batch([p for ps in pieces for p in ps])
    eot = [np.asarray([tok.eot_id], dtype=np.uint32)] if is_document and tok.eot_id is not None else []
    out, i = [], 0
    for ps in pieces:
        parts = [np.asarray(ids, dtype=np.uint32) for ids in flat[i : i + len(ps)]] + eot
        out.append(np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint32))
        i += len(ps)
    return {"ids": out}


def tokenize(ds: Any, tok: Tokenizer, is_document: bool, cache_file: Path, num_proc: int | None = None) -> Any:
    """``ds`` (a ``text`` column) -> a dataset of ``ids`` lists, in order, tokenized by ``num_proc`` processes
    (default: one per core; fewer for small corpora, where starting processes costs more than it saves)."""
    import datasets

    procs = num_proc or len(os.sched_getaffinity(0))
    procs = max(1, min(procs, len(ds), ds.data.nbytes // (4 << 20)))  # a process per 4 MB at least
    if procs > 1:
        # One tokenizing process per core already: HF tokenizers' own threads would oversubscribe the cores (and
        # warn about the fork after BPE training used them).
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    return ds.map(
        _encode_rows,
        batched=True,
        batch_size=256 if is_document else 4,  # documents, or ~1 MB runs of lines
        num_proc=procs if procs > 1 else None,
        fn_kwargs={"tok": tok, "is_document": is_document},
        remove_columns=ds.column_names,
        features=datasets.Features({"ids": datasets.List(datasets.Value("uint32"))}),
        cache_file_name=str(cache_file),
        new_fingerprint=hashlib.sha256(str(cache_file).encode()).hexdigest()[:16],  # no hashing of the tokenizer
        load_from_cache_file=False,
        desc="tokenizing",
    )


def _id_chunks(ids: Any) -> Iterator[np.ndarray]:
    for table in ids.with_format("arrow").iter(batch_size=4096):
        yield table.column("ids").combine_chunks().flatten().to_numpy(zero_copy_only=False)


def _count(ids: Any) -> int:
    import pyarrow.compute as pc

    return int(sum(pc.sum(pc.list_value_length(t.column("ids"))).as_py() or 0 for t in _arrow_batches(ids)))


def _arrow_batches(ds: Any) -> Iterator[Any]:
    yield from ds.with_format("arrow").iter(batch_size=65536)


def _text_batches(ds: Any, share: float = 1.0) -> Iterator[list[str]]:
    """Batches of text from the first ``share`` of the corpus's characters (the training split), for BPE training."""
    import pyarrow.compute as pc

    total = sum(pc.sum(pc.utf8_length(t.column("text"))).as_py() or 0 for t in _arrow_batches(ds))
    budget, seen = min(int(total * share), BPE_TRAIN_CHARS), 0
    for t in ds.with_format("arrow").iter(batch_size=1000):
        texts = t.column("text").to_pylist()
        out = []
        for text in texts:
            if seen >= budget:
                break
            out.append(text[: budget - seen])
            seen += len(out[-1])
        if out:
            yield out
        if seen >= budget:
            return


def _head_texts(stream: Any, chars: int) -> Iterator[str]:
    seen = 0
    for row in stream:
        yield row["text"]
        seen += len(row["text"])
        if seen >= chars:
            return


def _pieces(text: str, size: int = PIECE_CHARS) -> list[str]:
    """Cut ``text`` into pieces of about ``size`` characters after a line break, or else before a space (where
    GPT-2's pre-tokenizer splits anyway), or anywhere for a run that long without either."""
    if len(text) <= size:
        return [text] if text else []
    out, start = [], 0
    while start < len(text):
        end = min(start + size, len(text))
        if end < len(text):
            cut = text.rfind("\n", start, end)
            if cut > start:
                end = cut + 1
            elif (cut := text.rfind(" ", start + 1, end)) > start:
                end = cut
        out.append(text[start:end])
        start = end
    return out
