"""Problem rows in .jsonl/.json/.parquet sources: one LitGPTError that names the file and the line (or the column
and what to set instead), never a traceback from Arrow; rows with no text are skipped; a killed prepare's temporary
folder does not stay behind."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli

from lit_gpt.bpe import EOT
from lit_gpt.data import Share, StreamingWindows, TextDataModule
from lit_gpt.errors import LitGPTError
from lit_gpt.prepare import prepare, temporary_folder
from lit_gpt.sources import resolve
from lit_gpt.tokenizer import Tokenizer

DOCS = [f"Doc {i}. " + "To be, or not to be, that is the question. " * (1 + i % 3) for i in range(40)]


def jsonl(path, rows: list[str]) -> str:
    path.write_bytes(b"".join((r if isinstance(r, bytes) else r.encode()) + b"\n" for r in rows))
    return str(path)


def docs_with(bad: str | bytes, at: int = 3) -> list:
    rows: list = [json.dumps({"text": d}) for d in DOCS]
    rows.insert(at, bad)
    return rows


def parquet(path, **columns) -> str:
    pq.write_table(pa.table(columns), path)
    return str(path)


def not_utf8_strings(path) -> str:
    """A parquet file whose string column holds bytes that are not UTF-8 (Arrow writes them unchecked)."""
    raw = pa.array([DOCS[0].encode(), b"caf\xe9", DOCS[1].encode()], pa.binary())
    pq.write_table(pa.table({"text": raw.cast(pa.string(), safe=False)}), path)
    return str(path)


BAD = {
    "not-utf8": (lambda p: jsonl(p / "d.jsonl", docs_with(b'{"text": "caf\xe9"}')), r"not UTF-8: byte \d+ \(line 4\)"),
    "number": (lambda p: jsonl(p / "d.jsonl", docs_with('{"text": 42}')), r"d.jsonl line 4: 'text' is 42 \(int\)"),
    "all-numbers": (
        lambda p: jsonl(p / "d.jsonl", [json.dumps({"text": i, "body": d}) for i, d in enumerate(DOCS)]),
        r"'text' holds int64 values, not text.*--data.text_field.*columns of text: \['body'\]",
    ),
    "all-null": (lambda p: jsonl(p / "d.jsonl", ['{"text": null}'] * 3), r"'text' holds nothing"),
    "malformed": (
        lambda p: jsonl(p / "d.jsonl", docs_with('{"text": "unterminated', at=20)),
        r"d.jsonl line 21: bad JSON \(Unterminated string",
    ),
    "malformed-json-list": (
        lambda p: (p / "d.json").write_text('[\n {"text": "a"},\n {"text": "b"\n]\n') and str(p / "d.json"),
        r"d.json line 4: bad JSON",
    ),
    "empty": (lambda p: jsonl(p / "d.jsonl", []), "is empty"),
    "parquet-ints": (
        lambda p: parquet(p / "d.parquet", text=list(range(len(DOCS))), body=DOCS),
        r"'text' holds int64 values.*columns of text: \['body'\]",
    ),
    "parquet-not-utf8": (lambda p: not_utf8_strings(p / "d.parquet"), r"not UTF-8 in row 2 \("),
}


@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
@pytest.mark.parametrize("case", BAD)
def test_problem_rows_give_one_clear_error(tmp_path, case, tokenizer):
    make, message = BAD[case]
    source = make(tmp_path)
    with pytest.raises(LitGPTError, match=message):
        prepare(source, tokenizer, tmp_path / "cache", bpe_vocab_size=300, num_proc=1)


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
@pytest.mark.parametrize("tokenizer", ["bpe", "char"])
def test_rows_with_no_text_are_skipped_and_counted(tmp_path, capsys, kind, tokenizer):
    texts = [*DOCS[:5], None, *DOCS[5:20], "", *DOCS[20:]]  # a null and an empty text: not documents
    if kind == "jsonl":
        rows = [json.dumps({"text": t}) for t in texts] + [json.dumps({"id": 7})]  # and a row without the field
        source = jsonl(tmp_path / "d.jsonl", rows)
    else:
        source = parquet(tmp_path / "d.parquet", text=texts)
    out = prepare(source, tokenizer, tmp_path / "cache", bpe_vocab_size=300, num_proc=1)
    meta = json.loads((out / "meta.json").read_text())
    tok = Tokenizer.from_dict(meta["tokenizer"])
    ids = np.concatenate([np.fromfile(out / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val")])
    joined = "".join(d + EOT for d in DOCS) if tokenizer == "bpe" else "\n\n".join(DOCS)
    assert tok.decode(ids.tolist()) == joined
    skipped = 3 if kind == "jsonl" else 2
    assert f"skipping {skipped} of {len(texts) + (kind == 'jsonl')} rows" in capsys.readouterr().err


def test_a_stream_skips_rows_with_no_text_and_names_the_line_of_bad_json(tmp_path):
    rows = docs_with('{"text": null}', at=1)
    (tmp_path / "good").mkdir()
    source = jsonl(tmp_path / "good" / "d.jsonl", rows)
    dm = TextDataModule(source=source, tokenizer="bpe", bpe_vocab_size=300, streaming=True, val_tokens=50,
                        block_size=16, batch_size=2, cache_dir=str(tmp_path / "c"))  # fmt: skip
    dm.setup()
    stream = StreamingWindows(resolve(source), dm.tokenizer, dm.cache_dir, 0, Share(16, 2, 0), shuffle_buffer=1)
    batch = next(iter(stream))[0]
    assert dm.tokenizer.decode(batch[0].tolist()) in "".join(d + EOT for d in DOCS)  # the null row left no trace
    # Bad JSON far into the stream: one error with the line, not Arrow's, when preparing (BPE reads the stream's
    # head) and when training reads it.
    broken = jsonl(tmp_path / "d.jsonl", docs_with('{"text": "unterminated', at=35))
    with pytest.raises(LitGPTError, match=r"d.jsonl line 36: bad JSON"):
        prepare(broken, "bpe", tmp_path / "c", bpe_vocab_size=300, streaming=True, val_tokens=50)
    stream = StreamingWindows(resolve(broken), dm.tokenizer, dm.cache_dir, 0, Share(16, 2, 0), shuffle_buffer=1)
    with pytest.raises(LitGPTError, match=r"d.jsonl line 36: bad JSON"):
        for _ in zip(range(10_000), stream, strict=False):
            pass


def test_the_cli_reports_a_wrong_typed_text_in_one_line(tmp_path):
    source = jsonl(tmp_path / "d.jsonl", docs_with('{"text": 42}'))
    r = run_cli("prepare", "--config", str(ROOT / "configs" / "shakespeare_bpe.yaml"), "--data.source", source,
                "--data.bpe_vocab_size", "300", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "line 4: 'text' is 42" in errors[0] and "Traceback" not in r.stderr


KILLED_MID_PREPARE = """
import pathlib, sys, time
import lit_gpt.prepare as p

