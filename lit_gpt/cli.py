"""The ``lit-gpt`` command.

``lit-gpt fit|validate --config CFG`` is Lightning's LightningCLI over ``LitGPT`` and ``TextDataModule``: every
constructor argument (and its docstring, as help) is a config key and a ``--flag``. ``lit-gpt generate`` samples
from a checkpoint. Problems a user can fix end in one line on stderr and exit code 2; ``--debug`` shows the
traceback instead.
"""

from __future__ import annotations

from lit_gpt.startup import skip_torchmetrics_extras

skip_torchmetrics_extras()  # before Lightning imports torchmetrics: ~2.4 s less at each start (lit_gpt/startup.py)

import contextlib
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import torch
from jsonargparse import CLI, ArgumentError, set_parsing_settings
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.profilers import PassThroughProfiler
from lightning.pytorch.strategies.launchers import _SubprocessScriptLauncher
from lightning.pytorch.trainer.connectors.signal_connector import _get_sigkill_signal
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_gpt.callbacks import ProgressBar, SampleText, TokenThroughput
from lit_gpt.checkpoint import load_for_sampling
from lit_gpt.convert import convert
from lit_gpt.cpu_matmul import cpu_matmul_problems, onednn_wanted, use_onednn_linears
from lit_gpt.data import TextDataModule
from lit_gpt.errors import LitGPTError, report, report_rank_zero
from lit_gpt.export import export
from lit_gpt.generate import stream
from lit_gpt.init_from import prepare_init_from
from lit_gpt.lightning_module import LitGPT
from lit_gpt.loss_guard import LossGuard
from lit_gpt.malloc import reuse_freed_memory
from lit_gpt.parallel import FSDP2, GlobalBatch
from lit_gpt.prepare import prepare_cli
from lit_gpt.resume import ExactResume, RunCheckpoint, check_ckpt_path, preemption_report, prepare_run
from lit_gpt.tokenizer import UnknownCharactersError
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
        parser.add_lightning_class_args(LearningRateMonitor, "lr_monitor")
        parser.set_defaults({"lr_monitor.logging_interval": "step"})
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
        # Atomic checkpoint writes; --ckpt_path last resolved (the parsed config says whether the run is named).
        prepare_run(self.trainer, self.config_init[self.subcommand], self.config[self.subcommand])
        self._new_run_folder = new_run_folder(self.trainer)

    before_validate = before_fit

    def _run_subcommand(self, subcommand: str) -> None:
        self._new_run_folder = None
        try:
            super()._run_subcommand(subcommand)
        except LitGPTError:
            # A start refused before the first step (e.g. a checkpoint of another vocabulary) leaves no run folder
            # behind: the logger and the config saver write theirs before the model's checks run.
            if self._new_run_folder is not None and self.trainer.global_step == 0 and self.trainer.is_global_zero:
                remove_refused_run(*self._new_run_folder)
            # A problem only rank 0 met (a full disk: only rank 0 writes a DDP checkpoint) leaves the ranks it
            # launched waiting in a collective, each to die with a traceback once rank 0 exits: end them first.
            launcher = self.trainer.strategy.launcher
            if isinstance(launcher, _SubprocessScriptLauncher) and self.trainer.is_global_zero:
                launcher.kill(_get_sigkill_signal())
            raise

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
        if type(trainer.profiler) is PassThroughProfiler:  # no --trainer.profiler given
            trainer.profiler = NullProfiler()
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


class NullProfiler(PassThroughProfiler):
    """Lightning's default (no profiling), without building a context manager for each of the ~60 hook calls of a
    step: 0.35% of a small model's CPU step."""

    _NULL = contextlib.nullcontext()

    def profile(self, action_name: str) -> contextlib.AbstractContextManager:
        return self._NULL


def _trainer_defaults() -> dict:
    return {
        "logger": {
            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
            "init_args": {"save_dir": "runs", "name": "lit-gpt", "default_hp_metric": False},
        },
        "max_steps": 2000,
        "val_check_interval": 250,
        "check_val_every_n_epoch": None,
        "gradient_clip_val": 1.0,
        "log_every_n_steps": 10,
        "num_sanity_val_steps": 0,
        # The data module gives each rank its own slice of the global batch; Lightning's sampler would reshuffle.
        "use_distributed_sampler": False,
    }


