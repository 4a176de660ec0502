"""Scaling out, applied to the plain model from outside (torchtitan style): FSDP2 sharding per Transformer block,
activation checkpointing and compilation, plus the global-batch arithmetic that turns tokens per optimizer step into
gradient accumulation.

``lit_gpt/model.py`` knows nothing of this; ``LitGPT.configure_model`` calls ``parallelize`` on the model it built.

Sharding uses Lightning's ``ModelParallelStrategy`` with ``torch.distributed.fsdp.fully_shard`` (FSDP2): unlike
FSDP1 (``FSDPStrategy``) it runs on a CPU with gloo as well as on GPUs, so the same code path is tested here and used
on a cluster. ``--trainer.strategy fsdp`` selects it (see ``FSDP2Strategy``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.strategies.fsdp import _distributed_checkpoint_save
from lightning.pytorch.strategies import ModelParallelStrategy, StrategyRegistry
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor

from lit_gpt.checkpoint_io import atomic_torch_save, save_error, write_failure
from lit_gpt.errors import LitGPTError
from lit_gpt.sharded_checkpoint import (
    EARLIER,
    META_FILE,
    OLD_MARK,
    check_sharded,
    first_failure,
    recover_interrupted_save,
    recover_interrupted_saves,
    remove_path,
    staging_path,
    swap_in,
)
from lit_gpt.sharded_checkpoint import is_sharded as is_sharded_folder

FSDP2 = "fsdp2"  # our registry name; the CLI maps "fsdp" to it


class FSDP2Strategy(ModelParallelStrategy):
    """Fully sharded data parallel over every device of every node (FSDP2), with no tensor parallelism.

    Lightning's ``ModelParallelStrategy`` defaults to tensor parallelism within a node; lit-gpt shards each
    Transformer block across all ranks instead, so every rank is a data-parallel rank. Checkpoints are directories
    (torch distributed checkpoint, one shard per rank); ``lit-gpt convert`` turns one into a single file.
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

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        """Write a sharded checkpoint so that a kill at any moment leaves the previous one or the new one whole.

        Lightning writes the shards into the existing folder, in place: killed mid-save, ``last.ckpt`` mixes new
        shards with the old ``meta.pt``, or lacks shards. Here every rank writes into one hidden staging folder,
        rank 0 adds ``meta.pt`` last (it marks the folder complete), and only then swaps it in (``swap_in``)."""
        if storage_options is not None or "://" in str(filepath):  # Lightning's refusal, or a remote store
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))  # one path for all ranks, as Lightning does
        if not self._save_distributed_checkpoint:
            return self._save_full_checkpoint(checkpoint, path)
        # One staging name for all ranks: rank 0's pid (to tell a dead save's leftovers) and a random part.
        staging = staging_path(path, self.broadcast(f"{os.getpid()}-{secrets.token_hex(4)}"))
        if self.global_rank == 0:
            recover_interrupted_saves(path.parent, clean=True)  # what killed earlier saves left in the folder
        from torch.distributed.checkpoint.api import CheckpointException

        state = {"state_dict": checkpoint.pop("state_dict")}
        state.update({f"optimizer_{i}": s for i, s in enumerate(checkpoint.pop("optimizer_states", []))})
        error: BaseException | None = None
        try:
            _distributed_checkpoint_save(state, staging)  # collective: a rank's failure fails it on every rank
            if self.global_rank == 0:
                atomic_torch_save(checkpoint, staging / META_FILE)
        except (CheckpointException, OSError, RuntimeError) as e:
            error = e
        # Every rank reaches this vote, so none waits forever for a rank that failed.
        if self.reduce_boolean_decision(error is None, all=True) and self.global_rank == 0:
            try:
                swap_in(staging, path)
            except OSError as e:
                error = e
        if not self.reduce_boolean_decision(error is None, all=True):
            message = None
            if self.global_rank == 0:
                remove_path(staging)
                recover_interrupted_save(path)  # a swap that failed half-way: the previous checkpoint back in place
                message = str(_save_failure(path, error))
            raise LitGPTError(self.broadcast(message))  # rank 0's words on every rank: the CLI prints them once

    def _save_full_checkpoint(self, checkpoint: dict[str, Any], path: Path) -> None:
        # save_distributed_checkpoint=False: rank 0 writes one file (atomically, through the CheckpointIO). Lightning
        # deletes a sharded folder of the same name first; it steps aside instead until the file is written.
        aside = staging_path(path, f"{os.getpid()}-{secrets.token_hex(4)}{OLD_MARK}")
        if self.global_rank == 0 and is_sharded_folder(path):
            os.rename(path, aside)
        self.barrier("FSDP2Strategy.save_checkpoint")  # no rank looks at the path while it moves
        super().save_checkpoint(checkpoint, path)
        if self.global_rank == 0:
            remove_path(aside)

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's sharded resume, which reads the weights before the LightningModule sees the checkpoint and
        fails with a traceback on every rank for a bad folder or another model: checked first, in one line."""
        from torch.distributed.checkpoint.api import CheckpointException

        path = Path(self.broadcast(str(checkpoint_path)))
        if is_sharded_folder(path):
            meta = check_sharded(path)  # shards whole, nothing that runs code
            if getattr(self.lightning_module, "model", None) is not None:
                # Its model shape and tokenizer against the module's, before the shards are read into the model.
                self.lightning_module.on_load_checkpoint(meta)
        try:
            return super().load_checkpoint(path, weights_only)
        except (CheckpointException, RuntimeError, OSError, EOFError, ValueError) as e:
            if path.is_file():
                raise LitGPTError(single_file_under_fsdp(path)) from None
            raise LitGPTError(f"could not resume from {str(path)!r} ({first_failure(e)}); {EARLIER}") from None


def _save_failure(path: Path, error: BaseException | None) -> LitGPTError:
    """The one line for a sharded save that failed (a full disk, most often); nothing of it was left behind."""
    failures = getattr(error, "failures", None)  # torch's CheckpointException: what failed on each rank
    if isinstance(failures, dict) and failures:
        error = next(iter(failures.values()))[0]
    failure = write_failure(error) if error is not None else None
    if failure is not None:
        return save_error(path, failure)
    why = first_failure(error) if error is not None else "another rank could not write its shard"
    kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint of that name was saved yet"
    return LitGPTError(f"could not save {str(path)} ({why}); {kept}; fix that and resume with --ckpt_path last")


def single_file_under_fsdp(path: str | Path) -> str:
    """The one line for resuming a single-file checkpoint under FSDP."""
    return (
        f"{str(path)!r} is a single-file checkpoint: resume it without --trainer.strategy fsdp (FSDP resumes only "
        f"its own sharded checkpoint folders), or start an FSDP run from its weights with --model.init_from {path}"
    )


def sharded_without_fsdp(path: str | Path) -> str:
    """The one line for resuming a sharded checkpoint folder without FSDP."""
    return (
        f"{str(path)!r} is a sharded (FSDP) checkpoint folder: resume it with --trainer.strategy fsdp, or use its "
        f"weights only: lit-gpt convert --checkpoint {path} --out model.ckpt, or --model.init_from {path}"
    )


StrategyRegistry.register(
    FSDP2, FSDP2Strategy, description="FSDP2 (fully_shard per Transformer block) over all ranks", override=True
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
    compiling graphs of its own. A sample at each validation is one (its prompt and one-token graphs took 48 s to
    compile on 2 cores, for 200 tokens drawn in 0.5 s without). ``torch.compiler.set_stance``; torch < 2.6 compiles.
    """
    set_stance = getattr(torch.compiler, "set_stance", None)
    return set_stance("force_eager") if set_stance is not None else contextlib.nullcontext()


