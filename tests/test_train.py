"""End to end through the `lit-gpt` command, as a user runs it."""

import json
import math
import os
import re

import numpy as np
import pytest
import torch
import yaml
from conftest import ROOT, TINY, run_cli
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_gpt import generate
from lit_gpt.checkpoints.read import load_model
from lit_gpt.generate import generate_tokens

GOLDEN = ROOT / "tests" / "assets" / "golden_loss.json"


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, corpus):
    """One short real training run through the CLI; several tests read what it left."""
    cwd = tmp_path_factory.mktemp("run")
    r = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--data.source", str(corpus), "--trainer.max_steps", "80", "--trainer.val_check_interval", "40",
        "--trainer.log_every_n_steps", "5", cwd=cwd, env={"COLUMNS": "200"},  # the progress bar on one line
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Tip:" not in r.stdout + r.stderr  # Lightning's cloud adverts are not shown (lit_gpt/lightning_cli.py)
    (cwd / "fit.stdout").write_text(r.stdout, encoding="utf-8")
    return cwd / "runs" / "shakespeare_char_cpu" / "version_0"


def test_the_progress_bar_ends_on_the_last_step_with_short_metric_names(trained_run):
    out = (trained_run.parents[2] / "fit.stdout").read_text(encoding="utf-8")
    assert "80/80" in out and re.search(r"step: 80\b(?!\.)", out), out[-2000:]  # a whole number, not 80.000
    for name in ("loss", "val_loss", "tok/s"):
        assert re.search(rf"\b{re.escape(name)}: [\d.]+", out), (name, out[-2000:])


def test_fit_writes_checkpoints_and_tensorboard_curves(trained_run):
    ckpts = {p.name for p in (trained_run / "checkpoints").iterdir()}
    assert "last.ckpt" in ckpts and any(n.startswith("step000080-val") for n in ckpts)
    s = scalars(trained_run)
    val = [v for _, v in s["val/loss"]]
    assert len(val) == 3 and val[2] < val[1] < val[0] < math.log(60) + 0.5  # learning, from near the uniform guess
    assert math.isclose(s["val/ppl"][-1][1], math.exp(val[-1]), rel_tol=1e-4)
    # Bits per byte: the corpus is ASCII, one byte per character, so bpb is the loss in bits.
    assert math.isclose(s["val/bpb"][-1][1], val[-1] / math.log(2), rel_tol=1e-4)
    assert s["train/loss"][-1][1] < s["train/loss"][0][1] - 0.5
    lrs = [v for _, v in s["train/lr"]]
    assert max(lrs) == pytest.approx(1e-3, rel=0.02) and lrs[-1] < max(lrs)  # warm-up, then decay
    assert (trained_run / "config.yaml").exists()


def test_tensorboard_shows_the_run_first_with_steps_numbered_as_checkpoints_number_them(trained_run):
    # TensorBoard's first view draws one group per tag prefix, alphabetically: loss (train and val on one chart),
    # then train/ (loss, lr, throughput), then val/. Nothing else: no epoch, no Lightning counters.
    s = scalars(trained_run)
    assert {tag.split("/")[0] for tag in s} == {"train", "val"}, sorted(s)
    assert sorted(s) == [
        "train/loss", "train/lr", "train/model_flops_per_sec", "train/seconds", "train/tokens",
        "train/tokens_per_sec", "val/bpb", "val/loss", "val/ppl",
    ]  # fmt: skip
    # Step 5's loss at step 5 (logged every 5 steps), validations after steps 40 and 80 at 40 and 80, and one
    # before the first step at 0; the checkpoints say step000080 too.
    assert [step for step, _ in s["train/loss"]] == list(range(5, 81, 5))
    assert [step for step, _ in s["train/lr"]] == list(range(5, 81, 5))
    assert [step for step, _ in s["val/loss"]] == [0, 40, 80]
    assert [v for _, v in s["train/tokens"]] == [step * 8 * 32 for step in range(5, 81, 5)]  # batch 8 x block 32
    # The same losses again on one chart: tag "loss" of the side runs version_N/train and version_N/val.
    assert scalars(trained_run / "train") == {"loss": s["train/loss"]}
    assert scalars(trained_run / "val") == {"loss": s["val/loss"]}


def test_a_text_sample_is_logged_at_each_validation(trained_run):
    acc = EventAccumulator(str(trained_run), size_guidance={"tensors": 0})
    acc.Reload()
    samples = acc.Tensors("sample/text_summary")
    assert [e.step for e in samples] == [40, 80]
    text = samples[-1].tensor_proto.string_val[0].decode()
    assert len(text) > 40


