"""Writes one benchmark's figures into its own section of docs/benchmarks.md, leaving the other sections as they
are, so every script can refresh its numbers without touching anyone else's."""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "benchmarks.md"
HEADER = """# Benchmarks

Every figure here is written by a script in `scripts/`, with the command, the date and the machine. The anchors
we compare against (nanoGPT and the lecture, measured on the same 2-core machine kind) are in the issues and in
the project's shared baselines. This machine is noisy (about ±10% run to run): speed is compared as a ratio of
runs interleaved in one process.
"""


def write_section(
    name: str,
    date: str,
    machine: str,
    command: str,
    lines: list[str],
    doc: Path | None = None,
    header: str | None = None,
) -> None:
    """Replace (or append) the section called ``name`` of ``doc`` (started with ``header`` when it is new)."""
    doc = doc or DOC  # looked up at call time, so a test can point DOC elsewhere
    header = header or HEADER
    text = doc.read_text(encoding="utf-8") if doc.exists() else header
    body = "\n".join([f"## {name}", "", f"{date} · {machine}", "", f"`{command}`", "", *lines])
    block = f"<!-- BEGIN {name} -->\n{body}\n<!-- END {name} -->"
    pattern = re.compile(rf"<!-- BEGIN {re.escape(name)} -->.*?<!-- END {re.escape(name)} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + block + "\n"
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(text, encoding="utf-8")


def repo_path(path: str) -> str:
    """``path`` as a command in a section shows it: relative to the repository when inside it, else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(ROOT)) if resolved.is_relative_to(ROOT) else path


def cpu_name() -> str:
    """The processor's model name and family, and whether it has bf16 matrix instructions (AMX or AVX512-BF16):
    hosts of one machine kind differ there, and bf16 speed with them."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux
        info = ""
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^flags\s*:\s*(.+)$", info, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    bf16 = "AMX-BF16" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "no bf16 instructions"
    # The family tells generations apart that share a name and flags: AMD's 25 (Zen 3/4) from 26 (Zen 5)
    family = re.search(r"^cpu family\s*:\s*(\d+)$", info, re.M)
    model = f"{name.group(1).strip() if name else platform.processor() or 'unknown CPU'}"
    return f"{model}{f' family {family.group(1)}' if family else ''} ({bf16})"


# Environment variables that hold the math libraries to fewer instructions than the CPU has (e.g. all three at
# AVX2: a CPU without bf16 instructions), so one machine can measure what another kind of CPU would do.
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_limits() -> str:
    """``NAME=value`` for each of ``ISA_LIMITS`` set in this process's environment, space-separated; '' if none."""
    return " ".join(f"{k}={os.environ[k]}" for k in ISA_LIMITS if k in os.environ)


def machine(*extra: str) -> str:
    """The machine line of a section: architecture, processor, cores, torch, any instruction limits, and what else
    the benchmark names."""
    import torch

    limits = [f"instructions limited by {isa_limits()}"] if isa_limits() else []
    cores = f"{os.cpu_count()} cores"
    return ", ".join([platform.machine(), cpu_name(), cores, f"torch {torch.__version__}", *limits, *extra])
