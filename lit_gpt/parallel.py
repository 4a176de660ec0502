"""How a model is split across ranks, checkpointed for activations and compiled: FSDP2 sharding per Transformer
block, applied to the plain model from outside (torchtitan style).

``lit_gpt/model.py`` knows nothing of this; ``lit_gpt.transforms.apply_transforms`` calls ``parallelize`` last.

Sharding uses Lightning's ``ModelParallelStrategy`` with ``torch.distributed.fsdp.fully_shard`` (FSDP2): unlike
FSDP1 (``FSDPStrategy``) it runs on a CPU with gloo as well as on GPUs, so the same code path is tested here and used
on a cluster. ``--trainer.strategy fsdp`` selects it (see ``FSDP2Strategy``).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from lit_gpt.checkpoints.sharded import ShardedCheckpointHooks

FSDP2 = "fsdp2"  # our registry name; the CLI maps "fsdp" to it


class FSDP2Strategy(ShardedCheckpointHooks, ModelParallelStrategy):
    """Fully sharded data parallel over every device of every node (FSDP2), with no tensor parallelism.

    Lightning's ``ModelParallelStrategy`` defaults to tensor parallelism within a node; lit-gpt shards each
    Transformer block across all ranks instead, so every rank is a data-parallel rank. Checkpoints are directories
    (torch distributed checkpoint, one shard per rank), written and read by ``ShardedCheckpointHooks``
    (``lit_gpt.checkpoints.sharded``); ``lit-gpt convert`` turns one into a single file.
    """

    def __init__(self, save_distributed_checkpoint: bool = True, **kwargs: Any) -> None:
        """
        Args:
            save_distributed_checkpoint: Each rank writes its own shard into a checkpoint folder (fast, no memory
                peak). False gathers the full state on rank 0 and writes one file.
        """
        super().__init__(
            data_parallel_size="auto",
            tensor_parallel_size=1,
            save_distributed_checkpoint=save_distributed_checkpoint,
            **kwargs,
        )

    def setup_environment(self) -> None:
        # Known only now (devices and nodes are resolved by the Trainer): all ranks form the data-parallel dimension.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def register_fsdp2() -> None:
    """Make ``--trainer.strategy fsdp2`` (and the CLI's ``fsdp``) name ``FSDP2Strategy``. Called by the CLI, not on
    import, so importing lit-gpt changes nothing in Lightning's registry."""
    if FSDP2 not in StrategyRegistry:
        StrategyRegistry.register(
            FSDP2, FSDP2Strategy, description="FSDP2 (fully_shard per Transformer block) over all ranks"
        )


def parallelize(
    model: nn.Module,
    device_mesh: DeviceMesh | None = None,
    *,
    activation_checkpointing: bool = False,
    compile: bool = False,
) -> nn.Module:
    """Apply activation checkpointing, compilation and FSDP2 sharding to a ``GPT``, in place, in that order.

    With a device mesh (from ``ModelParallelStrategy``) each Transformer block becomes one FSDP2 unit, all-gathered
    just before it runs and freed after, and the root (embeddings, final norm, tied output layer) is one more.
    Parameter names are unchanged, so checkpoints keep the plain model's keys.
    """
    blocks = list(model.transformer.h)
    if activation_checkpointing:
        # The composable API hooks the block instead of wrapping it, so parameter names stay the same.
        from torch.distributed._composable import checkpoint

        for block in blocks:
            checkpoint(block)
    if device_mesh is None:
        if compile:
            model.compile()  # in place: parameter names stay those of the plain model
        return model

    from torch.distributed.fsdp import fully_shard

    mesh = device_mesh["data_parallel"] if device_mesh.mesh_dim_names else device_mesh
    for block in blocks:
        if compile:
            block.compile()  # per block, before sharding: FSDP2's hooks stay outside the compiled graph
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def uncompiled() -> contextlib.AbstractContextManager:
    """Within it, compiled modules run as plain PyTorch and nothing new compiles: for work too small to repay
    compiling graphs of its own, such as the text sample at each validation (its graphs take far longer to compile
    than the sample takes to draw). ``torch.compiler.set_stance``; torch < 2.6 compiles.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def is_sharded_model(model: nn.Module) -> bool:
    """Whether ``model``'s parameters are FSDP2 shards (DTensors) rather than whole tensors."""
    return any(isinstance(p, DTensor) for p in model.parameters())


def gather_on_rank_zero(model: nn.Module) -> nn.Module | None:
    """A whole, unsharded copy of a sharded ``GPT`` on global rank 0 (on the same device), None on other ranks.

    Collective: every rank must call it, as it all-gathers the shards. Used to generate a text sample on rank 0
    alone, which would otherwise wait forever inside FSDP2's all-gathers for ranks that are not sampling.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    device = next(model.parameters()).device
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if torch.distributed.get_rank() != 0:
        return None
    copy = type(model)(model.config)
    copy.load_state_dict(state)
    return copy.to(device)
