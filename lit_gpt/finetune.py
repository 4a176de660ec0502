"""Finetuning knobs applied to a built ``GPT`` from outside: freezing the embeddings and the first blocks, or LoRA.

Called by ``LitGPT.configure_model`` after the weights are loaded (``lit_gpt.init_from``) and before sharding.
"""

from __future__ import annotations

from torch import nn

from lit_gpt.errors import LitGPTError
from lit_gpt.lora import apply_lora


def finetune_problems(freeze_layers: int, lora_rank: int, lora_alpha: float, lora_dropout: float) -> list[str]:
    """Every problem with the finetuning options, checked when the module is built."""
    problems = []
    if not isinstance(freeze_layers, int) or freeze_layers < 0:
        problems.append(f"freeze_layers must be an integer >= 0, got {freeze_layers!r}")
    if not isinstance(lora_rank, int) or lora_rank < 0:
        problems.append(f"lora_rank must be an integer >= 0 (0: no LoRA), got {lora_rank!r}")
    if not lora_alpha > 0:
        problems.append(f"lora_alpha must be positive, got {lora_alpha!r}")
    if not 0.0 <= lora_dropout < 1.0:
        problems.append(f"lora_dropout must be in [0, 1), got {lora_dropout!r}")
    return problems


def apply_finetune(
    model: nn.Module,
    *,
    freeze_embeddings: bool = False,
    freeze_layers: int = 0,
    lora_rank: int = 0,
    lora_alpha: float = 16.0,
    lora_dropout: float = 0.0,
) -> None:
    """Freeze parameters (and/or add LoRA adapters) in place. With LoRA only the adapters train."""
    blocks = model.transformer.h
    if freeze_layers > len(blocks):
        raise LitGPTError(f"freeze_layers is {freeze_layers} but the model has {len(blocks)} blocks")
    if lora_rank:
        apply_lora(model, lora_rank, lora_alpha, lora_dropout)
        return
    if freeze_embeddings:
        # The token and position embeddings and the output layer: tied (GPT-2) it is wte itself, untied
        # (tie_weights false) a matrix of its own that would otherwise go on training.
        for name in ("wte", "wpe"):
            if name in model.transformer:
                model.transformer[name].requires_grad_(False)
        if getattr(model, "lm_head", None) is not None:
            model.lm_head.requires_grad_(False)
    for block in blocks[:freeze_layers]:
        block.requires_grad_(False)
