"""Pretrained GPT-2 by name (``gpt2``, ``hf:OWNER/REPO``) for --model.init_from and generate.

This machine has no network, so the Hub is stood in for by its own cache: a tiny GPT-2 laid out as
``snapshot_download`` leaves a download, read by the real download code with HF_HUB_OFFLINE=1. What a user sees for
a name that cannot be downloaded is in tests/test_reliability.py."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli, tiny_gpt2

from lit_gpt.errors import LitGPTError
from lit_gpt.hub import hub_repo

pytest.importorskip("transformers")

COMMIT = "0123456789abcdef0123456789abcdef01234567"
# TINY without its model shape (n_head 2 would conflict with the Hub model's 4): the architecture is the Hub model's.
SHAPE = ("--model.config.n_layer", "--model.config.n_head", "--model.config.n_embd")
RUN = [a for i, a in enumerate(TINY) if a not in SHAPE and (i == 0 or TINY[i - 1] not in SHAPE)]


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, corpus) -> Path:
    """An HF_HUB_CACHE holding 'openai-community/gpt2' as a 2-layer GPT-2 with a 300-token byte-level BPE."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([corpus.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"])
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / "models--openai-community--gpt2"
    tiny_gpt2(repo / "snapshots" / COMMIT, activation="gelu_new", vocab=bpe.get_vocab_size(), tokenizer=bpe)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def offline(cache: Path) -> dict:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


def test_finetune_from_gpt2_by_name_then_sample_it(tmp_path, corpus, hub_cache):
    r = run_cli(
        "fit", *RUN, "--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0",
        "--data.source", str(corpus), "--model.init_from", "gpt2", "--trainer.max_steps", "3",
        "--trainer.val_check_interval", "3", "--model.learning_rate", "1e-4", cwd=tmp_path, env=offline(hub_cache),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    ckpt = torch.load(next((tmp_path / "runs").rglob("last.ckpt")), map_location="cpu", weights_only=True)
    assert ckpt["lit_gpt"]["tokenizer"]["kind"] == "hf"  # the Hub model's tokenizer, not a char one from the corpus
    assert ckpt["lit_gpt"]["model_config"]["n_head"] == 4  # its architecture, not GPTConfig's defaults

    # nanoGPT's eval_gpt2: the pretrained model's val loss on a corpus, tokenized with its own tokenizer. These random
    # weights predict the 300 tokens almost uniformly: ln(300) = 5.70 (a char tokenizer would give ln(~60) = 4.1).
    r = run_cli(
        "validate", *RUN, "--trainer.enable_progress_bar", "false", "--data.source", str(corpus),
        "--model.init_from", "gpt2", cwd=tmp_path, env=offline(hub_cache),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    val = float(re.search(r"val/loss\s*[│|]\s*([\d.]+)", r.stdout).group(1))
    assert abs(val - math.log(300)) < 0.1, r.stdout

    # nanoGPT's `sample.py --init_from=gpt2`, and a pinned revision: text comes out, decoded by the model's tokenizer
    for name in ("gpt2", f"hf:openai-community/gpt2@{COMMIT}"):
        r = run_cli(
            "generate", "--checkpoint", name, "--prompt", "KING:", "--max_new_tokens", "30", "--device", "cpu",
            cwd=tmp_path, env=offline(hub_cache),
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.startswith("KING:") and len(r.stdout) > len("KING:") + 10
        assert "--- 30 tokens" in r.stderr


def test_a_local_folder_wins_over_a_hub_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert hub_repo("gpt2") == ("openai-community/gpt2", None)
    assert hub_repo("hf:someone/model@v1") == ("someone/model", "v1")
    assert hub_repo("gpt3") is None  # an ordinary (missing) path
    (tmp_path / "gpt2").mkdir()
    assert hub_repo("gpt2") is None


def test_old_repositories_fall_back_to_pickled_weights(tmp_path, monkeypatch):
    import huggingface_hub

    from lit_gpt import hub

    calls = []

    def fake_download(repo, revision=None, allow_patterns=()):
        calls.append(list(allow_patterns))
        if "pytorch_model.bin" in allow_patterns:
            tiny_gpt2(tmp_path, safe=False)
        else:
            (tmp_path / "config.json").write_text("{}")
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    hub._download.cache_clear()
    try:
        assert hub.resolve("hf:someone/old-gpt2") == tmp_path
    finally:
        hub._download.cache_clear()
    assert "config.json" in calls[0] and "model.safetensors" in calls[0] and "pytorch_model.bin" not in calls[0]
    assert calls[1] == ["pytorch_model.bin"]
    with pytest.raises(LitGPTError, match="does not exist"):  # a plain missing path is still a path
        from lit_gpt.init_from import load_pretrained

        load_pretrained(tmp_path / "missing")
