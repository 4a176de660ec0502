"""Muon beside AdamW, and the WSD schedule: which tensors each optimizer trains, what a bad option says, and that
the schedule has the shape a user asked for."""

import math

import pytest
import torch
from conftest import TINY, run_cli
from test_train import scalars

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_module import LitGPT
from lit_gpt.lora import apply_lora
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.optim import configure_muon, muon_split, warmup_stable_decay

CONFIG = GPTConfig(vocab_size=65, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=True)


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


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ({"muon_lr": 0.05}, "add --model.optimizer muon"),
        ({"optimizer": "muon", "muon_lr": 0.0}, "muon_lr must be > 0"),
        ({"optimizer": "muon", "muon_momentum": 1.0}, "muon_momentum must be in [0, 1)"),
        ({"optimizer": "muon", "config": GPTConfig(bigram=True)}, "use --model.optimizer adamw"),
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
    curve = [v for _, v in scalars(tmp_path / "runs" / "muon" / "version_0")["train/loss"]]
    assert len(curve) == steps and all(math.isfinite(v) for v in curve)
    assert sum(curve[-5:]) / 5 < sum(curve[:5]) / 5 - 0.3
