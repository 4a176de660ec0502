"""A GPT language model in plain PyTorch, readable in one sitting.

Parameter names and shapes follow nanoGPT's ``model.py`` and Hugging Face's GPT-2, so their checkpoints load with a
short list of renames (none for nanoGPT, a transpose of the Conv1D weights for HF). This file imports no Lightning:
parallelism, compilation and precision are applied from outside by the Trainer.

The defaults are GPT-2's block. A few switches replay the lecture's steps on this same model (``bigram``,
``residual``, ``projections``, ``norm``, ``mlp``, ``init``, ``tie_weights``: see ``configs/lecture/``), and a few
give a modern block (``position="rotary"``, ``norm="rmsnorm"``, ``mlp="swiglu"``, ``qk_norm``): LLaMA's choices, off
by default.

References: Karpathy's "Let's build GPT" lecture and nanoGPT; OpenAI's GPT-2 (Radford et al., 2019); RoFormer (Su et
al., 2021) for rotary embeddings; RMSNorm (Zhang & Sennrich, 2019); SwiGLU (Shazeer, 2020); QK-norm (Dehghani et al.,
2023).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, get_args

import torch
import torch.nn as nn
from torch.nn import functional as F

from lit_gpt.fused_loss import linear_cross_entropy

Norm = Literal["layernorm", "rmsnorm", "none"]
Mlp = Literal["gelu", "gelu_tanh", "relu", "relu2", "swiglu", "none"]
Init = Literal["gpt2", "neox", "pytorch"]
Position = Literal["learned", "rotary"]


@dataclass(frozen=True)
class GPTConfig:
    """The shape of the network. The defaults are nanoGPT's CPU run on tiny Shakespeare."""

    vocab_size: int | None = None
    """Number of token ids. Left empty, it is taken from the data's tokenizer when training starts."""
    block_size: int = 64
    """Context length in tokens: the longest sequence the model attends over (and the data's window length)."""
    n_layer: int = 4
    """Number of Transformer blocks."""
    n_head: int = 4
    """Attention heads per block; must divide n_embd."""
    n_embd: int = 128
    """Width of the residual stream."""
    dropout: float = 0.0
    """Dropout on attention weights and residual branches. 0 for pretraining; 0.1-0.2 helps small corpora."""
    bias: bool = True
    """Biases in Linear layers and LayerNorms, as GPT-2 has. False is a little faster and often a little better."""

    # --- the lecture's steps: every switch below is GPT-2's choice by default --------------------------------------
    bigram: bool = False
    """The lecture's first model: the logits for the next token are the current token's row of a vocab_size x
    vocab_size table, and nothing else (no positions, blocks, norm or output layer; n_layer, n_head, n_embd are
    ignored). The baseline every later step must beat."""
    residual: bool = True
    """Add each block's attention and MLP output to its input (x + f(x)) instead of replacing it (f(x)). The sum
    gives gradients a straight path through depth; without it a stack of blocks barely trains."""
    projections: bool = True
    """Output projections into the residual stream: attention's c_proj after the heads are concatenated, and an MLP
    that widens to its hidden size and projects back (c_fc, c_proj). False is the lecture before "residual
    connections": heads concatenated straight into the stream and an MLP of one n_embd x n_embd layer."""
    norm: Norm = "layernorm"
    """Normalisation before attention, before the MLP and before the output layer (pre-norm). "rmsnorm" only
    rescales (no mean subtraction, no bias), as LLaMA does. "none" is the lecture before LayerNorm."""
    mlp: Mlp = "gelu"
    """The feed-forward network after attention. "gelu" is nanoGPT's (the exact GELU), "gelu_tanh" GPT-2's own tanh
    approximation (Hugging Face's "gelu_new", which GPT-2 checkpoints were trained with), "relu" the lecture's,
    "swiglu" LLaMA's gated unit (silu(x W) * (x V)), "relu2" ReLU squared (relu(x)^2, Primer; the speedruns' choice),
    "none" the lecture's attention-only steps."""
    mlp_hidden: int | None = None
    """Hidden width of the MLP. Empty: 4 x n_embd; for swiglu 8/3 x n_embd rounded up to a multiple of 8, which keeps
    the parameter count of a 4 x n_embd MLP (swiglu has three matrices, not two); n_embd when projections is off."""
    init: Init = "gpt2"
    """Initial weights. "gpt2": normal with std 0.02, residual projections scaled down by 1/sqrt(2 n_layer).
    "neox": GPT-NeoX's, which scales with the width: std sqrt(2 / (5 n_embd)) ("small init") and residual projections
    2 / (n_layer sqrt(n_embd)) ("wang init"). At GPT-2's 768 wide that is 0.023, about GPT-2's 0.02; at 128 wide it
    is 0.056: a width-aware std keeps small models from starting too timid to learn quickly (figures in
    docs/init.md).
    "pytorch": PyTorch's own defaults, as in the lecture's code (N(0, 1) embeddings, uniform +-1/sqrt(fan_in) Linear
    weights): the lecture's models without residual connections or norms need weights that large to train well."""
    tie_weights: bool = True
    """The output layer shares its matrix with the token embedding (GPT-2). False gives it its own, as the lecture
    has: without residual connections the last layer's output is far from an embedding, and tying hurts there."""

    # --- a modern block ------------------------------------------------------------------------------------------
    position: Position = "learned"
    """How the model knows where a token is. "learned" adds a trained vector per position (GPT-2's wpe). "rotary"
    rotates each head's queries and keys by an angle proportional to the position, so attention scores depend only
    on the distance between tokens (RoPE), with no parameters."""
    rope_base: float = 10000.0
    """Rotary embeddings: the base of the wavelengths (RoFormer's 10000)."""
    qk_norm: bool = False
    """RMS-normalise each head's queries and keys before the scores: keeps attention logits from growing, which lets
    larger learning rates train stably. Adds 2 x head size parameters per block."""

    # --- speedrun choices (modded-nanogpt's) ---------------------------------------------------------------------
    logit_softcap: float = 0.0
    """> 0: the output logits are c * tanh(logits / c), bounded to (-c, c) (Gemma 2's soft-capping): keeps a
    confident model from pushing logits ever larger. 0 is off."""
    zero_init_proj: bool = False
    """Start the residual projections (attention's and the MLP's c_proj) at zero, so each block begins as the
    identity and the first steps shape the embeddings and output layer first."""

    def __post_init__(self) -> None:
        problems = config_problems(self)
        if problems:
            raise ValueError("invalid model config: " + "; ".join(problems))