def test_generate_prints_the_requested_number_of_characters(trained_run, tmp_path):
    r = run_cli(
        "generate",
        "--checkpoint",
        str(trained_run),
        "--prompt",
        "HAMLET:",
        "--max_new_tokens",
        "100",
        "--seed",
        "1",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("HAMLET:") and len(r.stdout) == len("HAMLET:") + 100 + 1
    again = run_cli(
        "generate", "--checkpoint", str(trained_run / "checkpoints" / "last.ckpt"), "--prompt", "HAMLET:",
        "--max_new_tokens", "100", "--seed", "1", cwd=tmp_path,
    )  # fmt: skip
    assert again.stdout == r.stdout  # the seed makes a sample reproducible


def test_generate_continues_a_prompt_read_from_a_file(trained_run, tmp_path, capsys):
    prompt = "HAMLET:\nTo be, or not to be: that is the question:\n"
    (tmp_path / "prompt.txt").write_text(prompt, encoding="utf-8")
    greedy = {"checkpoint": str(trained_run), "max_new_tokens": 30, "temperature": 0}
    generate.generate(prompt_file=str(tmp_path / "prompt.txt"), **greedy)
    from_file = capsys.readouterr().out
    generate.generate(prompt=prompt.replace("\n", "\\n"), **greedy)  # the same text typed with '\n' for newlines
    assert from_file.startswith(prompt) and len(from_file) == len(prompt) + 30 + 1
    assert from_file == capsys.readouterr().out  # the file's text is the prompt, newlines as written


def test_generate_in_bfloat16_samples_the_same_kind_of_text(trained_run, tmp_path):
    args = ["generate", "--checkpoint", str(trained_run), "--prompt", "HAMLET:", "--max_new_tokens", "200"]
    fp32 = run_cli(*args, "--temperature", "0", cwd=tmp_path)
    bf16 = run_cli(*args, "--temperature", "0", "--dtype", "bfloat16", cwd=tmp_path)
    assert bf16.returncode == 0, bf16.stderr
    assert bf16.stdout.startswith("HAMLET:") and len(bf16.stdout) == len(fp32.stdout) == len("HAMLET:") + 200 + 1
    # greedy decoding: rounding may change a near-tie somewhere, after which the texts part; they start alike
    same = next((i for i, (a, b) in enumerate(zip(fp32.stdout, bf16.stdout, strict=True)) if a != b), len(fp32.stdout))
    assert same >= len("HAMLET:") + 10, (fp32.stdout, bf16.stdout)


def test_generate_samples_from_weights_and_cache_of_the_dtype_asked_for(trained_run, monkeypatch):
    seen = {}

    def record(model, *args, **kwargs):
        list(generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), 3))
        model.set_kv_cache(1)
        cache = model.transformer.h[0].attn.kv_cache
        seen["dtypes"] = {p.dtype for p in model.parameters()} | {cache.k.dtype, cache.v.dtype}
        return {"tokens": 3, "tokens_per_sec": 1.0}

    monkeypatch.setattr(generate, "stream", record)
    generate.generate(checkpoint=str(trained_run), dtype="bfloat16")
    assert seen["dtypes"] == {torch.bfloat16}


def test_generate_refuses_characters_the_model_never_saw(trained_run, tmp_path):
    r = run_cli("generate", "--checkpoint", str(trained_run), "--prompt", "€uro", cwd=tmp_path)
    assert r.returncode == 2
    assert "never saw" in r.stderr and "Traceback" not in r.stderr


