"""The device's peak FLOP/s, the denominator of MFU: from spec sheets for GPUs (Lightning's table, and ours for the
chips it gets wrong), measured for a CPU."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.throughput import get_available_flops

from lit_gpt.cpu_matmul import onednn_available, onednn_linear


def measure_matmul_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048
) -> float:
    """FLOP/s of a large square matmul on ``device``: the practical ceiling a model's matmuls can reach there. The
    product is a linear layer's, ``x @ W.T``: on a CPU without bf16 instructions bf16 ``a @ b`` takes a much slower
    path than that layout, which the model never runs. On a CPU in float32, the faster of ATen's (MKL on x86) and
    oneDNN's, which lit-gpt's linears may use (lit_gpt/cpu_matmul.py). ``n``: the largest size timed; a CPU stops
    doubling from 256 once one product takes 50 ms, so a CPU slow at this dtype (bf16 without bf16 instructions)
    is not held up by 2048² products. What the measurement costs at start-up is in docs/benchmarks.md."""
    cpu = torch.device(device).type == "cpu"
    size = 256 if cpu else n
    # Its own random stream: how many sizes are timed depends on the machine's load, and draws from the global
    # stream would change the weights that the model, built after this, is initialised with.
    generator = torch.Generator(device).manual_seed(0)
    while True:
        a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
        start = time.perf_counter()
        F.linear(a, b)
        if size >= n or time.perf_counter() - start > 0.05:
            break
        size *= 2
    products = [lambda: F.linear(a, b)]
    if cpu and dtype == torch.float32 and onednn_available():
        products.append(lambda: onednn_linear(a, b))  # the same product in oneDNN
    return max(_rate(product, device, 2 * size**3) for product in products)


def _rate(product, device: torch.device | str, flops: int) -> float:
    for _ in range(2):  # warm-up: thread pools, kernel selection
        product()
    reps, t0 = 0, time.perf_counter()
    while True:
        product()
        reps += 1
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if elapsed > 0.5 and reps >= 3:
            return flops * reps / elapsed


# Dense (no 2:4 sparsity) tensor-core peaks of GPUs that Lightning's table misses. It lists the H200 only under the
# names "h200 sxm1" and "h200 nvl1", which no driver reports (torch says "NVIDIA H200"), so MFU was not logged on one,
# and with the datasheet's with-sparsity figures (2e15 bf16): twice what a training step's dense matmuls can reach.
# Source: NVIDIA's H200 datasheet; the SXM part has the H100 SXM's tensor cores and clocks. These are spec-sheet
# values the code divides by, not measurements: measured throughput and MFU go to docs/benchmarks.md.
_DENSE_PEAKS: dict[str, dict[str, float]] = {
    "h200 nvl": {"float32": 60e12, "tfloat32": 417.5e12, "bfloat16": 835.5e12, "float16": 835.5e12},
    "h200": {"float32": 66.9e12, "tfloat32": 494.7e12, "bfloat16": 989.4e12, "float16": 989.4e12},
}


def dense_gpu_peak(device_name: str, dtype: torch.dtype) -> float | None:
    """lit-gpt's own dense peak for a GPU named ``device_name`` (as ``torch.cuda.get_device_name`` says), or None
    where Lightning's table is to be used. float32 means TF32 unless matmul precision is "highest", as in Lightning."""
    name = device_name.lower()
    chip = next((c for c in _DENSE_PEAKS if all(word in name for word in c.split())), None)
    if chip is None:
        return None
    key = str(dtype).removeprefix("torch.")
    if key == "float32" and torch.get_float32_matmul_precision() != "highest":
        key = "tfloat32"
    return _DENSE_PEAKS[chip].get(key)


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """The spec sheet's dense figure for a GPU (ours, then Lightning's table); for a CPU, a matmul measured now (the
    CPU has no spec sheet)."""
    if device.type == "cpu":
        return measure_matmul_flops(device, dtype)
    if device.type == "cuda" and (dense := dense_gpu_peak(torch.cuda.get_device_name(device), dtype)):
        return dense
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None
