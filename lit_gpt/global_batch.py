"""The batch per optimizer step, stated in tokens: gradient accumulation derived from it, whatever the number of
devices and nodes, so one config means the same run on a laptop and on a cluster."""

from __future__ import annotations

import lightning as L

from lit_gpt.errors import LitGPTError


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
