"""Muon beside AdamW, and the WSD schedule: which tensors each optimizer trains, what a bad option says, and that
the schedule has the shape a user asked for."""

import math

import pytest
import torch
from conftest import TINY, run_cli
from test_train import scalars
from torch import nn
from torch.optim._muon import _zeropower_via_newtonschulz

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_module import LitGPT
from lit_gpt.lora import apply_lora
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.optim import (
    Muon,
    configure_muon,
    muon_split,
    newton_schulz,
    newton_schulz_dtype,
    warmup_stable_decay,
)

CONFIG = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)
NS = ((3.4445, -4.775, 2.0315), 5, 1e-7)  # torch.optim.Muon's coefficients, steps and eps


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest_with_a_tied_head_once():
    model = GPT(CONFIG)
    muon, adamw = muon_split(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[-2] for p in muon} == {"c_attn", "c_proj", "c_fc"}
    assert all(p.dim() == 2 for p in muon) and len(muon) == 4 * CONFIG.n_layer
    adamw_names = [names[id(p)] for p in adamw]
    assert adamw_names.count("transformer.wte.weight") == 1  # tied to lm_head: one tensor, trained once
    assert "transformer.wpe.weight" in adamw_names and any(n.endswith(".bias") for n in adamw_names)
    assert len(muon) + len(adamw) == len(list(model.parameters()))


def test_frozen_weights_are_in_neither_optimizer_and_lora_adapters_go_to_adamw():
    model = GPT(CONFIG)
    for p in model.parameters():
        p.requires_grad_(False)
    apply_lora(model, rank=2, alpha=4.0, dropout=0.0)
    muon, adamw = muon_split(model)
    assert muon == [] and adamw and all(p.requires_grad for p in adamw)


def test_one_muon_adamw_step_changes_every_trained_tensor_and_its_state_round_trips():
    torch.manual_seed(0)
    model = GPT(CONFIG)
    opt = configure_muon(
        *muon_split(model), 1e-3, 0.1, (0.9, 0.99), muon_lr=0.02, muon_momentum=0.95, muon_weight_decay=0.0
    )
    x = torch.randint(0, 65, (2, 16))
    before = [p.detach().clone() for p in model.parameters()]
    model(x, x)[1].backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))
    state = opt.state_dict()
    assert len(state["state"]) == len(before)  # Muon's momentum and AdamW's moments, in one state dict
    fresh = configure_muon(
        *muon_split(model), 1e-3, 0.1, (0.9, 0.99), muon_lr=0.02, muon_momentum=0.95, muon_weight_decay=0.0
    )
    fresh.load_state_dict(state)
    assert fresh.muon.state is fresh.state and fresh.adamw.state is fresh.state
    buf = fresh.state[next(iter(muon_split(model)[0]))]["momentum_buffer"]
    assert buf.abs().sum() > 0


@pytest.mark.parametrize("shape", [(48, 16), (16, 48), (32, 32)], ids=["tall", "wide", "square"])
def test_newton_schulz_is_torchs_in_bf16_and_the_same_iteration_rounded_less_in_float32(shape):
    g = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert torch.equal(newton_schulz(g, *NS, torch.bfloat16), _zeropower_via_newtonschulz(g, *NS))
    exact = newton_schulz(g.double(), *NS, torch.float64)
    f32 = newton_schulz(g, *NS, torch.float32)
    bf16 = _zeropower_via_newtonschulz(g, *NS).double()
    assert f32.dtype == torch.float32 and f32.shape == g.shape
    f32_err, bf16_err = (f32.double() - exact).abs().max(), (bf16 - exact).abs().max()
    assert f32_err < 1e-5 and bf16_err > 1e-3  # the same iteration as torch's, without bf16's rounding
    s = torch.linalg.svdvals(f32)  # orthogonalised: Muon's quintic leaves the singular values near 1
    assert len(s) == min(shape) and s.min() > 0.5 and s.max() < 1.5


