"""lit-gpt evaluate --tasks: lm-evaluation-harness's tasks scored on lit-gpt's model as the harness's own HF backend
scores the same weights, on task YAML and data the tests write (the harness's datasets come from the Hub)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
from conftest import run_cli, tiny_gpt2
from test_export import TINY, write_checkpoint
from test_nanogpt import one_error_line
from test_train import scalars

from lit_gpt.corpus import shakespeare_text

pytest.importorskip("lm_eval")
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}

MC = """task: tiny_mc
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/mc.jsonl}}}}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{q}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list: [{{metric: acc}}]
"""
ROLL = """task: tiny_roll
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/texts.jsonl}}}}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list: [{{metric: bits_per_byte}}, {{metric: byte_perplexity}}]
"""
GEN = """task: tiny_gen
dataset_path: json
dataset_kwargs: {{data_files: {{test: {data}/texts.jsonl}}}}
test_split: test
output_type: generate_until
doc_to_text: "{{{{text[:20]}}}}"
doc_to_target: "{{{{text[20:28]}}}}"
generation_kwargs: {{until: ["\\n", "."], max_gen_toks: 8, do_sample: false}}
metric_list: [{{metric: exact_match}}]
"""


def write_tasks(folder: Path, texts: list[str]) -> Path:
    """Three tasks, one of each kind the harness asks a model for, over jsonl files in ``folder``."""
    hamlet = shakespeare_text("hamlet")
    rows = [
        {"q": "To be, or not to be", "choices": [", that is", " or not", "."], "label": 0},
        {"q": hamlet[:400], "choices": [" yes", " no"], "label": 1},  # past block_size: truncated on the left
        {"q": "", "choices": ["Hamlet", "Horatio"], "label": 0},  # an empty context
    ]
    (folder / "mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    (folder / "texts.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    tasks = folder / "tasks"
    tasks.mkdir()
    for name, yaml in (("mc", MC), ("roll", ROLL), ("gen", GEN)):
        (tasks / f"{name}.yaml").write_text(yaml.format(data=folder), encoding="utf-8")
    return tasks


def test_tasks_score_as_the_harness_hf_backend_scores_the_models_hf_export(tmp_path, monkeypatch, corpus):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from tokenizers import ByteLevelBPETokenizer

    from lit_gpt.export import export
    from lit_gpt.init_from import load_for_sampling
    from lit_gpt.lm_eval_adapter import LitGPTLM

    for k, v in OFFLINE.items():
        monkeypatch.setenv(k, v)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([corpus.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"])
    tiny_gpt2(tmp_path / "gpt2", activation="gelu_new", vocab=bpe.get_vocab_size(), tokenizer=bpe)  # 32 positions
    hamlet = shakespeare_text("hamlet")
    tasks = write_tasks(tmp_path, [hamlet[:700], hamlet[700:1200], hamlet[1200:1500]])  # several windows each
    manager = TaskManager(include_path=str(tasks), include_defaults=False)
    names = ["tiny_mc", "tiny_roll", "tiny_gen"]

    model, tokenizer = load_for_sampling(tmp_path / "gpt2")
    export(checkpoint=str(tmp_path / "gpt2"), out=str(tmp_path / "hf"))  # what the HF backend is given
    ours = lm_eval.simple_evaluate(
        model=LitGPTLM(model, tokenizer, batch_size=2), tasks=names, task_manager=manager, log_samples=True
    )
    theirs = lm_eval.simple_evaluate(
        model="hf", model_args=f"pretrained={tmp_path / 'hf'},dtype=float32", device="cpu", batch_size=2,
        tasks=names, task_manager=manager, log_samples=True,
    )  # fmt: skip
    for name in names:
        for a, b in zip(ours["samples"][name], theirs["samples"][name], strict=True):
            if name == "tiny_gen":
                assert a["resps"] == b["resps"]  # the same greedy text, cut at the same stop string
            else:
                got = [r[0] if isinstance(r[0], float) else r[0][0] for r in a["resps"]]
                want = [r[0] if isinstance(r[0], float) else r[0][0] for r in b["resps"]]
                assert got == pytest.approx(want, rel=1e-5, abs=1e-3), name
    assert ours["results"]["tiny_mc"]["acc,none"] == theirs["results"]["tiny_mc"]["acc,none"]


def test_a_char_model_scores_a_text_as_evaluate_does_and_reports_to_json_and_tensorboard(tmp_path):
    write_checkpoint(tmp_path / "m.ckpt", TINY)  # a char model (no end-of-text token), block_size 16, step 7
    text = shakespeare_text("hamlet")[: 1 + 16 * 20]  # whole windows: the harness's windows are evaluate's
    (tmp_path / "t.txt").write_text(text, encoding="utf-8")
    write_tasks(tmp_path, [text])
    r = run_cli(
        "evaluate", "--checkpoint", "m.ckpt", "--data.source", "t.txt", "--tasks", "tiny_roll,tiny_mc",
        "--tasks_dir", "tasks", "--out", "r.json", "--log_dir", "tb", cwd=tmp_path, env=OFFLINE,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "|tiny_roll|" in r.stdout and "bits_per_byte" in r.stdout  # the harness's table
    res = json.loads((tmp_path / "r.json").read_text())
    # The harness divides by every byte of the text; the first character, which has no context, is not scored.
    nats = res["tasks"]["tiny_roll"]["bits_per_byte"] * math.log(2) * len(text.encode("utf-8"))
    assert nats == pytest.approx(res["loss"] * res["tokens"], rel=1e-5)
    assert 0 <= res["tasks"]["tiny_mc"]["acc"] <= 1 and res["n-shot"]["tiny_mc"] == 0
    logged = scalars(tmp_path / "tb")
    assert logged["eval/tiny_roll/bits_per_byte"] == [(7, pytest.approx(res["tasks"]["tiny_roll"]["bits_per_byte"]))]
    assert {"eval/loss", "eval/tiny_mc/acc"} <= set(logged)


def test_task_mistakes_end_in_one_line(tmp_path, monkeypatch):
    write_checkpoint(tmp_path / "m.ckpt", TINY)
    tasks = write_tasks(tmp_path, ["To be, or not to be"])
    hub = MC.format(data=tmp_path).replace("tiny_mc", "tiny_hub").splitlines()
    hub[1:3] = ["dataset_path: nobody/no-such-dataset"]  # on the Hub, and the tests are offline
    (tasks / "hub.yaml").write_text("\n".join(hub) + "\n")
    args = ["evaluate", "--checkpoint", "m.ckpt", "--tasks_dir", "tasks"]
    line = one_error_line(run_cli(*args, "--tasks", "tiny_mc,hellaswag_typo", cwd=tmp_path, env=OFFLINE))
    assert "no task 'hellaswag_typo'" in line and "lm-eval ls tasks" in line
    line = one_error_line(run_cli(*args, "--tasks", "tiny_hub", cwd=tmp_path, env=OFFLINE))
    assert "offline mode is on (HF_DATASETS_OFFLINE=1) and a task's dataset is not in the datasets cache" in line
    line = one_error_line(run_cli(*args[:3], "--tasks", "tiny_mc", "--tasks_dir", "nowhere", cwd=tmp_path))
    assert "--tasks_dir 'nowhere' is not a folder" in line
    line = one_error_line(run_cli(*args, "--tasks", "tiny_mc", "--limit", "0", cwd=tmp_path))
    assert "--limit must be positive" in line

    from lit_gpt.errors import LitGPTError
    from lit_gpt.evaluate import evaluate

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # as if lm-eval were not installed
    monkeypatch.delitem(sys.modules, "lit_gpt.lm_eval_adapter", raising=False)
    with pytest.raises(LitGPTError, match=r"pip install 'lit-gpt\[eval\]'"):
        evaluate(checkpoint=str(tmp_path / "m.ckpt"), tasks="tiny_mc")
