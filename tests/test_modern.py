"""The modern block (rotary embeddings, RMSNorm, SwiGLU, QK-norm): off by default, relative positions, and it
trains, checkpoints and generates like GPT-2's block."""

import math
import re
from types import SimpleNamespace

import pytest
import torch
import yaml
from conftest import ROOT, TINY, assert_cached_logits_equal_full_forward, run_cli

from lit_gpt.checkpoints.read import load_model
from lit_gpt.generate import generate_tokens
from lit_gpt.model import GPT, GPTConfig, apply_rotary, config_problems, rotary_angles

MODERN = dict(position="rotary", norm="rmsnorm", mlp="swiglu")


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw)).eval()


def fit_config(config: str, tmp_path, corpus, *extra: str):
    """40 steps of ``configs/<config>.yaml`` at TINY's size on ``corpus``, validated at steps 20 and 40."""
    return run_cli(
        "fit", "--config", str(ROOT / "configs" / f"{config}.yaml"), *TINY, "--data.source", str(corpus),
        "--trainer.max_steps", "40", "--trainer.val_check_interval", "20", "--trainer.log_every_n_steps", "5",
        *extra, cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip


def scores(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rotary_angles(positions, q.size(-1))
    return apply_rotary(q, cos, sin) @ apply_rotary(k, cos, sin).transpose(-2, -1)  # (B, nh, T, T)


def test_rotary_attention_scores_depend_only_on_relative_position():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 10, 16), torch.randn(2, 3, 10, 16)
    pos = torch.arange(10)
    base = scores(q, k, pos)
    for shift in (1, 7, 123, 4000):
        torch.testing.assert_close(scores(q, k, pos + shift), base, atol=2e-3, rtol=1e-4)
    # ...and they do depend on it: spacing the tokens out changes every off-diagonal score.
    spread = scores(q, k, pos * 3)
    off = ~torch.eye(10, dtype=torch.bool)
    assert (spread - base)[..., off].abs().min() > 0
    torch.testing.assert_close(spread.diagonal(dim1=-2, dim2=-1), base.diagonal(dim1=-2, dim2=-1), atol=2e-3, rtol=1e-4)


def test_a_rotary_model_sees_order_and_only_relative_positions():
    torch.manual_seed(0)
    # One layer: with more, the causal mask alone lets later layers infer order.
    model = GPT(GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=32, position="rotary")).eval()
    idx = torch.randint(0, 50, (1, 12))
    shuffled = torch.cat([idx[:, :-1][:, torch.randperm(11)], idx[:, -1:]], dim=1)  # same tokens, same last one
    with torch.no_grad():
        # Without position information, the last token would attend to its prefix as a set: order would not show.
        assert not torch.allclose(model(idx)[0][:, -1], model(shuffled)[0][:, -1], atol=1e-4)
        # Rotary angles are absolute, but attention only sees their differences: the same window placed 7
        # positions later gives the same hidden states (learned positions would not).
        torch.testing.assert_close(model._hidden(idx, 7), model._hidden(idx, 0), atol=1e-4, rtol=1e-4)


def test_rotary_is_a_rotation():
    x = torch.randn(1, 2, 6, 8)
    cos, sin = rotary_angles(torch.arange(6), 8)
    y = apply_rotary(x, cos, sin)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0: no turn


def test_modern_block_is_off_by_default_and_has_gpt2s_parameter_count():
    assert GPTConfig().position == "learned" and GPTConfig().norm == "layernorm" and GPTConfig().mlp == "gelu"
    cpu = yaml.safe_load((ROOT / "configs" / "shakespeare_char_cpu.yaml").read_text())["model"]["config"]
    modern = yaml.safe_load((ROOT / "configs" / "modern_cpu.yaml").read_text())["model"]["config"]
    assert {k: v for k, v in modern.items() if k not in cpu} == {**MODERN, "qk_norm": False}
    assert {k: modern[k] for k in cpu} == cpu  # the same shape and everything else
    a, b = GPT(GPTConfig(vocab_size=65, **cpu)), GPT(GPTConfig(vocab_size=65, **modern))
    assert abs(b.num_params() / a.num_params() - 1) < 0.01
    names = set(b.state_dict())
    assert "transformer.wpe.weight" not in names and "transformer.h.0.mlp.c_fc.weight" in names
    assert b.transformer.h[0].mlp.c_fc.weight.shape == (2 * 344, 128)  # gate and value: 8/3 x 128 -> 344 each


