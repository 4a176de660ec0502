"""The optimizer and learning-rate schedule, defined once and used by the LightningModule and the benchmarks."""

from __future__ import annotations

import math

import torch
from torch import nn


def configure_adamw(
    model: nn.Module, lr: float, weight_decay: float, betas: tuple[float, float], fused: bool | None = None
) -> torch.optim.AdamW:
    """AdamW that decays only weights of 2+ dimensions (matmuls and embeddings), not biases or norm gains.

    ``fused`` defaults to the fused kernel on CUDA and CPU: one kernel for all parameters instead of a dozen small
    ops per tensor, which a small model's CPU step notices.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if fused is None:
        fused = bool(params) and params[0].device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warm-up, cosine decay to ``min_ratio`` at ``decay_steps``,
    then flat (nanoGPT's ``get_lr``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)
