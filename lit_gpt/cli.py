"""The ``lit-gpt`` command: a table of subcommands, each a thin entry into the module that does the work.

``fit`` and ``validate`` are LightningCLI (``lit_gpt.lightning_cli``); the others are functions whose signature and
docstring are their options and ``--help`` (jsonargparse). A command's module is imported only when it runs.
Problems a user can fix end in one line on stderr and exit
code 2; ``--debug`` (or ``LIT_GPT_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

from lit_gpt.startup import skip_torchmetrics_extras

# Before anything imports Lightning (which imports torchmetrics): it cannot move into main(), since a program that
# imports lit_gpt.cli may import Lightning next. lit_gpt/startup.py says what it saves.
skip_torchmetrics_extras()

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from jsonargparse import CLI, ArgumentError, set_parsing_settings
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_gpt.errors import LitGPTError, report, report_rank_zero
from lit_gpt.resume import preemption_report


@dataclass(frozen=True)
class Command:
    name: str
    target: str  # "module:function"
    summary: str
    # lightning: LightningCLI parses; function: jsonargparse parses the function's signature; argv: it parses itself
    parser: Literal["lightning", "function", "argv"] = "function"

    def entry(self) -> Callable[..., Any]:
        module, function = self.target.split(":")
        return getattr(importlib.import_module(module), function)


COMMANDS: tuple[Command, ...] = (
    Command(
        "fit", "lit_gpt.lightning_cli:fit_cli", "train a model from a config (--config, --model.*, ...)", "lightning"
    ),
    Command(
        "validate", "lit_gpt.lightning_cli:fit_cli", "the val loss of a checkpoint on a config's data", "lightning"
    ),
    Command("generate", "lit_gpt.generate:generate", "sample from a checkpoint, an export or gpt2"),
    Command("evaluate", "lit_gpt.evaluate:evaluate", "loss, perplexity, bits per byte on a text; lm-eval tasks"),
    Command("prepare", "lit_gpt.data:prepare_cli", "tokenize a config's data once, for a cluster job", "argv"),
    Command("convert", "lit_gpt.checkpoints.convert:convert", "a sharded (FSDP) checkpoint -> one file"),
    Command("export", "lit_gpt.export:export", "to Hugging Face or safetensors"),
    Command("serve", "lit_gpt.serve:serve", "an OpenAI-compatible HTTP API and a playground page"),
)
BY_NAME = {c.name: c for c in COMMANDS}


def usage() -> str:
    """The command table, for ``lit-gpt --help`` and a missing command."""
    rows = "\n".join(f"  {c.name:<10} {c.summary}" for c in COMMANDS)
    return f"usage: lit-gpt COMMAND [options]   (`lit-gpt COMMAND --help` lists a command's options)\n\n{rows}\n"


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("LIT_GPT_DEBUG") == "1"
    argv = [a for a in argv if a != "--debug"]
    if any(a in ("-h", "--help") or a.startswith("--print_config") for a in argv):
        # GPTConfig's attribute docstrings become --help text and the comments of --print_config=comments, as
        # argument docstrings already do. Reading them is slow, so only when they are shown.
        set_parsing_settings(docstring_parse_attribute_docstrings=True)
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # TF32 matmuls on Ampere and newer
    command = BY_NAME.get(argv[0]) if argv else None
    try:
        if command is None or command.parser == "lightning":
            if not argv or argv[0] in ("-h", "--help"):
                print(usage(), file=sys.stderr)
            BY_NAME["fit"].entry()(argv)  # LightningCLI names the subcommand (and rejects an unknown one)
        elif command.parser == "argv":
            command.entry()(argv[1:])
        else:
            CLI(command.entry(), args=argv[1:], prog=f"lit-gpt {command.name}", exit_on_error=False)
    except LitGPTError as e:
        if debug:
            raise
        report(str(e))
        sys.exit(2)
    except ArgumentError as e:
        if debug:
            raise
        name = command.name if command is not None else "fit"
        message = " ".join(str(e).split())  # jsonargparse's message spans lines
        print(f"lit-gpt: error: {message}; `lit-gpt {name} --help` lists every option", file=sys.stderr)
        sys.exit(2)
    except SIGTERMException as e:  # preempted: a checkpoint was saved (lit_gpt.resume)
        message, code = preemption_report(e)
        report_rank_zero(message)  # every rank stops at the same step: one line for the job, as the README says
        sys.exit(code)


if __name__ == "__main__":
    main()
