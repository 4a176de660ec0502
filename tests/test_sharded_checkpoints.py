"""Sharded (FSDP) checkpoints are never lost and never fail with a traceback: a save killed on every rank leaves the
previous checkpoint whole and resumable; a truncated, incomplete, code-running or mismatched folder, or a
checkpoint of the other kind (folder vs file) for the strategy, ends in one line saying what to do.

FSDP runs are real 2-rank `lit-gpt fit` processes (gloo, one thread each); one of them, killed mid-save, serves
every test of the module."""

from __future__ import annotations

import contextlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli

from lit_gpt.checkpoints.convert import convert
from lit_gpt.checkpoints.read import find_last_checkpoint, resolve_checkpoint
from lit_gpt.checkpoints.sharded import META_FILE, OLD_MARK, is_sharded, staging_path, swap_in
from lit_gpt.cli import main
from lit_gpt.errors import LitGPTError
from lit_gpt.init_from import load_pretrained
from lit_gpt.resume import check_ckpt_path

ONE_THREAD = {"OMP_NUM_THREADS": "1"}
FSDP = ["--trainer.devices", "2", "--trainer.strategy", "fsdp"]

# `lit-gpt fit` whose rank 0 hangs half-way through writing the meta.pt of its second last.ckpt save (step 4),
# after every rank wrote its shard: the moment Lightning's in-place save has already replaced last.ckpt's shards.
# It writes the path it was writing to $MARKER. Both ranks run it (Lightning relaunches this script).
HANG_SAVE = """
import io, os, sys, time, torch
real_save, saves = torch.save, []
def hanging_save(obj, f, *args, **kwargs):
    name = str(f) if isinstance(f, (str, os.PathLike)) else str(getattr(f, "name", ""))
    if "last.ckpt" in name and "meta.pt" in name:
        saves.append(name)
        if len(saves) == 2:
            buf = io.BytesIO()
            real_save(obj, buf)
            data = buf.getvalue()[: len(buf.getvalue()) // 2]
            if hasattr(f, "write"):
                f.write(data)
                f.flush()
            else:
                open(f, "wb").write(data)
            open(os.environ["MARKER"], "w").write(name)
            time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = hanging_save
if __name__ == "__main__":
    from lit_gpt.cli import main
    main(sys.argv[1:])
"""


def fit_args(corpus: Path, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY, "--data.source", str(corpus),
        "--trainer.val_check_interval", "2", "--trainer.enable_progress_bar", "false", "--sample.max_new_tokens", "0",
        *FSDP, *extra,
    ]  # fmt: skip


def checkpoints(cwd: Path) -> Path:
    return cwd / "runs" / "shakespeare_char_cpu" / "version_0" / "checkpoints"


def step_of(folder: Path) -> int:
    return torch.load(folder / META_FILE, weights_only=True)["global_step"]


def one_line(stderr: str, expect: str) -> None:
    """The user sees one lit-gpt error line containing ``expect``, and no traceback."""
    lines = [line for line in stderr.splitlines() if line.startswith("lit-gpt: error")]
    assert len(lines) == 1 and expect in lines[0], stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]


def cli(capsys, *args: str) -> str:
    """``lit-gpt ARGS`` in this process (generate and convert start no ranks): its exit code must be 2."""
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    assert exit_.value.code == 2
    return capsys.readouterr().err


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def killed(tmp_path_factory, corpus) -> tuple[Path, Path]:
    """A 2-rank FSDP run with a checkpoint at step 2, killed (SIGKILL, both ranks) while saving step 4's last.ckpt.
    Returns the run's folder and the file the killed save was writing."""
    cwd = tmp_path_factory.mktemp("killed")
    script, marker = cwd / "hang_save.py", cwd / "hanging"
    script.write_text(HANG_SAVE)
    env = {**os.environ, **ONE_THREAD, "MARKER": str(marker)}
    args = [sys.executable, str(script), *fit_args(corpus, "--trainer.max_steps", "6")]
    proc = subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"the run ended before its save hung:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.1)
    time.sleep(0.2)  # the half file is flushed before the marker is written; let rank 1 settle in its wait
    os.killpg(proc.pid, signal.SIGKILL)  # every rank at once, no handler runs: the harshest interruption
    proc.communicate()
    return cwd, Path(marker.read_text())


