"""``lit-gpt fit|validate``: Lightning's LightningCLI over ``LitGPT`` and ``TextDataModule``.

Every constructor argument (and its docstring, as help) is a config key and a ``--flag``; the always-on callbacks
(checkpointing, exact resume, throughput, samples, the loss guard, the global batch) are configurable under their
own keys. Problems are checked before anything is built (``lit_gpt.validation``, ``lit_gpt.resume``).
"""

from __future__ import annotations

from lit_gpt.startup import skip_torchmetrics_extras

# Before Lightning imports torchmetrics, so it cannot move into a function: the import below is that first import.
skip_torchmetrics_extras()  # lit_gpt/startup.py

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from lit_gpt.callbacks import ProgressBar, SampleText, TokenThroughput
from lit_gpt.cpu_matmul import slow_bf16_warning
from lit_gpt.data import TextDataModule
from lit_gpt.errors import LitGPTError, report_rank_zero
from lit_gpt.global_batch import GlobalBatch
from lit_gpt.init_from import prepare_init_from
from lit_gpt.lightning_module import LitGPT
from lit_gpt.lightning_private import kill_launched_ranks
from lit_gpt.loss_guard import LossGuard
from lit_gpt.malloc import reuse_freed_memory
from lit_gpt.parallel import FSDP2, register_fsdp2
from lit_gpt.resume import ExactResume, RunCheckpoint, check_ckpt_path, lost_rank_error, prepare_run
from lit_gpt.tensorboard import RunLogger
from lit_gpt.validation import NO_GPU_HINT, check_fit_config


class LitGPTCLI(LightningCLI):
    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        # A language model here has no test_step or predict_step: offer only what works (generate is our own).
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate")}

    def add_arguments_to_parser(self, parser) -> None:
        # One context length: the data's windows are the model's block size.
        parser.link_arguments("model.config.block_size", "data.block_size")
        # Always-on callbacks, each configurable under its own key (e.g. --checkpoint.save_top_k 3).
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/loss",
                "checkpoint.save_last": True,
                "checkpoint.save_top_k": 1,
                "checkpoint.filename": "step{step:06d}-val{val/loss:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )
        parser.add_lightning_class_args(TokenThroughput, "throughput")
        parser.add_lightning_class_args(SampleText, "sample")
        parser.add_lightning_class_args(ExactResume, "resume")
        parser.add_lightning_class_args(LossGuard, "loss_guard")
        parser.add_lightning_class_args(GlobalBatch, "global_batch")

    def before_instantiate_classes(self) -> None:
        # "fsdp" means FSDP2 (lit_gpt.parallel.FSDP2Strategy), which runs on CPUs and GPUs alike; Lightning's FSDP1
        # needs a GPU. FSDP1 stays reachable by class path: lightning.pytorch.strategies.FSDPStrategy.
        config = self.config.get(self.subcommand) if self.subcommand else self.config
        if config.trainer.strategy == "fsdp":
            config.trainer.strategy = FSDP2
        if config.model.get("init_from"):  # the tokenizer travels with the weights: the data uses the model's
            prepare_init_from(config)

    def _parse_ckpt_path(self) -> None:
        # Runs right after parsing, before anything is built (replaces LightningCLI's, which crashes on a corrupt
        # checkpoint and silently swaps the command line's model options for the checkpoint's).
        if self.config.get("subcommand"):
            config = self.config[self.config.subcommand]
            check_fit_config(config)  # every problem at once, as one line
            check_ckpt_path(config)

    def before_fit(self) -> None:
        GlobalBatch.apply(self.trainer, self.datamodule)  # before the ranks start: a bad value is reported once
        if warning := slow_bf16_warning(self.trainer.precision, self.trainer.strategy.root_device):
            report_rank_zero(warning, prefix="lit-gpt: warning")
        # Atomic checkpoint writes; --ckpt_path last resolved (the parsed config says whether the run is named).
        prepare_run(self.trainer, self.config_init[self.subcommand], self.config[self.subcommand])
        self._new_run_folder = new_run_folder(self.trainer)

    def before_validate(self) -> None:
        # validate prints its figures; it opens a runs/NAME/version_N (and writes a config.yaml there) only when the
        # command line asks for a logger (--trainer.logger ...), not because the config file has fit's. The logger
        # goes after before_fit, which looks up --ckpt_path last in the logger's folder.
        self.before_fit()
        if not any(a.startswith("--trainer.logger") for a in self._command_line):
            self.trainer.loggers = []
            self.trainer.callbacks = [c for c in self.trainer.callbacks if not isinstance(c, SaveConfigCallback)]
            self._new_run_folder = None

    def _run_subcommand(self, subcommand: str) -> None:
        self._new_run_folder = None
        try:
            try:
                super()._run_subcommand(subcommand)
            except Exception as e:  # a rank that died mid-run: the survivors' collectives lose their peer
                if (lost := lost_rank_error(self.trainer, e)) is None:
                    raise
                raise lost from None
        except LitGPTError:
            # A start refused before the first step (e.g. a checkpoint of another vocabulary) leaves no run folder
            # behind: the logger and the config saver write theirs before the model's checks run.
            if self._new_run_folder is not None and self.trainer.global_step == 0 and self.trainer.is_global_zero:
                remove_refused_run(*self._new_run_folder)
            # A problem only rank 0 met (a full disk: only rank 0 writes a DDP checkpoint) leaves the ranks it
            # launched waiting in a collective, each to die with a traceback once rank 0 exits: end them first.
            kill_launched_ranks(self.trainer)
            raise

    def parse_arguments(self, parser, args) -> None:
        self._command_line = [str(a) for a in (sys.argv[1:] if args is None else args)]
        super().parse_arguments(parser, args)

    def _instantiate_trainer(self, config: dict, callbacks: list) -> object:
        # Our default callbacks step aside when the user turns their feature off, instead of Lightning refusing
        # the combination (e.g. --trainer.enable_progress_bar false with a progress bar in the callbacks).
        if config.get("enable_checkpointing") is False:
            callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]
        if config.get("enable_progress_bar") is not False:
            callbacks = [*callbacks, ProgressBar()]
        try:
            trainer = super()._instantiate_trainer(config, callbacks)
        except (MisconfigurationException, ValueError, TypeError, RuntimeError, ImportError) as e:
            if not _raised_by_lightning(e):  # torch's or a plugin's own failure: a bug, keep its traceback
                raise
            raise trainer_error(e) from e
        for logger in trainer.loggers:
            if isinstance(logger, RunLogger):
                logger.number_steps_by(trainer)
        return trainer


