import json
import os

import numpy as np
import pytest
import torch

from lit_gpt.corpus import shakespeare_plays, shakespeare_text
from lit_gpt.data import FixedWindows, RandomWindows, Share, TextDataModule, prepare, window_starts
from lit_gpt.errors import LitGPTError
from lit_gpt.sources import resolve


def test_builtin_corpus_has_tiny_shakespeare_layout():
    plays = shakespeare_plays()
    assert len(plays) == 38 and "hamlet" in plays
    hamlet = plays["hamlet"]
    assert hamlet.startswith("BERNARDO:\nWho's there?\n\nFRANCISCO:\n")
    assert "#" not in hamlet and "**" not in hamlet and "_" not in hamlet and "\\" not in hamlet
    assert "To be, or not to be" in hamlet
    without = shakespeare_text("-hamlet")
    assert "To be, or not to be" not in without and len(without) > 4_000_000
    with pytest.raises(LitGPTError, match="no play named"):
        shakespeare_text("hamlett")


def test_prepare_reuses_the_cache_and_rebuilds_when_the_corpus_changes(tmp_path, corpus):
    src = tmp_path / "c.txt"
    src.write_text(corpus.read_text()[:20000])
    first = prepare(str(src), "char", tmp_path / "cache")
    meta = json.loads((first / "meta.json").read_text())
    assert meta["tokens"]["train"] + meta["tokens"]["val"] == 20000
    assert meta["tokens"]["val"] == 2000 and meta["dtype"] == "uint16"
    stamp = (first / "train.bin").stat().st_mtime_ns
    assert prepare(str(src), "char", tmp_path / "cache") == first
    assert (first / "train.bin").stat().st_mtime_ns == stamp  # reused, not rewritten
    src.write_text(corpus.read_text()[:20000] + "More text.\n")
    second = prepare(str(src), "char", tmp_path / "cache")
    assert second != first and (second / "meta.json").exists()
    assert not list((tmp_path / "cache").glob("*.tmp*"))  # nothing half-written left behind


def test_tokens_on_disk_decode_to_the_corpus(tmp_path, corpus):
    dm = TextDataModule(source=str(corpus), cache_dir=str(tmp_path), block_size=32)
    dm.setup()
    train = np.fromfile(dm.prepared_dir / "train.bin", dtype=dm.meta["dtype"])
    val = np.fromfile(dm.prepared_dir / "val.bin", dtype=dm.meta["dtype"])
    assert dm.tokenizer.decode(np.concatenate([train, val]).tolist()) == corpus.read_text()


def test_windows_are_reproducible_and_targets_are_shifted_inputs(tmp_path, corpus):
    dm = TextDataModule(source=str(corpus), cache_dir=str(tmp_path), block_size=32, batch_size=4)
    dm.setup()
    a = [b for b, _ in zip(dm.train_dataloader(), range(3), strict=False)]
    b = [b for b, _ in zip(dm.train_dataloader(), range(3), strict=False)]
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert xa.shape == (4, 32) and torch.equal(xa[:, 1:], ya[:, :-1])
    assert not torch.equal(a[0][0], a[1][0])


def test_the_global_batch_is_the_same_however_it_is_split(tmp_path, corpus):
    """Batch 8 on one process == 2 ranks x 4 == 4 per micro-batch x 2 accumulation steps == 2 loader workers."""
    path = prepare(str(corpus), "char", tmp_path) / "train.bin"

    def first_steps(**kw):
        it = iter(RandomWindows(path, "uint16", Share(16, seed=7, **kw)))
        return [next(it)[0] for _ in range(4)]

    single = first_steps(batch_size=8)
    ranks = [first_steps(batch_size=4, rank=r, world_size=2) for r in range(2)]
    accum = first_steps(batch_size=4, accumulate=2)
    for step in range(2):
        whole = single[step]
        assert torch.equal(torch.cat([ranks[0][step], ranks[1][step]]), whole)
        assert torch.equal(torch.cat([accum[2 * step], accum[2 * step + 1]]), whole)
    assert not torch.equal(ranks[0][0], ranks[1][0])  # ranks draw different windows
    # Resuming at step 1 continues the same stream.
    resumed = iter(RandomWindows(path, "uint16", Share(16, batch_size=8, seed=7, start_step=1)))
    assert torch.equal(next(resumed)[0], single[1])
    # Loader workers keep the order.
    loader = torch.utils.data.DataLoader(
        RandomWindows(path, "uint16", Share(16, batch_size=8, seed=7)), batch_size=None, num_workers=2
    )
    assert all(torch.equal(x, single[i]) for (x, _), i in zip(loader, range(3), strict=False))


