import math
import sys

import pytest
import torch
from conftest import ROOT, assert_cached_logits_equal_full_forward

from lit_gpt.generate import generate_tokens
from lit_gpt.model import GPT, GPTConfig

sys.path.insert(0, str(ROOT / "scripts"))
import nanogpt_reference  # noqa: E402  (nanoGPT's model.py; scripts/bench_train.py times it)


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, **kw)).eval()


def test_parameter_names_and_shapes_are_nanogpts():
    model = tiny()
    C, V, T = 32, 50, 16
    expected = {"transformer.wte.weight": (V, C), "transformer.wpe.weight": (T, C), "lm_head.weight": (V, C)}
    for i in range(2):
        p = f"transformer.h.{i}."
        expected |= {
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (3 * C, C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (4 * C, C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (C, 4 * C), p + "mlp.c_proj.bias": (C,),
        }  # fmt: skip
    expected |= {"transformer.ln_f.weight": (C,), "transformer.ln_f.bias": (C,)}
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected
    no_bias = {k for k in tiny(bias=False).state_dict() if k.endswith("bias")}
    assert no_bias == set()


@pytest.mark.parametrize("bias,flash", [(True, False), (False, False), (True, True)])
def test_a_nanogpt_checkpoint_loads_strictly_and_gives_nanogpts_logits_and_loss(bias, flash):
    torch.manual_seed(0)
    shape = dict(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32, bias=bias)
    theirs = nanogpt_reference.GPT(nanogpt_reference.GPTConfig(**shape, flash=flash)).eval()
    for p in theirs.parameters():  # away from the init (LayerNorm gains of 1, zero biases), so every weight counts
        torch.nn.init.normal_(p, std=0.2)
    ours = GPT(GPTConfig(**shape)).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)  # nanoGPT's ckpt["model"], as train.py saves it
    idx, targets = torch.randint(0, 50, (3, 16)), torch.randint(0, 50, (3, 16))
    with torch.no_grad():
        their_logits, their_loss = theirs(idx, targets)
        our_logits, our_loss = ours(idx, targets)
        torch.testing.assert_close(our_logits, their_logits, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(our_loss, their_loss, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours(idx)[0][:, -1:], theirs(idx)[0], atol=1e-5, rtol=1e-5)  # sampling's logits


def test_state_dict_round_trip_gives_same_logits():
    a, b = tiny(), tiny(dropout=0.1)
    torch.manual_seed(1)
    b.load_state_dict(a.state_dict(), strict=True)
    b.eval()
    idx = torch.randint(0, 50, (2, 16))
    torch.testing.assert_close(a(idx)[0], b(idx)[0])


def test_weights_are_tied_and_initialised_like_gpt2():
    model = GPT(GPTConfig(vocab_size=100, block_size=16, n_layer=8, n_head=4, n_embd=256))
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    std = model.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std - 0.02) < 0.002
    proj = model.transformer.h[0].mlp.c_proj.weight.std().item()
    assert abs(proj - 0.02 / math.sqrt(16)) < 0.001


@pytest.mark.parametrize("n_embd", [128, 768])
def test_neox_init_scales_with_the_width_and_meets_gpt2s_near_768(n_embd):
    config = GPTConfig(vocab_size=100, block_size=16, n_layer=4, n_head=4, n_embd=n_embd, init="neox")
    model = GPT(config)
    std = math.sqrt(2 / (5 * n_embd))  # 0.056 at 128 wide, 0.023 at 768
    for weight in (
        model.transformer.wte.weight,
        model.transformer.wpe.weight,
        model.transformer.h[0].attn.c_attn.weight,
    ):
        assert abs(weight.std().item() - std) < 0.05 * std
    for proj in (model.transformer.h[0].attn.c_proj.weight, model.transformer.h[3].mlp.c_proj.weight):
        assert abs(proj.std().item() - 2 / (4 * math.sqrt(n_embd))) < 0.05 * std
    assert model.lm_head.weight.data_ptr() == model.transformer.wte.weight.data_ptr()
    if n_embd == 768:
        assert abs(std - 0.02) < 0.004  # GPT-2's fixed 0.02 is about right at GPT-2's width, not at 128


def test_causal_later_tokens_do_not_change_earlier_logits():
    model = tiny()
    idx = torch.randint(0, 50, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 7) % 50
    a, b = model(idx)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_initial_loss_is_about_ln_vocab():
    model = tiny()
    idx = torch.randint(0, 50, (8, 16))
    _, loss = model(idx, torch.randint(0, 50, (8, 16)))
    assert abs(loss.item() - math.log(50)) < 0.1


def test_sequence_longer_than_block_size_is_refused():
    with pytest.raises(ValueError, match="longer than block_size"):
        tiny()(torch.zeros(1, 17, dtype=torch.long))


def test_kv_cache_logits_equal_full_forward():
    assert_cached_logits_equal_full_forward(tiny())


def test_cached_and_uncached_greedy_generation_agree_within_block():
    model = tiny()
    idx = torch.randint(0, 50, (2, 4))
    with_cache = torch.stack(list(generate_tokens(model, idx, 12, temperature=0, use_cache=True)), 1)
    without = torch.stack(list(generate_tokens(model, idx, 12, temperature=0, use_cache=False)), 1)
    assert torch.equal(with_cache, without)
    # Past block_size the cache slides; generation goes on without error.
    assert len(list(generate_tokens(model, idx, 40, temperature=1.0, top_k=5))) == 40


def test_flops_per_token_matches_the_formula():
    model = tiny()
    n = sum(p.numel() for p in model.parameters()) - 16 * 32
    assert model.num_params() == n
    assert model.flops_per_token() == 6 * n + 12 * 2 * 32 * 16


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(n_embd=30, n_head=4), "divisible"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(dropout=1.5), "dropout"),
    ],
)
def test_bad_config_is_refused_with_a_clear_message(kw, message):
    with pytest.raises(ValueError, match=message):
        GPTConfig(**kw)