def _raised_by_lightning(error: BaseException) -> bool:
    """Whether Lightning itself raised ``error`` (its accelerator/strategy connector checking the Trainer's
    arguments), rather than code it called."""
    import lightning

    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    return Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(Path(lightning.__file__).parent.resolve())


def trainer_error(error: BaseException) -> LitGPTError:
    """The one line for a Trainer setting Lightning refused (check_fit_config catches the common ones first)."""
    reason = " ".join(str(error).split()).rstrip(".") or type(error).__name__
    if "gpu backend" in reason or "can not run on your system" in reason:
        hint = f"no such accelerator here: {NO_GPU_HINT}"
    else:
        hint = "check the --trainer options (`lit-gpt fit --help` lists them and their values)"
    return LitGPTError(f"the Trainer refused its settings: {reason}; {hint}")


REFUSED_RUN_FILES = ("config.yaml", "hparams.yaml", "events.out.tfevents.*")  # what a run writes before its 1st step


def new_run_folder(trainer: Any) -> tuple[Path, Path] | None:
    """The logger's run folder and its outermost ancestor that does not exist yet, when the run folder is new (not
    a resumed run's)."""
    logger = trainer.logger
    if logger is None or not trainer.is_global_zero:
        return None
    try:
        log_dir = getattr(logger, "log_dir", None)
    except Exception:  # a logger that cannot say before it starts
        return None
    if not log_dir or "://" in str(log_dir):
        return None
    run = top = Path(log_dir).absolute()
    if run.exists():
        return None
    while not top.parent.exists():
        top = top.parent
    return run, top


def remove_refused_run(run: Path, top: Path) -> None:
    """Remove what a refused start wrote into its new ``run`` folder, then the empty folders up to ``top``; anything
    else (a checkpoint, another run's folder under a shared new parent) stays, and with it its folders."""
    if not run.is_dir():
        return
    for path in sorted(run.rglob("*"), key=lambda p: len(p.parts), reverse=True):  # the deepest first
        if path.is_file() and any(path.match(pattern) for pattern in REFUSED_RUN_FILES):
            path.unlink(missing_ok=True)
        elif path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    for folder in (run, *run.parents):
        if not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()
        if folder == top:
            break


def _trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lit_gpt.tensorboard.RunLogger",
            "init_args": {"save_dir": "runs", "name": "lit-gpt", "default_hp_metric": False},
        },
        "max_steps": 2000,
        "val_check_interval": 250,
        "check_val_every_n_epoch": None,
        "gradient_clip_val": 1.0,
        "log_every_n_steps": 10,
        # -1: validate once before the first step (logged at step 0, as nanoGPT evaluates at iter 0); 0 turns it off.
        "num_sanity_val_steps": -1,
        # The data module gives each rank its own slice of the global batch; Lightning's sampler would reshuffle.
        "use_distributed_sampler": False,
    }


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def fit_cli(args: list[str] | None = None, run: bool = True) -> LitGPTCLI:
    """``lit-gpt fit`` or ``validate`` with ``args`` (the command line after ``lit-gpt``)."""
    register_fsdp2()  # --trainer.strategy fsdp (lit_gpt.parallel.FSDP2Strategy)
    reuse_freed_memory()  # no page faults for each step's activations on a CPU (lit_gpt/malloc.py)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # main() passes argv on purpose
    warnings.filterwarnings(
        "ignore", message=".*isinstance.treespec, LeafSpec.*"
    )  # Lightning's use of a torch API torch deprecates, harmless
    # Our loaders slice memory-mapped tokens in-process (workers would only add copies), and val/loss is a
    # torchmetrics metric already reduced over ranks: Lightning's advice on both does not apply.
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    # Lightning's adverts for its cloud services (litlogger, litmodels) on every run: not advice about this run.
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_drop_tips)
    return LitGPTCLI(
        LitGPT,
        TextDataModule,
        seed_everything_default=1337,
        trainer_defaults=_trainer_defaults(),
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
        parser_kwargs={"exit_on_error": False},  # parse errors come back as exceptions; main() prints one line
    )
