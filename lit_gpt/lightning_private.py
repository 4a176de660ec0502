"""Every use of Lightning's private API in lit-gpt, in one place: what to check when Lightning is upgraded.

Checked against ``lightning`` 2.6.6, the version CI installs (pyproject allows ``>=2.4,<3``: a minor release may
move any of these). Each function says what lit-gpt needs it for, and imports what it uses when called: a name that
moved in a new release then breaks only the feature that uses it, with an ImportError naming it.
Beside the functions here, three classes override Lightning's private methods, named so a search finds them:

- ``LitGPTCLI`` (``lit_gpt.lightning_cli``): ``_parse_ckpt_path`` (check ``--ckpt_path`` before anything is built),
  ``_run_subcommand`` (clean up a refused start), ``_instantiate_trainer`` (drop callbacks a flag turned off).
- ``RunCheckpoint`` (``lit_gpt.resume``): calls ModelCheckpoint's ``_should_skip_saving_checkpoint``,
  ``_should_save_on_train_epoch_end`` and ``_monitor_candidates``, overrides ``_save_topk_checkpoint`` and
  ``_save_last_checkpoint`` (to hold a save every N steps until its step is logged), and reads
  ``_every_n_train_steps``; its save at a step's start relies on the loop-counter layout ``as_saved_at_step_end``
  edits (the ``fit_loop`` progress counters and ``_batches_that_stepped``).
- ``ProgressBar`` (``lit_gpt.callbacks``): ``_get_train_description``.
- ``FSDP2Strategy`` (``lit_gpt.parallel``): sets ``_data_parallel_size`` once the devices are known.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L


def should_update_logs(trainer: L.Trainer) -> bool:
    """Whether this step's metrics reach the loggers (every ``log_every_n_steps``): logging only then saves each
    step the cost of ``self.log``."""
    return trainer._logger_connector.should_update_logs


def accumulating(trainer: L.Trainer) -> bool:
    """Whether the current micro-batch is not the last of its optimizer step."""
    return trainer.fit_loop._should_accumulate()


def validation_follows(trainer: L.Trainer) -> bool:
    """In ``on_train_batch_end``: whether the loop validates right after this batch (Lightning's own test)."""
    loop = trainer.fit_loop
    return loop.epoch_loop._should_check_val_fx(loop._data_fetcher)


def launched_ranks(trainer: L.Trainer) -> list[Any]:
    """The ``subprocess.Popen`` of each rank this process launched (Lightning's DDP launcher on one machine: rank
    ``i + 1`` is item ``i``); empty anywhere else (a launched rank, torchrun, SLURM)."""
    from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher

    launcher = trainer.strategy.launcher
    return list(launcher.procs) if isinstance(launcher, _SubprocessScriptLauncher) and trainer.is_global_zero else []


def kill_launched_ranks(trainer: L.Trainer) -> None:
    """End the ranks this process launched (DDP on one machine), when rank 0 stops alone on a problem only it met:
    they would otherwise wait in a collective and die with a traceback each."""
    import threading

    from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal

    if not launched_ranks(trainer):
        return
    # Lightning's child-process observer SIGKILLs this process too once it sees a child die: rank 0 is stopping
    # with its own line and exit code, so the observer's next look finds nothing to do.
    for thread in threading.enumerate():
        if thread.name == "child-process-observer" and hasattr(thread, "_run"):
            thread._run = lambda: True
    trainer.strategy.launcher.kill(_get_sigkill_signal())


def patient_child_observer(trainer: L.Trainer, grace: float) -> None:
    """Lightning's child-process observer SIGKILLs rank 0 within 5 s of seeing a rank it launched die, which can
    come before rank 0's own collective fails and it says which rank died (a loaded machine, a long step). Give rank
    0 ``grace`` seconds from the observer's first sight of the death; a rank 0 still running after that (stuck in a
    collective that never fails) is killed as before."""
    import threading
    import time

    procs = launched_ranks(trainer)
    for thread in threading.enumerate() if procs else []:
        if thread.name != "child-process-observer" or not hasattr(thread, "_run"):
            continue
        check, seen = thread._run, []

        def patient(check=check, seen=seen) -> bool:
            if any(p.poll() not in (None, 0) for p in procs):
                if not seen:
                    seen.append(time.monotonic())
                if time.monotonic() - seen[0] < grace:
                    return False
            return check()

        thread._run = patient


def cluster_environment(trainer: L.Trainer) -> Any:
    """The trainer's cluster environment (SLURM, torchelastic...); a single-device strategy has none of its own."""
    env = getattr(trainer.strategy, "cluster_environment", None)
    if env is None:
        env = getattr(getattr(trainer, "_accelerator_connector", None), "cluster_environment", None)
    return env


def saves_distributed_checkpoint(strategy: Any) -> bool:
    """Whether a ``ModelParallelStrategy`` writes sharded checkpoint folders (else one file on rank 0)."""
    return bool(strategy._save_distributed_checkpoint)


def distributed_checkpoint_save(state: dict[str, Any], path: Path) -> None:
    """Lightning's collective save of a sharded state into a torch distributed-checkpoint folder."""
    from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save

    _distributed_checkpoint_save(state, path)


def load_distributed_checkpoint(folder: Path) -> dict[str, Any]:
    """A distributed-checkpoint folder read whole into memory, without a process group."""
    from lightning.fabric.utilities.load import _load_distributed_checkpoint

    return _load_distributed_checkpoint(folder)


def fsspec_load(path: Any, map_location: Any = None, weights_only: bool = True) -> Any:
    """``torch.load`` through fsspec (local or remote paths), as Lightning's own checkpoint reader."""
    from lightning.fabric.utilities.cloud_io import _load

    return _load(path, map_location=map_location, weights_only=weights_only)


def logger_started(logger: Any) -> bool:
    """Whether a TensorBoard/CSV logger has opened its run folder already."""
    return getattr(logger, "_experiment", "unset") is not None


def set_logger_version(logger: Any, version: int) -> bool:
    """Point a logger that has not started at ``version_<version>``; False if it has no versions."""
    if not hasattr(logger, "_version"):
        return False
    logger._version = version
    return True
