"""Start-up time: the optional packages torchmetrics would import for metrics lit-gpt never uses.

Lightning imports torchmetrics, and torchmetrics imports at once every optional package it finds installed, for its
domain metrics: transformers for BERTScore and CLIP score, matplotlib for ``Metric.plot``, torchvision, scipy and
nltk for image, audio and text metrics (torchmetrics#2242). lit-gpt uses one of its metrics, ``MeanMetric``. With
transformers and matplotlib installed that is seconds more at every ``lit-gpt`` start, and again in every DDP rank
it launches (``scripts/bench_startup.py``, docs/benchmarks.md).

``skip_torchmetrics_extras`` marks those packages as missing for torchmetrics alone, as if they were not installed,
a setup torchmetrics supports: its domain metrics then ask for them when used. Nothing else changes: lit-gpt's own
``import transformers`` (``--model.init_from`` a GPT-2 folder, ``lit-gpt export --format hf``) works as before. Only
``lit_gpt.cli`` calls it, before its first Lightning import, so a program that imports lit-gpt's modules as a
library keeps all of torchmetrics.
"""

from __future__ import annotations

import importlib.abc
import re
import sys
from types import ModuleType

# Packages that torchmetrics imports when installed, for metrics lit-gpt does not use.
EXTRAS = frozenset({"transformers", "matplotlib", "scienceplots", "torchvision", "scipy", "nltk"})
FLAGS_MODULE = "torchmetrics.utilities.imports"  # torchmetrics' RequirementCache flags, read by its modules


def skip_torchmetrics_extras() -> None:
    """Have torchmetrics, once imported, see the ``EXTRAS`` as not installed. A no-op if it is already imported."""
    if FLAGS_MODULE in sys.modules or any(isinstance(f, _FlagsFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _FlagsFinder())


def mark_missing(flags: ModuleType) -> list[str]:
    """Set torchmetrics' flags for the ``EXTRAS`` to unavailable; returns the flags' names."""
    marked = []
    for name, flag in vars(flags).items():
        requirement = getattr(flag, "requirement", None)
        if not isinstance(requirement, str) or not hasattr(flag, "_check_available"):  # not a RequirementCache
            continue
        package = re.match(r"[A-Za-z0-9_.\-]*", requirement).group(0)
        if package in EXTRAS:
            flag.available = False  # RequirementCache checks only when this is not set yet
            flag.message = f"{package} is not imported by torchmetrics under lit-gpt (lit_gpt/startup.py)"
            marked.append(name)
    return marked


class _FlagsFinder(importlib.abc.MetaPathFinder):
    """Finds torchmetrics' flags module with the other finders and marks the extras right after it runs, before any
    torchmetrics module reads them."""

    def find_spec(self, fullname, path, target=None):
        if fullname != FLAGS_MODULE:
            return None
        sys.meta_path.remove(self)  # once
        for finder in sys.meta_path:
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader.exec_module = _then_mark(spec.loader.exec_module)  # this module's own loader instance
                return spec
        return None


def _then_mark(exec_module):
    def run_then_mark(module: ModuleType) -> None:
        exec_module(module)
        mark_missing(module)

    return run_then_mark
