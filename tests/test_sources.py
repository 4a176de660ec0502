"""Sources of every kind through datasets, the prepared cache, streaming and the sampling modes."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import ROOT, TINY, run_cli

import lit_gpt.prepare
from lit_gpt.bpe import EOT
from lit_gpt.data import (
    PermutedWindows,
    RandomWindows,
    Share,
    StreamingWindows,
    TextDataModule,
    permuted_starts,
    prepare,
)
from lit_gpt.errors import LitGPTError
from lit_gpt.sources import resolve
from lit_gpt.tokenizer import Tokenizer

DOCS = [f"Doc {i}. " + "To be, or not to be, that is the question. " * (1 + i % 5) for i in range(60)]


def tokens(out):
    meta = json.loads((out / "meta.json").read_text())
    ids = [np.fromfile(out / f"{s}.bin", dtype=meta["dtype"]) for s in ("train", "val") if (out / f"{s}.bin").exists()]
    return meta, Tokenizer.from_dict(meta["tokenizer"]), np.concatenate(ids).tolist()


def write(tmp_path, kind):
    """DOCS as a corpus of the given kind; returns the source string."""
    if kind == "jsonl":
        (tmp_path / "d.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n" for i, d in enumerate(DOCS)))
        return str(tmp_path / "d.jsonl")
    if kind == "json":
        (tmp_path / "d.json").write_text(json.dumps([{"text": d} for d in DOCS]))
        return str(tmp_path / "d.json")
    if kind == "parquet":
        pq.write_table(pa.table({"text": DOCS[:30]}), tmp_path / "a.parquet")
        pq.write_table(pa.table({"text": DOCS[30:]}), tmp_path / "b.parquet")
        return str(tmp_path / "*.parquet")
    if kind == "folder":
        (tmp_path / "books" / "sub").mkdir(parents=True)
        for i, d in enumerate(DOCS):
            (tmp_path / "books" / ("sub" if i % 2 else "") / f"{i:03d}.txt").write_text(d)
        return str(tmp_path / "books")
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["jsonl", "json", "parquet", "folder"])
def test_every_source_kind_round_trips_text_to_tokens_to_text(tmp_path, kind):
    source = write(tmp_path, kind)
    meta, tok, ids = tokens(prepare(source, "bpe", tmp_path / "cache", bpe_vocab_size=300, num_proc=1))
    decoded = tok.decode(ids)
    assert decoded.count(EOT) == len(DOCS) and decoded.endswith(EOT)
    assert sorted(decoded.split(EOT)[:-1]) == sorted(DOCS)  # a folder is read in path order; files keep theirs
    if kind != "folder":
        assert decoded == "".join(d + EOT for d in DOCS)


def test_a_single_text_file_is_read_by_lines_and_comes_back_exactly(tmp_path, corpus):
    meta, tok, ids = tokens(prepare(str(corpus), "bpe", tmp_path, bpe_vocab_size=400, num_proc=2))
    assert tok.decode(ids) == corpus.read_text()  # one document: no end-of-text inside
    assert resolve(str(corpus)).rows_are_documents is False


def test_a_hub_dataset_by_name_with_splits_and_a_text_field(tmp_path):
    # The hf:NAME path is load_dataset(NAME, subset, split=...): a local folder laid out like a Hub dataset.
    hub = tmp_path / "my-dataset"
    (hub / "data").mkdir(parents=True)
    for split, docs in (("train", DOCS[:50]), ("validation", DOCS[50:])):
        lines = "".join(json.dumps({"content": d}) + "\n" for d in docs)
        (hub / "data" / f"{split}-00000-of-00001.jsonl").write_text(lines)
    out = prepare(f"hf:{hub}", "bpe", tmp_path / "c", text_field="content", val_split="validation",
                  bpe_vocab_size=300, num_proc=1)  # fmt: skip
    meta, tok, _ = tokens(out)
    assert out.name.startswith("my-dataset-") and meta["documents"] == {"train": 50, "val": 10}
    val = np.fromfile(out / "val.bin", dtype=meta["dtype"]).tolist()
    assert tok.decode(val) == "".join(d + EOT for d in DOCS[50:])
    with pytest.raises(LitGPTError, match="has no column 'text'.*content"):
        prepare(f"hf:{hub}", "bpe", tmp_path / "c", bpe_vocab_size=300)
    with pytest.raises(LitGPTError, match="could not load dataset 'hf:"):
        prepare(f"hf:{hub}", "bpe", tmp_path / "c", text_field="content", split="nosuchsplit")


def test_a_separate_validation_source(tmp_path, corpus):
    val = tmp_path / "val.txt"
    val.write_text("Words for validation only.\n" * 20)
    meta, tok, _ = tokens(prepare(str(corpus), "char", tmp_path / "c", val_source=str(val)))
    assert meta["tokens"]["train"] == len(corpus.read_text()) and meta["tokens"]["val"] == len(val.read_text())
    with pytest.raises(LitGPTError, match="val_split names a split of an hf: dataset"):
        prepare(str(corpus), "char", tmp_path / "c", val_split="validation")  # it would validate on the training text


def test_a_folder_laid_out_like_a_hub_dataset_gives_its_splits(tmp_path, corpus):
    # train*, validation*, test* files, as datasets.load_dataset(folder) splits them: validation is never trained on,
    # test is left out, and fit says so in one line.
    text = corpus.read_text()
    folder = tmp_path / "books"
    folder.mkdir()
    (folder / "train.txt").write_text(text[:20_000])
    (folder / "validation.txt").write_text(text[20_000:23_000])
    (folder / "test.txt").write_text(text[23_000:25_000])
    meta, tok, ids = tokens(prepare(str(folder), "char", tmp_path / "c"))
    assert meta["tokens"] == {"train": 20_000, "val": 3_000}
    assert tok.decode(ids[20_000:]) == text[20_000:23_000]
    r = run_cli("fit", "--data.source", str(folder), "--trainer.max_steps", "1", *TINY, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    note = "is split by file name: training on its 1 train* file, validating on its 1 validation* file; 1 test* file"
    assert note in r.stdout, r.stdout[-2000:]
    r = run_cli("prepare", "--data.source", str(folder), cwd=tmp_path)
    assert r.returncode == 0 and note in r.stdout and "train 20,000 tokens, val 3,000 tokens" in r.stdout, r.stdout
    # A folder without split names: today's last 10%, saying so.
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "a.txt").write_text(text[:20_000])
    (plain / "b.txt").write_text(text[20_000:23_000])
    r = run_cli("fit", "--data.source", str(plain), "--trainer.max_steps", "1", *TINY, cwd=tmp_path)
    assert r.returncode == 0 and "has no files named train*/validation*: validating on the last 10%" in r.stdout
    # Streamed, the folder's train* files are the stream, its validation* files the held-out tokens.
    dm = TextDataModule(source=str(folder), tokenizer="bpe", bpe_vocab_size=300, streaming=True, val_tokens=100,
                        block_size=16, batch_size=4, cache_dir=str(tmp_path / "s"))  # fmt: skip
    dm.setup()
    assert dm._train_windows(Share(16, 4, 0, 0, 1)).source.files == (str(folder / "train.txt"),)
    assert dm.meta["split_files"] == {"train": 1, "validation": 1, "test": 1} and dm.meta["skip_documents"] == 0
    # Validation and test files but no training files: one line saying how to name them.
    (folder / "train.txt").unlink()
    with pytest.raises(LitGPTError, match="has validation\\* files and test\\* files but none named train"):
        prepare(str(folder), "char", tmp_path / "c")


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.mkdir() or p, "is a folder with no .txt, .jsonl, .json or .parquet files"),
        (lambda p: p.mkdir() or (p / "notes.md").write_text("# hi") and p, "is a folder with no .txt"),
        (lambda p: p / "*.jsonl", "matches no files"),
        (lambda p: p.mkdir() or (p / "a.txt").write_text("x") and (p / "b.jsonl").write_text("{}") and p, "mixes"),
        (lambda p: p.mkdir() or (p / "a.txt").write_bytes(b"caf\xe9\n") and p, "not UTF-8: byte 3"),
    ],
)
def test_bad_sources_give_one_clear_error(tmp_path, make, message):
    with pytest.raises(LitGPTError, match=message):
        resolve(str(make(tmp_path / "src"))).check()


def test_a_large_text_file_is_checked_in_chunks(tmp_path):
    from lit_gpt.sources import check_text_file

    path = tmp_path / "big.txt"
    path.write_bytes(b"line\n" * 1000 + "é".encode() + b"\xff rest\n")
    with pytest.raises(LitGPTError, match="byte 5002 \\(line 1001\\)"):
        check_text_file(path, chunk=1001)  # the bad byte and a split 'é' across chunk edges


def test_a_stale_cache_is_rebuilt_and_a_fresh_one_reused(tmp_path):
    source = write(tmp_path, "jsonl")
    first = prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=300, num_proc=1)
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=300, num_proc=1) == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp
    other_vocab = prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=320, num_proc=1)
    assert other_vocab != first
    with open(source, "a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    changed = prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=300, num_proc=1)
    assert changed not in (first, other_vocab)
    assert tokens(changed)[1].decode(tokens(changed)[2]).endswith("one more document" + EOT)


def test_an_interrupted_prepare_leaves_nothing_a_later_run_would_trust(tmp_path, monkeypatch):
    source = write(tmp_path, "jsonl")

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(lit_gpt.prepare, "tokenize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=300)
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["hf"]  # only datasets' own cache
    monkeypatch.undo()
    assert (prepare(source, "bpe", tmp_path / "c", bpe_vocab_size=300, num_proc=1) / "meta.json").exists()


def test_streaming_reads_windows_sharded_across_ranks(tmp_path):
    source = write(tmp_path, "jsonl")
    kw = dict(source=source, tokenizer="bpe", bpe_vocab_size=300, streaming=True, val_tokens=100, block_size=16,
              batch_size=4, cache_dir=str(tmp_path / "c"))  # fmt: skip
    dm = TextDataModule(**kw)
    dm.setup()
    meta = dm.meta
    assert meta["streaming"] and not (dm.prepared_dir / "train.bin").exists()
    assert meta["tokens"]["val"] >= 100 and 0 < meta["skip_documents"] < len(DOCS)
    src = resolve(source)
    skip = meta["skip_documents"]

    def batches(rank, world, start=0, n=3):
        it = iter(
            StreamingWindows(src, dm.tokenizer, dm.cache_dir, skip, Share(16, 4, 7, rank, world, start_step=start))
        )
        return [next(it) for _ in range(n)]

    r0, r1 = batches(0, 2), batches(1, 2)
    for x, y in r0 + r1:
        assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
        assert torch.equal(x[1:, 0], y[:-1, -1])  # consecutive windows: every token is a target once
    assert not torch.equal(r0[0][0], r1[0][0])  # ranks read different shards
    assert all(torch.equal(a[0], b[0]) for a, b in zip(r0, batches(0, 2), strict=True))  # reproducible
    assert torch.equal(batches(0, 2, start=1, n=1)[0][0], r0[1][0])  # a resumed run continues the stream
    # The held-out documents are not trained on: the first window starts after them.
    text = dm.tokenizer.decode(batches(0, 1, n=1)[0][0][0].tolist())
    assert text in "".join(d + EOT for d in DOCS[skip:])
    x, y = next(iter(dm.train_dataloader()))  # what fit reads: the stream, batch_size windows of block_size
    assert x.shape == (4, 16) and torch.equal(x[:, 1:], y[:, :-1])
    assert next(iter(dm.val_dataloader()))[0].shape == (4, 16)  # validation: the held-out tokens on disk
    with pytest.raises(LitGPTError, match="streaming needs a tokenizer other than char"):
        TextDataModule(**{**kw, "tokenizer": "char"})


def test_permutation_sampling_visits_every_window_once_per_epoch_disjoint_across_ranks(tmp_path, corpus):
    n_tokens, block = 1000, 16
    n_windows = (n_tokens - 1) // block
    per_step = 8
    steps = [permuted_starts(3, s, per_step, n_tokens, block) for s in range(n_windows // per_step)]
    seen = np.concatenate(steps)
    assert len(set(seen.tolist())) == len(seen) and seen.max() + block + 1 <= n_tokens  # no repeats in an epoch
    assert np.array_equal(permuted_starts(3, 2, per_step, n_tokens, block), steps[2])  # from (seed, step) alone
    assert not np.array_equal(permuted_starts(4, 2, per_step, n_tokens, block), steps[2])
    # Through the data module: two ranks split each global batch, so their windows never coincide.
    path = prepare(str(corpus), "char", tmp_path) / "train.bin"

    def first(cls, **kw):
        it = iter(cls(path, "uint16", Share(block, seed=7, **kw)))
        return [next(it)[0] for _ in range(5)]

    ranks = [first(PermutedWindows, batch_size=4, rank=r, world_size=2) for r in range(2)]
    single = first(PermutedWindows, batch_size=8)
    windows = {tuple(w.tolist()) for r in ranks for b in r for w in b}
    assert len(windows) == 2 * 5 * 4
    assert torch.equal(torch.cat([ranks[0][0], ranks[1][0]]), single[0])
    assert not torch.equal(single[0], first(RandomWindows, batch_size=8)[0])
    dm = TextDataModule(source=str(corpus), cache_dir=str(tmp_path), block_size=block, sampling="permutation")
    dm.setup()
    assert isinstance(dm.train_dataloader().dataset, PermutedWindows)


def test_bad_new_data_options_are_all_reported(tmp_path):
    with pytest.raises(LitGPTError) as e:
        TextDataModule(sampling="shuffled", bpe_vocab_size=0, num_proc=0)
    assert "sampling" in str(e.value) and "bpe_vocab_size" in str(e.value) and "num_proc" in str(e.value)


def test_prepare_command_then_bpe_training_and_generation(tmp_path, corpus):
    cfg = str(ROOT / "configs" / "shakespeare_bpe.yaml")
    small = ["--data.source", str(corpus), "--data.bpe_vocab_size", "512"]
    r = run_cli("prepare", "--config", cfg, *small, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "bpe tokenizer, uint16" in r.stdout and (tmp_path / "data").is_dir()
    r = run_cli("fit", "--config", cfg, *TINY, *small, "--trainer.max_steps", "6", "--trainer.val_check_interval", "6",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)
    assert ckpt["lit_gpt"]["tokenizer"]["kind"] == "bpe" and ckpt["lit_gpt"]["model_config"]["vocab_size"] >= 512
    r = run_cli("generate", "--checkpoint", str(next((tmp_path / "runs").rglob("last.ckpt"))), "--prompt", "HAMLET:",
                "--max_new_tokens", "20", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith("HAMLET:") and len(r.stdout) > len("HAMLET:") + 5
    r = run_cli("prepare", "--config", cfg, "--data.source", str(tmp_path / "nope.txt"), cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("lit-gpt: error:") and "does not exist" in r.stderr


def test_the_fineweb_config_prints_and_prepares_a_local_stand_in(tmp_path):
    cfg = str(ROOT / "configs" / "gpt2_124m_fineweb.yaml")
    r = run_cli("fit", "--config", cfg, "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "tokenizer: gpt2" in r.stdout and "HuggingFaceFW/fineweb" in r.stdout
    # FineWeb's own layout: parquet shards under sample/10BT/, the subset declared in the README's YAML header.
    hub = tmp_path / "fineweb-stand-in" / "sample" / "10BT"
    hub.mkdir(parents=True)
    (hub.parents[1] / "README.md").write_text(
        "---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n"
    )
    pq.write_table(pa.table({"text": DOCS, "id": [str(i) for i in range(len(DOCS))]}), hub / "000_00000.parquet")
    tok = tmp_path / "tokenizer.json"
    from lit_gpt.bpe import BPETokenizer

    BPETokenizer.train(DOCS, 300).save_pretrained(tok)
    r = run_cli("prepare", "--config", cfg, "--data.source", f"hf:{tmp_path / 'fineweb-stand-in'}",
                "--data.tokenizer", f"hf:{tok}", "--data.val_fraction", "0.1", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fineweb-stand-in-" in r.stdout and "hf tokenizer, uint16" in r.stdout


def test_fit_streams_a_corpus_through_the_cli(tmp_path):
    source = write(tmp_path, "jsonl")
    r = run_cli("fit", "--config", str(ROOT / "configs" / "shakespeare_bpe.yaml"), *TINY, "--data.source", source,
                "--data.bpe_vocab_size", "300", "--data.streaming", "true", "--data.val_tokens", "300",
                "--trainer.max_steps", "4", "--trainer.val_check_interval", "4", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    prepared = next((tmp_path / "data").glob("d-*"))
    assert not (prepared / "train.bin").exists() and (prepared / "val.bin").exists()  # trained from the stream
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 4 and ckpt["lit_gpt"]["tokenizer"]["kind"] == "bpe"
