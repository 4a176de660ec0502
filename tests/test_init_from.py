"""--model.init_from, export and generate keep what the user trained: an untied output layer (the lecture's
``tie_weights: false``) and a non-default MLP width survive every round trip; damaged folders, options that the
pretrained model overrides and a missing --checkpoint end in one line that says what to do."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli, tiny_gpt2

from lit_gpt.corpus import shakespeare_text
from lit_gpt.errors import LitGPTError
from lit_gpt.export import export
from lit_gpt.finetune import apply_finetune
from lit_gpt.init_from import architecture_conflicts, build_model, load_pretrained, target_config
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.tokenizer import CharTokenizer

transformers = pytest.importorskip("transformers")

TINY = GPTConfig(block_size=16, n_layer=2, n_head=2, n_embd=32)
UNTIED = replace(TINY, tie_weights=False)
# configs/lecture/5_residual.yaml's block: no norms, a ReLU MLP, PyTorch's initialisation, its own output layer.
LECTURE_5 = GPTConfig(
    block_size=8, n_layer=3, n_head=4, n_embd=32, mlp="relu", norm="none", tie_weights=False, init="pytorch"
)


def write_checkpoint(path: Path, config: GPTConfig) -> GPT:
    """A checkpoint as the Trainer writes it, whose output layer (when untied) is far from the token embedding, as
    after training: loading wte in its place changes every logit."""
    torch.manual_seed(0)
    tok = CharTokenizer.from_text(shakespeare_text("hamlet"))
    model = GPT(replace(config, vocab_size=tok.vocab_size))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "ln" in name:
                p.normal_(0, 0.1 if name.endswith("bias") else 1.0)
        if model.lm_head is not None and not config.tie_weights:
            model.lm_head.weight.normal_(0, 0.5)
    ckpt = {
        "state_dict": {"model." + k: v for k, v in model.state_dict().items()},
        "global_step": 30,
        "lit_gpt": {"model_config": asdict(model.config), "tokenizer": tok.to_dict()},
    }
    torch.save(ckpt, path)
    return model.eval()


def logits(model: GPT, idx: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(idx)[0]


@pytest.mark.parametrize("config", [UNTIED, LECTURE_5], ids=["gpt2-block", "lecture-5"])
def test_an_untied_output_layer_survives_init_from(tmp_path, config):
    ours = write_checkpoint(tmp_path / "model.ckpt", config)
    pre = load_pretrained(tmp_path / "model.ckpt")
    assert "lm_head.weight" in pre.state
    again = build_model(pre, target_config(pre, config))
    assert not again.config.tie_weights and again.lm_head.weight is not again.transformer.wte.weight
    idx = torch.randint(0, ours.config.vocab_size, (2, config.block_size))
    torch.testing.assert_close(logits(again, idx), logits(ours, idx))
    # Padded to a larger vocabulary, the untied output layer keeps its rows; the new ones are its mean row.
    padded = build_model(pre, target_config(pre, replace(config, vocab_size=ours.config.vocab_size + 4)))
    torch.testing.assert_close(logits(padded, idx)[..., : ours.config.vocab_size], logits(ours, idx))
    torch.testing.assert_close(padded.lm_head.weight[-1], ours.lm_head.weight.mean(0))


def test_an_untied_model_exports_to_transformers_and_back(tmp_path):
    ours = write_checkpoint(tmp_path / "model.ckpt", UNTIED)
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tie_word_embeddings"] is False
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, logits(ours, idx), rtol=1e-5, atol=1e-5)
    # Back through init_from, from the export and from the folder as a plain Hugging Face one (config.json's
    # tie_word_embeddings is what says the output layer is its own).
    for folder in (tmp_path / "hf", tmp_path / "plain"):
        if folder.name == "plain":
            hf.save_pretrained(folder)
        pre = load_pretrained(folder)
        assert not pre.config.tie_weights
        again = build_model(pre, target_config(pre, UNTIED))
        torch.testing.assert_close(logits(again, idx), logits(ours, idx), rtol=1e-5, atol=1e-5)


def test_an_untied_model_exports_to_safetensors_and_back(tmp_path):
    from safetensors.torch import load_file

    ours = write_checkpoint(tmp_path / "model.ckpt", LECTURE_5)
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "lit"), format="safetensors")
    assert "lm_head.weight" in load_file(tmp_path / "lit" / "model.safetensors")
    pre = load_pretrained(tmp_path / "lit")
    again = build_model(pre, target_config(pre, LECTURE_5))
    idx = torch.randint(0, ours.config.vocab_size, (2, 8))
    torch.testing.assert_close(logits(again, idx), logits(ours, idx))


def test_an_mlp_width_other_than_4x_exports_as_n_inner_and_loads_back(tmp_path):
    config = replace(TINY, mlp_hidden=48, bias=False)  # no biases: the export writes zero ones of the MLP's width
    ours = write_checkpoint(tmp_path / "model.ckpt", config)
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "hf"))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["n_inner"] == 48
    hf = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    idx = torch.randint(0, ours.config.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, logits(ours, idx), rtol=1e-5, atol=1e-5)
    hf.save_pretrained(tmp_path / "plain")  # a Hugging Face GPT-2 with n_inner set, no lit_gpt.json
    pre = load_pretrained(tmp_path / "plain")
    assert pre.config.mlp_hidden == 48
    torch.testing.assert_close(logits(build_model(pre, target_config(pre, TINY)), idx), logits(ours, idx))


def test_freeze_embeddings_freezes_an_untied_output_layer():
    torch.manual_seed(0)
    model = GPT(replace(UNTIED, vocab_size=50))
    apply_finetune(model, freeze_embeddings=True)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {"transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"}
    before = model.lm_head.weight.detach().clone()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    x = torch.randint(0, 50, (4, 16))
    model(x, x)[1].backward()
    opt.step()
    assert torch.equal(model.lm_head.weight, before)


def test_only_options_that_ask_for_another_architecture_conflict(tmp_path):
    write_checkpoint(tmp_path / "model.ckpt", TINY)
    pre = load_pretrained(tmp_path / "model.ckpt")
    # Defaults (n_layer 4, n_head 4, n_embd 128) are not the user's choice; the checkpoint's own values are fine.
    assert architecture_conflicts(pre, {"n_layer": 4, "n_embd": 32, "block_size": 8, "dropout": 0.1}) == []
    assert architecture_conflicts(pre, {"mlp_hidden": 128}) == []  # 4 x n_embd, spelt out
    # The CPU configs' init: neox, with any pretrained weights: the weights replace the initialisation.
    assert architecture_conflicts(pre, {"init": "neox"}) == []
    found = architecture_conflicts(pre, {"n_layer": 6, "position": "rotary", "tie_weights": False})
    assert [p.split(" conflicts")[0] for p in found] == [
        "model.config.n_layer 6",
        "model.config.tie_weights false",
        "model.config.position rotary",
    ]
    with pytest.raises(LitGPTError, match="n_layer 6 conflicts with .*'s 2: the architecture comes from"):
        target_config(pre, replace(TINY, n_layer=6))


def test_explicit_architecture_options_are_refused_with_init_from(tmp_path, corpus):
    write_checkpoint(tmp_path / "pre.ckpt", TINY)
    config = str(ROOT / "configs" / "finetune_hamlet.yaml")
    r = run_cli(
        "fit", "--config", config, "--model.init_from", str(tmp_path / "pre.ckpt"),
        "--model.config.n_layer", "6", "--model.config.n_embd", "64", "--model.config.position", "rotary",
        "--data.source", str(corpus), "--data.cache_dir", str(tmp_path / "data"), cwd=tmp_path,
    )  # fmt: skip
    line = one_error_line(r)
    assert f"model.config.n_layer 6 conflicts with lit-gpt checkpoint {tmp_path / 'pre.ckpt'}'s 2" in line
    assert "model.config.n_embd 64 conflicts" in line and "model.config.position rotary conflicts" in line
    assert line.endswith("the architecture comes from --model.init_from; drop these options")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()  # refused before any work


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def _bad_json(folder: Path) -> None:
    (folder / "config.json").write_text('{"model_type": "gpt2", "n_layer": ')


def _no_n_layer(folder: Path) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["n_layer"]
    (folder / "config.json").write_text(json.dumps(cfg))


def _cut_in_half(folder: Path) -> None:
    raw = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(raw[: len(raw) // 2])


DAMAGED = {
    "config-not-json": (_bad_json, "fit", "config.json is damaged (JSONDecodeError"),
    "config-without-n_layer": (_no_n_layer, "fit", "config.json has no n_layer: it is incomplete"),
    "weights-cut-in-half": (_cut_in_half, "export", "model.safetensors is damaged or incomplete"),
}


@pytest.mark.parametrize("name", list(DAMAGED))
def test_a_damaged_gpt2_folder_ends_in_one_line(name, tmp_path, corpus):
    damage, command, expect = DAMAGED[name]
    folder = tmp_path / "gpt2-tiny"
    tiny_gpt2(folder)
    damage(folder)
    if command == "fit":
        args = ["fit", "--model.init_from", str(folder), "--data.source", str(corpus)]
        args += ["--data.cache_dir", str(tmp_path / "data"), "--trainer.max_steps", "1"]
    else:
        args = ["export", "--checkpoint", str(folder), "--out", str(tmp_path / "out")]
    line = one_error_line(run_cli(*args, cwd=tmp_path))
    assert f"{folder}/" in line and expect in line, line
    assert line.endswith("download the complete folder again (e.g. with huggingface-cli download, or save_pretrained)")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_a_damaged_export_says_export_again(tmp_path):
    write_checkpoint(tmp_path / "model.ckpt", TINY)
    export(checkpoint=str(tmp_path / "model.ckpt"), out=str(tmp_path / "exp"))
    (tmp_path / "exp" / "lit_gpt.json").write_text("{")
    with pytest.raises(LitGPTError, match=r"lit_gpt.json is damaged .*: export the checkpoint again with lit-gpt"):
        load_pretrained(tmp_path / "exp")


def test_a_damaged_hub_download_says_to_delete_the_cached_copy(tmp_path):
    repo = tmp_path / "hub" / "models--openai-community--gpt2"
    folder = repo / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    tiny_gpt2(folder)
    _cut_in_half(folder)
    with pytest.raises(LitGPTError, match=f"model.safetensors is damaged .*: delete {repo} and run again"):
        load_pretrained(folder)


def test_export_names_its_own_option_for_a_missing_checkpoint(tmp_path):
    with pytest.raises(LitGPTError, match=r"^--checkpoint '.*nope' does not exist"):
        export(checkpoint=str(tmp_path / "nope"), out=str(tmp_path / "out"))
    with pytest.raises(LitGPTError, match=r"^--model.init_from '.*nope' does not exist"):
        load_pretrained(tmp_path / "nope")