def accumulation_steps(global_batch_tokens: int, micro_batch: int, block_size: int, world_size: int) -> int:
    """Micro-batches per optimizer step so that each step sees ``global_batch_tokens`` tokens over all ranks."""
    per_step = micro_batch * block_size * world_size  # tokens of one micro-batch on every rank at once
    if global_batch_tokens <= 0 or global_batch_tokens % per_step:
        raise LitGPTError(
            f"global_batch.tokens = {global_batch_tokens} is not a positive multiple of data.batch_size x block_size "
            f"x devices x nodes = {micro_batch} x {block_size} x {world_size} = {per_step}: change one of them"
        )
    return global_batch_tokens // per_step


class GlobalBatch(L.Callback):
    """States the batch per optimizer step in tokens and derives gradient accumulation from it, whatever the number
    of devices and nodes; and makes ``trainer.val_check_interval`` count optimizer steps, not micro-batches."""

    def __init__(self, tokens: int | None = None) -> None:
        """
        Args:
            tokens: Tokens per optimizer step over all devices and nodes (nanoGPT's GPT-2 run: 491520, about 0.5M).
                Sets trainer.accumulate_grad_batches to tokens / (data.batch_size x block_size x devices x nodes),
                which must be a whole number. Empty: use trainer.accumulate_grad_batches as given.
        """
        if tokens is not None and (not isinstance(tokens, int) or tokens <= 0):
            raise LitGPTError(f"global_batch.tokens must be a positive integer, got {tokens!r}")
        self.tokens = tokens
        self._scaled_val_interval: int | None = None

    @staticmethod
    def apply(trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        """Set the trainer's accumulation from the tokens. The CLI calls it before launching the ranks, so a bad
        value is one message from one process; ``setup`` calls it again in each rank."""
        for callback in trainer.callbacks:
            if isinstance(callback, GlobalBatch):
                callback._set_accumulation(trainer, datamodule)

    def _set_accumulation(self, trainer: L.Trainer, datamodule: L.LightningDataModule) -> None:
        if self.tokens is None:
            return
        micro_batch, block_size = datamodule.batch_size, datamodule.block_size
        accumulate = accumulation_steps(self.tokens, micro_batch, block_size, trainer.world_size)
        given = trainer.accumulate_grad_batches
        if given not in (1, accumulate):
            raise LitGPTError(
                f"global_batch.tokens = {self.tokens} means accumulate_grad_batches = {accumulate}, but "
                f"trainer.accumulate_grad_batches is {given}: set only one of them"
            )
        trainer.accumulate_grad_batches = accumulate

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self._set_accumulation(trainer, trainer.datamodule)
        # Lightning counts val_check_interval in micro-batches; lit-gpt counts it in optimizer steps, like max_steps,
        # log_every_n_steps and checkpoint names, so changing the accumulation does not move validation.
        interval = trainer.val_check_interval
        if isinstance(interval, int) and interval != self._scaled_val_interval:
            self._scaled_val_interval = interval * trainer.accumulate_grad_batches
            trainer.val_check_interval = self._scaled_val_interval


def is_sharded(model: nn.Module) -> bool:
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