def _drop_tips(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip:")


def fit_cli(args: list[str] | None = None, run: bool = True) -> LitGPTCLI:
    reuse_freed_memory()  # no page faults for each step's activations on a CPU (lit_gpt/malloc.py)
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter")  # main() passes argv on purpose
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")  # Lightning vs torch 2.13, harmless
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


def generate(
    *,
    checkpoint: str,
    prompt: str = "\n",
    prompt_file: str | None = None,
    max_new_tokens: int = 500,
    temperature: float = 0.8,
    top_k: int | None = 200,
    top_p: float | None = None,
    num_samples: int = 1,
    seed: int = 1337,
    device: str = "auto",
    use_cache: bool = True,
    compile: bool = False,
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    cpu_matmul: Literal["auto", "onednn", "aten"] = "auto",
) -> None:
    """Sample text from a trained checkpoint or a pretrained model and stream it to the terminal.

    Args:
        checkpoint: A .ckpt file or a run folder (its newest last.ckpt is used), a folder written by lit-gpt export,
            a Hugging Face GPT-2 folder, or a Hub name: gpt2, gpt2-medium, gpt2-large, gpt2-xl or hf:OWNER/REPO
            (downloaded once into the Hugging Face cache).
        prompt: Text to continue; '\\n' in it stands for a newline. Cropped to the last block_size tokens.
        prompt_file: A UTF-8 text file whose whole content is the prompt, read as it is (nanoGPT's
            start='FILE:...'); instead of prompt.
        max_new_tokens: Tokens to generate per sample.
        temperature: Below 1 sharpens the distribution, above 1 flattens it; 0 is greedy.
        top_k: Sample among the k most likely tokens only (empty: all).
        top_p: Nucleus sampling: the smallest set of tokens whose probability reaches top_p (empty: off).
        num_samples: Independent samples to print.
        seed: Random seed, so a sample can be reproduced.
        device: 'cpu', 'cuda', or 'auto' (CUDA when available).
        use_cache: Decode with the KV cache (much faster). Within block_size the output is the same as without it,
            and past it too for a rotary model (its cache keeps the last block_size tokens). With learned positions
            the cache slides by a quarter block past block_size, so each token sees 3/4 to all of the last
            block_size tokens instead of always all of them.
        compile: torch.compile the model first. Compiling takes tens of seconds on a CPU (the prompt, single tokens
            and, past block_size, the window's slide or ring each compile once or twice), counted in the tokens/s
            printed: worth it for long samples.
        dtype: The weights' and activations' type while sampling. On a GPU, bfloat16 or float16 halve the bytes
            each token reads. On a CPU keep float32: bfloat16 decoded at 0.8x float32's speed on a 2-core CPU with
            AMX (docs/benchmarks.md). Samples differ slightly from float32's, as rounding moves the probabilities.
        cpu_matmul: Library for float32 matmuls on a CPU, as for training (--model.cpu_matmul): auto, onednn or
            aten. Only matmuls of at least ~1M multiply-adds use oneDNN (the prompt, a large vocabulary's output
            layer); a token's small ones stay with aten.
    """
    problems = []
    if max_new_tokens < 0:
        problems.append(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        problems.append(f"temperature must be >= 0, got {temperature}")
    if top_k is not None and top_k <= 0:
        problems.append(f"top_k must be positive, got {top_k}")
    if top_p is not None and not 0 < top_p <= 1:
        problems.append(f"top_p must be in (0, 1], got {top_p}")
    if num_samples <= 0:
        problems.append(f"num_samples must be positive, got {num_samples}")
    problems += cpu_matmul_problems(cpu_matmul)
    if prompt_file is not None:
        if prompt != "\n":
            problems.append("give --prompt or --prompt_file, not both")
        try:
            prompt = Path(prompt_file).read_text(encoding="utf-8")
        except FileNotFoundError:
            problems.append(f"--prompt_file {prompt_file!r} does not exist")
        except IsADirectoryError:
            problems.append(f"--prompt_file {prompt_file!r} is a folder: give a text file")
        except UnicodeDecodeError as e:
            problems.append(f"--prompt_file {prompt_file!r} is not UTF-8 (byte {e.start}): re-encode it")
    else:
        prompt = prompt.replace("\\n", "\n")
    if problems:
        raise LitGPTError("; ".join(problems))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    reuse_freed_memory()  # as for training: each token's activations are malloc'd and freed
    model, tokenizer = load_for_sampling(checkpoint, device)
    model.to(getattr(torch, dtype))
    if onednn_wanted(cpu_matmul, device):
        use_onednn_linears(model)
    if compile:
        model.compile()
    try:
        tokenizer.encode(prompt)
    except UnknownCharactersError as e:
        raise LitGPTError(
            f"the prompt has characters this model never saw: {e.chars}; remove or replace them"
        ) from None
    if not prompt:
        raise LitGPTError("the prompt is empty: give at least one token to start from, e.g. --prompt '\\n'")
    torch.manual_seed(seed)
    for i in range(num_samples):
        if num_samples > 1:
            print(f"--- sample {i + 1}/{num_samples}", flush=True)
        stats = stream(
            model,
            tokenizer,
            prompt,
            max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            use_cache=use_cache,
        )
        print(f"--- {stats['tokens']} tokens at {stats['tokens_per_sec']:.0f} tokens/s", file=sys.stderr)


COMMANDS = {"generate": generate, "convert": convert, "export": export}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIT_GPT_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv):
        # GPTConfig's attribute docstrings become --help text and the comments of --print_config=comments, as
        # argument docstrings already do. Reading them costs ~0.8 s, so only when they are shown.
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    try:
        if argv and argv[0] == "prepare":  # reads the data: section of a whole fit config: its own parser
            prepare_cli(argv[1:])
        elif argv and argv[0] in COMMANDS:
            CLI(COMMANDS[argv[0]], args=argv[1:], prog=f"lit-gpt {argv[0]}", exit_on_error=False)
        else:
            if not argv or argv[0] in ("-h", "--help"):
                print(
                    "other commands (each with --help): generate (sample from a checkpoint, or gpt2), prepare "
                    "(tokenize a config's data), convert (sharded checkpoint -> one file), export (to Hugging Face "
                    "or safetensors)\n",
                    file=sys.stderr,
                )
            fit_cli(argv)
    except LitGPTError as e:
        if debug:
            raise
        report(str(e))
        sys.exit(2)
    except ArgumentError as e:
        if debug:
            raise
        command = argv[0] if argv and argv[0] in (*COMMANDS, "fit", "validate") else "fit"
        message = " ".join(str(e).split())  # jsonargparse's message spans lines
        print(f"lit-gpt: error: {message}; `lit-gpt {command} --help` lists every option", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException as e:  # preempted: a checkpoint was saved (lit_gpt.resume)
        message, code = preemption_report(e)
        report_rank_zero(message)  # every rank stops at the same step: one line for the job, as the README says
        sys.exit(code)


if __name__ == "__main__":
    main()
