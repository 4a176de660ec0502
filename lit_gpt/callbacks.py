"""Callbacks that make a run watchable: throughput and MFU, and a text sample at every validation."""

from __future__ import annotations

import time
import warnings
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import RichProgressBar, ThroughputMonitor
from lightning.pytorch.trainer.states import RunningStage

from lit_gpt.flops import dense_gpu_peak, peak_flops
from lit_gpt.generate import generate_text
from lit_gpt.lightning_private import accumulating, should_update_logs
from lit_gpt.parallel import gather_on_rank_zero, is_sharded_model, uncompiled


class TokenThroughput(ThroughputMonitor):
    """Lightning's ThroughputMonitor for (inputs, targets) batches, logging tokens/s (also on the progress bar),
    FLOP/s and MFU. On a CPU, where Lightning knows no peak, the peak is measured with a large matmul at start-up.
    """

    def __init__(self, window_size: int = 5, measure_cpu_peak: bool = True) -> None:
        """
        Args:
            window_size: Logging intervals (trainer.log_every_n_steps) averaged over for each figure.
            measure_cpu_peak: On a CPU, time a large matmul at start-up to have a peak for MFU (its cost:
                docs/benchmarks.md).
        """
        super().__init__(
            batch_size_fn=lambda batch: batch[0].size(0),
            length_fn=lambda batch: batch[0].numel(),
            window_size=window_size,
        )
        self.measure_cpu_peak = measure_cpu_peak
        # Per stage, the FLOPs of the batches since its last clock reading (a validation can come between two).
        self._pending_flops: dict[RunningStage, int] = {}

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        device = trainer.strategy.root_device
        precision = str(trainer.precision)
        dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if "16" in precision else torch.float32
        # A GPU that Lightning's table misses or lists with sparse figures (the H200): lit_gpt.flops' dense peak.
        dense = dense_gpu_peak(torch.cuda.get_device_name(device), dtype) if device.type == "cuda" else None
        with warnings.catch_warnings():
            if dense:
                warnings.filterwarnings("ignore", message="FLOPs not found")  # Lightning's, for a chip we know
            super().setup(trainer, pl_module, stage)
        if dense:
            self.available_flops = dense
        elif self.available_flops is None and device.type == "cpu" and self.measure_cpu_peak:
            self.available_flops = peak_flops(device, dtype)
        for throughput in self._throughputs.values():
            throughput.available_flops = self.available_flops

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        # Lightning's version synchronizes the GPU after every batch, which stalls the CPU from queueing the next one
        # (docs/benchmarks.md). Count
        # every batch; read the clock, synchronize and log only when the figures are about to be logged.
        if not trainer.is_global_zero:
            return
        stage = RunningStage.TRAINING
        tokens = batch[0]
        self._samples[stage] += tokens.size(0)
        self._lengths[stage] += tokens.numel()
        self._batches[stage] += 1
        flops = pl_module.flops_per_batch or 0  # this rank's: Throughput multiplies by world_size
        self._pending_flops[stage] = self._pending_flops.get(stage, 0) + flops
        if accumulating(trainer) or not should_update_logs(trainer):
            return
        self._read_clock(trainer, stage)
        metrics = self._throughputs[stage].compute()
        # What a reader of the curves wants (lit_gpt/tensorboard.py), for all ranks together; Lightning's per-device
        # duplicates and its counters of batches and samples are left out.
        world = trainer.world_size
        named = {"train/seconds": metrics["time"], "train/tokens": metrics["lengths"] * world}
        if (per_device := metrics.get("device/items_per_sec")) is not None:
            named["train/tokens_per_sec"] = per_device * world
            pl_module.log("train/tokens_per_sec", per_device * world, prog_bar=True, logger=False, rank_zero_only=True)
        if (flops := metrics.get("device/flops_per_sec")) is not None:
            named["train/model_flops_per_sec"] = flops * world
        if (mfu := metrics.get("device/mfu")) is not None:
            named["train/mfu"] = mfu
        for logger in trainer.loggers:
            logger.log_metrics(named, step=trainer.global_step)  # the optimizer steps done, as train/loss

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, *args: Any, **kwargs: Any
    ) -> None:
        # Timed, so that Lightning's on_validation_end takes the validation's time out of training's; not logged.
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self._update(trainer, pl_module, batch, 0)

    @torch.inference_mode()
    def _update(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, iter_num: int) -> None:
        stage = trainer.state.stage
        self._samples[stage] += self.batch_size_fn(batch)
        self._lengths[stage] += self.length_fn(batch)
        self._batches[stage] += 1
        self._read_clock(trainer, stage)

    def _read_clock(self, trainer: L.Trainer, stage: RunningStage) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize()
        self._throughputs[stage].update(
            time=time.perf_counter() - self._t0s[stage],
            batches=self._batches[stage],
            samples=self._samples[stage],
            lengths=self._lengths[stage],
            flops=self._pending_flops.get(stage) or None,
        )
        self._pending_flops[stage] = 0


