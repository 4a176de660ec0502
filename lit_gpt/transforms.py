"""Everything applied to a built ``GPT`` from outside, in one place and one order (torchtitan's model transforms).

``lit_gpt/model.py`` stays plain PyTorch; ``LitGPT.configure_model`` builds it (fresh, or with pretrained weights)
and hands it here. The order matters and is the order of the code below:

1. finetuning: freeze the embeddings and the first blocks, or add LoRA adapters (they must see plain ``nn.Linear``);
2. the CPU's oneDNN linears (after LoRA, whose layers keep ``F.linear``; before compile, which traces them);
3. float32 attention for bf16 runs on a CPU with short contexts (an attribute the attention layers read);
4. activation checkpointing, compile and FSDP2 sharding (``lit_gpt.parallel.parallelize``: sharding comes last so
   each block is compiled and checkpointed before FSDP2's hooks wrap it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh

from lit_gpt.attention_kernel import attend_in_float32, float32_attention_wanted
from lit_gpt.cpu_matmul import CpuMatmul, onednn_wanted, use_onednn_linears
from lit_gpt.finetune import apply_finetune
from lit_gpt.parallel import parallelize


@dataclass(frozen=True)
class Transforms:
    """The options of every transform, as ``LitGPT``'s hyper-parameters name them."""

    freeze_embeddings: bool = False
    freeze_layers: int = 0
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    cpu_matmul: CpuMatmul = "auto"
    activation_checkpointing: bool = False
    compile: bool = False


def apply_transforms(
    model: nn.Module, transforms: Transforms, device: torch.device, device_mesh: DeviceMesh | None = None
) -> nn.Module:
    """Apply ``transforms`` to ``model`` (a ``GPT`` that will run on ``device``, sharded over ``device_mesh`` when
    given), in place, in the module docstring's order."""
    t = transforms
    apply_finetune(
        model,
        freeze_embeddings=t.freeze_embeddings,
        freeze_layers=t.freeze_layers,
        lora_rank=t.lora_rank,
        lora_alpha=t.lora_alpha,
        lora_dropout=t.lora_dropout,
    )
    if onednn_wanted(t.cpu_matmul, device):
        use_onednn_linears(model)
    if float32_attention_wanted(device, model.config.block_size):
        attend_in_float32(model)  # bf16 on a CPU: PyTorch's attention kernel is faster in float32 there
    return parallelize(model, device_mesh, activation_checkpointing=t.activation_checkpointing, compile=t.compile)
