"""nanoGPT's checkpoints as they are: the ckpt.pt its train.py writes (with the meta.pkl its prepare.py writes) loads
in generate, export and --model.init_from with nanoGPT's logits, and lit-gpt export --format nanogpt writes one that
nanoGPT's sample.py reads."""

from __future__ import annotations

import os
import pickle
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli

sys.path.insert(0, str(ROOT / "scripts"))
import nanogpt_reference  # noqa: E402  (nanoGPT's model.py)

from lit_gpt.corpus import shakespeare_text  # noqa: E402
from lit_gpt.errors import LitGPTError  # noqa: E402
from lit_gpt.init_from import build_model, load_pretrained  # noqa: E402

TEXT = shakespeare_text("hamlet")
CHARS = sorted(set(TEXT))
QUIET = ["--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0"]


def nanogpt_run(root: Path, compiled: bool = False, dataset: str = "shakespeare_char", vocab: int | None = None):
    """What nanoGPT leaves after `python data/shakespeare_char/prepare.py` and `python train.py
    config/train_shakespeare_char.py`: data/<dataset>/meta.pkl, and out-shakespeare-char/ckpt.pt written as its
    train.py writes it (compile's `_orig_mod.` prefixes when ``compiled``). Returns nanoGPT's model."""
    torch.manual_seed(0)
    model_args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=vocab or len(CHARS))
    model_args["dropout"] = 0.0
    model = nanogpt_reference.GPT(nanogpt_reference.GPTConfig(**model_args))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln" in name:
                p.normal_(1.0, 0.2)  # gains that are not all one, so a lost norm weight shows
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99), "cpu")
    model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.long))[1].backward()
    optimizer.step()
    state = model.state_dict()
    if compiled:  # train.py saves the compiled wrapper's state dict
        state = {f"_orig_mod.{k}": v for k, v in state.items()}
    config = {"out_dir": "out-shakespeare-char", "dataset": dataset, "batch_size": 64, "compile": compiled}
    config |= {"learning_rate": 1e-3, "max_iters": 5000, "device": "cuda", "dtype": "bfloat16"}
    ckpt = {
        "model": state,
        "optimizer": optimizer.state_dict(),
        "model_args": model_args,
        "iter_num": 250,
        "best_val_loss": torch.tensor(1.4697),
        "config": config,
    }
    (root / "out-shakespeare-char").mkdir(parents=True)
    torch.save(ckpt, root / "out-shakespeare-char" / "ckpt.pt")
    if vocab is None:
        meta = {"vocab_size": len(CHARS), "itos": dict(enumerate(CHARS)), "stoi": {c: i for i, c in enumerate(CHARS)}}
        (root / "data" / dataset).mkdir(parents=True)
        with open(root / "data" / dataset / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    return model.eval()


def nanogpt_logits(model, idx: torch.Tensor) -> torch.Tensor:
    return model(idx, torch.zeros_like(idx))[0]  # with targets, nanoGPT's forward returns every position's logits


@pytest.mark.parametrize("compiled", [False, True])
def test_a_nanogpt_checkpoint_loads_with_its_meta_and_gives_nanogpts_logits(tmp_path, compiled):
    theirs = nanogpt_run(tmp_path, compiled)
    pre = load_pretrained(tmp_path / "out-shakespeare-char" / "ckpt.pt")
    assert pre.tokenizer.chars == CHARS  # from ../data/shakespeare_char/meta.pkl, found from the checkpoint
    ours = build_model(pre, pre.config).eval()
    idx = torch.tensor([pre.tokenizer.encode("To be, or not to")])
    torch.testing.assert_close(ours(idx)[0], nanogpt_logits(theirs, idx), rtol=0, atol=1e-5)
    # nanoGPT's out_dir, as sample.py's --out_dir names it, is enough.
    again = load_pretrained(tmp_path / "out-shakespeare-char")
    assert again.config == pre.config


def test_generate_export_and_init_from_take_a_nanogpt_checkpoint(tmp_path):
    nanogpt_run(tmp_path)
    g = run_cli(
        "generate", "--checkpoint", "out-shakespeare-char", "--max_new_tokens", "30", "--prompt", "HAMLET:",
        cwd=tmp_path,
    )  # fmt: skip
    assert g.returncode == 0, g.stderr[-2000:]
    assert g.stdout.startswith("HAMLET:") and len(g.stdout) >= len("HAMLET:") + 30 and set(g.stdout) <= set(CHARS)

    e = run_cli("export", "--checkpoint", "out-shakespeare-char/ckpt.pt", "--out", "st", "--format", "safetensors",
                cwd=tmp_path)  # fmt: skip
    assert e.returncode == 0, e.stderr[-2000:]
    assert load_pretrained(tmp_path / "st").tokenizer.chars == CHARS

    f = run_cli(
        "fit", *TINY, *QUIET, "--data.source", "shakespeare:hamlet",
        "--model.init_from", "out-shakespeare-char/ckpt.pt",
        "--model.config.block_size", "16", "--trainer.max_steps", "3", "--trainer.val_check_interval", "3",
        "--trainer.logger.init_args.name", "ft", cwd=tmp_path,
    )  # fmt: skip
    assert f.returncode == 0, f.stderr[-2000:]
    assert next((tmp_path / "runs" / "ft").rglob("last.ckpt")).is_file()


def sample_py_load(out_dir: Path, cwd: Path):
    """What nanoGPT's sample.py does with --init_from=resume --out_dir=OUT_DIR, run from ``cwd`` (its repository):
    torch.load, GPTConfig(**model_args), strip `_orig_mod.`, a strict load_state_dict, and data/<dataset>/meta.pkl
    for the vocabulary."""
    checkpoint = torch.load(os.path.join(out_dir, "ckpt.pt"), map_location="cpu")  # torch's default: weights_only
    model = nanogpt_reference.GPT(nanogpt_reference.GPTConfig(**checkpoint["model_args"]))
    state_dict = checkpoint["model"]
    for k in list(state_dict):
        if k.startswith("_orig_mod."):
            state_dict[k[len("_orig_mod.") :]] = state_dict.pop(k)
    model.load_state_dict(state_dict)
    model.eval()
    meta_path = os.path.join(cwd, "data", checkpoint["config"]["dataset"], "meta.pkl")
    if not os.path.exists(meta_path):
        return model, None
    with open(meta_path, "rb") as f:
        meta = pickle.load(f)
    return model, meta


def test_export_nanogpt_writes_what_sample_py_reads(tmp_path):
    from test_export import TINY as TINY_CONFIG
    from test_export import write_checkpoint

    ours = write_checkpoint(tmp_path / "char.ckpt", TINY_CONFIG)
    r = run_cli("export", "--checkpoint", "char.ckpt", "--out", "out-lit", "--format", "nanogpt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "out-lit").iterdir()) == ["ckpt.pt", "meta.pkl"]
    nano_repo = tmp_path / "nanoGPT"
    nano_repo.mkdir()
    theirs, meta = sample_py_load(tmp_path / "out-lit", cwd=nano_repo)
    assert meta is not None, "sample.py would not find meta.pkl and fall back to GPT-2's BPE"
    encode = lambda s: [meta["stoi"][c] for c in s]  # noqa: E731  (sample.py's own)
    decode = lambda ids: "".join(meta["itos"][i] for i in ids)  # noqa: E731
    idx = torch.tensor([encode("O, that this")])
    assert decode(idx[0].tolist()) == "O, that this"
    torch.testing.assert_close(nanogpt_logits(theirs, idx), ours(idx)[0], rtol=0, atol=1e-5)
    # ... and it loads back into lit-gpt as a nanoGPT checkpoint, the same model again.
    again = build_model(*(lambda p: (p, p.config))(load_pretrained(tmp_path / "out-lit"))).eval()
    torch.testing.assert_close(again(idx)[0], ours(idx)[0], rtol=0, atol=1e-6)
    # A second export over the first replaces it; a model nanoGPT cannot hold is refused in one line.
    assert run_cli("export", "--checkpoint", "char.ckpt", "--out", "out-lit", "--format", "nanogpt",
                   cwd=tmp_path).returncode == 0  # fmt: skip


def test_models_nanogpt_cannot_hold_are_refused(tmp_path):
    from dataclasses import replace

    from test_export import TINY as TINY_CONFIG
    from test_export import write_checkpoint

    from lit_gpt.export import export

    write_checkpoint(tmp_path / "rot.ckpt", replace(TINY_CONFIG, position="rotary", norm="rmsnorm"))
    with pytest.raises(LitGPTError, match="nanoGPT's model.py cannot hold this model.*position is 'rotary'"):
        export(checkpoint=str(tmp_path / "rot.ckpt"), out=str(tmp_path / "o"), format="nanogpt")
    assert not (tmp_path / "o").exists()


class RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {Path(os.environ['PWNED_FILE'])}",))


def one_error_line(r) -> str:
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    return lines[0]


def test_a_meta_pkl_that_would_run_code_is_refused(tmp_path, monkeypatch):
    nanogpt_run(tmp_path)
    pwned = tmp_path / "pwned"
    monkeypatch.setenv("PWNED_FILE", str(pwned))
    with open(tmp_path / "data" / "shakespeare_char" / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": 3, "itos": RunsCode(), "stoi": {}}, f)
    r = run_cli("generate", "--checkpoint", "out-shakespeare-char", "--max_new_tokens", "5", cwd=tmp_path)
    assert "refused to read" in one_error_line(r) and "could run code" in r.stderr
    assert not pwned.exists()


def test_a_missing_meta_pkl_or_mismatched_model_args_end_in_one_line(tmp_path):
    nanogpt_run(tmp_path)
    (tmp_path / "data" / "shakespeare_char" / "meta.pkl").rename(tmp_path / "elsewhere.pkl")
    r = run_cli("generate", "--checkpoint", "out-shakespeare-char", "--max_new_tokens", "5", cwd=tmp_path)
    assert "no meta.pkl was found" in one_error_line(r) and "--meta" in r.stderr
    # --meta names it: it loads.
    r = run_cli("generate", "--checkpoint", "out-shakespeare-char", "--meta", "elsewhere.pkl",
                "--max_new_tokens", "5", cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]

    path = tmp_path / "out-shakespeare-char" / "ckpt.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_args"]["n_layer"] = 3  # says 3 layers; the weights have 2
    torch.save(ckpt, path)
    r = run_cli("generate", "--checkpoint", str(path), "--meta", "elsewhere.pkl", cwd=tmp_path)
    assert "do not fit its config: missing transformer.h.2" in one_error_line(r)


def test_a_bpe_sized_nanogpt_checkpoint_without_meta_uses_gpt2s_tokenizer(tmp_path, monkeypatch):
    nanogpt_run(tmp_path, vocab=50304, dataset="openwebtext")
    import lit_gpt.bpe

    monkeypatch.setattr(lit_gpt.bpe, "load_tiktoken", lambda name: name)  # tiktoken downloads its files: offline
    pre = load_pretrained(tmp_path / "out-shakespeare-char" / "ckpt.pt")
    assert pre.tokenizer.kind == "gpt2" and pre.config.vocab_size == 50304  # nanoGPT's padded GPT-2 vocabulary


def test_resuming_a_nanogpt_checkpoint_points_to_init_from(tmp_path):
    nanogpt_run(tmp_path)
    r = run_cli("fit", *TINY, *QUIET, "--data.source", "shakespeare:hamlet", "--ckpt_path",
                "out-shakespeare-char/ckpt.pt", cwd=tmp_path)  # fmt: skip
    assert "--model.init_from" in one_error_line(r)
