"""Resuming a run exactly where it stopped, and stopping it so that it can be resumed.

What a checkpoint needs for a bit-identical continuation, and who saves it:

- weights, optimizer, LR schedule, step counters: Lightning.
- which data windows come next: nothing to save, the windows of step ``s`` are a function of ``(seed, s)`` and
  ``TextDataModule.train_dataloader`` reads ``trainer.global_step`` after the checkpoint is restored.
- the random streams (dropout masks): ``ExactResume``, below. Lightning does not save them.

Preemption: on SIGTERM (or SIGUSR1, SLURM's "time is nearly up" warning) ``ExactResume`` lets the current step
and its validation finish, writes ``last.ckpt`` (all ranks agree on the step), and the CLI exits with one line saying
how to resume. Under SLURM with Lightning's auto-requeue on, the job is then requeued (``scontrol requeue``), as
Lightning's own handler would, but without its collectives inside a signal handler.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lit_gpt.checkpoints.atomic import AtomicCheckpointIO
from lit_gpt.checkpoints.format import BLOCK_FIELDS, SHAPE_FIELDS, read_section, saved_config, shape_differences
from lit_gpt.checkpoints.read import find_last_checkpoint, torch_load
from lit_gpt.checkpoints.sharded import (
    check_sharded,
    is_sharded,
    recover_interrupted_save,
    sharded_without_fsdp,
    single_file_under_fsdp,
)
from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_private import (
    cluster_environment,
    launched_ranks,
    logger_started,
    patient_child_observer,
    saves_distributed_checkpoint,
    set_logger_version,
    validation_follows,
)
from lit_gpt.nanogpt import is_nanogpt
from lit_gpt.parallel import FSDP2, FSDP2Strategy


def rng_states() -> dict[str, Any]:
    """Every random stream training draws from, as plain data (checkpoints load with ``weights_only=True``)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    name, keys, *rest = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _plain(x: Any) -> Any:
    return x.item() if hasattr(x, "item") else x


class ExactResume(L.Callback):
    """Saves the random-number generators' states in every checkpoint and restores them on resume, so a resumed
    run draws the same dropout masks as an uninterrupted one; on SIGTERM or SIGUSR1 saves last.ckpt and stops."""

    def __init__(self, save_on_signal: bool = True) -> None:
        """
        Args:
            save_on_signal: On SIGTERM, or SIGUSR1 (SLURM's warning before the time limit), finish the current step
                (and its validation), save last.ckpt and exit with code 128 + the signal number; resume with
                --ckpt_path last.
        """
        self.save_on_signal = save_on_signal
        self._pending: dict[str, Any] | None = None
        self._received: int | None = None  # the signal number, set by the handler
        self._saving_between_steps = False
        self._validated_at: int | None = None

    # --- random streams -------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {"rng": rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Applied just before the first training step: restoring runs before Lightning builds the data loaders,
        # and starting a loader draws from the torch generator.
        self._pending = state_dict.get("rng")

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._pending is not None:
            set_rng_states(self._pending)
            self._pending = None
        # The stop point for a signal: the previous step and its validation are done, nothing of this step has
        # drawn a random number yet, so the checkpoint is the state an uninterrupted run starts this step from.
        if self.save_on_signal and batch_idx % trainer.accumulate_grad_batches == 0:
            self._stop_if_signalled(trainer)

    # --- preemption and a dead rank -----------------------------------------------------------------------------

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # A launched rank that dies (killed, out of memory) is named by rank 0 in one line (lost_rank_error):
        # give it the time to, before Lightning's observer SIGKILLs it.
        patient_child_observer(trainer, grace=DEAD_RANK_GRACE)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces Lightning's SIGTERM and SLURM-requeue SIGUSR1 handlers: they run collectives (a broadcast, a
        # checkpoint save) inside the handler, which deadlocks DDP ranks caught in another collective. Ours only
        # sets a flag; the ranks act on it together at the next step (and requeue as Lightning would).
        if trainer.ckpt_path is not None:  # resumed: the curves go on from the checkpoint's step
            for logger in trainer.loggers:
                if hasattr(logger, "restarted_at"):
                    logger.restarted_at(trainer.global_step)
        if not self.save_on_signal:
            return
        self._received = None
        signal.signal(signal.SIGTERM, self._on_signal)
        if hasattr(signal, "SIGUSR1"):
            signal.signal(signal.SIGUSR1, self._on_signal)
        # Lightning restores the handlers it found when the run ends (its signal connector's teardown).

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_at = trainer.global_step

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._saving_between_steps:
            as_saved_at_step_end(checkpoint, validated=self._validated_at == trainer.global_step)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._received = signum

    def _stop_if_signalled(self, trainer: L.Trainer) -> None:
        stop = self._received is not None
        if trainer.world_size > 1:
            # Every rank stops at the same step, whichever got the signal. Agreeing is a collective (and a device
            # sync), so ranks compare flags on logging steps only: a few steps of a preemption's grace period.
            if trainer.global_step % max(1, trainer.log_every_n_steps) != 0:
                return
            stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
        if not stop:
            return
        signum = self._received or signal.SIGTERM
        name = signal.Signals(signum).name
        path = last_checkpoint_path(trainer)
        stopped = SIGTERMException(128 + signum)  # the shell's "ended by signal N": the run did not finish
        if path is None:
            stopped.lit_gpt_message = f"stopped by {name} at step {trainer.global_step}; checkpointing is off"
            raise stopped
        self._saving_between_steps = True
        try:
            trainer.save_checkpoint(path, weights_only=False)
        except LitGPTError as e:  # e.g. the loss guard refusing to save a diverged model
            stopped.lit_gpt_message = f"stopped by {name} at step {trainer.global_step}, not saved: {e}"
            raise stopped from None
        finally:
            self._saving_between_steps = False
        stopped.lit_gpt_message = (
            f"stopped by {name} at step {trainer.global_step} and saved {path}; "
            "resume with the same command plus --ckpt_path last"
        )
        job = _slurm_requeue(trainer) if signum != signal.SIGTERM else None
        if job:
            stopped.lit_gpt_message += f" (SLURM job {job} requeued)"
        raise stopped


