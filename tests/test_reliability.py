"""Bad input never crashes with a stack trace: every row of the list ends in one line naming the problem and the fix,
a non-zero exit code, and no half-written file. Each case runs the real `lit-gpt` command; what it printed is
recorded (tests/reliability_log.py) and rendered into docs/reliability.md by scripts/reliability_doc.py."""

from __future__ import annotations

import errno
import importlib.util
import io
import math
import os
import pickle
import random
import shlex
import shutil
import struct
import subprocess
import sys
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli
from hypothesis import given, settings
from hypothesis import strategies as st
from reliability_log import record

from lit_gpt.model import GPT, GPTConfig
from lit_gpt.optim import configure_adamw

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
CONFIG = ["--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml")]


def fit(source: str, *extra: str) -> list[str]:
    return [
        "fit", *CONFIG, *TINY, "--data.source", source, "--trainer.max_steps", "2", "--sample.max_new_tokens", "0",
        "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


class Evil:
    """Unpickling this runs code: it would create the file PWNED next to the checkpoint."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    """A good checkpoint of the TINY shape (10 steps)."""
    cwd = tmp_path_factory.mktemp("trained")
    r = run_cli(*fit(str(corpus), "--trainer.max_steps", "10", "--trainer.val_check_interval", "10"), cwd=cwd)
    assert r.returncode == 0, r.stderr[-3000:]
    return cwd / "runs" / "shakespeare_char_cpu" / "version_0" / "checkpoints" / "last.ckpt"


@dataclass
class Case:
    row: str  # the row of the list
    make: Callable[[Path, Path, Path], list[str]]  # (tmp dir, corpus, good checkpoint) -> lit-gpt arguments
    expect: str  # a part of the one line the user sees
    skip: str | None = None  # why this machine cannot show the case (e.g. it has a GPU)


def text_file(tmp: Path, content: bytes, name: str = "corpus.txt") -> str:
    (tmp / name).write_bytes(content)
    return str(tmp / name)


def truncated(tmp: Path, good: Path) -> str:
    raw = good.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(raw[: len(raw) // 2])
    return str(tmp / "truncated.ckpt")


def garbage(tmp: Path) -> str:
    (tmp / "garbage.ckpt").write_bytes(os.urandom(4096))
    return str(tmp / "garbage.ckpt")


def evil(tmp: Path) -> str:
    torch.save({"state_dict": {}, "payload": Evil(tmp / "PWNED")}, tmp / "evil.ckpt")  # a real zip checkpoint
    return str(tmp / "evil.ckpt")


def corrupt_inside(tmp: Path, good: Path) -> str:
    """A complete checkpoint archive whose pickled index was overwritten with random bytes."""
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(tmp / "corrupt.ckpt", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            noise = random.Random(0).randbytes(len(data))  # fixed, so the message is the same every run
            dst.writestr(item, noise if item.filename.endswith("data.pkl") else data)
    return str(tmp / "corrupt.ckpt")


def flipped_bit(tmp: Path, good: Path) -> str:
    """The checkpoint with one bit flipped in the middle of its largest tensor (the archive itself intact)."""
    with zipfile.ZipFile(good) as z:
        entry = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(good.read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", raw, entry.header_offset + 26)  # the entry's local header
    raw[entry.header_offset + 30 + name_len + extra_len + entry.file_size // 2] ^= 0x10
    (tmp / "flipped.ckpt").write_bytes(bytes(raw))
    return str(tmp / "flipped.ckpt")


def other_vocabulary(tmp: Path, corpus: Path) -> str:
    """The training corpus lowercased: long enough, but its characters (its vocabulary) are not the checkpoint's."""
    return text_file(tmp, corpus.read_bytes().lower(), "lowercase.txt")


def unknown_characters(tmp: Path, corpus: Path) -> str:
    """The training corpus plus digits, which the checkpoint's tokenizer has never seen."""
    return text_file(tmp, corpus.read_bytes() + b"\nAct 1, scene 2: 1602.\n", "with_digits.txt")


GPU = torch.cuda.is_available() or torch.backends.mps.is_available()
XLA = importlib.util.find_spec("torch_xla") is not None


def legacy_pickle(tmp: Path) -> str:
    (tmp / "model.pt").write_bytes(pickle.dumps({"payload": Evil(tmp / "PWNED")}))
    return str(tmp / "model.pt")


CASES = {
    "missing-path": Case("missing path", lambda t, c, g: fit(str(t / "nope.txt")), "does not exist"),
    "empty-file": Case("empty file", lambda t, c, g: fit(text_file(t, b"")), "is empty"),
    "short-train": Case(
        "corpus shorter than block_size+1",
        lambda t, c, g: fit(text_file(t, b"To be, or not to be.\n")),
        "fewer than block_size + 1",
    ),
    "short-val": Case(
        "validation split shorter than block_size+1",
        lambda t, c, g: fit(text_file(t, c.read_bytes()[:2000]), "--data.val_fraction", "0.01"),
        "the val split",
    ),
    "not-utf8": Case(
        "bytes that are not UTF-8 (say where)",
        lambda t, c, g: fit(text_file(t, b"To be, or not to be:\ncaf\xe9 au lait\n")),
        "is not UTF-8: byte 24 (line 2)",
    ),
    "binary": Case(
        "a binary file", lambda t, c, g: fit(text_file(t, b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")), "binary"
    ),
    "empty-folder": Case("a folder with no text", lambda t, c, g: fit(str(t)), "is a folder"),
    "unknown-key": Case("unknown config key", lambda t, c, g: fit(str(c), "--model.config.n_layers", "2"), "n_layers"),
    "unknown-key-yaml": Case(
        "unknown config key (in a YAML file)",
        lambda t, c, g: fit(str(c), "--config", text_file(t, b"trainer:\n  max_stepz: 10\n", "typo.yaml")),
        "max_stepz",
    ),
    "wrong-type": Case(
        "wrong type", lambda t, c, g: fit(str(c), "--data.batch_size", "twelve"), "Expected a <class 'int'>"
    ),
    "zero-negative": Case(
        "zero or negative sizes and rates (all reported at once)",
        lambda t, c, g: fit(
            str(c),
            "--model.config.n_layer",
            "0",
            "--data.batch_size",
            "-1",
            "--model.learning_rate",
            "-0.1",
            "--trainer.max_steps",
            "0",
            "--trainer.val_check_interval",
            "0",
        ),  # fmt: skip
        "n_layer must be a positive integer",
    ),
    "n-embd-n-head": Case(
        "n_embd not divisible by n_head",
        lambda t, c, g: fit(str(c), "--model.config.n_embd", "30", "--model.config.n_head", "4"),
        "n_embd (30) must be divisible by n_head (4)",
    ),
    "unknown-chars": Case(
        "a prompt with characters the tokenizer lacks",
        lambda t, c, g: ["generate", "--checkpoint", str(g), "--prompt", "€ and ✓"],
        "never saw",
    ),
    "prompt-file": Case(
        "a prompt file that is not UTF-8 (generate)",
        lambda t, c, g: ["generate", "--checkpoint", str(g), "--prompt_file", text_file(t, b"caf\xe9", "prompt.txt")],
        "prompt.txt' is not UTF-8 (byte 3): re-encode it",
    ),
    "missing-checkpoint": Case(
        "a checkpoint path that does not exist",
        lambda t, c, g: fit(str(c), "--ckpt_path", str(t / "runs" / "last.ckpt")),
        "does not exist",
    ),
    "truncated-fit": Case(
        "a truncated checkpoint (resume)",
        lambda t, c, g: fit(str(c), "--ckpt_path", truncated(t, g)),
        "is truncated, or not a checkpoint at all",
    ),
    "truncated-generate": Case(
        "a truncated checkpoint (generate)",
        lambda t, c, g: ["generate", "--checkpoint", truncated(t, g)],
        "is truncated, or not a checkpoint at all",
    ),
    "corrupt": Case(
        "a corrupt checkpoint (random bytes)",
        lambda t, c, g: fit(str(c), "--ckpt_path", garbage(t)),
        "not a checkpoint at all",
    ),
    "corrupt-inside": Case(
        "a corrupt checkpoint (a whole archive with a damaged index)",
        lambda t, c, g: fit(str(c), "--ckpt_path", corrupt_inside(t, g)),
        "corrupt",
    ),
    "flipped-bit-fit": Case(
        "a checkpoint with one bit flipped inside a tensor (resume)",
        lambda t, c, g: fit(str(c), "--ckpt_path", flipped_bit(t, g)),
        "fails its CRC-32 check",
    ),
    "flipped-bit-generate": Case(
        "a checkpoint with one bit flipped inside a tensor (generate)",
        lambda t, c, g: ["generate", "--checkpoint", flipped_bit(t, g)],
        "fails its CRC-32 check",
    ),
    "evil-fit": Case(
        "a checkpoint that would run code when unpickled (resume)",
        lambda t, c, g: fit(str(c), "--ckpt_path", evil(t)),
        "refused to load",
    ),
    "evil-generate": Case(
        "a checkpoint that would run code when unpickled (generate)",
        lambda t, c, g: ["generate", "--checkpoint", evil(t)],
        "refused to load",
    ),
    "pickle-generate": Case(
        "a plain pickle that would run code (generate)",
        lambda t, c, g: ["generate", "--checkpoint", legacy_pickle(t)],
        "not a checkpoint at all",
    ),
    "hub-offline": Case(
        "a Hub model name with no network and no cached copy",
        lambda t, c, g: ["generate", "--checkpoint", "hf:someone/gpt2-poetry"],
        "offline mode is on (HF_HUB_OFFLINE=1) and 'someone/gpt2-poetry' is not in the local Hugging Face cache",
    ),
    "hub-bad-name": Case(
        "a malformed Hub model name",
        lambda t, c, g: fit(str(c), "--model.init_from", "hf:my model"),
        "is not a model on the Hugging Face Hub",
    ),
    "other-vocab": Case(
        "a checkpoint from another vocabulary (resume with other data)",
        lambda t, c, g: fit(other_vocabulary(t, c), "--ckpt_path", str(g)),
        "the checkpoint's tokenizer differs from the data's",
    ),
    "init-from-other-vocab": Case(
        "a checkpoint from another vocabulary (--model.init_from: the data takes its tokenizer)",
        lambda t, c, g: fit(unknown_characters(t, c), "--model.init_from", str(g)),
        "are not in the tokenizer's vocabulary: '0', '1', '2', '6'",
    ),
    "trainer-values": Case(
        "devices, num_nodes or strategy Lightning refuses (all reported at once)",
        lambda t, c, g: fit(
            str(c), "--trainer.devices", "0", "--trainer.num_nodes", "0", "--trainer.strategy", "nonsense"
        ),
        "trainer.devices must be a positive number",
    ),
    "no-gpu": Case(
        "--trainer.accelerator gpu on a machine without one (configs/gpt2_124m.yaml on a laptop)",
        lambda t, c, g: fit(str(c), "--trainer.accelerator", "gpu"),
        "there is no GPU here: use --trainer.accelerator cpu --trainer.precision 32-true",
        skip="this machine has a GPU" if GPU else None,
    ),
    "no-accelerator-package": Case(
        "an accelerator whose package is not installed (Lightning refuses while building the Trainer)",
        lambda t, c, g: fit(str(c), "--trainer.accelerator", "tpu"),
        "the Trainer refused its settings: Requirement 'torch_xla",
        skip="torch_xla is installed" if XLA else None,
    ),
    "unwritable-runs": Case(
        "a run folder that cannot be written (read-only or full disk; here a file stands where the folder goes)",
        lambda t, c, g: fit(str(c), "--trainer.logger.init_args.save_dir", str(_file_in_the_way(t))),
        "cannot write the run's TensorBoard events under",
    ),
    "other-shape": Case(
        "a checkpoint from another model shape",
        lambda t, c, g: fit(str(c), "--ckpt_path", str(g), "--model.config.n_layer", "3"),
        "n_layer is 2 in the checkpoint but 3 here",
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_ends_in_one_clear_line(name, tmp_path, corpus, trained):
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)
    work = tmp_path / "work"
    work.mkdir()
    args = case.make(work, corpus, trained)
    before = {p for p in tmp_path.rglob("*")}
    hub = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}  # no network, nothing cached, anywhere
    r = run_cli(*args, cwd=tmp_path, env={**ONE_THREAD, **hub})
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:")]
    assert len(lines) == 1, r.stderr[-3000:]
    assert case.expect in lines[0], lines[0]
    assert not (work / "PWNED").exists()  # the payload never ran
    # Nothing half-written: no temporary files, no checkpoints, no partial data folders.
    after = {p for p in tmp_path.rglob("*")} - before
    assert not [p for p in after if ".tmp" in p.name or p.suffix == ".ckpt"], sorted(after)
    assert not list(tmp_path.glob("runs/**/version_*")), sorted(after)  # no run folder left by a refused start
    record(case.row, "lit-gpt " + shlex.join(_shown(args)), r.returncode, lines[0])


def _file_in_the_way(work: Path) -> Path:
    (work / "runs").write_text("not a folder")
    return work / "runs"


def _shown(args: list[str]) -> list[str]:
    """The command as the docs show it: the TINY test settings left out."""
    if args[0] != "fit":
        return args
    source = args[args.index("--data.source") + 1]
    extra = args[len(fit(source)) :]
    return ["fit", "--config", "configs/shakespeare_char_cpu.yaml", "--data.source", source, *extra]


def test_the_every_problem_line_names_every_problem(tmp_path, corpus):
    args = CASES["zero-negative"].make(tmp_path, corpus, tmp_path)
    r = run_cli(*args, cwd=tmp_path)
    line = next(line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:"))
    for name in ("n_layer", "batch_size", "learning_rate", "max_steps", "val_check_interval"):
        assert name in line, line


def test_the_trainer_values_line_names_every_problem(tmp_path, corpus):
    args = CASES["trainer-values"].make(tmp_path, corpus, tmp_path)
    r = run_cli(*args, cwd=tmp_path)
    line = next(line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:"))
    for name in ("trainer.devices", "trainer.num_nodes", "trainer.strategy 'nonsense'"):
        assert name in line, line


def copy_run(trained: Path, cwd: Path) -> Path:
    """The trained run's version_0 folder, copied under ``cwd`` as if it had been trained there."""
    run = cwd / "runs" / "shakespeare_char_cpu" / "version_0"
    shutil.copytree(trained.parents[1], run)
    return run


def test_a_resume_refused_for_another_vocabulary_leaves_no_new_run_folder(tmp_path, corpus, trained):
    run = copy_run(trained, tmp_path)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = run_cli(*fit(other_vocabulary(tmp_path, corpus), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")),
                cwd=tmp_path, env=ONE_THREAD)  # fmt: skip
    assert r.returncode == 2 and "the checkpoint's tokenizer differs from the data's" in r.stderr, r.stderr[-3000:]
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]  # no version_1 with a config and events
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before  # the trained run untouched


class FullDisk(io.FileIO):
    """A file on a disk that fills up after 1000 bytes, as a write to a full disk fails (ENOSPC)."""

    def write(self, data) -> int:
        if self.tell() + len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint_and_says_so(
    tmp_path, corpus, trained, monkeypatch, capsys
):
    import lit_gpt.checkpoints.atomic
    from lit_gpt.cli import main

    run = copy_run(trained, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    saved = last.read_bytes()
    monkeypatch.chdir(tmp_path)
    # Every checkpoint file the resumed run opens is on the full disk (the real torch.save writes into it).
    monkeypatch.setattr(lit_gpt.checkpoints.atomic, "open", lambda path, mode: FullDisk(path, mode), raising=False)
    args = fit(str(corpus), "--ckpt_path", "last", "--trainer.max_steps", "12", "--trainer.val_check_interval", "2")
    with pytest.raises(SystemExit) as stopped:
        main(args)
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "Traceback" not in err, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("lit-gpt: error:")]
    assert len(lines) == 1, err[-3000:]
    assert "no space left writing " + str(run.relative_to(tmp_path) / "checkpoints") in lines[0], lines[0]
    assert " kept; free space and resume with --ckpt_path last" in lines[0], lines[0]
    assert last.read_bytes() == saved  # the previous checkpoint is whole, and still loads
    assert torch.load(last, weights_only=True)["global_step"] == 10
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(p.name for p in trained.parent.iterdir())
    record("the disk filling up during a checkpoint save", "lit-gpt fit ... --ckpt_path last  (disk full at the save)",
           stopped.value.code, lines[0])  # fmt: skip


FULL_DISK_LAUNCH = """
import errno, io, os, sys
import lit_gpt.checkpoints.atomic
from lit_gpt.cli import main

class FullDisk(io.FileIO):
    def write(self, data):
        if self.tell() + len(data) > 1000:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)

lit_gpt.checkpoints.atomic.open = lambda path, mode: FullDisk(path, mode)
main()
"""


def test_a_full_disk_under_ddp_is_one_line_from_rank_zero(tmp_path, corpus):
    # Only rank 0 writes a DDP checkpoint: the other rank, waiting for it, must end without a traceback of its own.
    (tmp_path / "launch.py").write_text(FULL_DISK_LAUNCH)  # Lightning starts rank 1 with the same script
    args = fit(str(corpus), "--trainer.max_steps", "4", "--trainer.val_check_interval", "2", "--trainer.devices", "2",
               "--trainer.strategy", "ddp")  # fmt: skip
    env = {**os.environ, **ONE_THREAD}
    r = subprocess.run([sys.executable, "launch.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error")]
    assert len(lines) == 1 and "no space left writing runs/" in lines[0], r.stderr[-3000:]
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.suffix == ".ckpt"]


def test_debug_shows_the_traceback(tmp_path):
    r = run_cli(*fit(str(tmp_path / "nope.txt")), "--debug", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" in r.stderr and "LitGPTError" in r.stderr


def test_a_prompt_longer_than_the_context_is_cropped_not_an_error(trained, tmp_path):
    prompt = "To be, or not to be, that is the question. " * 4  # 172 characters, block_size is 32
    r = run_cli("generate", "--checkpoint", str(trained), "--prompt", prompt, "--max_new_tokens", "20", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith(prompt) and len(r.stdout) == len(prompt) + 20 + 1
    record("a prompt longer than block_size (generate)", "lit-gpt generate --prompt '<172 characters>'", 0,
           "(no error: the model sees the prompt's last block_size tokens and continues it)")  # fmt: skip


@pytest.mark.parametrize("every", [[], ["--loss_guard.check_every_n_steps", "3"]], ids=["cpu-default", "every-3"])
def test_a_nan_loss_stops_names_the_step_and_keeps_the_last_good_checkpoint(tmp_path, corpus, every):
    # A learning rate of 1000 makes this model diverge after a few steps; a checkpoint every 2 steps. The default on
    # a CPU reads the loss every step; the device path (a GPU's default) records the first bad step without waiting
    # and looks every few steps: both name the first bad step.
    args = fit(str(corpus), "--model.learning_rate", "1000", "--trainer.max_steps", "40",
               "--trainer.val_check_interval", "2", "--trainer.gradient_clip_val", "0", *every)  # fmt: skip
    r = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    line = next(line for line in r.stderr.splitlines() if line.startswith("lit-gpt: error:"))
    assert "the training loss became nan at step" in line and "last good checkpoint" in line, line
    bad_step = int(line.split("at step ")[1].split(":")[0])
    last = tmp_path / "runs" / "shakespeare_char_cpu" / "version_0" / "checkpoints" / "last.ckpt"
    assert str(last.relative_to(tmp_path)) in line
    ckpt = torch.load(last, weights_only=True)
    assert 0 < ckpt["global_step"] < bad_step and f"(step {ckpt['global_step']})" in line
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())  # the kept weights are good
    if not every:
        record("loss turning NaN/inf", "lit-gpt fit ... --model.learning_rate 1000", r.returncode, line)


@settings(max_examples=20, deadline=None)
@given(
    n_layer=st.integers(1, 3),
    n_head=st.integers(1, 4),
    head_size=st.integers(1, 8),
    block_size=st.integers(1, 16),
    vocab_size=st.integers(1, 70),
    dropout=st.sampled_from([0.0, 0.1, 0.5]),
    bias=st.booleans(),
    seq=st.integers(1, 16),
)
def test_any_valid_config_trains_one_step_with_a_finite_loss(
    n_layer, n_head, head_size, block_size, vocab_size, dropout, bias, seq
):
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                       n_embd=n_head * head_size, dropout=dropout, bias=bias)  # fmt: skip
    model = GPT(config)
    optimizer = configure_adamw(model, 1e-3, 0.1, (0.9, 0.99))
    x = torch.randint(0, vocab_size, (2, min(seq, block_size)))
    before = [p.detach().clone() for p in model.parameters()]
    _, loss = model(x, torch.roll(x, -1, dims=1))
    assert math.isfinite(loss.item())
    loss.backward()
    optimizer.step()
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))  # it did learn something