@pytest.fixture
def good(killed, tmp_path) -> Path:
    """A copy of the killed run's last.ckpt (step 2), to break."""
    return Path(shutil.copytree(checkpoints(killed[0]) / "last.ckpt", tmp_path / "good.ckpt"))


def test_a_save_killed_on_every_rank_keeps_the_previous_checkpoint_which_resumes(killed, corpus, tmp_path):
    cwd, partial = killed
    last = checkpoints(cwd) / "last.ckpt"
    # The killed save wrote into a hidden staging folder, not into last.ckpt, which is still step 2's, whole.
    staging = partial.parent
    assert staging.parent == last.parent and staging.name.startswith(".last.ckpt.tmp-"), partial
    assert sorted(p.name for p in staging.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
    assert step_of(last) == 2
    copy = tmp_path / "run"  # resumed below; the module's other tests read the original
    shutil.copytree(cwd / "runs", copy / "runs", symlinks=True)
    # The leftover is never taken for a checkpoint: generate on the run folder reads last.ckpt.
    gen = run_cli("generate", "--checkpoint", str(cwd / "runs"), "--max_new_tokens", "5", cwd=cwd)
    assert gen.returncode == 0, gen.stderr[-3000:]
    # The same command plus --ckpt_path last resumes from step 2, and the dead save's staging folder is cleared.
    assert list((checkpoints(copy)).glob(".last.ckpt.tmp-*"))
    resumed = run_cli(*fit_args(corpus, "--trainer.max_steps", "4", "--ckpt_path", "last"), cwd=copy, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = checkpoints(copy) / "last.ckpt"
    assert f"Restored all states from the checkpoint at {last.relative_to(copy)}" in resumed.stderr
    assert step_of(last) == 4
    assert not list(last.parent.glob(".*")), "a staging folder was left behind"
    assert "overwriting" not in resumed.stderr  # torch's warning for a save into an existing checkpoint folder


def lookup(how: str, runs: Path, target: Path) -> Path:
    """The checkpoint a user's command finds: --ckpt_path last, --ckpt_path <the file>, lit-gpt generate."""
    if how == "ckpt_path last":
        return find_last_checkpoint(runs)
    if how == "ckpt_path":
        config = {"ckpt_path": str(target)}
        check_ckpt_path(config)
        return Path(config["ckpt_path"])
    return resolve_checkpoint(runs)


@pytest.mark.parametrize("how", ["ckpt_path last", "ckpt_path", "generate"])
def test_a_kill_between_the_two_renames_of_a_save_loses_nothing(how, good, tmp_path, monkeypatch):
    # The one moment last.ckpt does not exist: the previous checkpoint renamed aside, the new one not yet renamed
    # in. Every lookup first completes the swap; the next save in the folder deletes the dead save's leftovers.
    runs = tmp_path / "runs"
    target = runs / "x" / "version_0" / "checkpoints" / "last.ckpt"
    shutil.copytree(good, target)
    staging = staging_path(target, f"{dead_pid()}-cafe")
    shutil.copytree(good, staging)
    meta = torch.load(staging / META_FILE, weights_only=True)
    torch.save({**meta, "global_step": 99}, staging / META_FILE)  # the new checkpoint
    renames = []
    real_rename = os.rename

    class Killed(BaseException):
        pass

    def rename(src, dst):
        renames.append(dst)
        if len(renames) == 2:
            raise Killed
        real_rename(src, dst)

    monkeypatch.setattr("lit_gpt.checkpoints.sharded.os.rename", rename)
    with pytest.raises(Killed):
        swap_in(staging, target)
    monkeypatch.setattr("lit_gpt.checkpoints.sharded.os.rename", real_rename)
    assert not target.exists() and Path(str(staging) + OLD_MARK).is_dir()
    assert lookup(how, runs, target) == target and step_of(target) == 99

    # Killed before the first rename: last.ckpt stays the previous checkpoint, the staged one is ignored.
    staging = staging_path(target, f"{dead_pid()}-beef")
    shutil.copytree(good, staging)
    (staging / META_FILE).unlink()  # not complete yet
    assert lookup(how, runs, target) == target and step_of(target) == 99


def test_a_truncated_or_missing_shard_is_one_line_everywhere(good, tmp_path, capsys, corpus):
    shard = good / "__1_0.distcp"
    os.truncate(shard, shard.stat().st_size // 2)
    expect = "the shard __1_0.distcp is truncated"
    one_line(cli(capsys, "convert", "--checkpoint", str(good), "--out", str(tmp_path / "m.ckpt")), expect)
    assert not (tmp_path / "m.ckpt").exists()
    one_line(cli(capsys, "generate", "--checkpoint", str(good)), expect)
    with pytest.raises(LitGPTError, match=expect):  # --model.init_from reads it the same way
        load_pretrained(good)
    # --ckpt_path last under FSDP: stopped before the ranks start, so one line, not one traceback per rank.
    run = checkpoints(tmp_path)
    run.mkdir(parents=True)
    shutil.move(good, run / "last.ckpt")
    r = run_cli(*fit_args(corpus, "--trainer.max_steps", "4", "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 2
    one_line(r.stderr, expect)
    assert "use an earlier checkpoint" in r.stderr
    (run / "last.ckpt" / "__0_0.distcp").unlink()
    out = str(tmp_path / "m.ckpt")
    one_line(cli(capsys, "convert", "--checkpoint", str(run / "last.ckpt"), "--out", out), "__0_0.distcp is missing")


class Evil:
    """Unpickling this runs code: it would create the file PWNED."""

    def __init__(self, target: Path) -> None:
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_folder_whose_files_would_run_code_is_refused_unread(good, tmp_path, capsys):
    pwned = tmp_path / "PWNED"
    meta = torch.load(good / META_FILE, weights_only=True)
    evil_meta = Path(shutil.copytree(good, tmp_path / "evil_meta"))
    torch.save({**meta, "payload": Evil(pwned)}, evil_meta / META_FILE)
    one_line(cli(capsys, "generate", "--checkpoint", str(evil_meta)), "would call posix.system")
    # .metadata is unpickled by torch itself, with plain pickle: checked before torch reads it.
    with open(good / ".metadata", "rb") as f:
        metadata = pickle.load(f)
    metadata.planner_data = Evil(pwned)
    with open(good / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    one_line(cli(capsys, "convert", "--checkpoint", str(good), "--out", str(tmp_path / "m.ckpt")), "run code")
    assert not pwned.exists()


def test_resuming_another_model_shape_or_the_other_kind_of_checkpoint_says_what_to_do(good, tmp_path, corpus):
    def resume(path: Path, *extra: str) -> subprocess.CompletedProcess:
        r = run_cli(*fit_args(corpus, "--ckpt_path", str(path), *extra), cwd=tmp_path, env=ONE_THREAD)
        assert r.returncode == 2
        return r

    one_line(resume(good, "--model.config.n_layer", "3").stderr, "n_layer is 2 in the checkpoint but 3 here")
    # A sharded folder without FSDP, which Lightning would open as a file.
    without_fsdp = resume(good, "--trainer.strategy", "auto", "--trainer.devices", "1").stderr
    one_line(without_fsdp, "is a sharded (FSDP) checkpoint folder: resume it with --trainer.strategy fsdp")
    assert "Is a directory" not in without_fsdp
    # A single file under FSDP, whose optimizer state FSDP cannot take.
    single = tmp_path / "single.ckpt"
    convert(checkpoint=str(good), out=str(single))
    one_line(resume(single).stderr, "is a single-file checkpoint: resume it without --trainer.strategy fsdp")


def test_resuming_with_another_corpus_under_fsdp_is_one_line(killed, tmp_path, corpus):
    # The vocabulary comes from the data, known only in the ranks: checked there, before the shards are read.
    other = tmp_path / "lower.txt"
    other.write_text(corpus.read_text(encoding="utf-8").lower(), encoding="utf-8")
    last = checkpoints(killed[0]) / "last.ckpt"
    args = [*fit_args(other, "--ckpt_path", str(last)), "--trainer.max_steps", "4"]
    r = run_cli(*args, cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 2
    one_line(r.stderr, "the checkpoint's tokenizer differs from the data's")
    assert is_sharded(last) and step_of(last) == 2  # untouched
