"""lit-gpt export: Hugging Face GPT-2 folders that transformers loads with the same logits, lit-gpt safetensors
folders that init_from reads back, LoRA merged on the way out."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from lit_gpt.corpus import shakespeare_text
from lit_gpt.errors import LitGPTError
from lit_gpt.export import export
from lit_gpt.init_from import build_model, load_pretrained, target_config
from lit_gpt.lora import apply_lora
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.tokenizer import CharTokenizer

transformers = pytest.importorskip("transformers")


def write_checkpoint(path: Path, config: GPTConfig, lora: bool = False) -> GPT:
    """A checkpoint laid out as the Trainer writes it (state_dict under 'model.', the lit_gpt section), with
    random weights; with ``lora`` the model carries trained-looking adapters. Returns the model (adapters unmerged)."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(shakespeare_text("hamlet"))
    model = GPT(replace_vocab(config, tok.vocab_size))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.1 if name.endswith("bias") else 1.0)  # nonzero biases and gains, to be checked too
    if lora:
        apply_lora(model, rank=2, alpha=4.0)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name.endswith("lora_B"):
                    p.normal_(0, 0.05)
    state = {"model." + k: v for k, v in model.state_dict().items()}
    ckpt = {
        "state_dict": state,
        "global_step": 7,
        "lit_gpt": {"model_config": asdict(model.config), "tokenizer": tok.to_dict()},
    }
    torch.save(ckpt, path)
    return model.eval()


def replace_vocab(config: GPTConfig, vocab: int) -> GPTConfig:
    from dataclasses import replace

    return replace(config, vocab_size=vocab)


TINY = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lora", [False, True], ids=["plain", "lora"])
def test_hf_export_loads_in_transformers_with_the_same_logits(tmp_path, bias, lora):
    from dataclasses import replace

    ours = write_checkpoint(tmp_path / "model.ckpt", replace(TINY, bias=bias), lora=lora)
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "hf"))  # the CLI's command, in-process
    assert {"config.json", "model.safetensors", "lit_gpt.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, ours(idx)[0], rtol=1e-5, atol=1e-5)
    # ... and it comes back through init_from (HF names, no adapters) with the same logits and tokenizer.
    pre = load_pretrained(tmp_path / "hf")
    again = build_model(pre, target_config(pre, replace(TINY, bias=bias))).eval()
    assert not any(".lora_" in k for k in again.state_dict())
    assert pre.tokenizer.to_dict()["kind"] == "char"
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], ours(idx)[0], rtol=1e-5, atol=1e-5)


def test_safetensors_export_round_trips_any_architecture(tmp_path):
    config = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32, norm="rmsnorm", mlp="swiglu", position="rotary")
    ours = write_checkpoint(tmp_path / "model.ckpt", config)
    r = run_cli("export", "--checkpoint", str(tmp_path / "model.ckpt"), "--out", str(tmp_path / "hf"), cwd=tmp_path)
    assert r.returncode == 2
    assert "not a GPT-2 that transformers can load" in r.stderr and "--format safetensors" in r.stderr
    assert not (tmp_path / "hf").exists()
    out = tmp_path / "lit"
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(out), format="safetensors")
    meta = json.loads((out / "lit_gpt.json").read_text())
    assert meta["format"] == "safetensors" and meta["model_config"]["mlp"] == "swiglu"
    pre = load_pretrained(out)
    again = build_model(pre, target_config(pre, config)).eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(again(idx)[0], ours(idx)[0])


def test_export_refuses_to_overwrite_other_folders(tmp_path):
    write_checkpoint(tmp_path / "model.ckpt", TINY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(LitGPTError, match="is not an earlier export"):
        export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "mine"))
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_a_char_models_hf_export_has_a_tokenizer_transformers_uses_as_lit_gpt_does(tmp_path):
    """AutoTokenizer gives lit-gpt's ids and text back (spaces, newlines, punctuation), and the text-generation
    pipeline's greedy continuation is lit-gpt's."""
    from lit_gpt.generate import generate_text

    ours = write_checkpoint(tmp_path / "char.ckpt", TINY)
    export(checkpoint=str(tmp_path / "char.ckpt"), out=str(tmp_path / "hf"), format="hf")
    tok = CharTokenizer.from_text(shakespeare_text("hamlet"))
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "HAMLET:\n  To be, or not to be; that's  the question!\n"
    ids = hf_tok(text)["input_ids"]
    assert ids == tok.encode(text) and hf_tok.decode(ids) == text and len(hf_tok) == tok.vocab_size

    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "hf"), device="cpu")
    prompt = "O, that"
    theirs = pipe(prompt, max_new_tokens=8, do_sample=False)[0]["generated_text"]
    assert theirs == generate_text(ours, tok, prompt, 8, temperature=0.0)


def test_a_gpt2_keeps_its_tanh_gelu_and_context_through_export(tmp_path):
    from conftest import tiny_gpt2

    hf = tiny_gpt2(tmp_path / "gpt2", activation="gelu_new")
    r = run_cli("export", "--checkpoint", "gpt2", "--out", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "n_positions 32, activation_function gelu_new" in r.stdout
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["activation_function"] == "gelu_new" and cfg["n_positions"] == 32
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(again(idx).logits, hf(idx).logits, rtol=1e-5, atol=1e-5)