def as_saved_at_step_end(checkpoint: dict[str, Any], validated: bool) -> None:
    """Make the loop counters of a checkpoint saved at a step's start read as a save at the previous step's end.

    Lightning resumes exactly from saves at a step's end (its checkpoint callback saves at on_validation_end or
    on_train_batch_end). A save at the next step's start comes after the loop counted the next batch as fetched and
    the finished step as logged; with the counters put back, the resumed run trains, validates and logs at the same
    steps as an uninterrupted one."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_loop.batch_progress", {})
    for counts in (progress.get("total"), progress.get("current")):
        if counts and counts.get("ready", 0) == counts.get("completed", 0) + 1:
            counts["ready"] -= 1
    state = loop.get("epoch_loop.state_dict", {})
    if validated and "_batches_that_stepped" in state:
        state["_batches_that_stepped"] -= 1  # as at on_validation_end, before the step is counted


def _slurm_requeue(trainer: L.Trainer) -> str | None:
    """What Lightning's SLURM auto-requeue does on SIGUSR1 (``scontrol requeue``), once the checkpoint is safe."""
    env = cluster_environment(trainer)
    if not (isinstance(env, SLURMEnvironment) and env.auto_requeue) or not trainer.is_global_zero:
        return None
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:
        done = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        rank_zero_info(f"could not requeue SLURM job {job}: {e}")
        return None
    return job if done.returncode == 0 else None


