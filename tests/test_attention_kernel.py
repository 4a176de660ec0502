"""--model.attention_kernel: the named SDPA kernel computes attention in training and validation steps, with the
same loss as PyTorch's own choice; a kernel this machine cannot run is refused before training, in one line."""

import lightning as L
import pytest
import torch
from conftest import TINY, run_cli
from torch.utils.data import DataLoader

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_module import LitGPT
from lit_gpt.model import GPTConfig

CONFIG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
SDPA_OPS = {  # the op each kernel runs as on a CPU
    "math": "aten::_scaled_dot_product_attention_math",
    "flash": "aten::_scaled_dot_product_flash_attention_for_cpu",
}


def fit_one_step(kernel: str) -> tuple[float, float, set[str]]:
    """Train one step and validate once with ``kernel``: the step's loss, the validation loss, and the SDPA ops run."""
    torch.manual_seed(0)
    x = torch.randint(0, 40, (4, 17))
    batches = DataLoader([(x[:, :-1], x[:, 1:])], batch_size=None)
    module = LitGPT(CONFIG, attention_kernel=kernel)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:
            losses.append(outputs["loss"].item())

    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Record()],
    )  # fmt: skip
    with torch.profiler.profile() as prof:
        trainer.fit(module, batches, batches)
    ops = {e.key for e in prof.key_averages() if e.key.startswith("aten::_scaled_dot_product")}
    return losses[0], trainer.callback_metrics["val/loss"].item(), ops


def test_the_named_kernel_computes_attention_with_the_same_loss():
    auto_loss, auto_val, _ = fit_one_step("auto")
    for kernel, op in SDPA_OPS.items():
        loss, val, ops = fit_one_step(kernel)
        assert {o.removesuffix("_backward") for o in ops} == {op}, (kernel, ops)  # it, and no other kernel, ran
        assert loss == pytest.approx(auto_loss, rel=1e-5) and val == pytest.approx(auto_val, rel=1e-5)


def test_an_unknown_kernel_is_refused_with_the_other_problems():
    with pytest.raises(LitGPTError, match=r"beta1.*attention_kernel must be one of auto, flash, cudnn"):
        LitGPT(attention_kernel="xformers", beta1=2.0)


def test_a_gpu_kernel_on_a_cpu_is_refused_before_training(tmp_path, corpus):
    r = run_cli(
        "fit", "--data.source", str(corpus), *TINY, "--trainer.max_steps", "2", "--model.attention_kernel", "cudnn",
        "--trainer.log_every_n_steps", "0", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    line = r.stderr.strip().splitlines()[-1]
    # one line, with the other problem of the same config
    assert "attention_kernel cudnn runs on NVIDIA GPUs only" in line and "use auto, flash or math" in line, line
    assert "log_every_n_steps must be a positive integer" in line, line
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists()  # nothing was built
