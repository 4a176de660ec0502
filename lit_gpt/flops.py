"""The device's peak FLOP/s, the denominator of MFU: from Lightning's table for known GPUs, measured for a CPU."""

from __future__ import annotations

import time

import torch
from lightning.fabric.utilities.throughput import get_available_flops

from lit_gpt.cpu_matmul import onednn_available


def measure_matmul_flops(
    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048
) -> float:
    """FLOP/s of a large square matmul on ``device``: the practical ceiling a model's matmuls can reach there. On a
    CPU in float32, the faster of ATen's matmul (MKL on x86) and oneDNN's, which lit-gpt's linears may use
    (lit_gpt/cpu_matmul.py)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    products = [lambda: a @ b]
    if torch.device(device).type == "cpu" and dtype == torch.float32 and onednn_available():
        products.append(lambda: torch.ops.lit_gpt.onednn_linear(a, b, None))  # a @ b.T: the same FLOPs
    return max(_rate(product, device, 2 * n**3) for product in products)


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


def peak_flops(device: torch.device, dtype: torch.dtype) -> float | None:
    """Lightning's figure for known accelerators; for a CPU, a matmul measured now (the CPU has no spec sheet)."""
    if device.type == "cpu":
        return measure_matmul_flops(device, dtype)
    flops = get_available_flops(device, dtype)
    return float(flops) if flops else None