@pytest.mark.parametrize("qk_norm", [False, True])
def test_modern_kv_cache_logits_equal_full_forward(qk_norm):
    assert_cached_logits_equal_full_forward(tiny(**MODERN, qk_norm=qk_norm))


def test_modern_cached_and_uncached_greedy_generation_agree():
    model = tiny(**MODERN, qk_norm=True)
    idx = torch.randint(0, 50, (2, 4))
    with_cache = torch.stack(list(generate_tokens(model, idx, 12, temperature=0, use_cache=True)), 1)
    without = torch.stack(list(generate_tokens(model, idx, 12, temperature=0, use_cache=False)), 1)
    assert torch.equal(with_cache, without)
    assert len(list(generate_tokens(model, idx, 40, temperature=1.0, top_k=5))) == 40  # past block_size


def test_modern_model_is_causal_and_starts_at_ln_vocab():
    model = tiny(**MODERN, qk_norm=True)
    idx = torch.randint(0, 50, (8, 16))
    changed = idx.clone()
    changed[:, 10:] = (changed[:, 10:] + 7) % 50
    torch.testing.assert_close(model(idx)[0][:, :10], model(changed)[0][:, :10])
    _, loss = model(idx, torch.randint(0, 50, (8, 16)))
    assert abs(loss.item() - math.log(50)) < 0.1


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(norm="batchnorm"), "norm must be one of layernorm, rmsnorm, none"),
        (dict(mlp="geglu"), "mlp must be one of"),
        (dict(position="alibi"), "position must be one of learned, rotary"),
        (dict(position="rotary", n_embd=30, n_head=10), "head size n_embd / n_head (3) must be even"),
        (dict(mlp_hidden=0), "mlp_hidden must be a positive integer"),
    ],
)
def test_bad_block_options_are_refused_in_one_line(kw, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GPTConfig(**kw)


def test_every_bad_block_option_is_listed_at_once():
    fields = {name: f.default for name, f in GPTConfig.__dataclass_fields__.items()}
    problems = config_problems(SimpleNamespace(**{**fields, "norm": "batchnorm", "mlp": "geglu", "init": "xavier"}))
    assert len(problems) == 3, problems


def test_a_bad_block_option_on_the_command_line_is_one_line(tmp_path):
    r = run_cli("fit", "--config", str(ROOT / "configs" / "modern_cpu.yaml"), "--model.config.norm", "batchnorm",
                cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "norm" in r.stderr


def test_modern_block_trains_checkpoints_and_generates(tmp_path, corpus):
    r = fit_config("modern_cpu", tmp_path, corpus, "--model.config.qk_norm", "true")
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "modern_cpu" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    saved = ckpt["lit_gpt"]["model_config"]
    assert (saved["position"], saved["norm"], saved["mlp"], saved["qk_norm"]) == ("rotary", "rmsnorm", "swiglu", True)
    from test_train import scalars

    losses = [v for _, v in scalars(run)["train/loss"]]
    val = [v for _, v in scalars(run)["val/loss"]]
    assert losses[-1] < losses[0] - 0.5 and val[-1] < val[0]
    # The checkpoint alone rebuilds the model; its cached and uncached samples agree.
    model, tokenizer, _ = load_model(run)
    assert model.config.position == "rotary"
    idx = torch.tensor([tokenizer.encode("KING:")])
    with_cache = torch.stack(list(generate_tokens(model, idx, 50, temperature=0, use_cache=True)), 1)
    without = torch.stack(list(generate_tokens(model, idx, 50, temperature=0, use_cache=False)), 1)
    assert torch.equal(with_cache, without)
    g = run_cli("generate", "--checkpoint", str(run), "--max_new_tokens", "60", "--prompt", "KING:", cwd=tmp_path)
    assert g.returncode == 0, g.stderr[-2000:]
    assert g.stdout.startswith("KING:") and len(g.stdout) >= 60
    # Resuming it with GPT-2's block is refused in one line, naming what differs.
    bad = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY, "--data.source", str(corpus),
        "--trainer.max_steps", "50", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"), cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2, bad.stderr[-2000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert "position is rotary in the checkpoint but learned here" in last and "Traceback" not in bad.stderr


def test_speedrun_options_relu2_softcap_and_zero_init():
    model = tiny(mlp="relu2", logit_softcap=3.0, zero_init_proj=True)
    x = torch.randn(4, 7, 32)
    mlp = model.transformer.h[0].mlp
    torch.testing.assert_close(mlp.act(x), torch.relu(x) ** 2)
    for block in model.transformer.h:  # each block starts as the identity
        assert not block.attn.c_proj.weight.any() and not block.mlp.c_proj.weight.any()
    idx = torch.randint(0, 50, (2, 16))
    h = torch.randn(2, 16, 32)
    block = model.transformer.h[0]
    torch.testing.assert_close(block(h), h)
    with torch.no_grad():
        model.lm_head.weight.mul_(1000.0)  # huge raw logits: the cap holds them inside (-3, 3)
    logits, _ = model(idx)
    assert logits.abs().max() <= 3.0 and logits.abs().max() > 2.5
    with pytest.raises(ValueError, match="logit_softcap must be a number >= 0"):
        GPTConfig(logit_softcap=-1.0)


def test_the_chunked_loss_and_soft_capping_are_refused_together():
    from lit_gpt.errors import LitGPTError
    from lit_gpt.lightning_module import LitGPT

    with pytest.raises(LitGPTError, match="loss_chunk_size does not soft-cap"):
        LitGPT(GPTConfig(logit_softcap=15.0), loss_chunk_size=64)


def test_the_cpu_speedrun_recipe_trains_with_every_choice_it_names(tmp_path, corpus):
    r = fit_config("speedrun_cpu", tmp_path, corpus, "--model.warmup_steps", "5")
    assert r.returncode == 0, r.stderr[-3000:]
    recipe = yaml.safe_load((ROOT / "configs" / "speedrun_cpu.yaml").read_text())
    run = tmp_path / "runs" / "speedrun_cpu" / "version_0"
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    saved, hp = ckpt["lit_gpt"]["model_config"], ckpt["hyper_parameters"]
    for key in ("position", "norm", "mlp", "qk_norm", "tie_weights", "logit_softcap", "zero_init_proj"):
        assert saved[key] == recipe["model"]["config"][key], key
    assert (hp["optimizer"], hp["lr_schedule"]) == (recipe["model"]["optimizer"], recipe["model"]["lr_schedule"])
    from test_train import scalars

    logged = scalars(run)
    losses = [v for _, v in logged["train/loss"]]
    assert losses[-1] < losses[0] - 0.5 and "val/bpb" in logged


def test_the_gpt2_speedrun_config_resolves_for_one_to_32_gpus(tmp_path):
    from lit_gpt.global_batch import accumulation_steps

    r = run_cli("fit", "--config", str(ROOT / "configs" / "speedrun_gpt2.yaml"), "--print_config", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    for line in ("optimizer: muon", "lr_schedule: wsd", "n_embd: 768", "tokens: 524288", "val_batches: 0"):
        assert line in r.stdout, line
    assert [accumulation_steps(524_288, 16, 1024, gpus) for gpus in (1, 8, 32)] == [32, 4, 1]
