"""A GPT language model in plain PyTorch, readable in one sitting.

Parameter names and shapes follow nanoGPT's ``model.py`` and Hugging Face's GPT-2, so their checkpoints load with a
short list of renames (none for nanoGPT, a transpose of the Conv1D weights for HF). This file imports no Lightning:
parallelism, compilation and precision are applied from outside by the Trainer.

References: Karpathy's "Let's build GPT" lecture and nanoGPT; OpenAI's GPT-2 (Radford et al., 2019).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
from torch.nn import functional as F


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
    if not problems and config.n_embd % config.n_head != 0:
        problems.append(f"n_embd ({config.n_embd}) must be divisible by n_head ({config.n_head})")
    return problems


class KVCache(nn.Module):
    """Keys and values of the tokens seen so far, pre-allocated for ``max_len`` positions."""

    def __init__(self, batch_size: int, n_head: int, max_len: int, head_size: int, device, dtype) -> None:
        super().__init__()
        shape = (batch_size, n_head, max_len, head_size)
        # Not persistent: a cache is scratch space and must never land in a checkpoint.
        self.register_buffer("k", torch.zeros(shape, device=device, dtype=dtype), persistent=False)
        self.register_buffer("v", torch.zeros(shape, device=device, dtype=dtype), persistent=False)

    def update(self, pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        T = k.size(2)
        self.k[:, :, pos : pos + T] = k
        self.v[:, :, pos : pos + T] = v
        return self.k[:, :, : pos + T], self.v[:, :, : pos + T]


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        # key, query, value projections for all heads, in one matmul
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)
        # output projection back into the residual stream
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.n_head = config.n_head
        self.n_embd = config.n_embd
        self.dropout = config.dropout
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        B, T, C = x.size()  # batch, sequence length, embedding width (n_embd)
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        hs = C // self.n_head
        q = q.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_head, hs).transpose(1, 2)  # (B, nh, T, hs)
        # A query of one new token may see every cached key; a longer chunk needs the causal mask.
        is_causal = True
        if input_pos is not None and self.kv_cache is not None:
            if T > 1 and input_pos != 0:
                raise ValueError("with a KV cache, a chunk of several tokens must start at position 0")
            k, v = self.kv_cache.update(input_pos, k, v)  # (B, nh, input_pos + T, hs)
            is_causal = T > 1
        # Flash / memory-efficient attention kernels where the device has them.
        dropout_p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=is_causal)  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # re-assemble all head outputs side by side
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: tokens communicate (attention), then compute (MLP)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.attn = CausalSelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd, bias=config.bias)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, input_pos: int | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), input_pos)
        x = x + self.mlp(self.ln_2(x))
        return x


class GPT(nn.Module):
    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("GPTConfig.vocab_size must be set before building the model")
        self.config = config
        self.transformer = nn.ModuleDict(
            dict(
                wte=nn.Embedding(config.vocab_size, config.n_embd),
                wpe=nn.Embedding(config.block_size, config.n_embd),
                drop=nn.Dropout(config.dropout),
                h=nn.ModuleList([Block(config) for _ in range(config.n_layer)]),
                ln_f=nn.LayerNorm(config.n_embd, bias=config.bias),
            )
        )
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        # Weight tying (Press & Wolf, 2017): the output layer reads tokens the way the input embeds them.
        self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        # GPT-2: scale residual projections by 1/sqrt(2 * n_layer) so the residual stream's variance does not grow
        # with depth (two residual branches per block).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                torch.nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            torch.nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, input_pos: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits for every position, and the mean cross-entropy against ``targets`` when given.

        ``input_pos`` is the position of ``idx[:, 0]`` when decoding with a KV cache (see ``set_kv_cache``).
        """
        B, T = idx.size()
        start = input_pos or 0
        if start + T > self.config.block_size:
            raise ValueError(f"sequence of length {start + T} is longer than block_size {self.config.block_size}")
        pos = torch.arange(start, start + T, dtype=torch.long, device=idx.device)  # (T,)
        tok_emb = self.transformer.wte(idx)  # (B, T, n_embd)
        pos_emb = self.transformer.wpe(pos)  # (T, n_embd)
        x = self.transformer.drop(tok_emb + pos_emb)
        for block in self.transformer.h:
            x = block(x, input_pos)
        x = self.transformer.ln_f(x)
        if targets is None:
            return self.lm_head(x), None  # (B, T, vocab_size)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def set_kv_cache(self, batch_size: int | None, device=None, dtype=None) -> None:
        """Allocate a KV cache of ``block_size`` positions for ``batch_size`` sequences; ``None`` removes it."""
        hs = self.config.n_embd // self.config.n_head
        if device is None or dtype is None:
            ref = self.lm_head.weight
            device, dtype = device or ref.device, dtype or ref.dtype
        for block in self.transformer.h:
            block.attn.kv_cache = (
                None
                if batch_size is None
                else KVCache(batch_size, self.config.n_head, self.config.block_size, hs, device, dtype)
            )

    def num_params(self, non_embedding: bool = True) -> int:
        """Parameter count. Position embeddings are left out by default, as in the scaling-law papers; the token
        embedding stays in because it is tied to (and does the work of) the output layer."""
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
        return n

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs (forward + backward) per token: 6N for the weights plus the attention scores, as in the
        PaLM paper's appendix B and nanoGPT's ``estimate_mfu``."""
        cfg = self.config
        T = seq_len or cfg.block_size
        return 6 * self.num_params() + 12 * cfg.n_layer * cfg.n_embd * T
