"""Which kernel computes attention (``F.scaled_dot_product_attention``) in training and validation steps, chosen from
outside the model: ``model.py`` always calls SDPA, and ``LitGPT`` runs its steps under the choice.

PyTorch picks a kernel by itself ("auto"). Naming one pins it across PyTorch versions and GPUs (pin flash where a cuDNN
version misbehaves), and makes a run fail loudly instead of silently falling back to a slow one. Under
``torch.compile`` the kernel is fixed when the graph is traced, inside the step, so it holds there too.

On a CPU, bf16 training (``bf16-mixed`` or ``bf16-true``) attends in float32 when the context is short: PyTorch's
CPU flash-attention kernel is slower in bf16 than in float32 at short contexts, enough to take back all that bf16's
matmuls gain (docs/benchmarks.md, "bf16 attention on a CPU").
"""

from __future__ import annotations

import contextlib
from typing import Literal, get_args

import torch

AttentionKernel = Literal["auto", "flash", "cudnn", "efficient", "math"]
KERNELS: tuple[str, ...] = get_args(AttentionKernel)
# PyTorch's names (torch.nn.attention.SDPBackend) for ours
_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}
_CUDA_ONLY = ("cudnn", "efficient")  # a CPU has the math kernel and a flash kernel of its own, nothing else


def attention_kernel_problems(kernel: str, device: torch.device | None = None) -> list[str]:
    """What is wrong with ``kernel`` (on ``device``, when known), in words a user can act on."""
    if kernel not in KERNELS:
        return [f"attention_kernel must be one of {', '.join(KERNELS)}; got {kernel!r}"]
    if device is not None and device.type != "cuda" and kernel in _CUDA_ONLY:
        return [f"attention_kernel {kernel} runs on NVIDIA GPUs only, not on {device.type}: use auto, flash or math"]
    return []


def attention_kernel(kernel: str) -> contextlib.AbstractContextManager:
    """Within it, SDPA uses only ``kernel`` ("auto": PyTorch's own choice)."""
    if kernel == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, _BACKENDS[kernel]))


# A setting, not a measurement: up to this context a CPU attends in float32 under bf16 training. The timings behind it
# live in docs/benchmarks.md ("bf16 attention on a CPU"), because they change with the CPU and the PyTorch version.
FLOAT32_ATTENTION_UP_TO = 256


def float32_attention_wanted(device: torch.device | str, block_size: int) -> bool:
    """Whether a model on ``device`` should attend in float32 when its activations are bf16: on a CPU, for contexts
    up to ``FLOAT32_ATTENTION_UP_TO`` tokens. A float32 run is unaffected either way."""
    return torch.device(device).type == "cpu" and block_size <= FLOAT32_ATTENTION_UP_TO


def attend_in_float32(model: torch.nn.Module) -> int:
    """Make every attention layer of ``model`` compute attention in float32 (results in the inputs' dtype, so the
    rest of the step keeps its precision); returns how many layers."""
    layers = [m for m in model.modules() if hasattr(m, "attention_dtype")]
    for layer in layers:
        layer.attention_dtype = torch.float32
    return len(layers)