def scored_windows(ds: FixedWindows) -> list[tuple[int, ...]]:
    """Each window a rank scores, as its tokens; padding (targets all ignored) left out."""
    out = []
    for i in range(len(ds)):
        x, y = ds[i]
        out += [tuple(row.tolist()) for row, t in zip(x, y, strict=True) if (t != -1).all()]
        assert (y != -1).all() or (y == -1).all()  # a batch is real or padding, never a mix
    return out


@pytest.mark.parametrize("n_batches", [1, 3, 4, 0])
def test_validation_windows_split_across_ranks_in_equal_counts(tmp_path, n_batches):
    path = tmp_path / "val.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)  # token i is i, so a window names its own position
    single = FixedWindows(path, "uint16", 16, 5, n_batches, 7, 0, 1)
    reference = sorted(scored_windows(single))
    assert len(single) == (n_batches or 13)  # the whole split: 62 windows of 16, in batches of 5
    for world in (2, 3, 5):
        ranks = [FixedWindows(path, "uint16", 16, 5, n_batches, 7, r, world) for r in range(world)]
        assert len({len(ds) for ds in ranks}) == 1, world  # every rank runs as many batches: FSDP would hang
        assert sorted(w for ds in ranks for w in scored_windows(ds)) == reference, world


def test_whole_split_validation_scores_every_token_once(tmp_path):
    path = tmp_path / "val.bin"
    np.arange(1000, dtype=np.uint16).tofile(path)
    ds = FixedWindows(path, "uint16", 16, 5, 0, 7, 0, 1)
    targets = torch.cat([ds[i][1].flatten() for i in range(len(ds))])
    assert targets.tolist() == list(range(1, 62 * 16 + 1))  # consecutive windows: each target once, in order


def test_window_starts_stay_in_range():
    starts = window_starts(1, 5, 10_000, 100)
    assert starts.min() >= 0 and starts.max() < 100


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "does not exist"),
        (b"", "is empty"),
        (b"   \n", "is empty"),
        (b"caf\xe9 au lait\n", "not UTF-8: byte 3 \\(line 1\\)"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "binary"),
    ],
)
def test_bad_sources_give_one_clear_error(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(LitGPTError, match=message):
        resolve(str(path)).check()  # what prepare (and so fit and `lit-gpt prepare`) runs before reading


def test_too_short_for_the_block_size(tmp_path):
    path = tmp_path / "short.txt"
    path.write_text("To be, or not to be: that is the question.\n" * 3)
    dm = TextDataModule(source=str(path), cache_dir=str(tmp_path / "c"), block_size=64)
    with pytest.raises(LitGPTError, match="fewer than block_size \\+ 1 = 65"):
        dm.setup()


def test_bad_data_config_lists_every_problem():
    with pytest.raises(LitGPTError) as e:
        TextDataModule(batch_size=0, val_fraction=1.5)
    assert "batch_size" in str(e.value) and "val_fraction" in str(e.value)


def test_an_unknown_tokenizer_is_reported_with_the_other_problems_before_anything_is_built(tmp_path, monkeypatch):
    from lit_gpt.lightning_cli import fit_cli

    monkeypatch.chdir(tmp_path)
    with pytest.raises(LitGPTError) as e:  # raised while checking the parsed config: no Trainer, no data read
        fit_cli(["fit", "--data.tokenizer", "sentencepiece", "--trainer.max_steps", "0"])
    assert "unknown tokenizer 'sentencepiece'" in str(e.value) and "max_steps" in str(e.value)
    with pytest.raises(LitGPTError, match="tokenizer file 'missing.json' does not exist"):
        TextDataModule(tokenizer="hf:missing.json")
    assert os.listdir(tmp_path) == []
