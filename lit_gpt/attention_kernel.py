"""Which kernel computes attention (``F.scaled_dot_product_attention``) in training and validation steps, chosen from
outside the model: ``model.py`` always calls SDPA, and ``LitGPT`` runs its steps under the choice.

PyTorch picks a kernel by itself ("auto": cuDNN's for GPT-2's shapes on an H200 with torch 2.11, where
FlashAttention-2 was within 0.5% of it). Naming one pins it across PyTorch versions and GPUs (pin flash where a cuDNN
version misbehaves), and makes a run fail loudly instead of silently falling back to a slow one. Under
``torch.compile`` the kernel is fixed when the graph is traced, inside the step, so it holds there too.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

AttentionKernel = Literal["auto", "flash", "cudnn", "efficient", "math"]
KERNELS: tuple[str, ...] = ("auto", "flash", "cudnn", "efficient", "math")
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
