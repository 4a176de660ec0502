"""Never lose a run: exact resume, preemption by signal, atomic checkpoint writes (a real `lit-gpt` process each)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import ROOT, TINY, run_cli
from reliability_log import record
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # bit-exact comparisons, and fair to the other tests running at once
N = 20  # steps before the interruption; the runs compare 2N steps
# the child `lit-gpt fit` imports the test callbacks (tests/signal_at_step.py) by module name
TESTS_ON_PATH = os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])


def fit_args(corpus: Path, max_steps: int, *extra: str) -> list[str]:
    return [
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--model.config.dropout", "0.1",  # dropout draws random numbers: their state must be restored too
        "--model.lr_decay_steps", str(2 * N), "--data.source", str(corpus), "--data.cache_dir", str(corpus.parent),
        "--trainer.max_steps", str(max_steps), "--trainer.val_check_interval", "10", "--trainer.log_every_n_steps", "1",
        "--sample.max_new_tokens", "0", "--trainer.enable_progress_bar", "false", *extra,
    ]  # fmt: skip


def curves(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in ("train/loss", "val/loss")}


def run_dir(cwd: Path) -> Path:
    return cwd / "runs" / "shakespeare_char_cpu" / "version_0"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, corpus) -> dict:
    cwd = tmp_path_factory.mktemp("uninterrupted")
    r = run_cli(*fit_args(corpus, 2 * N), cwd=cwd, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    c = curves(run_dir(cwd))
    assert len(c["train/loss"]) == 2 * N
    return c


def test_resume_from_last_continues_bit_for_bit(uninterrupted, corpus, tmp_path):
    first = run_cli(*fit_args(corpus, N), cwd=tmp_path, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    # The same command plus --ckpt_path last: finds runs/<name>/version_0/checkpoints/last.ckpt although this new
    # run would log to version_1, and continues in version_0.
    resumed = run_cli(*fit_args(corpus, 2 * N, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restored all states" in resumed.stderr
    assert not (tmp_path / "runs" / "shakespeare_char_cpu" / "version_1").exists()
    got = curves(run_dir(tmp_path))
    assert got["train/loss"] == uninterrupted["train/loss"]  # every step, exactly: data, RNG, LR, optimizer
    assert got["val/loss"] == uninterrupted["val/loss"]
    ckpt = torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * N


def test_a_run_that_ends_between_validations_keeps_its_last_steps(uninterrupted, corpus, tmp_path):
    # Validation every 10 steps, the run ends at step 37: last.ckpt holds step 37, not 30, and a resume from it
    # continues the uninterrupted curve exactly.
    first = run_cli(*fit_args(corpus, 2 * N - 3), cwd=tmp_path, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    assert torch.load(last, weights_only=True)["global_step"] == 2 * N - 3
    resumed = run_cli(*fit_args(corpus, 2 * N, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(tmp_path)) == uninterrupted


def test_last_ckpt_follows_every_validation_even_when_val_loss_does_not_improve(corpus, tmp_path, monkeypatch):
    # mode max: the falling val loss never "improves" after the first validation. Lightning 2.6 alone would leave
    # last.ckpt at step 10 until the run ends, so a crash at step 35 would resume from step 10.
    from lit_gpt.lightning_cli import fit_cli

    class Recorder(L.Callback):  # what a crash at the start of each step would find in last.ckpt
        seen: list[tuple[int, int]] = []

        def on_train_batch_start(self, trainer, *args) -> None:
            step = trainer.global_step
            if step % 10 == 1 and step > 1:
                last = Path(trainer.checkpoint_callback.dirpath) / "last.ckpt"
                self.seen.append((step, torch.load(last, weights_only=True)["global_step"]))

    monkeypatch.chdir(tmp_path)
    cli = fit_cli(fit_args(corpus, 35, "--checkpoint.mode", "max")[1:], run=False)
    cli.trainer.callbacks.append(Recorder())
    cli.trainer.fit(cli.model, cli.datamodule)
    assert Recorder.seen == [(11, 10), (21, 20), (31, 30)]
    ckpts = run_dir(tmp_path) / "checkpoints"
    assert [p.name[:10] for p in ckpts.glob("step*.ckpt")] == ["step000010"]  # the best-k file: still the "best"


def test_ckpt_path_last_on_a_fresh_run_starts_from_scratch(corpus, tmp_path):
    """One command for the first start and every restart of a preemptible job."""
    r = run_cli(*fit_args(corpus, 2, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "no last.ckpt under" in r.stderr and (run_dir(tmp_path) / "checkpoints" / "last.ckpt").exists()


def start_fit(args: list[str], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, **ONE_THREAD, **(env or {})}
    return subprocess.Popen(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {path} appeared:\n{proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"{path} did not appear in {timeout} s")
        time.sleep(0.05)


def test_sigterm_saves_a_checkpoint_that_resumes_exactly(uninterrupted, corpus, tmp_path):
    sig = signal.SIGTERM
    # An endless run (as far as the test is concerned), signalled once it has passed its first checkpoint.
    proc = start_fit([sys.executable, "-m", "lit_gpt.cli", *fit_args(corpus, 10_000)], tmp_path)
    last = run_dir(tmp_path) / "checkpoints" / "last.ckpt"
    wait_for(last, proc)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, stderr[-3000:]
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("lit-gpt:")]
    assert len(lines) == 1 and f"stopped by {sig.name} at step" in lines[0] and "--ckpt_path last" in lines[0]
    record(f"preemption: {sig.name}", "kill -" + sig.name.removeprefix("SIG") + " <pid>", proc.returncode, lines[0])
    step = torch.load(last, weights_only=True)["global_step"]
    assert f"at step {step} " in lines[0] and 10 <= step < 2 * N  # saved at the step it stopped, not at step 10
    resumed = run_cli(*fit_args(corpus, 2 * N, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(tmp_path)) == uninterrupted  # every train and val loss, at the same steps


@pytest.mark.parametrize(
    "sig, step",
    [(signal.SIGUSR1, 10), (signal.SIGTERM, 13)],
    ids=["SIGUSR1-at-a-validation-step", "SIGTERM-between-validations"],
)
def test_a_signal_at_any_step_resumes_exactly(uninterrupted, corpus, tmp_path, sig, step):
    """The signal arrives during step `step` (sent by the process to itself, tests/signal_at_step.py)."""
    hook = ["--trainer.callbacks+=signal_at_step.SignalAtStep", "--trainer.callbacks.step", str(step),
            "--trainer.callbacks.signal_name", sig.name]  # fmt: skip
    env = {**ONE_THREAD, "PYTHONPATH": TESTS_ON_PATH}
    stopped = run_cli(*fit_args(corpus, 2 * N, *hook), cwd=tmp_path, env=env)
    assert stopped.returncode == 128 + sig, stopped.stderr[-3000:]
    assert f"stopped by {sig.name} at step {step} and saved" in stopped.stderr
    line = next(line for line in stopped.stderr.splitlines() if line.startswith("lit-gpt:"))
    record(f"preemption: {sig.name} during step {step}", f"kill -{sig.name.removeprefix('SIG')} <pid>", 128 + sig, line)
    assert torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == step
    resumed = run_cli(*fit_args(corpus, 2 * N, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(tmp_path)) == uninterrupted


def test_a_run_killed_right_after_a_save_every_n_steps_loses_no_logged_step(uninterrupted, corpus, tmp_path):
    """The save every other step at step 14 (between validations) lands, and the process dies at once: step 14's
    loss was on disk before its checkpoint, so the resumed curves have every step exactly once."""
    every_other = ["--checkpoint.every_n_train_steps", "2"]
    hook = ["--trainer.callbacks+=signal_at_step.KillAfterSave", "--trainer.callbacks.step", "14"]
    env = {**ONE_THREAD, "PYTHONPATH": TESTS_ON_PATH}
    killed = run_cli(*fit_args(corpus, 2 * N, *every_other, *hook), cwd=tmp_path, env=env)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 14
    resumed = run_cli(*fit_args(corpus, 2 * N, *every_other, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(tmp_path)) == uninterrupted


@pytest.mark.parametrize("trial", range(3))
def test_a_run_killed_at_a_random_moment_resumes_onto_the_same_curve(uninterrupted, corpus, tmp_path, trial):
    """SIGKILL (no handler runs) at a random moment while a checkpoint is saved every other step, possibly in the
    middle of a save; --ckpt_path last then ends on the uninterrupted run's every train and val loss."""
    every_other = ["--checkpoint.every_n_train_steps", "2"]
    proc = start_fit([sys.executable, "-m", "lit_gpt.cli", *fit_args(corpus, 2 * N, *every_other)], tmp_path)
    wait_for(run_dir(tmp_path) / "checkpoints" / "last.ckpt", proc)
    time.sleep(random.Random(trial).uniform(0.0, 1.5))  # seeded: a failing trial can be run again
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    resumed = run_cli(*fit_args(corpus, 2 * N, *every_other, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(tmp_path)) == uninterrupted


def test_under_slurm_sigusr1_saves_and_requeues_the_job(corpus, tmp_path):
    """Lightning's SLURM auto-requeue, done from a step boundary instead of inside the signal handler."""
    (tmp_path / "bin").mkdir()
    scontrol = tmp_path / "bin" / "scontrol"
    scontrol.write_text(f'#!/bin/bash\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    slurm = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit-gpt", "SLURM_NTASKS": "1", "SLURM_NODELIST": "localhost",
             "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    path = os.pathsep.join([str(tmp_path / "bin"), os.environ["PATH"]])
    hook = ["--trainer.callbacks+=signal_at_step.SignalAtStep", "--trainer.callbacks.step", "5",
            "--trainer.callbacks.signal_name", "SIGUSR1"]  # fmt: skip
    env = {**ONE_THREAD, **slurm, "PATH": path, "PYTHONPATH": TESTS_ON_PATH}
    r = run_cli(*fit_args(corpus, 2 * N, *hook), cwd=tmp_path, env=env)
    assert r.returncode == 128 + signal.SIGUSR1, r.stderr[-3000:]
    assert "(SLURM job 4242 requeued)" in r.stderr
    line = next(line for line in r.stderr.splitlines() if line.startswith("lit-gpt:"))
    record("preemption under SLURM (auto-requeue on)", "scancel --signal=USR1 <job>", r.returncode, line)
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert torch.load(run_dir(tmp_path) / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 5


# A `lit-gpt fit` whose checkpoint writes hang half-way through the second last.ckpt, as if the disk stalled or the
# job was killed mid-save; it writes the temporary file's name to $MARKER when it hangs.
SLOW_SAVE = """
import io, os, sys, time, torch
real_save, saves = torch.save, []
def slow_save(obj, f, *args, **kwargs):
    name = getattr(f, "name", "")
    saves.append(name)
    if "last.ckpt" in str(name) and sum("last.ckpt" in str(s) for s in saves) == 2:
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        f.flush()
        open(os.environ["MARKER"], "w").write(str(name))
        time.sleep(600)
    return real_save(obj, f, *args, **kwargs)
torch.save = slow_save
from lit_gpt.cli import main
main(sys.argv[1:])
"""


def test_killed_mid_save_keeps_the_previous_checkpoint(corpus, tmp_path):
    marker = tmp_path / "hanging"
    proc = start_fit([sys.executable, "-c", SLOW_SAVE, *fit_args(corpus, 2 * N)], tmp_path, {"MARKER": str(marker)})
    wait_for(marker, proc)
    proc.send_signal(signal.SIGKILL)  # no handler, no cleanup: the harshest interruption
    proc.communicate()
    checkpoints = run_dir(tmp_path) / "checkpoints"
    partial = Path(marker.read_text())
    assert partial.exists() and partial.parent == checkpoints  # the half-written bytes went to a temporary file
    assert not partial.name.endswith(".ckpt")  # ... that no reader mistakes for a checkpoint
    ckpt = torch.load(checkpoints / "last.ckpt", weights_only=True)  # the previous last.ckpt is whole
    assert ckpt["global_step"] == 10
    # generate and --ckpt_path last both use it; the next save clears the dead process's temporary file.
    gen = run_cli("generate", "--checkpoint", str(tmp_path / "runs"), "--max_new_tokens", "5", cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-2000:]
    resumed = run_cli(*fit_args(corpus, 12, "--ckpt_path", "last"), cwd=tmp_path, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 12
    assert not partial.exists()


MUON = ["--model.optimizer", "muon", "--model.lr_schedule", "wsd"]


def test_a_muon_run_resumes_bit_for_bit_and_refuses_another_optimizer(corpus, tmp_path):
    """Both optimizers' state (Muon's momentum, AdamW's moments) and the WSD schedule travel in the checkpoint."""
    whole, part = tmp_path / "whole", tmp_path / "part"
    whole.mkdir(), part.mkdir()
    r = run_cli(*fit_args(corpus, 2 * N, *MUON), cwd=whole, env=ONE_THREAD)
    assert r.returncode == 0, r.stderr[-3000:]
    first = run_cli(*fit_args(corpus, N, *MUON), cwd=part, env=ONE_THREAD)
    assert first.returncode == 0, first.stderr[-3000:]
    wrong = run_cli(*fit_args(corpus, 2 * N, "--ckpt_path", "last"), cwd=part, env=ONE_THREAD)  # AdamW
    assert wrong.returncode != 0 and "Traceback" not in wrong.stderr
    line = wrong.stderr.strip().splitlines()[-1]
    assert "trained with --model.optimizer muon" in line and "--model.init_from" in line, line
    resumed = run_cli(*fit_args(corpus, 2 * N, *MUON, "--ckpt_path", "last"), cwd=part, env=ONE_THREAD)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert curves(run_dir(part)) == curves(run_dir(whole))