def test_newton_schulz_runs_in_the_runs_float32_or_float64_and_in_bf16_otherwise_unless_chosen():
    assert newton_schulz_dtype("32-true") == torch.float32 and newton_schulz_dtype("64-true") == torch.float64
    for precision in ("bf16-mixed", "bf16-true", "16-mixed"):
        assert newton_schulz_dtype(precision) == torch.bfloat16
    assert newton_schulz_dtype("32-true", "bfloat16") == torch.bfloat16
    assert newton_schulz_dtype("bf16-mixed", "float32") == torch.float32


def test_a_float32_muon_step_is_torchs_step_without_bf16s_rounding():
    torch.manual_seed(0)
    weights = [torch.randn(24, 8), torch.randn(8, 8)]
    grads = [torch.randn_like(w) for w in weights]
    steps = {}
    for dtype in (torch.float32, torch.bfloat16):
        params = [nn.Parameter(w.clone()) for w in weights]
        opt = Muon(params, lr=0.02, weight_decay=0.1, ns_dtype=dtype)
        for _ in range(2):  # the second step uses the momentum the first left
            for p, g in zip(params, grads, strict=True):
                p.grad = g.clone()
            opt.step()
        steps[dtype] = [p.detach() - w for p, w in zip(params, weights, strict=True)]
    for f32, bf16 in zip(steps[torch.float32], steps[torch.bfloat16], strict=True):
        assert not torch.equal(f32, bf16)
        assert (f32 - bf16).norm() < 0.05 * bf16.norm()  # bf16 rounds each product to 8 bits: a few % apart


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"muon_lr": 0.05}, "add --model.optimizer muon"),
        ({"optimizer": "muon", "muon_lr": 0.0}, "muon_lr must be > 0"),
        ({"optimizer": "muon", "muon_momentum": 1.0}, "muon_momentum must be in [0, 1)"),
        ({"optimizer": "muon", "config": GPTConfig(bigram=True)}, "use --model.optimizer adamw"),
        ({"muon_ns_dtype": "float32"}, "add --model.optimizer muon"),
        ({"optimizer": "muon", "muon_ns_dtype": "fp8"}, "muon_ns_dtype must be one of bfloat16, float32, float64"),
        ({"optimizer": "sgd"}, "optimizer must be one of adamw, muon"),
        ({"cooldown_fraction": 0.3}, "add --model.lr_schedule wsd"),
        ({"lr_schedule": "wsd", "cooldown_fraction": 1.5}, "cooldown_fraction must be in (0, 1]"),
    ],
)
def test_bad_optimizer_and_schedule_options_say_what_to_do(options, says):
    with pytest.raises(LitGPTError, match=r"invalid model config") as e:
        LitGPT(**options)
    assert says in str(e.value)


def test_wsd_warms_up_holds_then_cools_down_linearly_to_min_lr():
    lr = [warmup_stable_decay(s, 10, 100, 0.2, 0.1) for s in range(110)]
    assert lr[0] < lr[9] < 1.0 and lr[10:80] == [1.0] * 70
    assert lr[80] == 1.0 and lr[90] == pytest.approx(0.55) and lr[100:] == [0.1] * 10
    assert all(a >= b for a, b in zip(lr[80:], lr[81:], strict=False))


@pytest.mark.parametrize(
    "extra",
    [["--trainer.precision", "bf16-mixed"], ["--model.compile", "true"]],
    ids=["bf16-mixed", "compile"],
)
def test_muon_trains_under_bf16_mixed_and_compile(tmp_path, corpus, extra):
    steps = 30
    r = run_cli(
        "fit", *TINY, "--data.source", str(corpus), "--model.optimizer", "muon", "--trainer.max_steps", str(steps),
        "--trainer.val_check_interval", str(steps), "--trainer.log_every_n_steps", "1", "--sample.max_new_tokens",
        "0", "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.name", "muon", *extra,
        cwd=tmp_path, timeout=600,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert (r.stdout + r.stderr).count("optimizer: Muon on the blocks' matrices") == 1  # the split, printed once
    ns = "bfloat16" if "bf16-mixed" in extra else "float32"  # the run's precision, not always torch's bf16
    assert f"Newton-Schulz in {ns})" in r.stdout + r.stderr
    curve = [v for _, v in scalars(tmp_path / "runs" / "muon" / "version_0")["train/loss"]]
    assert len(curve) == steps and all(math.isfinite(v) for v in curve)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3
