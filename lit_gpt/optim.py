"""The optimizer and learning-rate schedule, defined once and used by the LightningModule and the benchmarks."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.distributed.tensor import DTensor, Replicate
from torch.optim._muon import _adjust_lr, _zeropower_via_newtonschulz  # torch's own; there is no public name

OptimizerName = Literal["adamw", "muon"]
LrSchedule = Literal["cosine", "wsd"]
NewtonSchulzDtype = Literal["bfloat16", "float32", "float64"]


def configure_adamw(
    model: nn.Module | list[nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool | None = None,
) -> torch.optim.AdamW:
    """AdamW over a model's trainable parameters (or the given ones) that decays only weights of 2+ dimensions
    (matmuls and embeddings), not biases or norm gains.

    ``fused`` defaults to the fused kernel on CUDA and CPU: one kernel for all parameters instead of a dozen small
    ops per tensor, which a small model's CPU step notices.
    """
    if isinstance(model, nn.Module):
        params = [p for p in model.parameters() if p.requires_grad]
    else:
        params = model
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "name": "decay"},
        {"params": no_decay, "weight_decay": 0.0, "name": "no_decay"},
    ]
    if fused is None:
        fused = bool(params) and params[0].device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def warmup_cosine(step: int, warmup_steps: int, decay_steps: int, min_ratio: float) -> float:
    """LR multiplier at optimizer step ``step``: linear warm-up, cosine decay to ``min_ratio`` at ``decay_steps``,
    then flat (nanoGPT's ``get_lr``)."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if step >= decay_steps:
        return min_ratio
    progress = (step - warmup_steps) / max(1, decay_steps - warmup_steps)
    return min_ratio + 0.5 * (1.0 + math.cos(math.pi * progress)) * (1.0 - min_ratio)


def muon_split(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """The trainable parameters Muon takes (the 2-D weight matrices inside the Transformer blocks: attention and MLP
    projections) and those AdamW takes (embeddings, the output layer, norms, biases, scalars, LoRA adapters).

    A tied embedding/output matrix sits outside the blocks and is listed once (``parameters()`` dedups it). LoRA's
    factors go to AdamW: orthogonalising each low-rank factor is not Muon's update of the weight they adapt.
    """
    muon, adamw = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        name = name.replace("_orig_mod.", "")
        inside_block = name.startswith("transformer.h.")
        (muon if inside_block and p.dim() == 2 and "lora_" not in name else adamw).append(p)
    return muon, adamw


def newton_schulz(
    update: torch.Tensor, ns_coefficients: tuple[float, float, float], ns_steps: int, eps: float, dtype: torch.dtype
) -> torch.Tensor:
    """Muon's orthogonalisation of ``update``: torch's Newton-Schulz when ``dtype`` is bfloat16, else the same
    iteration (coefficients, steps, eps, transposing a tall matrix) in ``dtype``.

    torch's casts every matrix to bfloat16, which is right where bf16 matmuls are the fast ones (GPUs, CPUs with
    AMX) and wrong for a run the user asked to be float32: a CPU without bf16 instructions emulates each bf16
    matmul, many times slower than its float32 one, and bf16's rounding turns float32's summation-order differences
    (ranks, micro-batches) into losses that part (docs/benchmarks.md and docs/distributed.md have both).
    """
    if dtype == torch.bfloat16:
        return _zeropower_via_newtonschulz(update, ns_coefficients, ns_steps, eps)
    a, b, c = ns_coefficients
    x = update.to(dtype)
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T  # (small, large): the Gram matrix below is small x small
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm = 1
    for _ in range(ns_steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)  # a X + (b A + c A²) X
    return x.T if tall else x


def newton_schulz_dtype(precision: str, chosen: str | None = None) -> torch.dtype:
    """The dtype Muon's Newton-Schulz runs in: ``chosen`` (a ``NewtonSchulzDtype``) if given, else the run's own
    where the Trainer's ``precision`` is float32 or float64, and torch's bfloat16 otherwise (bf16 and fp16 runs:
    fp16's range is too narrow for the iteration)."""
    if chosen is not None:
        return getattr(torch, chosen)
    return {"32-true": torch.float32, "64-true": torch.float64}.get(str(precision), torch.bfloat16)  # Lightning's names


class Muon(torch.optim.Muon):
    """``torch.optim.Muon``, with Newton-Schulz in ``ns_dtype`` and each FSDP2-sharded matrix orthogonalised whole.

    ``ns_dtype`` bfloat16 (the default) is torch's Muon exactly; another dtype runs ``newton_schulz`` in it.
    FSDP2's parameters are DTensors split by rows. torch's Muon would run Newton-Schulz on them as DTensors, which is
    right in exact arithmetic, but each product of row-split bfloat16 matrices then adds the ranks' partial sums in
    bfloat16, rounding otherwise than one process does: the losses part from the first update on, even in float64
    (docs/distributed.md).
    So a sharded matrix's update is gathered whole (one all-gather, as FSDP's forward gathers the weight), put
    through Newton-Schulz on every rank alike, and each rank keeps its own rows: the step one process takes.
    Every rank orthogonalises every matrix; whole (unsharded) parameters step exactly as in torch's Muon.
    """

    def __init__(self, params: list, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: object) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype  # not a group option: checkpoints stay torch's format, and a resume may change it

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        sharded = any(isinstance(p, DTensor) for group in self.param_groups for p in group["params"])
        if not sharded and self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = float(group["lr"]), group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p.grad, memory_format=torch.preserve_format)
                # torch's _single_tensor_muon, step for step, with the gather around Newton-Schulz.
                buf = state["momentum_buffer"]
                buf.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                ns = (group["ns_coefficients"], group["ns_steps"], group["eps"], self.ns_dtype)
                if isinstance(update, DTensor):
                    mesh, placements = update.device_mesh, update.placements
                    whole = newton_schulz(update.full_tensor(), *ns)
                    replicated = DTensor.from_local(whole, mesh, [Replicate()] * mesh.ndim, run_check=False)
                    update = replicated.redistribute(mesh, placements)  # this rank's rows: a slice, no traffic
                else:
                    update = newton_schulz(update, *ns)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


class MuonAdamW(torch.optim.Optimizer):
    """``torch.optim.Muon`` for the blocks' matrices and ``torch.optim.AdamW`` for the rest, as one optimizer.

    One object, so Lightning, the LR scheduler (one multiplier over every group: each keeps its own peak) and
    checkpoints see an ordinary optimizer: its ``param_groups`` and ``state`` are the two optimizers' own, shared, and
    its ``state_dict`` is torch's format over both.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__(muon.param_groups + adamw.param_groups, {})
        self._link()

    def _link(self) -> None:
        n = len(self.muon.param_groups)
        self.muon.param_groups, self.adamw.param_groups = self.param_groups[:n], self.param_groups[n:]
        for inner in (self.muon, self.adamw):
            for p, s in inner.state.items():
                self.state.setdefault(p, s)
            inner.state = self.state  # params are disjoint: one state dict serves both

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._link()  # torch builds new group dicts and a new state dict on load

    @torch.no_grad()
    def step(self, closure=None):  # noqa: ANN001 (torch's signature)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss


def configure_muon(
    muon_params: list[nn.Parameter],
    adamw_params: list[nn.Parameter],
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    muon_lr: float,
    muon_momentum: float,
    muon_weight_decay: float,
    fused: bool | None = None,
    ns_dtype: torch.dtype = torch.bfloat16,
) -> MuonAdamW:
    """Muon (Nesterov momentum, Newton-Schulz in ``ns_dtype``: ``newton_schulz_dtype`` of the run's precision) on
    ``muon_params``; ``configure_adamw`` on the rest. The two lists are ``muon_split``'s."""
    muon = Muon(
        [{"params": muon_params, "name": "muon"}],
        lr=muon_lr,
        momentum=muon_momentum,
        weight_decay=muon_weight_decay,
        ns_dtype=ns_dtype,
    )
    return MuonAdamW(muon, configure_adamw(adamw_params, lr, weight_decay, betas, fused))


def describe_split(muon: list[nn.Parameter], adamw: list[nn.Parameter], ns_dtype: torch.dtype = torch.bfloat16) -> str:
    """One line: what Muon and AdamW each train (tensors and parameters), from ``muon_split``'s lists, and the dtype
    of Muon's Newton-Schulz."""

    def count(ps: list[nn.Parameter]) -> str:
        return f"{len(ps)} tensors, {sum(p.numel() for p in ps):,} parameters"

    ns = str(ns_dtype).removeprefix("torch.")
    return (
        f"optimizer: Muon on the blocks' matrices ({count(muon)}; Newton-Schulz in {ns}); "
        f"AdamW on the rest ({count(adamw)})"
    )


def warmup_stable_decay(
    step: int, warmup_steps: int, decay_steps: int, cooldown_fraction: float, min_ratio: float
) -> float:
    """LR multiplier for WSD: linear warm-up, constant, then a linear cool-down to ``min_ratio`` over the last
    ``cooldown_fraction`` of ``decay_steps``, then flat. For runs of unknown length: any checkpoint of the constant
    phase can be cooled down later, and extending a run does not change its past."""
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    cooldown_start = max(warmup_steps, round(decay_steps * (1.0 - cooldown_fraction)))
    if step < cooldown_start:
        return 1.0
    if step >= decay_steps:
        return min_ratio
    progress = (step - cooldown_start) / max(1, decay_steps - cooldown_start)
    return 1.0 - progress * (1.0 - min_ratio)


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate each optimizer is stepping with, named for it: ``lr`` for AdamW alone, ``lr_muon`` and
    ``lr_adamw`` with Muon (AdamW's decay and no-decay groups share one rate: one figure)."""
    rates: dict[str, float] = {}
    for group in optimizer.param_groups:
        rates.setdefault("muon" if group.get("name") == "muon" else "adamw", float(group["lr"]))
    if set(rates) == {"adamw"}:
        return {"lr": rates["adamw"]}
    return {f"lr_{name}": lr for name, lr in rates.items()}
