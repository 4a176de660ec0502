"""lit-gpt evaluate: the loss, perplexity and bits per byte of any model on a text, every token scored once."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_cli
from test_export import TINY, write_checkpoint
from test_nanogpt import nanogpt_run, one_error_line
from test_train import scalars

from lit_gpt.corpus import shakespeare_text
from lit_gpt.evaluate import score_tokens
from lit_gpt.tokenizer import CharTokenizer


def test_every_token_is_scored_once_with_the_models_own_loss(tmp_path):
    model = write_checkpoint(tmp_path / "m.ckpt", TINY)  # block_size 16
    tok = CharTokenizer.from_text(shakespeare_text("hamlet"))
    text = shakespeare_text("hamlet")[:1000]
    tokens = torch.tensor(tok.encode(text))
    s = score_tokens(model, tokens, torch.as_tensor(tok.token_bytes()), batch_size=3)
    assert s["tokens"] == len(tokens) - 1 and s["bytes"] == len(text[1:].encode("utf-8"))
    # The same sum, window by window with the model's own loss: 62 whole windows of 16 and one of 7.
    expected = 0.0
    with torch.no_grad():
        for i in range(0, len(tokens) - 1, 16):
            x, y = tokens[i : i + 16][: len(tokens) - 1 - i], tokens[i + 1 : i + 17]
            expected += model(x[None], y[None])[1].item() * y.numel()
    assert math.isclose(s["nats"], expected, rel_tol=1e-5)


def test_evaluate_prints_and_writes_loss_ppl_and_bpb(tmp_path):
    write_checkpoint(tmp_path / "m.ckpt", TINY)
    (tmp_path / "t.txt").write_text(shakespeare_text("hamlet")[:3000], encoding="utf-8")
    r = run_cli("evaluate", "--checkpoint", "m.ckpt", "--data.source", "t.txt", "--out", "r/res.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((tmp_path / "r" / "res.json").read_text())
    assert res["tokens"] == 2999 and math.isclose(res["ppl"], math.exp(res["loss"]), rel_tol=1e-9)
    assert math.isclose(res["bpb"], res["loss"] / math.log(2) * res["tokens"] / res["bytes"], rel_tol=1e-9)
    assert f"loss     {res['loss']:.4f}" in r.stdout and "bpb" in r.stdout
    assert res["loss"] > math.log(20)  # random weights: no better than guessing among most of the characters

    r = run_cli("evaluate", "--checkpoint", "m.ckpt", "--data.source", "t.txt", "--log_dir", "tb", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    logged = scalars(tmp_path / "tb")
    assert logged["eval/loss"] == [(7, pytest.approx(res["loss"], rel=1e-6))]  # at the checkpoint's step
    assert set(logged) == {"eval/loss", "eval/ppl", "eval/bpb"}


def test_a_nanogpt_checkpoint_evaluates_and_bad_input_ends_in_one_line(tmp_path):
    nanogpt_run(tmp_path)
    (tmp_path / "t.txt").write_text("To be, or not to be, that is the question.\n" * 5, encoding="utf-8")
    r = run_cli("evaluate", "--checkpoint", "out-shakespeare-char", "--data.source", "t.txt", cwd=tmp_path)
    assert r.returncode == 0 and "ppl" in r.stdout, r.stderr[-2000:]

    (tmp_path / "odd.txt").write_text("naïve ☃ text", encoding="utf-8")
    r = run_cli("evaluate", "--checkpoint", "out-shakespeare-char", "--data.source", "odd.txt", cwd=tmp_path)
    assert "vocabulary lacks" in one_error_line(r) and "'☃'" in r.stderr
    r = run_cli("evaluate", "--checkpoint", "out-shakespeare-char", cwd=tmp_path)
    assert "give --data.source" in one_error_line(r)
