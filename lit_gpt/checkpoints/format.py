"""What a lit-gpt checkpoint holds beyond Lightning's own keys, written and read in one place.

A Lightning checkpoint gets a plain-data ``lit_gpt`` section: the model config and the tokenizer, so a checkpoint
alone rebuilds the model and turns ids into text, and loads with ``weights_only=True``. Its ``state_dict`` holds the
LightningModule's names (``model.`` prefixes, ``_orig_mod.`` of a compiled model, LoRA adapters, the validation
metric's state); ``plain_state_dict`` turns them into a plain ``GPT``'s.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch

from lit_gpt.errors import LitGPTError
from lit_gpt.lora import merge_lora_state
from lit_gpt.model import GPTConfig
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.tokenizer_spec import tokenizer_from_dict

CHECKPOINT_KEY = "lit_gpt"  # our plain-data section of a Lightning checkpoint
SHAPE_FIELDS = ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "bias")  # what weights must agree on
# The block's layout (lecture steps, modern block): checked on load, with the defaults filling older checkpoints.
BLOCK_FIELDS = (
    "bigram", "projections", "norm", "mlp", "mlp_hidden", "tie_weights", "position", "qk_norm", "logit_softcap",
)  # fmt: skip


def section(config: GPTConfig, tokenizer: Tokenizer | None) -> dict[str, Any]:
    """The ``lit_gpt`` section for a model of ``config`` trained with ``tokenizer``."""
    return {"model_config": asdict(config), "tokenizer": tokenizer.to_dict() if tokenizer is not None else None}


def read_section(checkpoint: Any, where: str, hint: str = "") -> dict[str, Any]:
    """The ``lit_gpt`` section of a loaded checkpoint (``where`` names it in the error), or one line saying it is
    not a lit-gpt checkpoint (``hint`` says what else would do)."""
    saved = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or "model_config" not in saved:
        raise LitGPTError(f"{where} is not a lit-gpt checkpoint (it has no '{CHECKPOINT_KEY}' section){hint}")
    return saved


def saved_config(saved: dict[str, Any], where: str) -> GPTConfig:
    """The model config of a ``lit_gpt`` section; the defaults fill the fields older checkpoints lack."""
    try:
        return GPTConfig(**saved["model_config"])
    except (TypeError, ValueError) as e:
        raise LitGPTError(f"{where} has an unreadable model config ({e}); use an earlier checkpoint") from None


def saved_tokenizer(saved: dict[str, Any], where: str) -> Tokenizer | None:
    """The tokenizer of a ``lit_gpt`` section, None if the run had none."""
    if not saved.get("tokenizer"):
        return None
    try:
        return tokenizer_from_dict(saved["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise LitGPTError(f"{where} holds a tokenizer lit-gpt cannot read ({e}); use an earlier checkpoint") from None


def plain_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A LightningModule's state dict as a plain ``GPT``'s: no ``model.`` or ``_orig_mod.`` in the names, no metric
    state, and a LoRA run's adapters merged into its weights."""
    state = {k.removeprefix("model.").replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    return merge_lora_state({k: v for k, v in state.items() if not k.startswith("val_")})


def shape_differences(saved: GPTConfig, current: Any, fields: tuple[str, ...], skip_empty: bool = True) -> list[str]:
    """``"n_layer is 2 in the checkpoint but 3 here"`` for each of ``fields`` where ``current`` (a GPTConfig or a
    parsed config section) differs from the checkpoint's config. With ``skip_empty`` a field ``current`` leaves
    empty (None: not chosen yet, e.g. a vocabulary taken from the data) is not compared."""
    get = current.get if hasattr(current, "get") else lambda k, d=None: getattr(current, k, d)
    return [
        f"{k} is {getattr(saved, k)} in the checkpoint but {get(k, None)} here"
        for k in fields
        if not (skip_empty and get(k, None) is None) and getattr(saved, k) != get(k, None)
    ]
