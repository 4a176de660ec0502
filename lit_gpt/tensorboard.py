"""What TensorBoard shows of a run: Lightning's TensorBoardLogger with the run as its first view.

TensorBoard's first page (Time Series) draws one group of charts per tag prefix, in alphabetical order, all expanded.
So a run logs three groups and nothing else:

- ``loss``: train and validation loss on one chart. A chart holds one tag across runs, so the two curves are written
  as the tag ``loss`` of two small runs beside the main one, ``version_N/train`` and ``version_N/val``;
- ``train/...``: ``loss``, the learning rate(s) (``lr``; ``lr_adamw`` and ``lr_muon`` with Muon), then throughput
  (``mfu``, ``model_flops_per_sec``, ``tokens_per_sec``) and the cumulative ``seconds`` and ``tokens`` trained;
- ``val/...``: ``loss``, ``bpb``, ``ppl``.

Lightning's ``epoch`` counter (always 0 in a run measured in steps) is not written. Every figure is logged at the
optimizer steps done when it was measured, as checkpoints and the progress bar count them: step 10's loss at 10
(Lightning's own numbering says 9), a validation after step 40 at 40, the one before training at 0. A resumed run
purges from the view what the interrupted one logged after its checkpoint.
"""

from __future__ import annotations

import os
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from lit_gpt.errors import LitGPTError, first_line

# Written once per logging step into the side runs, so train and validation loss share one chart.
BOTH_ON_ONE_CHART = {"train/loss": "train", "val/loss": "val"}


class RunLogger(TensorBoardLogger):
    """``TensorBoardLogger`` (same arguments) whose first view is the run: loss first, train and val on one chart as
    well as apart, then learning rate and throughput; steps numbered as checkpoints number them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trainer: L.Trainer | None = None
        self._side_runs: dict[str, Any] = {}

    @property
    def experiment(self) -> Any:
        try:
            return super().experiment
        except OSError as e:  # read-only, full, or a file where the folder should be
            raise self._write_error(e) from None

    def _write_error(self, error: OSError) -> LitGPTError:
        return LitGPTError(
            f"cannot write the run's TensorBoard events under {self.root_dir} ({first_line(error)}): give "
            "--trainer.logger.init_args.save_dir a folder on a writable disk with free space"
        )

    def number_steps_by(self, trainer: L.Trainer) -> None:
        """Log every figure at ``trainer.global_step`` (the optimizer steps done), whatever step Lightning passes."""
        self._trainer = trainer

    @rank_zero_only
    def restarted_at(self, step: int) -> None:
        """A resumed run continues from ``step``: what a killed run logged after it is purged from the view (the
        TensorFlow SessionLog.START event TensorBoard reads for this), so no step shows twice."""
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog

        for writer in (self.experiment, *(self._side_run(name) for name in BOTH_ON_ONE_CHART.values())):
            # torch's SummaryWriter (and tensorboardX's) writes raw events through its file writer
            writer._get_file_writer().add_event(Event(step=step + 1, session_log=SessionLog(status=SessionLog.START)))

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        metrics = {k: v for k, v in metrics.items() if k != "epoch"}
        if self._trainer is not None:
            step = self._trainer.global_step
        if not metrics:
            return
        try:
            super().log_metrics(metrics, step)
            for tag, side in BOTH_ON_ONE_CHART.items():
                if tag in metrics:
                    value = metrics[tag]
                    self._side_run(side).add_scalar("loss", value.item() if hasattr(value, "item") else value, step)
        except OSError as e:  # the disk filled up, or went read-only, during the run
            raise self._write_error(e) from None

    def _side_run(self, name: str) -> Any:
        if name not in self._side_runs:
            # The writer class Lightning chose for the main run (tensorboardX's or torch's SummaryWriter).
            self._side_runs[name] = type(self.experiment)(os.path.join(self.log_dir, name))
        return self._side_runs[name]

    @rank_zero_only
    def save(self) -> None:
        try:
            super().save()
            for writer in self._side_runs.values():
                writer.flush()
        except OSError as e:
            raise self._write_error(e) from None

    @rank_zero_only
    def finalize(self, status: str) -> None:
        super().finalize(status)
        for writer in self._side_runs.values():
            writer.close()
        self._side_runs.clear()
