"""float32 matmuls on oneDNN instead of MKL, on the CPUs where MKL is slow.

PyTorch's x86 builds run float32 matmuls in Intel's MKL, which picks its kernels by the processor's vendor, not its
instruction set: on an AMD CPU with full-width AVX-512 (Zen 5) MKL runs well below oneDNN (which PyTorch ships too,
and already uses for bf16). Zen 4 has AVX-512 too but runs it on 256-bit units, two halves per instruction, so
oneDNN's AVX-512 kernels have no edge over MKL's AVX2 ones there; without AVX-512 (Zen 3) MKL's are the faster.
So ``auto`` takes oneDNN only on AMD CPUs with AVX-512 of family 0x1A (Zen 5) or newer (figures in
docs/benchmarks.md). ``use_onednn_linears`` swaps
the class of every plain ``nn.Linear`` (parameter names, hence checkpoints, are unchanged, as for LoRA) to one whose
forward and backward matmuls run in oneDNN, with the same results to float32 rounding. Matmuls too small to gain (a
token's decode step: oneDNN's per-call set-up costs more), inputs that are not float32 (bf16 weights, autocast,
which routes to oneDNN by itself) and other devices keep ``F.linear``."""

from __future__ import annotations

import platform
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

CpuMatmul = Literal["auto", "onednn", "aten"]
CHOICES: tuple[str, ...] = get_args(CpuMatmul)
# A setting: smaller matmuls (a token's decode step) stay in ATen, where oneDNN's per-call set-up would cost more than
# its faster kernel saves. Figures: docs/speed.md and docs/benchmarks.md, which say on which CPU they were measured.
MIN_MACS = 1 << 20


@cache
def _register_op() -> None:
    """Define ``lit_gpt::onednn_linear``, an op opaque to torch.compile (compiled graphs call it as it is). Done at
    the first swap (``use_onednn_linears``), not on import: importing lit-gpt adds nothing to torch's registry."""
    torch.library.define("lit_gpt::onednn_linear", "(Tensor x, Tensor weight, Tensor? bias) -> Tensor")

    @torch.library.impl("lit_gpt::onednn_linear", "cpu")
    def _onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        # x @ weight.T + bias; a strided weight is read as it is, a strided x is copied first (oneDNN's rules)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @torch.library.register_fake("lit_gpt::onednn_linear")
    def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.lit_gpt.onednn_linear(x, weight, bias)


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x @ weight.T + bias`` in oneDNN, outside a model (e.g. to time it)."""
    _register_op()
    return _linear(x, weight, bias)


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad
        g = grad.reshape(-1, grad.shape[-1])  # (tokens, out)
        grad_x = _linear(grad, weight.t(), None) if need_x else None  # (..., in) = grad @ W
        grad_w = None
        if need_w:
            x2 = x.reshape(-1, x.shape[-1])  # (tokens, in)
            out_features, in_features = weight.shape
            # grad.T @ x; oneDNN copies a transposed first operand, so transpose the narrower activation
            if out_features <= in_features:
                grad_w = _linear(g.t(), x2.t(), None)  # (out, in)
            else:
                grad_w = _linear(x2.t(), g.t(), None).t().contiguous()  # (in, out) -> (out, in)
        grad_b = g.sum(0) if ctx.has_bias and need_b else None
        return grad_x, grad_w, grad_b


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` whose float32 CPU matmuls run in oneDNN; anything else goes to ``F.linear``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _register_op()  # built directly rather than swapped in by use_onednn_linears
        super().__init__(*args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        if (
            x.dtype is torch.float32
            and w.dtype is torch.float32
            and x.device.type == "cpu"
            and x.numel() * w.shape[0] >= MIN_MACS  # tokens x in x out multiply-adds
            and not torch.is_autocast_enabled("cpu")
        ):
            return _OneDNNLinear.apply(x, w, self.bias)
        return F.linear(x, w, self.bias)


def onednn_available() -> bool:
    """Whether this PyTorch build has oneDNN (x86 and Arm builds from PyPI do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def bf16_matmuls_native() -> bool:
    """Whether this CPU runs bf16 matmuls in oneDNN's kernels (x86 with AVX-512 or AMX, Arm with BF16), torch's own
    test. Where it does not (x86 with AVX2 only, Apple M1), torch falls back to a generic bf16 kernel many times
    slower than float32's: bf16-mixed then slows a whole run down (docs/benchmarks.md)."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)  # private: absent in a build, assume yes
    return True if check is None else bool(check())


def slow_bf16_warning(precision: str, device: torch.device) -> str | None:
    """The one-line warning for a bf16 run on a CPU without native bf16 matmuls, or None."""
    if device.type != "cpu" or "bf16" not in str(precision) or bf16_matmuls_native():
        return None
    return (
        "this CPU has none of the instructions PyTorch's bf16 matmul kernels need (AVX-512 or AMX on x86, BF16 on "
        f"Arm), so --trainer.precision {precision} runs many times slower than float32: use --trainer.precision 32-true"
    )


@cache
def _cpuinfo() -> str:
    """/proc/cpuinfo's text, read once; empty where there is none (not Linux)."""
    try:
        return Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ""


def _amd_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64") and "AuthenticAMD" in _cpuinfo()


def _amd_family() -> int:
    """The processor family /proc/cpuinfo gives (25 = 0x19: Zen 3 and Zen 4; 26 = 0x1A: Zen 5); 0 if unknown."""
    line = next((x for x in _cpuinfo().splitlines() if x.startswith("cpu family")), "")
    value = line.partition(":")[2].strip()
    return int(value) if value.isdigit() else 0


ZEN5_FAMILY = 0x1A  # the first AMD family whose AVX-512 runs on 512-bit units


def _avx512() -> bool:
    # ATen's own dispatch level ("AVX512", "AVX2", ...): what oneDNN's kernels can use and MKL's, on AMD, do not
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def cpu_matmul_problems(choice: str) -> list[str]:
    """What is wrong with a ``cpu_matmul`` choice, for the caller's list of config problems."""
    if choice not in CHOICES:
        return [f"cpu_matmul must be {', '.join(CHOICES[:-1])} or {CHOICES[-1]}, got {choice!r}"]
    if choice == "onednn" and not onednn_available():
        return ["cpu_matmul onednn: this PyTorch build has no oneDNN; use auto or aten"]
    return []


def onednn_wanted(choice: str, device: torch.device | str) -> bool:
    """Whether ``choice`` (auto, onednn or aten) means oneDNN linears for a model on ``device``. auto: on AMD x86
    CPUs with full-width AVX-512 (Zen 5 on), where MKL's float32 kernels fall well behind oneDNN's (figures in
    docs/benchmarks.md); elsewhere PyTorch's default."""
    if torch.device(device).type != "cpu" or choice == "aten":
        return False
    full_width_avx512 = _amd_x86() and _avx512() and _amd_family() >= ZEN5_FAMILY
    return onednn_available() and (choice == "onednn" or full_width_avx512)


def use_onednn_linears(model: nn.Module) -> int:
    """Swap every plain ``nn.Linear`` in ``model`` to ``OneDNNLinear`` in place; returns how many. Subclasses
    (LoRA's layers) are left as they are."""
    _register_op()
    swapped = 0
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = OneDNNLinear
            swapped += 1
    return swapped