def stuck(*args, **kwargs):  # tokenizing, with the temporary folder half written
    pathlib.Path(sys.argv[2]).touch()
    time.sleep(600)

p.tokenize = stuck
p.prepare(sys.argv[1], "bpe", sys.argv[3], bpe_vocab_size=300, num_proc=1)
"""


def test_the_next_prepare_removes_a_killed_prepares_temporary_folder_but_no_live_one(tmp_path):
    source = jsonl(tmp_path / "d.jsonl", [json.dumps({"text": d}) for d in DOCS])
    cache, marker = tmp_path / "cache", tmp_path / "started"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_MID_PREPARE, source, str(marker), str(cache)])
    try:
        deadline = time.monotonic() + 120
        while not marker.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the prepare did not start tokenizing"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: what an OOM kill or a lost node leaves
        proc.wait()
    (stale,) = [p for p in cache.iterdir() if ".tmp" in p.name]
    assert stale == temporary_folder(cache / stale.name.split(".tmp")[0], proc.pid)
    out = cache / stale.name.split(".tmp")[0]
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # another rank or run, working
    try:
        working = temporary_folder(out, live.pid)
        elsewhere = out.with_name(f"{out.name}.tmp-not-{socket.gethostname()}-{proc.pid}")  # a node on a shared disk
        for folder in (working, elsewhere):
            folder.mkdir()
        assert prepare(source, "bpe", cache, bpe_vocab_size=300, num_proc=1) == out
        assert not stale.exists() and working.is_dir() and elsewhere.is_dir()
    finally:
        live.kill()
        live.wait()
    assert (out / "meta.json").exists() and os.listdir(working) == []


def test_a_hub_dataset_offline_says_what_to_do(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}  # no network here: as a machine without one sees it
    r = run_cli("prepare", "--data.source", "hf:someone/some-dataset", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "offline mode is on (HF_DATASETS_OFFLINE=1)" in r.stderr and "'hf:someone/some-dataset'" in r.stderr
    assert "check the network" not in r.stderr  # offline on purpose: say how to provide the files