def preemption_report(exception: SIGTERMException) -> tuple[str, int]:
    """The one line and the exit code for a run stopped by a signal."""
    message = getattr(exception, "lit_gpt_message", "stopped by SIGTERM before training started; nothing to save")
    code = exception.code if isinstance(exception.code, int) and exception.code else 128 + signal.SIGTERM
    return message, code


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, with last.ckpt written at every validation and when training ends, and a save
    every N steps written only once its step's figures are in the run's logs.

    Lightning 2.6 writes last.ckpt only when a best-k checkpoint was written too, so once val loss stopped improving
    (a long run's tail, any finetune that overfits) it would stay behind and a crash would resume from the last
    improvement; and a run that ends between two validations lost its last steps. It also saves every N steps in
    on_train_batch_end, before the loop logs that step's loss: a run killed between the two resumed after a step
    that its curves never show."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deferring = False
        self._due: dict[str, Any] | None = None  # the monitored figures of a step whose save waits
        self._between_steps = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_due(trainer, between_steps=False)  # the loop logged the last step's figures before this hook
        super().on_train_end(trainer, pl_module)
        # The last steps after the last validation are work too: a run that ends between validations saves them.
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # A save every N steps (--checkpoint.every_n_train_steps) at a step that validates next waits for the
        # validation's own save (below): saved before it, a resumed run would skip that validation (Lightning counts
        # it as done), and the data loader it starts draws from the random stream, so the curves would part.
        if self._every_n_train_steps and validation_follows(trainer):
            return
        # Lightning's test of whether to save now; the save itself waits for the next step's start (_save_due).
        self._deferring = True
        try:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        finally:
            self._deferring = False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx % trainer.accumulate_grad_batches == 0:  # a step's first micro-batch: the last step is logged
            self._save_due(trainer, between_steps=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._save_due(trainer, between_steps=False)
        super().on_train_epoch_end(trainer, pl_module)

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._deferring:
            self._due = monitor_candidates
        else:
            super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if self._deferring:
            self._due = monitor_candidates
        else:
            super()._save_last_checkpoint(trainer, monitor_candidates)

    def _save_due(self, trainer: L.Trainer, between_steps: bool) -> None:
        due, self._due = self._due, None
        if due is None or self._should_skip_saving_checkpoint(trainer):  # e.g. a validation's save came first
            return
        self._between_steps = between_steps
        try:
            self._save_topk_checkpoint(trainer, due)
            self._save_last_checkpoint(trainer, due)
        finally:
            self._between_steps = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        if self._between_steps:  # no validation ran at the saved step: it would have saved first
            as_saved_at_step_end(checkpoint, validated=False)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        # Skips itself when the step was saved already (a best-k save writes last.ckpt with it).
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            if not self._should_save_on_train_epoch_end(trainer):
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def last_checkpoint_path(trainer: L.Trainer) -> Path | None:
    """Where ``last.ckpt`` goes: the checkpoint callback's folder."""
    for cb in trainer.checkpoint_callbacks:
        if isinstance(cb, ModelCheckpoint) and cb.dirpath:
            return Path(cb.dirpath) / f"{cb.CHECKPOINT_NAME_LAST}{cb.FILE_EXTENSION}"
    return None


def newest_saved_checkpoint(trainer: L.Trainer) -> Path | None:
    """The newest checkpoint this run saved (last or best-k) or resumed from: what a stopped run still has. A
    last.ckpt comes first: Lightning rewrites it at every save, so it holds the newest step, and it is what
    ``--ckpt_path last`` resumes (a best-k file of the same save may be newer on disk)."""
    lasts = [getattr(cb, "last_model_path", "") for cb in trainer.checkpoint_callbacks]
    if found := [Path(p) for p in lasts if p and Path(p).exists()]:  # a file, or a sharded (FSDP) folder
        return found[0]
    candidates = [str(trainer.ckpt_path)] if trainer.ckpt_path else []
    candidates += [getattr(cb, "best_model_path", "") for cb in trainer.checkpoint_callbacks]
    found = [Path(p) for p in candidates if p and Path(p).exists()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_ckpt_path(ckpt_path: str | None, trainer: L.Trainer, named_version: bool = False) -> str | None:
    """``--ckpt_path`` as the Trainer should see it.

    ``last`` is the newest ``last.ckpt`` under the logger's folder, or under the run's own folder when the config
    names the logger version (every run otherwise gets a new ``version_N`` folder, so
    Lightning's own lookup, which only looks in the new one, would find nothing and silently start over); when there
    is none yet, training starts from scratch, so one command works for the first start and every restart. The
    resumed run logs into the folder it resumes, so curves and best-k checkpoints continue in one place.
    """
    if ckpt_path != "last":
        return ckpt_path  # already checked by check_ckpt_path
    logger = trainer.logger
    root = Path(getattr(logger, "root_dir", None) or trainer.default_root_dir)
    if named_version and getattr(logger, "log_dir", None):  # the config names the run (e.g. slurm-<job id>)
        root = Path(logger.log_dir)
    found = find_last_checkpoint(root)
    # Under SLURM, Lightning's requeue handler saves hpc_ckpt_<n>.ckpt in the root dir: it may be the newer one.
    hpc = [p for p in Path(trainer.default_root_dir).glob("hpc_ckpt_*.ckpt") if p.is_file()]
    newest = max([p for p in (found, *hpc) if p is not None], key=lambda p: p.stat().st_mtime, default=None)
    if newest is None:
        rank_zero_info(f"--ckpt_path last: no last.ckpt under {root} yet, starting from scratch")
        return None
    if found is not None:
        _reuse_version(logger, found)
    return str(newest)


def _names_logger_version(config: Any) -> bool:
    """Whether the config sets the logger's version (then that folder is the run, whatever else is in runs/)."""
    try:
        logger = config["trainer"]["logger"]
        init_args = logger["init_args"] if "init_args" in logger else logger
        return init_args.get("version") is not None
    except (KeyError, TypeError, AttributeError):
        return False


def _reuse_version(logger: Any, ckpt: Path) -> None:
    """Point a not-yet-started TensorBoard/CSV logger at the ``version_N`` folder that holds ``ckpt``."""
    version = next((p.name for p in ckpt.parents if p.name.startswith("version_")), None)
    if version is None or logger is None or logger_started(logger):
        return  # a logger without versions, or one already writing: leave it be
    if set_logger_version(logger, int(version.removeprefix("version_"))):
        # Writing into a folder that has checkpoints is the point here, not the mistake Lightning warns about.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")


def prepare_run(trainer: L.Trainer, config: Any, parsed: Any = None) -> None:
    """Before fit/validate: atomic checkpoint writes unless the user chose a CheckpointIO, and ``--ckpt_path``
    resolved (see ``resolve_ckpt_path``). ``config`` is the subcommand's instantiated config (its ckpt_path is
    updated), ``parsed`` the same before instantiation (it tells whether the config names the logger version)."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
    requested = config.get("ckpt_path")
    config["ckpt_path"] = resolve_ckpt_path(requested, trainer, _names_logger_version(parsed or config))
    if requested == "last" and config["ckpt_path"]:
        check_ckpt_path(config)


def check_ckpt_path(config: Any) -> None:
    """Before anything is built: a ``--ckpt_path`` file (or sharded folder) must be a readable lit-gpt checkpoint of
    the kind the strategy resumes (a sharded folder for FSDP, a file otherwise) whose model shape matches the
    config. Resolves a run folder to its newest last.ckpt in ``config``; 'last' is resolved later (it needs the
    logger's folder).

    This replaces LightningCLI's own look at the file, which crashes with a traceback on a corrupt file and silently
    swaps the command line's model options for the checkpoint's; and it fails once, before the ranks start, where
    a sharded resume would fail on every rank with a traceback.
    """
    ckpt_path = config.get("ckpt_path")
    if not ckpt_path or ckpt_path in ("last", "best", "hpc") or str(ckpt_path).startswith("registry"):
        return
    path = Path(ckpt_path).expanduser()
    if not path.exists():
        recover_interrupted_save(path)  # a sharded save killed between its two renames
    if path.is_dir() and not is_sharded(path):
        found = find_last_checkpoint(path)
        if found is None:
            raise LitGPTError(f"--ckpt_path {ckpt_path!r} is a folder with no last.ckpt in it: give a .ckpt file")
        path = found
    if not path.exists():
        raise LitGPTError(f"--ckpt_path {ckpt_path!r} does not exist: give a .ckpt file, a run folder, or 'last'")
    config["ckpt_path"] = str(path)
    sharded, fsdp = path.is_dir(), _resumes_sharded(config)
    if sharded and fsdp is False:
        raise LitGPTError(sharded_without_fsdp(path))
    if not sharded and fsdp is True:
        raise LitGPTError(single_file_under_fsdp(path))
    # Every shard whole and meta.pt plain data; a file is memory-mapped: no need to read it all.
    ckpt = check_sharded(path) if sharded else torch_load(path, mmap=True)
    if is_nanogpt(ckpt):
        raise LitGPTError(
            f"--ckpt_path {str(path)!r} is a nanoGPT checkpoint, which resumes only in nanoGPT: start from its weights "
            f"with --model.init_from {path} instead"
        )
    saved = read_section(ckpt, repr(str(path)))
    shape = config.get("model", {}).get("config") if hasattr(config.get("model", {}), "get") else None
    if shape is None:
        return
    # A sharded resume reads the weights before the LightningModule can compare the block's layout: check it too.
    fields = SHAPE_FIELDS + BLOCK_FIELDS if sharded else SHAPE_FIELDS
    diff = shape_differences(saved_config(saved, repr(str(path))), shape, fields)
    if diff:
        raise LitGPTError(
            f"the checkpoint {str(path)!r} has another model shape: {', '.join(diff)}; "
            "resume with the config it was trained with"
        )


def _resumes_sharded(config: Any) -> bool | None:
    """Whether the configured strategy resumes from sharded folders (FSDP2) or from files; None when unknown (e.g.
    Lightning's FSDP1 or DeepSpeed, which write either)."""
    trainer = config.get("trainer") if hasattr(config, "get") else None
    if not hasattr(trainer, "get"):
        return None
    strategy = trainer.get("strategy", "auto")
    if isinstance(strategy, FSDP2Strategy):
        return saves_distributed_checkpoint(strategy)
    if isinstance(strategy, str):
        name = strategy.lower()
        if name in ("fsdp", FSDP2):  # the CLI maps "fsdp" to FSDP2
            return True
        return False if name == "auto" or name.startswith(("ddp", "single_", "dp")) else None
    class_path = str(strategy.get("class_path", "") if hasattr(strategy, "get") else type(strategy).__name__)
    if class_path.rsplit(".", 1)[-1] in ("FSDP2Strategy", "ModelParallelStrategy"):
        init_args = strategy.get("init_args") if hasattr(strategy, "get") else None
        return bool((init_args or {}).get("save_distributed_checkpoint", True))
    return False if class_path.rsplit(".", 1)[-1].startswith(("DDP", "SingleDevice")) else None


# What the surviving ranks' collectives raise when a peer process is gone (gloo on CPUs, NCCL on GPUs).
# Seconds rank 0 has, once Lightning's observer saw a launched rank die, to notice it and say so before it is killed
DEAD_RANK_GRACE = 20.0
PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def lost_rank_error(trainer: L.Trainer, error: BaseException) -> LitGPTError | None:
    """The one line for a rank that died mid-run (killed, out of memory): which rank, at what step, and how to resume;
    None when ``error`` is not a collective that lost its peer."""
    e: BaseException | None = error
    while e is not None and not (isinstance(e, RuntimeError) and any(k in str(e) for k in PEER_LOST)):
        e = e.__cause__ or e.__context__
    if e is None:
        return None
    dead = []
    procs = launched_ranks(trainer)
    deadline = time.monotonic() + 2  # the dead rank's exit status may lag its closed sockets
    while procs and not dead and time.monotonic() < deadline:
        dead = [(i + 1, p.returncode) for i, p in enumerate(procs) if p.poll() is not None and p.returncode != 0]
        time.sleep(0.05)
    who = ", ".join(f"rank {rank} ({_how_it_ended(code)})" for rank, code in dead) or "another rank (or its node)"
    last = newest_saved_checkpoint(trainer)
    kept = f"the last checkpoint, {last}, is kept" if last else "no checkpoint had been saved yet"
    return LitGPTError(
        f"{who} died at step {trainer.global_step}, so the job stopped; {kept}: run the same command with "
        "--ckpt_path last to resume"
    )


def _how_it_ended(code: int) -> str:
    if code == -signal.SIGKILL:
        return "killed: SIGKILL, e.g. by the out-of-memory killer"
    if code < 0:
        return f"killed: {signal.Signals(-code).name}"
    return f"exit code {code}"
