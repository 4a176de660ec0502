"""Stop a run whose loss turned NaN or infinite, name the step, and never checkpoint the diverged weights."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from lit_gpt.errors import LitGPTError
from lit_gpt.resume import newest_saved_checkpoint

NONE = 2**62  # "no bad step" when taking the minimum over ranks


class LossGuard(L.Callback):
    """Watches the training loss; at the first NaN or inf it stops training with one line naming the step and the
    last good checkpoint. A checkpoint is never written after the loss went bad, so last.ckpt stays good."""

    def __init__(self, check_every_n_steps: int | None = None) -> None:
        """
        Args:
            check_every_n_steps: How often to look at the loss (on a GPU, each look waits for the device). Empty:
                every step on a CPU, every trainer.log_every_n_steps steps elsewhere. The step named is always the
                first bad one, and the loss is always checked before validation and before any checkpoint is saved.
        """
        if check_every_n_steps is not None and check_every_n_steps <= 0:
            raise LitGPTError(f"loss_guard.check_every_n_steps must be positive, got {check_every_n_steps}")
        self.check_every_n_steps = check_every_n_steps
        self._first_bad: torch.Tensor | None = None  # on the device: the first bad step, -1 while all is well
        self._bad_value: torch.Tensor | None = None
        self._saved_step: int | None = None  # global step of the last checkpoint this run saved

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        loss = loss.detach()
        step = trainer.global_step  # the step this loss belongs to, counted as the progress bar counts
        if loss.device.type == "cpu" and trainer.world_size == 1 and self.check_every_n_steps is None:
            # Reading a CPU tensor costs nothing to wait for: one read instead of a handful of tiny tensor ops.
            if not math.isfinite(loss.item()):
                self._first_bad = torch.tensor(step)
                self._bad_value = loss.float()
                self.check(trainer)
            return
        if self._first_bad is None:
            self._first_bad = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._bad_value = torch.zeros((), dtype=loss.dtype, device=loss.device)
        # Recorded on the device, without waiting for it: the first bad step and its value.
        new = ~torch.isfinite(loss) & (self._first_bad < 0)
        self._first_bad = torch.where(new, torch.full_like(self._first_bad, step), self._first_bad)
        self._bad_value = torch.where(new, loss.to(self._bad_value.dtype), self._bad_value)
        every = self.check_every_n_steps or (1 if loss.device.type == "cpu" else max(1, trainer.log_every_n_steps))
        if step % every == 0:
            self.check(trainer)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.check(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self.check(trainer)  # raising here aborts the save: the files on disk keep the last good weights
        self._saved_step = trainer.global_step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._first_bad = self._bad_value = None
        self._saved_step = None

    def check(self, trainer: L.Trainer) -> None:
        """Raise (one line) if a NaN or inf loss has been seen."""
        if self._first_bad is None:
            return
        first = self._first_bad
        if trainer.world_size > 1:
            # Every rank decides together: one rank raising alone would leave the others waiting in a collective.
            mine = torch.where(first < 0, torch.full_like(first, NONE), first)
            first = trainer.strategy.reduce(mine.clone(), reduce_op="min")
            first = torch.where(first == NONE, torch.full_like(first, -1), first)
        step = int(first.item())
        if step < 0:
            return
        value = float(self._bad_value.item()) if int(self._first_bad.item()) == step else float("nan")
        good = self._last_good(trainer)
        kept = f"the last good checkpoint, {good}, is kept" if good else "no checkpoint had been saved yet"
        raise LitGPTError(
            f"the training loss became {value} at step {step}: training stopped and {kept}. Train again with a lower "
            "--model.learning_rate or more --model.warmup_steps"
        )

    def _last_good(self, trainer: L.Trainer) -> str | None:
        newest = newest_saved_checkpoint(trainer)
        if newest is None:
            return None
        return f"{newest} (step {self._saved_step})" if self._saved_step is not None else str(newest)
