"""LoRA (Hu et al., 2021) on the attention and MLP projections, applied to a plain ``GPT`` from outside.

Each chosen ``nn.Linear`` becomes a ``LoRALinear`` in place (its class is swapped, so its parameter names stay
``...c_attn.weight``): ``y = x W^T + b + scale * dropout(x) A^T B^T`` with ``A`` (rank x in) random and ``B``
(out x rank) zero, so training starts from the pretrained function. Only ``A`` and ``B`` train. ``merge_lora`` folds
``scale * B A`` into ``W`` and turns the layers back into plain ``nn.Linear``: the exported model has no adapters and
the same outputs. The scale is a buffer, so a checkpoint's state dict alone says how to merge it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lit_gpt.errors import LitGPTError

TARGETS = ("c_attn", "attn.c_proj", "c_fc", "mlp.c_proj")  # attention qkv and output, MLP in and out


class LoRALinear(nn.Linear):
    lora_A: nn.Parameter
    lora_B: nn.Parameter
    lora_scale: torch.Tensor
    lora_dropout: nn.Module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        return out + (self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.lora_scale


def apply_lora(model: nn.Module, rank: int, alpha: float, dropout: float = 0.0) -> list[str]:
    """Add rank-``rank`` adapters to every attention and MLP projection and freeze everything else; returns the
    names of the adapted layers."""
    adapted = []
    for name, module in model.named_modules():
        if type(module) is not nn.Linear or not any(name.endswith(t) for t in TARGETS):
            continue
        w = module.weight
        module.lora_A = nn.Parameter(torch.empty(rank, module.in_features, device=w.device, dtype=w.dtype))
        nn.init.kaiming_uniform_(module.lora_A, a=math.sqrt(5))  # as the LoRA paper's reference code
        module.lora_B = nn.Parameter(torch.zeros(module.out_features, rank, device=w.device, dtype=w.dtype))
        module.register_buffer("lora_scale", torch.tensor(alpha / rank, dtype=w.dtype, device=w.device))
        module.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        module.__class__ = LoRALinear
        adapted.append(name)
    if not adapted:
        raise LitGPTError("LoRA found no attention or MLP projection (c_attn, c_proj, c_fc) to adapt in this model")
    for name, p in model.named_parameters():
        p.requires_grad = ".lora_" in name
    return adapted


@torch.no_grad()
def merge_lora(model: nn.Module) -> int:
    """Fold every adapter into its weight and make the layer a plain ``nn.Linear`` again; returns how many."""
    n = 0
    for module in model.modules():
        if isinstance(module, LoRALinear):
            module.weight += (module.lora_B @ module.lora_A) * module.lora_scale
            del module.lora_A, module.lora_B, module.lora_scale, module.lora_dropout
            module.__class__ = nn.Linear
            module.weight.requires_grad = True
            n += 1
    return n


@torch.no_grad()
def merge_lora_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The same merge on a state dict (a checkpoint of a LoRA run): plain keys only, adapters folded in."""
    out = {k: v for k, v in state.items() if ".lora_" not in k}
    for key in [k for k in state if k.endswith(".lora_A")]:
        prefix = key[: -len("lora_A")]
        a, b, scale = state[key], state[prefix + "lora_B"], state[prefix + "lora_scale"]
        w = out[prefix + "weight"]
        out[prefix + "weight"] = (w.float() + (b.float() @ a.float()) * scale.float()).to(w.dtype)
    return out