class SampleText(L.Callback):
    """Generates a short text at the end of every validation and logs it to TensorBoard's Text tab."""

    def __init__(
        self,
        prompt: str = "\n",
        max_new_tokens: int = 200,
        temperature: float = 0.8,
        top_k: int | None = 200,
        seed: int = 1337,
    ) -> None:
        """
        Args:
            prompt: Text the sample starts from.
            max_new_tokens: Length of each sample in tokens; 0 turns sampling off.
            temperature: Sampling temperature.
            top_k: Sample only among the k most likely tokens.
            seed: Seed of the sampling (its own generator: training's random stream is not touched).
        """
        self.prompt, self.max_new_tokens, self.temperature, self.top_k, self.seed = (
            prompt,
            max_new_tokens,
            temperature,
            top_k,
            seed,
        )
        self.last_sample: str | None = None

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or self.max_new_tokens <= 0 or pl_module.tokenizer is None:
            return
        model = pl_module.model
        if is_sharded_model(model):  # FSDP: every rank helps gather the weights, rank 0 samples from a whole copy
            model = gather_on_rank_zero(model)
        if not trainer.is_global_zero:
            return
        device = next(model.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        was_training = model.training
        model.eval()
        try:
            with uncompiled():  # 200 tokens: compiling their graphs would take far longer than drawing them
                text = generate_text(
                    model,
                    pl_module.tokenizer,
                    self.prompt,
                    self.max_new_tokens,
                    self.temperature,
                    self.top_k,
                    generator=generator,
                )
        finally:
            model.train(was_training)
        self.last_sample = text
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_text"):
                # Markdown: indent by 4 so line breaks and spacing show as written.
                experiment.add_text("sample", "    " + text.replace("\n", "\n    "), trainer.global_step)


class ProgressBar(RichProgressBar):
    """Lightning's Rich progress bar with short metric names: step, loss, val loss and tokens/s."""

    SHORT = {"train/loss": "loss", "val/loss": "val_loss", "train/tokens_per_sec": "tok/s"}
    # Twice a second. Rich draws from a thread, in Python, which holds the GIL and takes a core from the step's
    # matmul threads at Lightning's 10 frames a second (scripts/bench_progress_bar.py). Updating the bar after
    # every batch is Python too.
    REDRAW_SECONDS = 0.5

    def __init__(self, leave: bool = True, **kwargs: Any) -> None:
        # refresh_rate is the drawing thread's frames per second
        super().__init__(refresh_rate=round(1 / self.REDRAW_SECONDS), leave=leave, **kwargs)
        self._last_draw = 0.0

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        now = time.monotonic()
        last = batch_idx + 1 == self.total_train_batches or 0 < trainer.max_steps <= trainer.global_step
        if now - self._last_draw >= self.REDRAW_SECONDS or last:  # the last batch is always drawn: the bar ends full
            self._last_draw = now
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

    def _get_train_description(self, current_epoch: int) -> str:
        return (
            "Training"
            if self.trainer.max_epochs == -1 or self.trainer.max_steps > 0
            else super()._get_train_description(current_epoch)
        )

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        shown = {"step": str(trainer.global_step)}  # text: Rich would print a number as 2000.000
        for key, name in self.SHORT.items():
            if key in metrics:
                value = metrics[key]
                shown[name] = f"{value:.0f}" if name == "tok/s" else value
        return shown
