"""lit_gpt/malloc.py: a training step stops faulting its activations in from the OS, and user settings win."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT

from lit_gpt.malloc import reuse_freed_memory


def faults_per_step(arm: str) -> dict:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_malloc.py"), "--arm", arm, "--steps", "20"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "LD_PRELOAD"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, timeout=300).stdout
    return json.loads(out.splitlines()[-1])


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's mallopt")
def test_reused_memory_spares_each_step_its_page_faults():
    default, reuse = faults_per_step("default"), faults_per_step("reuse")
    if default["faults"] <= 50:  # glibc's dynamic mmap threshold now and then keeps a run's memory: try once more
        default = faults_per_step("default")
    assert reuse["applied"] and not default["applied"]
    # glibc's defaults hand each step's activations back to the OS and fault them in again: 100-3500 faults a step
    # on average, depending on the host. With reused memory the median step faults not at all. Its mean is no
    # measure: beside other xdist workers the kernel's own faults come in bursts (29 a step over 10 steps once,
    # when a step took 1.9 s), which the median step ignores.
    assert default["faults"] > 50, default
    assert reuse["median_step_faults"] <= 5, (default, reuse)


@pytest.mark.parametrize(
    "env",
    [{"MALLOC_TRIM_THRESHOLD_": "131072"}, {"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}],
    ids=["env", "tunables"],
)
def test_the_users_own_malloc_settings_win(monkeypatch, env):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert reuse_freed_memory() is False


def test_a_preloaded_allocator_is_left_alone(monkeypatch):
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert reuse_freed_memory() is False