def test_validate_on_the_whole_split_scores_every_token(trained_run, tmp_path, corpus):
    args = [
        "validate", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--data.source", str(corpus), "--data.val_batches", "0", "--model.init_from", str(trained_run),
        "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    r = run_cli(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "config.yaml").exists()  # nothing asked it to log
    val = float(re.search(r"val/loss\s*[│|]\s*([\d.]+)", r.stdout).group(1))
    # The same by hand: the model over consecutive windows of the prepared val split, the last batch short.
    model, _, _ = load_model(trained_run / "checkpoints" / "last.ckpt")
    folder = next((tmp_path / "data").glob("*/meta.json")).parent
    tokens = np.fromfile(folder / "val.bin", dtype=json.loads((folder / "meta.json").read_text())["dtype"])
    n = (len(tokens) - 1) // 32
    data = torch.from_numpy(tokens[: n * 32 + 1].astype(np.int64))
    with torch.no_grad():
        _, loss = model.eval()(data[:-1].view(n, 32), data[1:].view(n, 32))
    assert n % 8 != 0 and val == pytest.approx(loss.item(), abs=1e-4)  # a short last batch, weighted by its tokens

    r = run_cli(*args, "--trainer.logger.init_args.name", "scored", cwd=tmp_path)  # asked to log: it does
    assert r.returncode == 0, r.stderr[-3000:]
    assert scalars(next((tmp_path / "runs" / "scored").glob("version_*")))["val/loss"][0][1] == pytest.approx(val)


def test_checkpoint_is_plain_data_and_loads_with_weights_only(trained_run):
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["lit_gpt"]["model_config"]["n_layer"] == 2
    assert ckpt["lit_gpt"]["tokenizer"]["kind"] == "char"
    assert ckpt["global_step"] == 80


def test_golden_loss_curve(tmp_path, corpus):
    """The first 20 step losses of a tiny seeded run. Any change that alters training shows up here: if the change
    is intended, regenerate with LIT_GPT_UPDATE_GOLDEN=1 and say why in the commit."""
    r = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--model.config.dropout", "0.1", "--data.source", str(corpus), "--trainer.max_steps", "20",
        "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "20", "--sample.max_new_tokens", "0",
        cwd=tmp_path, env={"OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [v for _, v in scalars(tmp_path / "runs" / "shakespeare_char_cpu" / "version_0")["train/loss"]]
    assert len(losses) == 20
    if os.environ.get("LIT_GPT_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps({"train/loss": losses}, indent=1) + "\n")
    golden = json.loads(GOLDEN.read_text())["train/loss"]
    assert losses == pytest.approx(golden, abs=1e-4)
    assert losses[-1] < losses[0]


def test_mfu_counts_the_training_flops_when_validation_falls_between_logging_steps(tmp_path, corpus):
    # Validations at steps 6, 12, 18, ... between logging steps 4, 8, 12, ...: every logged FLOP/s per token/s must
    # still be the model's training FLOPs per token (no training FLOPs credited to a validation, or lost).
    r = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY, "--data.source", str(corpus),
        "--trainer.max_steps", "30", "--trainer.val_check_interval", "6", "--trainer.log_every_n_steps", "4",
        "--throughput.window_size", "2", "--sample.max_new_tokens", "0", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "shakespeare_char_cpu" / "version_0"
    model, _, _ = load_model(run / "checkpoints" / "last.ckpt")
    s = scalars(run)
    flops, tokens = dict(s["train/model_flops_per_sec"]), dict(s["train/tokens_per_sec"])
    assert len(flops) >= 5
    for step, value in flops.items():
        assert value / tokens[step] == pytest.approx(model.flops_per_token(), rel=1e-3), step


def test_only_the_subcommands_lit_gpt_implements_are_offered(tmp_path):
    # Lightning's test and predict need a test_step / predict_step a language model here does not have.
    r = run_cli("test", cwd=tmp_path)
    assert r.returncode == 2 and "invalid choice: 'test' (choose from 'fit', 'validate')" in r.stderr
    assert "Traceback" not in r.stderr


def test_help_and_a_commented_config_document_every_model_option(tmp_path):
    config = str(ROOT / "configs" / "shakespeare_char_cpu.yaml")
    width = "Width of the residual stream."  # GPTConfig.n_embd's attribute docstring
    help_text = run_cli("fit", "--help", cwd=tmp_path, env={"COLUMNS": "200"})
    assert help_text.returncode == 0 and width in help_text.stdout
    commented = run_cli("fit", "--config", config, "--print_config=comments", cwd=tmp_path)
    assert commented.returncode == 0, commented.stderr[-2000:]
    lines = commented.stdout.splitlines()
    at = lines.index("    n_embd: 128")
    assert width in lines[at - 1] and lines[at - 1].lstrip().startswith("#")  # the comment above the key
    assert any("whole validation split" in line for line in lines)  # argument docstrings too (data.val_batches)
    # The commented file is a config as it stands: it resolves to the config it was printed from.
    (tmp_path / "commented.yaml").write_text(commented.stdout, encoding="utf-8")
    again = run_cli("fit", "--config", str(tmp_path / "commented.yaml"), "--print_config", cwd=tmp_path)
    assert again.returncode == 0 and yaml.safe_load(again.stdout) == yaml.safe_load(commented.stdout)