def config_problems(config: GPTConfig) -> list[str]:
    """Every problem with a config at once, so a user fixes them in one go."""
    problems = []
    for name in ("block_size", "n_layer", "n_head", "n_embd"):
        value = getattr(config, name)
        if not isinstance(value, int) or value <= 0:
            problems.append(f"{name} must be a positive integer, got {value!r}")
    if config.vocab_size is not None and (not isinstance(config.vocab_size, int) or config.vocab_size <= 0):
        problems.append(f"vocab_size must be a positive integer, got {config.vocab_size!r}")
    if not 0.0 <= config.dropout < 1.0:
        problems.append(f"dropout must be in [0, 1), got {config.dropout!r}")
    choices = {"norm": get_args(Norm), "mlp": get_args(Mlp), "position": get_args(Position), "init": get_args(Init)}
    for name, allowed in choices.items():
        value = getattr(config, name, allowed[0])
        if value not in allowed:
            problems.append(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    mlp_hidden = getattr(config, "mlp_hidden", None)
    if mlp_hidden is not None and (not isinstance(mlp_hidden, int) or mlp_hidden <= 0):
        problems.append(f"mlp_hidden must be a positive integer (or empty), got {mlp_hidden!r}")
    softcap = getattr(config, "logit_softcap", 0.0)
    if not isinstance(softcap, (int, float)) or softcap < 0:
        problems.append(f"logit_softcap must be a number >= 0 (0 is off), got {softcap!r}")
    rope_base = getattr(config, "rope_base", 10000.0)
    if not isinstance(rope_base, (int, float)) or not rope_base > 1:
        problems.append(f"rope_base must be a number above 1, got {rope_base!r}")
    if not problems and config.n_embd % config.n_head != 0:
        problems.append(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    elif not problems and getattr(config, "position", "learned") == "rotary" and (config.n_embd // config.n_head) % 2:
        problems.append(
            f"rotary embeddings rotate pairs of channels: the head size n_embd / n_head "
            f"({config.n_embd // config.n_head}) must be even"
        )
    return problems


def mlp_hidden_size(config: GPTConfig) -> int:
    """The MLP's hidden width (see ``GPTConfig.mlp_hidden``)."""
    if config.mlp_hidden is not None:
        return config.mlp_hidden
    if not config.projections:
        return config.n_embd
    if config.mlp == "swiglu":
        return 8 * math.ceil(8 * config.n_embd / 3 / 8)
    return 4 * config.n_embd


def make_norm(config: GPTConfig, dim: int) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(dim)
    if config.norm == "none":
        return nn.Identity()
    return nn.LayerNorm(dim, bias=config.bias)


def rotary_angles(positions: torch.Tensor, head_size: int, base: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles (T, head_size / 2) for the given positions (T,): channel pair i turns by
    ``position / base ** (2i / head_size)``, from one turn per ~6 tokens down to one per ~``base`` tokens."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_size, 2, device=positions.device, dtype=torch.float32) / head_size))
    angles = positions.float()[:, None] * inv_freq[None, :]  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (i, i + hs/2) of ``x`` (B, nh, T, hs) by the angles of each position (GPT-NeoX/LLaMA's
    half-split layout). The dot product of two rotated vectors then depends on their positions' difference only."""
    x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
    rotated = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return rotated.type_as(x)


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, pre-allocated for ``max_len`` positions."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int, device, dtype) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        # Not persistent: a cache is scratch space and must never land in a checkpoint.
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(
        self, pos: int | torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Store the keys and values (B, nh, T, hs) of positions ``pos``.. and return every key and value a query
        may see, with a mask of the ones it may see (None: all). Past ``max_len`` (one token at a time, rotary
        models only: ``GPT.decodes_past_block``) the cache is a ring: the new token overwrites the oldest, and the
        slots' order does not matter to attention.

        ``pos`` may be a tensor (B,): one token per row, each row at its own position (a server's running batch,
        whose sequences have different lengths). Then all ``max_len`` slots come back, masked per row."""
        if isinstance(pos, torch.Tensor):
            return self._update_rows(pos, k, v)
        T, max_len = k.size(2), self.k.size(2)
        if pos + T > max_len:
            pos = pos % max_len
            self.k[:, :, pos : pos + 1] = k
            self.v[:, :, pos : pos + 1] = v
            return self.k, self.v, None  # (B, nh, max_len, hs): the last max_len tokens
        self.k[:, :, pos : pos + T] = k
        self.v[:, :, pos : pos + T] = v
        return self.k[:, :, : pos + T], self.v[:, :, : pos + T], None

    def _update_rows(
        self, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        max_len = self.k.size(2)
        rows = torch.arange(k.size(0), device=k.device)
        slot = pos % max_len  # the ring, per row
        self.k[rows, :, slot] = k[:, :, 0]  # (B, nh, hs)
        self.v[rows, :, slot] = v[:, :, 0]
        seen = torch.arange(max_len, device=k.device)[None, :] <= pos[:, None]  # (B, max_len); all once wrapped
        return self.k, self.v, seen[:, None, None, :]  # mask (B, 1, 1, max_len) broadcast over heads and queries

    def rows(self, start: int, stop: int, length: int | None = None) -> KVCache:
        """A cache over rows ``start:stop`` (and the first ``length`` positions) of this one, sharing its memory: a
        server prefills a new sequence into its own row, and decodes only the rows and positions in use (reading
        the keys and values of every position is most of a decoding step's attention)."""
        view = KVCache.__new__(KVCache)
        nn.Module.__init__(view)
        view.register_buffer("k", self.k[start:stop, :, :length], persistent=False)
        view.register_buffer("v", self.v[start:stop, :, :length], persistent=False)
        return view

    def move_row(self, src: int, dst: int) -> None:
        """Copy row ``src`` into row ``dst`` (a server keeps its running sequences in the first rows)."""
        self.k[dst] = self.k[src]
        self.v[dst] = self.v[src]


def scaled_dot_product_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    dropout_p: float,
    is_causal: bool,
    dtype: torch.dtype | None,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """``F.scaled_dot_product_attention``, computed in ``dtype`` when that is set and differs from the inputs'; the
    result comes back in the inputs' dtype. ``mask`` (True: may attend) replaces the causal mask when given."""
    out = q.dtype
    kwargs = {"dropout_p": dropout_p, "is_causal": is_causal and mask is None, "attn_mask": mask}
    if dtype is None or out == dtype:
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    with torch.autocast(q.device.type, enabled=False):  # autocast would cast the inputs straight back
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
        return F.scaled_dot_product_attention(q, k, v, **kwargs).to(out)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection back into the residual stream
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias) if config.projections else None
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        if config.qk_norm:
            hs = config.n_embd // config.n_head
            self.q_norm, self.k_norm = nn.RMSNorm(hs), nn.RMSNorm(hs)
        self.qk_norm = config.qk_norm
        self.kv_cache: KVCache | None = None
        # Attend in this dtype when the inputs are another (None: theirs). Set from outside the model, per device:
        # float32 under bf16 training on a CPU, where PyTorch's attention kernel is slower in bf16 (attention_kernel.py)
        self.attention_dtype: torch.dtype | None = None

    def forward(
        self,
        x: torch.Tensor,
        input_pos: int | torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:  # rotate before caching: a cached key keeps the rotation of its own position
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        # A query of one new token may see every cached key; a longer chunk needs the causal mask.
        is_causal, mask = True, None
        if input_pos is not None and self.kv_cache is not None:
            if T > 1 and (isinstance(input_pos, torch.Tensor) or input_pos != 0):
                raise ValueError("with a KV cache, a chunk of several tokens must start at position 0")
            k, v, mask = self.kv_cache.update(input_pos, k, v)  # (B, nh, input_pos + T, hs)
            is_causal = T > 1
        # Flash / memory-efficient attention kernels where the device has them.
        dropout_p = self.dropout if self.training else 0.0
        y = scaled_dot_product_attention(q, k, v, dropout_p, is_causal, self.attention_dtype, mask)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        if self.c_proj is not None:
            y = self.c_proj(y)
        return self.resid_dropout(y)


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = mlp_hidden_size(config)
        # swiglu: one matmul gives both the gate and the value half (silu(x W) * (x V)).
        width = 2 * hidden if config.mlp == "swiglu" else hidden
        self.c_fc = nn.Linear(config.n_embd, width, bias=config.bias)
        acts = {"gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh"), "relu": nn.ReLU}
        self.act = (acts | {"relu2": ReLUSquared, "swiglu": SwiGLU})[config.mlp]()
        self.c_proj = nn.Linear(hidden, config.n_embd, bias=config.bias) if config.projections else None
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.c_fc(x))
        if self.c_proj is not None:
            x = self.c_proj(x)
        return self.dropout(x)


class ReLUSquared(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


class SwiGLU(nn.Module):
    """silu(gate) * value, for an input holding [gate, value] side by side."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = x.chunk(2, dim=-1)
        return F.silu(gate) * value


class Block(nn.Module):
    """Pre-norm Transformer block: tokens communicate (attention), then compute (MLP)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = make_norm(config, config.n_embd)
        self.attn = CausalSelfAttention(config)
        if config.mlp != "none":
            self.ln_2 = make_norm(config, config.n_embd)
            self.mlp = MLP(config)
        self.has_mlp = config.mlp != "none"
        self.residual = config.residual

    def forward(
        self,
        x: torch.Tensor,
        input_pos: int | torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        if not self.residual:  # the lecture before residual connections: each step replaces the stream
            x = self.attn(self.ln_1(x), input_pos, rope)
            return self.mlp(self.ln_2(x)) if self.has_mlp else x
        x = x + self.attn(self.ln_1(x), input_pos, rope)
        if self.has_mlp:
            x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size must be set before building the model")
        self.config = config
        # > 0: compute the training loss this many tokens at a time without the full logits (lit_gpt/fused_loss.py),
        # set from outside by the trainer (LitGPT's loss_chunk_size). 0: nanoGPT's logits + F.cross_entropy.
        self.loss_chunk_size = 0
        if config.bigram:
            # logits = wte(idx): one row of next-token scores per token. An empty h keeps the model's layout.
            self.transformer = nn.ModuleDict(
                dict(wte=nn.Embedding(config.vocab_size, config.vocab_size), h=nn.ModuleList())
            )
            self.lm_head = None
            if config.init != "pytorch":
                self.apply(functools.partial(self._init_weights, std=0.02))
            return
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":  # rotary embeddings have no parameters: they act inside attention
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        self.transformer = nn.ModuleDict(
            dict(
                **modules,
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=make_norm(config, config.n_embd),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_weights:
            # Weight tying (Press & Wolf, 2017): the output layer reads tokens the way the input embeds them.
            self.transformer.wte.weight = self.lm_head.weight
        if config.init == "pytorch":
            return
        # Residual projections start smaller, so the residual stream's variance does not grow with depth (two
        # residual branches per block): GPT-2 scales its 0.02 by 1/sqrt(2 n_layer), GPT-NeoX uses 2/(n_layer sqrt(d)).
        std, proj_std = 0.02, 0.02 / math.sqrt(2 * config.n_layer)
        if config.init == "neox":  # Nguyen & Salazar (2019)'s small init; Wang's for the projections
            std, proj_std = math.sqrt(2 / (5 * config.n_embd)), 2 / (config.n_layer * math.sqrt(config.n_embd))
        self.apply(functools.partial(self._init_weights, std=std))
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                if config.zero_init_proj:
                    torch.nn.init.zeros_(p)
                else:
                    torch.nn.init.normal_(p, mean=0.0, std=proj_std)

    @staticmethod
    def _init_weights(module: nn.Module, std: float) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=std)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | torch.Tensor | None = None
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy against ``targets`` when given.

        ``input_pos`` is the position of ``idx[:, 0]`` when decoding with a KV cache (see ``set_kv_cache``): one
        int for the batch, or a tensor (B,) of each row's own position for one new token per row (``idx`` (B, 1)).
        With ``loss_chunk_size`` set and targets given, the logits are never built and None is returned in their
        place.
        """
        B, T = idx.size()
        if isinstance(input_pos, torch.Tensor):
            end = int(input_pos.max()) + T if input_pos.numel() else T
        else:
            end = (input_pos or 0) + T
        if T > self.config.block_size or (end > self.config.block_size and not self.decodes_past_block(T)):
            raise ValueError(f"sequence of length {end} is longer than block_size {self.config.block_size}")
        if self.config.bigram:
            logits = self.transformer.wte(idx)  # (B, T, vocab_size)
        else:
            x = self._hidden(idx, input_pos)  # (B, T, n_embd)
            if targets is not None and self.loss_chunk_size > 0:
                if self.config.logit_softcap:
                    raise ValueError("loss_chunk_size does not soft-cap the logits: turn one of them off")
                return None, linear_cross_entropy(x, self.lm_head.weight, targets, self.loss_chunk_size)
            logits = self.lm_head(x)  # (B, T, vocab_size)
            if cap := self.config.logit_softcap:
                logits = cap * torch.tanh(logits / cap)
        if targets is None:
            return logits, None
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def _hidden(self, idx: torch.Tensor, input_pos: int | torch.Tensor | None) -> torch.Tensor:
        T = idx.size(1)
        if isinstance(input_pos, torch.Tensor):  # one token per row, each at its own position
            pos = input_pos[:, None]  # (B, 1)
        else:
            start = input_pos or 0
            pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        x = self.transformer.wte(idx)  # (B, T, n_embd)
        rope = None
        if self.config.position == "rotary":
            hs = self.config.n_embd // self.config.n_head
            rope = rotary_angles(pos.flatten(), hs, self.config.rope_base)  # (T, hs/2), or (B, hs/2) per row
            if pos.dim() == 2:
                rope = tuple(r[:, None, None, :] for r in rope)  # (B, 1, 1, hs/2) against (B, nh, 1, hs/2)
        else:
            x = x + self.transformer.wpe(pos)  # (T, n_embd) broadcast over the batch, or (B, 1, n_embd)
        x = self.transformer.drop(x)
        for block in self.transformer.h:
            x = block(x, input_pos, rope)
        return self.transformer.ln_f(x)  # (B, T, n_embd)

    def decodes_past_block(self, T: int = 1) -> bool:
        """Whether ``T`` new tokens may be decoded at positions past ``block_size``. A rotary model with a KV cache,
        one token at a time: a rotary score depends only on the distance between query and key, which stays under
        ``block_size`` in the cache's ring of the last ``block_size`` tokens, so each new token sees the whole window
        with nothing re-read. Learned positions are tied to the window's slots: their window must be rebuilt."""
        return (
            T == 1
            and self.config.position == "rotary"
            and any(block.attn.kv_cache is not None for block in self.transformer.h)
        )

    def set_kv_cache(self, batch_size: int | None, device=None, dtype=None) -> None:
        """Allocate a KV cache of ``block_size`` positions for ``batch_size`` sequences; ``None`` removes it."""
        hs = self.config.n_embd // self.config.n_head
        if device is None or dtype is None:
            ref = next(self.parameters())
            device, dtype = device or ref.device, dtype or ref.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = (
                None
                if batch_size is None
                else KVCache(batch_size, self.config.n_head, self.config.block_size, hs, device, dtype)
            )

    @contextmanager
    def kv_cache_rows(self, start: int, stop: int, length: int | None = None) -> Iterator[None]:
        """Within the block, every layer's cache is rows ``start:stop`` and the first ``length`` positions of the
        current one (the same memory): a server prefills a new sequence into its own row, or decodes only the rows
        and positions in use. ``length`` must exceed every position written, unless it is the whole cache's (the
        ring's slots are positions modulo the cache's length)."""
        caches = [block.attn.kv_cache for block in self.transformer.h]
        if any(cache is None for cache in caches):
            raise ValueError("kv_cache_rows needs a KV cache: call set_kv_cache first")
        for block, cache in zip(self.transformer.h, caches, strict=True):
            block.attn.kv_cache = cache.rows(start, stop, length)
        try:
            yield
        finally:
            for block, cache in zip(self.transformer.h, caches, strict=True):
                block.attn.kv_cache = cache

    def move_kv_cache_row(self, src: int, dst: int) -> None:
        """Copy every layer's cached row ``src`` into row ``dst``."""
        for block in self.transformer.h:
            block.attn.kv_cache.move_row(src, dst)

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. Position embeddings are left out by default, as in the scaling-law papers; the token
        embedding stays in because it is tied to (and does the work of) the output layer."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6N for the weights plus the attention scores, as in the
        PaLM paper's appendix B and nanoGPT's ``estimate_mfu``."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params() + 12 * len(self.transformer.h) * cfg.n_embd * T
