"""MFU's denominator on a CPU (lit_gpt/flops.py): measured quickly, and a ceiling the model's own matmuls stay under."""

import time

import pytest
import torch
import torch.nn.functional as F

from lit_gpt.flops import measure_matmul_flops


def linear_rate(dtype: torch.dtype) -> float:
    """FLOP/s of a GPT-2-sized linear layer's matmul."""
    x, w = torch.randn(768, 512, dtype=dtype), torch.randn(1024, 512, dtype=dtype)
    F.linear(x, w)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        F.linear(x, w)
        reps += 1
    return 2 * 768 * 512 * 1024 * reps / (time.perf_counter() - t0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_cpu_peak_takes_seconds_and_bounds_a_linear_layer(dtype):
    before = linear_rate(dtype)
    start = time.perf_counter()
    peak = measure_matmul_flops("cpu", dtype)
    # bf16 on a CPU without bf16 instructions runs ~1-20 GFLOP/s: a fixed 2048² product took 90 s there
    assert time.perf_counter() - start < 15
    achieved = min(before, linear_rate(dtype))  # the slower reading: other tests share the cores
    # The layer may not beat the peak by much: a peak from a slower product (bf16 a @ b) was 13x under it, and gave
    # an MFU of 1063%. 4x leaves room for a busy machine.
    assert achieved < 4 * peak, (achieved / 1e9, peak / 1e9)


@pytest.mark.parametrize(
    ("name", "dtype", "peak"),
    [
        ("NVIDIA H200", torch.bfloat16, 989.4e12),  # the name torch reports on the SXM part: the H100 SXM's peak
        ("NVIDIA H200", torch.float32, 494.7e12),  # TF32, as lit-gpt sets matmul precision "high" on a GPU
        ("NVIDIA H200 NVL", torch.bfloat16, 835.5e12),
    ],
)
def test_an_h200_has_its_dense_peak_where_lightning_has_none(monkeypatch, name, dtype, peak):
    from lightning.fabric.utilities.throughput import get_available_flops

    from lit_gpt.flops import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch, "get_float32_matmul_precision", lambda: "high")
    with pytest.warns(UserWarning, match="FLOPs not found"):
        assert get_available_flops(torch.device("cuda"), dtype) is None  # why lit-gpt has its own figure
    assert peak_flops(torch.device("cuda"), dtype) == peak


def test_a_gpu_lightning_knows_keeps_lightnings_peak(monkeypatch):
    from lit_gpt.flops import peak_flops

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    assert peak_flops(torch.device("cuda"), torch.bfloat16) == 989.4e12


def test_the_throughput_monitor_logs_mfu_on_an_h200(monkeypatch, recwarn):
    """The fit's MFU (train/mfu) needs the peak: Lightning's own monitor has none for an H200."""
    from types import SimpleNamespace

    from lightning.pytorch.plugins.precision import MixedPrecision
    from lightning.pytorch.trainer.states import RunningStage

    from lit_gpt.callbacks import TokenThroughput

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=torch.device("cuda", 0)),
        precision="bf16-mixed",
        precision_plugin=MixedPrecision("bf16-mixed", "cuda"),
        enable_validation=True,
        world_size=1,
        state=SimpleNamespace(stage=RunningStage.TRAINING),
    )
    monitor = TokenThroughput()
    monitor.setup(trainer, None, "fit")
    assert monitor._throughputs[RunningStage.TRAINING].available_flops == 989.4e12
    assert not [w for w in recwarn if "FLOPs not found" in str(w.message)]


def test_the_cpu_peak_probe_leaves_the_seeded_random_stream_alone():
    # It runs before the model is built, and times as many sizes as the machine's load allows: drawing its matrices
    # from the global stream gave the same seed different initial weights on a busy machine (a different curve).
    torch.manual_seed(1337)
    expected = torch.randn(8)
    torch.manual_seed(1337)
    measure_matmul_flops("cpu", torch.float32, n=512)
    assert torch.equal(torch.randn(8), expected)
