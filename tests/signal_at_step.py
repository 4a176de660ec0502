"""A test callback: the training process signals itself at a chosen step, so preemption lands at a known point
(a validation step, or between validations) instead of wherever a test's timing puts it."""

import os
import signal

import lightning as L


class SignalAtStep(L.Callback):
    def __init__(self, step: int, signal_name: str = "SIGTERM") -> None:
        self.step, self.signum = step, getattr(signal, signal_name)

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class KillAfterSave(L.Callback):
    """SIGKILLs the process the moment the checkpoint of step `step` is on disk: nothing after the save runs."""

    def __init__(self, step: int) -> None:
        self.step = step

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        io = trainer.strategy.checkpoint_io
        save = io.save_checkpoint

        def save_then_die(checkpoint, path, *a, **kw) -> None:
            save(checkpoint, path, *a, **kw)
            if checkpoint["global_step"] == self.step:
                os.kill(os.getpid(), signal.SIGKILL)

        io.save_checkpoint = save_then_die
