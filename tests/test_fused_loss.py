"""--model.loss_chunk_size: the same loss and gradients as the full logits, without keeping the logits."""

import os
import re
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from torch.nn import functional as F

from lit_gpt.fused_loss import linear_cross_entropy
from lit_gpt.model import GPT, GPTConfig


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])  # one token, a ragged last chunk, several, all in one
def test_equals_cross_entropy_of_the_full_logits_with_ignored_targets(chunk):
    torch.manual_seed(0)
    hidden = torch.randn(150, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 37, (150,))
    targets[::5] = -1  # ignored positions (padding)
    expected = F.cross_entropy(hidden @ weight.t(), targets, ignore_index=-1)
    grads = torch.autograd.grad(2.5 * expected, (hidden, weight))  # a scaled loss, as accumulation makes
    loss = linear_cross_entropy(hidden, weight, targets, chunk)
    torch.testing.assert_close(loss, expected)
    for got, want in zip(torch.autograd.grad(2.5 * loss, (hidden, weight)), grads, strict=True):
        torch.testing.assert_close(got, want)
    with torch.no_grad():  # validation's forward-only path
        torch.testing.assert_close(linear_cross_entropy(hidden, weight, targets, chunk), expected)


def saved_elements(model: GPT, x: torch.Tensor) -> int:
    """The largest tensor autograd keeps for the backward pass of one training step."""
    largest = [0]

    def pack(t):
        largest[0] = max(largest[0], t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x, x)[1].backward()
    return largest[0]


def test_a_model_trains_the_same_without_keeping_the_logits():
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=1000, block_size=32, n_layer=2, n_head=2, n_embd=32)
    full, chunked = GPT(config), GPT(config)
    chunked.load_state_dict(full.state_dict())
    chunked.loss_chunk_size = 16
    x = torch.randint(0, 1000, (8, 32))
    logits_size = x.numel() * config.vocab_size
    assert saved_elements(full, x) >= logits_size
    # No (tokens x vocab) tensor waits for the backward pass: the largest left is the MLP's (tokens x 4 n_embd).
    assert saved_elements(chunked, x) < logits_size / 4

    curves = []
    for model in (full, chunked):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(5):  # the same batch again and again: the loss must fall as it is memorised
            _, loss = model(x[:, :-1], x[:, 1:])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
        curves.append(losses)
    assert curves[0][-1] < curves[0][0] - 0.1  # it trains
    assert curves[1] == pytest.approx(curves[0], abs=1e-4)  # and the same way
    logits, _ = chunked(x)  # sampling still gets logits
    assert logits.shape == (8, 32, 1000)


def test_a_frozen_output_layer_gets_no_gradient():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=1, n_head=1, n_embd=16))
    model.loss_chunk_size = 8
    model.lm_head.weight.requires_grad_(False)  # tied: freezes the embedding too (--model.freeze_embeddings)
    model(torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16)))[1].backward()
    assert model.lm_head.weight.grad is None
    assert model.transformer.h[0].attn.c_attn.weight.grad is not None


def test_bf16_autocast_matches_the_full_logits():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=300, block_size=16, n_layer=1, n_head=2, n_embd=32))
    x = torch.randint(0, 300, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(x, x)[1]
        model.loss_chunk_size = 8
        chunked = model(x, x)[1]
    assert chunked.dtype == torch.float32
    assert abs(chunked.item() - full.item()) < 2e-3


def test_bench_loss_chunks_reports_the_same_loss_in_less_memory(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_loss_chunks.py"), "--tiny", "--chunks", "0,32"]
    cmd += ["--batch", "16", "--steps", "2", "--rounds", "1"]
    r = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = re.findall(
        r"^\| (.+?) \| off \| ([\d,]+) MiB \| ([\d,]+) MiB \| [\d,]+ \| [\d.]+x \| ([\d.]+) \|$", r.stdout, re.M
    )
    assert [name for name, *_ in rows] == ["full logits (nanoGPT)", "chunks of 32 tokens"], r.stdout
    (_, _, full_above, full_loss), (_, _, chunked_above, chunked_loss) = rows
    assert chunked_loss == full_loss
    # 16 x 64 tokens x 4096 vocab: 16 MiB of fp32 logits, and their gradient, are never allocated
    assert int(chunked_above.replace(",", "")) < int(full_above.replace(",", ""))
