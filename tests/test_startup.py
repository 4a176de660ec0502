"""lit_gpt/startup.py: the CLI starts without the packages torchmetrics would import for metrics lit-gpt never uses."""

import json
import subprocess
import sys
from importlib.util import find_spec

import pytest
from conftest import ROOT
from lightning_utilities.core.imports import RequirementCache

from lit_gpt.startup import EXTRAS, mark_missing


def python(code: str) -> dict:
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_the_cli_imports_no_torchmetrics_extra_and_lit_gpt_can_still_import_them():
    installed = sorted(p for p in EXTRAS if find_spec(p) is not None)
    if "transformers" not in installed:
        pytest.skip("needs transformers installed (pip install -e '.[dev]'), the extra that costs the most")
    report = """
import json, sys
{first}
extras = sorted(m for m in {installed!r} if m in sys.modules)
import torch
from torchmetrics import MeanMetric
mean = MeanMetric()
mean.update(torch.tensor([1.0, 3.0]))
import transformers  # lit-gpt's own use (init_from a GPT-2 folder, export --format hf) still works
config = transformers.GPT2Config(n_layer=1)
print(json.dumps({{"extras": extras, "mean": mean.compute().item(), "n_layer": config.n_layer}}))
"""
    before = python(report.format(first="import lightning.pytorch", installed=installed))
    if "transformers" not in before["extras"]:
        pytest.skip("torchmetrics no longer imports transformers when Lightning is imported: lit_gpt/startup.py can go")
    # lit_gpt.cli is what `lit-gpt` and `python -m lit_gpt.cli` run first, before any Lightning import.
    after = python(report.format(first="import lit_gpt.cli", installed=installed))
    # torchmetrics imports scipy.signal whenever scipy is installed (lm-eval brings it), outside the flags
    # startup.py can mark; it costs a fraction of what transformers does.
    assert not set(after["extras"]) - {"scipy"}, after
    assert after["mean"] == 2.0 and after["n_layer"] == 1


def test_only_the_extras_are_marked_missing():
    class Flags:  # the shape of torchmetrics.utilities.imports
        _TRANSFORMERS_GREATER_EQUAL_4_4 = RequirementCache("transformers>=4.4.0")
        _MATPLOTLIB_AVAILABLE = RequirementCache("matplotlib")
        _TORCH_GREATER_EQUAL_2_1 = RequirementCache("torch>=2.1.0")
        _TQDM_AVAILABLE = RequirementCache("tqdm")
        OTHER = "torch"

    marked = mark_missing(Flags)
    assert sorted(marked) == ["_MATPLOTLIB_AVAILABLE", "_TRANSFORMERS_GREATER_EQUAL_4_4"]
    assert not Flags._TRANSFORMERS_GREATER_EQUAL_4_4 and not Flags._MATPLOTLIB_AVAILABLE
    assert Flags._TORCH_GREATER_EQUAL_2_1 and Flags._TQDM_AVAILABLE  # what lit-gpt needs is still seen
    assert "lit_gpt/startup.py" in Flags._MATPLOTLIB_AVAILABLE.message  # torchmetrics' error, if ever, says why
