"""Pretrain, then finetune: --model.init_from (lit-gpt checkpoints, exports, Hugging Face GPT-2 folders), the
tokenizer travelling with the weights, unknown characters, freezing and LoRA."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TINY, run_cli, tiny_gpt2

from lit_gpt.errors import LitGPTError
from lit_gpt.init_from import build_model, load_pretrained, target_config
from lit_gpt.lora import LoRALinear, apply_lora, merge_lora
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.optim import configure_adamw

transformers = pytest.importorskip("transformers")

QUIET = ["--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0"]
# TINY without its model shape, for a pretrained model of another shape (tiny_gpt2 has 4 heads, TINY asks for 2).
SHAPE = ("--model.config.n_layer", "--model.config.n_head", "--model.config.n_embd")
RUN = [a for i, a in enumerate(TINY) if a not in SHAPE and (i == 0 or TINY[i - 1] not in SHAPE)]


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pytorch_model.bin"])
@pytest.mark.parametrize("vocab_size", [None, 128], ids=["unpadded", "padded"])
def test_gpt2_folder_gives_hf_logits(tmp_path, safe, vocab_size):
    hf = tiny_gpt2(tmp_path, safe=safe)
    pre = load_pretrained(tmp_path)
    model = build_model(pre, target_config(pre, GPTConfig(block_size=32, vocab_size=vocab_size))).eval()
    assert model.config.vocab_size == (vocab_size or 101)
    idx = torch.randint(0, 101, (2, 32))
    with torch.no_grad():
        ours, theirs = model(idx)[0], hf(idx).logits
    torch.testing.assert_close(ours[..., :101], theirs, rtol=1e-5, atol=1e-5)
    if vocab_size:  # padded rows are the mean embedding: they take little probability
        assert ours.softmax(-1)[..., 101:].sum(-1).max() < 0.5


def test_gpt2_tanh_gelu_gives_hfs_logits_and_shorter_context_crops(tmp_path):
    hf = tiny_gpt2(tmp_path, activation="gelu_new")
    pre = load_pretrained(tmp_path)
    model = build_model(pre, target_config(pre, GPTConfig(block_size=16, dropout=0.1))).eval()
    assert model.config.block_size == 16 and model.config.dropout == 0.1 and model.config.mlp == "gelu_tanh"
    idx = torch.randint(0, 101, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], hf(idx).logits, rtol=1e-5, atol=1e-5)


def test_shape_mismatches_are_clear_errors(tmp_path):
    tiny_gpt2(tmp_path)
    pre = load_pretrained(tmp_path)
    match = "vocab_size 50 is smaller.*block_size 64 is longer than the pretrained model's 32"
    with pytest.raises(LitGPTError, match=match) as e:
        target_config(pre, GPTConfig(block_size=64, vocab_size=50))
    assert "\n" not in str(e.value)
    with pytest.raises(LitGPTError, match="the data's tokenizer has 500 tokens but the pretrained model only 101"):
        target_config(pre, GPTConfig(block_size=32), data_vocab=500)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(LitGPTError, match="only GPT-2"):
        load_pretrained(tmp_path)


def test_pickled_code_is_refused(tmp_path):
    tiny_gpt2(tmp_path, safe=False)
    torch.save({"evil": print}, tmp_path / "pytorch_model.bin")  # unpickling would look up a callable
    with pytest.raises(LitGPTError, match="refused to load"):
        load_pretrained(tmp_path)


def test_lora_trains_only_adapters_and_merges_to_the_same_outputs():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    base = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = apply_lora(model, rank=4, alpha=8.0)
    assert len(adapted) == 2 * 4  # c_attn, attn.c_proj, c_fc, mlp.c_proj per block
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    opt = configure_adamw(model, 1e-2, 0.0, (0.9, 0.99))
    x = torch.randint(0, 50, (4, 16))
    for _ in range(5):
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in base.items()), "a base weight changed under LoRA"
    assert any(state[k].abs().sum() > 0 for k in state if k.endswith("lora_B")), "the adapters did not train"
    model.eval()
    with torch.no_grad():
        before = model(x)[0]
        assert merge_lora(model) == 8
        after = model(x)[0]
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    assert set(model.state_dict()) == set(base)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(after, GPT(model.config).eval()(x)[0])


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> tuple[Path, Path]:
    """A tiny model pretrained by the CLI on every play but Hamlet: (working dir, checkpoint)."""
    cwd = tmp_path_factory.mktemp("pretrain")
    r = run_cli(
        "fit", *TINY, *QUIET, "--data.source", "shakespeare:-hamlet", "--trainer.max_steps", "12",
        "--trainer.val_check_interval", "12", "--trainer.logger.init_args.name", "pre", cwd=cwd,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    return cwd, next((cwd / "runs" / "pre").rglob("last.ckpt"))


def _ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_finetune_starts_at_step_0_with_the_checkpoint_tokenizer_and_frozen_layers_stay(pretrained, optimizer):
    cwd, ckpt = pretrained
    r = run_cli(
        "fit", *TINY, *QUIET, "--data.source", "shakespeare:hamlet", "--model.init_from", str(ckpt),
        "--model.freeze_embeddings", "true", "--model.freeze_layers", "1", "--model.config.dropout", "0.1",
        "--model.learning_rate", "3e-3", "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
        "--model.optimizer", optimizer, "--trainer.logger.init_args.name", f"ft-{optimizer}", cwd=cwd,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = _ckpt(ckpt), _ckpt(next((cwd / "runs" / f"ft-{optimizer}").rglob("last.ckpt")))
    assert after["global_step"] == 8  # weights only: a new run, not a resume at step 12
    assert after["lit_gpt"]["tokenizer"] == before["lit_gpt"]["tokenizer"]  # not rebuilt from Hamlet's characters
    assert after["lit_gpt"]["model_config"]["dropout"] == 0.1
    frozen = ("model.transformer.wte.", "model.transformer.wpe.", "model.lm_head.", "model.transformer.h.0.")
    for name, value in after["state_dict"].items():
        if name.startswith("val_loss"):
            continue
        same = torch.equal(value, before["state_dict"][name])
        assert same == name.startswith(frozen), f"{name}: frozen={name.startswith(frozen)} but unchanged={same}"


def test_lora_finetune_trains_only_adapters(pretrained):
    cwd, ckpt = pretrained
    r = run_cli(
        "fit", *TINY, *QUIET, "--data.source", "shakespeare:hamlet", "--model.init_from", str(ckpt),
        "--model.lora_rank", "4", "--model.lora_alpha", "8", "--model.learning_rate", "1e-2",
        "--trainer.max_steps", "6", "--trainer.val_check_interval", "6", "--trainer.logger.init_args.name", "lora",
        cwd=cwd,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    before, after = _ckpt(ckpt)["state_dict"], _ckpt(next((cwd / "runs" / "lora").rglob("last.ckpt")))["state_dict"]
    adapters = [k for k in after if ".lora_" in k]
    assert len(adapters) == 2 * 4 * 3  # A, B and the scale of 4 projections in 2 blocks
    assert all(torch.equal(v, after[k]) for k, v in before.items() if not k.startswith("val_loss"))
    assert any(after[k].abs().sum() > 0 for k in adapters if k.endswith("lora_B"))
    # The checkpoint samples like any other (the adapters are merged on load).
    g = run_cli("generate", "--checkpoint", str(cwd / "runs" / "lora"), "--max_new_tokens", "20", cwd=cwd)
    assert g.returncode == 0, g.stderr[-2000:]


def test_unknown_characters_fail_before_training_unless_replaced(pretrained, tmp_path):
    cwd, ckpt = pretrained
    from lit_gpt.corpus import shakespeare_text

    corpus = tmp_path / "odd.txt"
    corpus.write_text(shakespeare_text("hamlet").replace("the", "thé", 20) + "\n€\n", encoding="utf-8")
    args = ["fit", *TINY, *QUIET, "--data.source", str(corpus), "--model.init_from", str(ckpt)]
    args += ["--trainer.max_steps", "2", "--trainer.val_check_interval", "2", "--data.cache_dir", str(tmp_path)]
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 2
    line = r.stderr.strip().splitlines()[-1]
    assert "'é', '€'" in line and "--data.unknown replace" in line
    assert not (tmp_path / "runs").exists()
    r = run_cli(*args, "--data.unknown", "replace", "--data.placeholder", "#", cwd=tmp_path)
    assert r.returncode == 2 and "placeholder '#' is not in the tokenizer's vocabulary" in r.stderr
    r = run_cli(*args, "--data.unknown", "replace", "--data.placeholder", " ", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]


def test_init_from_a_gpt2_folder_uses_its_tokenizer(tmp_path, corpus):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([corpus.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"])
    folder = tmp_path / "gpt2-tiny"
    tiny_gpt2(folder, activation="gelu_new", vocab=bpe.get_vocab_size(), tokenizer=bpe)
    r = run_cli(
        "fit", *RUN, *QUIET, "--data.source", str(corpus), "--model.init_from", str(folder),
        "--model.config.vocab_size", "320", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--model.learning_rate", "1e-4", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    after = _ckpt(next((tmp_path / "runs").rglob("last.ckpt")))
    assert after["lit_gpt"]["tokenizer"]["kind"] == "hf"
    assert after["lit_gpt"]["model_config"]["vocab_size"] == 320  # padded from 300 to a multiple of 64
    assert after["lit_gpt"]["model_config"]["n_head"] == 4  # the architecture came from the folder


def test_pretrain_finetune_script_writes_table_plot_and_side_by_side_runs(tmp_path):
    """scripts/pretrain_finetune.py at a tiny scale (the documented run takes about 5 minutes on 2 cores)."""
    import subprocess
    import sys

    from conftest import ROOT

    args = [sys.executable, str(ROOT / "scripts" / "pretrain_finetune.py"), "--seeds", "1", "--pretrain-steps", "8"]
    args += ["--finetune-steps", "4", "--eval-every", "2", "--docs", str(tmp_path / "docs"), "--label", "tiny"]
    args += ["--logdir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "data"), "--extra", *TINY[:10]]
    args += ["--data.batch_size", "8", "--data.val_batches", "2", "--trainer.accelerator", "cpu"]
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = (tmp_path / "docs" / "pretrain_finetune.md").read_text()
    assert "| 1337 |" in doc and "mean ± sd" in doc and "pretrain_finetune.png" in doc
    assert (tmp_path / "docs" / "pretrain_finetune.png").stat().st_size > 10_000
    runs = tmp_path / "runs" / "pretrain_finetune"
    assert {p.name for p in runs.iterdir()} == {"pretrain", "finetune", "scratch", "pretrained"}
    assert all(list((runs / arm / "seed1337").glob("events.out.tfevents.*")) for arm in ("finetune", "scratch"))
