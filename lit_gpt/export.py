"""``lit-gpt export``: a trained checkpoint -> a folder of weights that other tools (and init_from) load.

- ``--format hf``: ``config.json`` + ``model.safetensors`` in Hugging Face GPT-2's layout (Conv1D weights
  transposed), which ``transformers.GPT2LMHeadModel.from_pretrained(DIR)`` loads with the same logits; plus the
  tokenizer as ``tokenizer.json`` + ``tokenizer_config.json``, which ``AutoTokenizer`` loads with lit-gpt's ids (a
  char vocabulary as single-character tokens, joined with nothing between). Only GPT-2's block exports this way;
  an untied output layer (``tie_weights: false``) is written as ``lm_head.weight`` with ``tie_word_embeddings:
  false``, and an MLP width other than 4 x n_embd as ``n_inner``, both of which transformers honours.
- ``--format safetensors``: lit-gpt's own parameter names, any architecture.
- ``--format nanogpt``: nanoGPT's ``ckpt.pt`` (and ``meta.pkl``), see ``lit_gpt.nanogpt``.

hf and safetensors write ``lit_gpt.json`` (the model config and the tokenizer), so ``--model.init_from DIR`` and
``generate`` get the exact model back. LoRA adapters are merged into the plain weights. Nothing is written half:
the folder is built under a temporary name and renamed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Literal, get_args

import torch

from lit_gpt import nanogpt
from lit_gpt.errors import LitGPTError
from lit_gpt.init_from import CONV1D, LIT_META, check_weights, load_pretrained
from lit_gpt.model import GPT, GPTConfig, mlp_hidden_size
from lit_gpt.tokenizer import Tokenizer

ExportFormat = Literal["hf", "safetensors", "nanogpt"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)
# lit-gpt's MLP -> transformers' activation_function: exact GELU, GPT-2's tanh approximation, ReLU.
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def hf_problems(config: GPTConfig) -> list[str]:
    """What keeps a config from being a Hugging Face GPT-2."""
    problems = []
    if config.bigram:
        problems.append("a bigram model")
    for name, want in (("residual", True), ("projections", True), ("norm", "layernorm"), ("position", "learned")):
        if getattr(config, name) != want:
            problems.append(f"{name} is {getattr(config, name)!r} (GPT-2: {want!r})")
    if config.mlp not in HF_ACTIVATION:
        problems.append(f"mlp is {config.mlp!r} (GPT-2: 'gelu')")
    if config.qk_norm:
        problems.append("qk_norm is on")
    if config.logit_softcap:
        problems.append("logit_softcap is on")
    return problems


def to_hf(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """lit-gpt names and ``nn.Linear`` layout -> GPT2LMHeadModel's. A tied output layer is left to transformers'
    weight tying; an untied one is written (``hf_config`` says it is untied)."""
    out = {}
    for key, value in state.items():
        if key == "lm_head.weight" and config.tie_weights:
            continue
        out[key] = value.t().contiguous() if key.endswith(CONV1D) else value.contiguous()
    if not config.bias:  # GPT-2 always has biases: zeros give the same function
        hidden = mlp_hidden_size(config)
        for i in range(config.n_layer):
            p = f"transformer.h.{i}."
            widths = {"ln_1": config.n_embd, "ln_2": config.n_embd, "attn.c_attn": 3 * config.n_embd}
            widths |= {"attn.c_proj": config.n_embd, "mlp.c_fc": hidden, "mlp.c_proj": config.n_embd}
            for name, width in widths.items():
                out[p + name + ".bias"] = torch.zeros(width, dtype=state["transformer.wte.weight"].dtype)
        out["transformer.ln_f.bias"] = torch.zeros(config.n_embd, dtype=state["transformer.wte.weight"].dtype)
    return out


def hf_config(config: GPTConfig, eot_id: int | None) -> dict:
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_ctx": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        # GPT-2's empty n_inner is 4 x n_embd.
        "n_inner": None if mlp_hidden_size(config) == 4 * config.n_embd else mlp_hidden_size(config),
        "activation_function": HF_ACTIVATION[config.mlp],
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "tie_word_embeddings": config.tie_weights,
        "bos_token_id": eot_id,
        "eos_token_id": eot_id,
        "torch_dtype": "float32",
    }


def export(*, checkpoint: str, out: str, format: ExportFormat = "hf", meta: str | None = None) -> None:
    """Write a checkpoint's weights for Hugging Face transformers (hf), lit-gpt (safetensors) or nanoGPT (nanogpt).

    Args:
        checkpoint: A lit-gpt .ckpt, a run folder (its newest last.ckpt), a sharded checkpoint folder or an
            exported folder.
        out: The folder to write (created; an existing one is replaced only if it holds an earlier export).
        format: 'hf': config.json + model.safetensors for transformers' GPT2LMHeadModel (GPT-2's block only);
            'safetensors': lit-gpt's parameter names, for any architecture; 'nanogpt': ckpt.pt (and meta.pkl for a
            char model) that nanoGPT's sample.py --init_from=resume --out_dir=OUT samples from (GPT-2's block with
            exact GELU and a tied output layer; a char or GPT-2 tokenizer).
        meta: A nanoGPT checkpoint's meta.pkl, when it is not where lit-gpt looks (see generate --help).
    """
    if format not in FORMATS:
        raise LitGPTError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    target = Path(out).expanduser()
    earlier = target.is_dir() and ((target / LIT_META).is_file() or _is_nanogpt_export(target))
    if target.is_file() or (target.is_dir() and any(target.iterdir()) and not earlier):
        raise LitGPTError(f"--out {out!r} exists and is not an earlier export: give a new folder")
    pre = load_pretrained(checkpoint, flag="--checkpoint", meta=meta)
    config, tokenizer = pre.config, pre.tokenizer
    state = {**pre.state}
    with torch.device("meta"):  # the names and shapes only: no memory for a second copy of the weights
        expected = GPT(config).state_dict()
    if config.tie_weights and "lm_head.weight" in expected:
        expected = {k: v for k, v in expected.items() if k != "lm_head.weight"}  # the weights hold it once, as wte
    check_weights(pre, state, expected)  # an incomplete folder is refused here, not written out again
    if format == "nanogpt":
        problems = nanogpt.nanogpt_problems(config) + [p for p in [nanogpt.tokenizer_problem(tokenizer)] if p]
        if problems:
            raise LitGPTError(
                "nanoGPT's model.py cannot hold this model (" + "; ".join(problems) + "): export it with --format "
                "safetensors or hf"
            )
        _write_folder(target, lambda tmp: nanogpt.write(tmp, state, config, tokenizer, target))
        print(f"wrote {target} (nanogpt: ckpt.pt{' and meta.pkl' if (target / 'meta.pkl').is_file() else ''})")
        return
    if format == "hf":
        problems = hf_problems(config)
        if problems:
            raise LitGPTError(
                "this model is not a GPT-2 that transformers can load (" + "; ".join(problems) + "): export it "
                "with --format safetensors"
            )
        state = to_hf(state, config)
    _write_folder(target, lambda tmp: _fill(tmp, state, config, tokenizer, format))
    n = sum(v.numel() for v in pre.state.values())
    print(f"wrote {target} ({format}: {n:,} weights, {config.n_layer} layers, vocab {config.vocab_size})")
    if format == "hf":  # what a model finetuned from GPT-2 may have changed: the context it was trained with
        print(f"config.json: n_positions {config.block_size}, activation_function {HF_ACTIVATION[config.mlp]}")


def _is_nanogpt_export(folder: Path) -> bool:
    """A folder that an earlier ``--format nanogpt`` wrote: ckpt.pt, and meta.pkl for a char model."""
    names = {f.name for f in folder.iterdir()}
    return "ckpt.pt" in names and names <= {"ckpt.pt", "meta.pkl"}


def _write_folder(target: Path, fill: Callable[[Path], None]) -> None:
    """Build a folder under a temporary name with ``fill`` and rename it to ``target`` (replacing an earlier
    export): a reader, or a kill, never sees half an export."""
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        fill(tmp)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fill(
    tmp: Path, state: dict[str, torch.Tensor], config: GPTConfig, tokenizer: Tokenizer | None, format: str
) -> None:
    """The files of an hf or safetensors export."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in state.items()}, tmp / "model.safetensors", metadata={"format": "pt"})
    meta = {
        "format": format,
        "model_config": asdict(config),
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
    }
    (tmp / LIT_META).write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")
    if format == "hf":
        eot = tokenizer.eot_id if tokenizer is not None else None
        (tmp / "config.json").write_text(json.dumps(hf_config(config, eot), indent=1), encoding="utf-8")
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(tmp / "tokenizer.json")
        if format == "hf":  # AutoTokenizer then reads tokenizer.json as it is, and decodes without clean-up
            tokenizer_config = {
                "tokenizer_class": "PreTrainedTokenizerFast",
                "model_max_length": config.block_size,
                "clean_up_tokenization_spaces": False,
            }
            if tokenizer.eot_id is not None:
                tokenizer_config["eos_token"] = tokenizer.decode([tokenizer.eot_id])
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=1), encoding="utf-8")
