"""The output layer and the cross-entropy in one pass over chunks of tokens, without the (tokens x vocab) logits.

With a large vocabulary the logits are the biggest tensor of a training step: for GPT-2 (50,304 tokens), 4 windows of
1024 tokens make 0.8 GB of fp32 logits, and autograd keeps them and their gradient alive through the whole backward
pass. The gradient of the mean cross-entropy with respect to the logits is known in closed form (softmax minus the
one-hot target, over the number of targets), so each chunk's contribution to the gradients of the hidden states and
of the output matrix can be computed in the forward pass, right after its logits, and the logits freed. Backward
then only scales the stored gradients. The FLOPs are those of the unfused layer (one matmul forward, two backward),
so it costs no recomputation; the memory kept from forward to backward is the output matrix's gradient (vocab x
n_embd) instead of the logits (tokens x vocab).

Liger Kernel's FusedLinearCrossEntropy and Apple's Cut Cross-Entropy do this with Triton kernels on GPUs only; this
is the same algorithm in plain PyTorch, so it runs on any device.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

IGNORE_INDEX = -1  # targets with this value add nothing to the loss (as F.cross_entropy's ignore_index)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int
    ) -> torch.Tensor:
        # Matmuls in the autocast dtype when autocast is on (bf16-mixed), softmax and sums in fp32 at least, as the
        # unfused layer does.
        device_type = hidden.device.type
        dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else hidden.dtype
        acc = torch.promote_types(dtype, torch.float32)
        need_hidden, need_weight = ctx.needs_input_grad[:2]  # a frozen output layer (LoRA) needs no gradient
        with torch.autocast(device_type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            valid = targets != IGNORE_INDEX
            n_valid = valid.sum().clamp(min=1)
            loss = torch.zeros((), device=hidden.device, dtype=acc)
            grad_hidden = torch.empty_like(hidden) if need_hidden else None
            grad_weight = torch.zeros(weight.shape, device=weight.device, dtype=acc) if need_weight else None
            for start in range(0, h.size(0), chunk_size):
                end = start + chunk_size
                keep = valid[start:end]  # (n,)
                t = torch.where(keep, targets[start:end], 0)  # (n,)
                logits = (h[start:end] @ w.t()).to(acc)  # (n, V): the only logits alive at any time
                lse = torch.logsumexp(logits, dim=-1)  # (n,)
                loss += ((lse - logits.gather(1, t[:, None]).squeeze(1)) * keep).sum()
                # d(mean loss)/d(logits) = (softmax - onehot(target)) / n_valid, zero where the target is ignored
                grad = logits.sub_(lse[:, None]).exp_()  # (n, V), in place of the logits
                grad.scatter_add_(1, t[:, None], torch.full_like(lse, -1.0)[:, None])
                grad = grad.mul_((keep.to(acc) / n_valid)[:, None]).to(dtype)
                if need_hidden:
                    grad_hidden[start:end] = grad @ w  # (n, C)
                if need_weight:
                    grad_weight += grad.t() @ h[start:end]  # (V, C)
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype) if need_weight else None)
        return loss / n_valid

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        return (
            grad_hidden * grad_output if grad_hidden is not None else None,
            grad_weight * grad_output if grad_weight is not None else None,
            None,
            None,
        )


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk_size: int = 1024
) -> torch.Tensor:
    """Mean cross-entropy of the logits ``hidden @ weight.T`` against ``targets``, ``chunk_size`` tokens at a time:
    ``F.cross_entropy(hidden @ weight.T, targets, ignore_index=-1)`` without ever holding all the logits.

    ``hidden`` is (..., C), ``weight`` (V, C), ``targets`` (...) of token ids.
    """
    hidden = hidden.reshape(-1, hidden.size(-1))  # (N, C)
    targets = targets.reshape(-1)  # (N,)
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, targets, chunk_size)
    # Nothing to differentiate (validation): the same chunks, forward only.
    acc = torch.promote_types(hidden.dtype, torch.float32)
    total = hidden.new_zeros((), dtype=acc)
    for start in range(0, hidden.size(0), chunk_size):
        logits = hidden[start : start + chunk_size] @ weight.t()  # (n, V)
        t = targets[start : start + chunk_size]  # (n,)
        total += F.cross_entropy(logits.to(acc), t, reduction="sum", ignore_index=IGNORE_INDEX)
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
