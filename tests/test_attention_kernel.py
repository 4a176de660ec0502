"""--model.attention_kernel: the named SDPA kernel computes attention in training and validation steps, with the
same loss as PyTorch's own choice; a kernel this machine cannot run is refused before training, in one line. And bf16
training on a CPU attends in float32 at short contexts, where PyTorch's CPU kernel is faster so."""

from dataclasses import replace

import lightning as L
import pytest
import torch
from conftest import TINY, run_cli
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.data import DataLoader

from lit_gpt.errors import LitGPTError
from lit_gpt.lightning_module import LitGPT
from lit_gpt.model import GPTConfig, scaled_dot_product_attention

CONFIG = GPTConfig(vocab_size=40, block_size=16, n_layer=2, n_head=2, n_embd=32)
SDPA_OPS = {  # the op each kernel runs as on a CPU
    "math": "aten::_scaled_dot_product_attention_math",
    "flash": "aten::_scaled_dot_product_flash_attention_for_cpu",
}


def fit_one_step(
    kernel: str, config: GPTConfig = CONFIG, precision: str = "32-true", callbacks: tuple = ()
) -> tuple[float, float, set[str]]:
    """Train one step and validate once with ``kernel``: the step's loss, the validation loss, and the SDPA ops run."""
    torch.manual_seed(0)
    x = torch.randint(0, 40, (4, 17))
    batches = DataLoader([(x[:, :-1], x[:, 1:])], batch_size=None)
    module = LitGPT(config, attention_kernel=kernel)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, *args) -> None:
            losses.append(outputs["loss"].item())

    trainer = L.Trainer(
        accelerator="cpu", max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, callbacks=[Record(), *callbacks], precision=precision,
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


class AttentionDtypes(TorchDispatchMode):
    """The dtypes of the query each SDPA kernel call (forward or backward) received."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.name().startswith("aten::_scaled_dot_product"):
            self.seen.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


def bf16_step_attention(block_size: int) -> tuple[float, set[torch.dtype]]:
    """One bf16-mixed training step on a CPU, for a model of ``block_size``: its loss and its attention's dtypes."""
    dtypes = AttentionDtypes()

    class Watch(L.Callback):
        def on_train_batch_start(self, *args) -> None:
            dtypes.__enter__()

        def on_train_batch_end(self, *args) -> None:
            dtypes.__exit__(None, None, None)

    loss, _, _ = fit_one_step("auto", replace(CONFIG, block_size=block_size), "bf16-mixed", (Watch(),))
    return loss, dtypes.seen


def test_bf16_training_on_a_cpu_attends_in_float32_at_short_contexts():
    fp32_loss, _, _ = fit_one_step("auto")
    loss, dtypes = bf16_step_attention(16)
    assert dtypes == {torch.float32}  # forward and backward, though the matmuls around them ran in bf16
    assert loss == pytest.approx(fp32_loss, rel=2e-2)  # bf16's rounding, nothing more
    # past 256 tokens PyTorch's bf16 kernel catches up (and wins from ~1024): attention stays in bf16 there
    _, dtypes = bf16_step_attention(512)
    assert dtypes == {torch.bfloat16}


def test_attention_in_another_dtype_returns_the_inputs_dtype():
    q, k, v = torch.randn(3, 2, 4, 10, 8).unbind(0)
    want = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast would hand it: bf16 inputs
        y = scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), 0.0, True, torch.float32)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)
