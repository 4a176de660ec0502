"""``--model.init_from PATH``: start training from pretrained weights (weights only: fresh optimizer, step 0).

PATH may be
- a lit-gpt checkpoint: a Lightning ``.ckpt`` file, a sharded (FSDP) checkpoint folder, or a run folder (its newest
  ``last.ckpt``); a LoRA run's adapters are merged in;
- a folder written by ``lit-gpt export`` (``lit_gpt.json`` next to ``model.safetensors``), either format;
- a Hugging Face GPT-2 folder (``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``), e.g. a download
  of gpt2 or gpt2-medium. Its Conv1D weights are transposed into ``nn.Linear`` layout, as nanoGPT's
  ``from_pretrained`` does;
- a Hub name, ``gpt2`` ... ``gpt2-xl`` or ``hf:OWNER/REPO``, downloaded once into the Hub's cache (``lit_gpt.hub``);
- a nanoGPT ``ckpt.pt`` or its ``out_dir``, with the char vocabulary of its data's ``meta.pkl`` or GPT-2's BPE
  (``lit_gpt.nanogpt``).

The weights bring their architecture and their tokenizer: the model's shape comes from PATH (``model.config`` only
picks ``block_size`` (at most PATH's), ``dropout``, and a larger ``vocab_size`` to pad to, e.g. GPT-2's 50,257 to
50,304; padded rows start as the mean embedding (and the mean output row, for an untied output layer), as
transformers' ``resize_token_embeddings`` does, so they take little probability; any other ``model.config`` key set
to something else is an error, see ``architecture_conflicts``), and the data is tokenized with PATH's tokenizer (see
``data_tokenizer``). Nothing is ever unpickled beyond tensors: ``torch.load(weights_only=True)`` or safetensors.
A damaged or incomplete file ends in one ``LitGPTError`` naming it and how to get a good copy.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch

from lit_gpt import nanogpt
from lit_gpt.bpe import HFTokenizer
from lit_gpt.checkpoints.format import plain_state_dict, read_section
from lit_gpt.checkpoints.read import load_raw, resolve_checkpoint
from lit_gpt.errors import LitGPTError, first_line
from lit_gpt.hub import hub_repo, resolve
from lit_gpt.model import GPT, GPTConfig, mlp_hidden_size
from lit_gpt.tokenizer import Tokenizer
from lit_gpt.tokenizer_spec import tokenizer_from_dict

LIT_META = "lit_gpt.json"  # written by lit-gpt export next to model.safetensors: format, model config, tokenizer
CONV1D = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")  # HF's (in, out)
FROM_CONFIG = ("vocab_size", "block_size", "dropout")  # what model.config still picks with init_from
# What --model.init_from (and export's or generate's --checkpoint) takes, for the "does not exist" messages.
WHAT_LOADS = (
    "a .ckpt or run folder, an exported folder, a GPT-2 folder or a Hub name (gpt2, gpt2-medium, gpt2-large, "
    "gpt2-xl, hf:OWNER/REPO) or a nanoGPT ckpt.pt"
)


@dataclass
class Pretrained:
    """Weights in lit-gpt's names, their config and tokenizer. A tied output layer (``config.tie_weights``) is left
    out (it is ``transformer.wte``); an untied one is kept as ``lm_head.weight``."""

    state: dict[str, torch.Tensor]
    config: GPTConfig
    tokenizer: Tokenizer | None
    origin: str


def load_pretrained(path: str | Path, flag: str = "--model.init_from", meta: str | None = None) -> Pretrained:
    """Read any supported PATH or Hub name (see the module docstring); ``flag`` is the option that gave it, for the
    error messages; ``meta`` is a nanoGPT checkpoint's meta.pkl, when it is not where ``lit_gpt.nanogpt`` looks."""
    p = resolve(str(path))
    if not p.exists():
        raise LitGPTError(f"{flag} {str(path)!r} does not exist: give {WHAT_LOADS}")
    stamp = max((f.stat().st_mtime_ns for f in ([p] if p.is_file() else p.iterdir())), default=0)
    pre = _load_cached(str(p.resolve()), stamp, meta)
    return replace(pre, origin=f"{path} (Hugging Face Hub)") if hub_repo(str(path)) else pre


@functools.lru_cache(maxsize=1)  # the CLI reads the tokenizer, then the model its weights: one read
def _load_cached(path: str, stamp: int, meta: str | None) -> Pretrained:
    p = Path(path)
    if p.is_dir() and (p / LIT_META).is_file():
        return _read_export(p)
    if p.is_dir() and (p / "config.json").is_file():
        return _read_hf(p)
    return _read_checkpoint(p, meta)


def _read_checkpoint(path: Path, meta: str | None = None) -> Pretrained:
    ckpt = load_raw(path)
    if nanogpt.is_nanogpt(ckpt):
        file = resolve_checkpoint(path)
        config = nanogpt.config_from(ckpt, str(file))
        tokenizer = nanogpt.tokenizer_for(file, ckpt, config.vocab_size, meta)
        return Pretrained(_output_layer(nanogpt.state_from(ckpt), config), config, tokenizer, f"nanoGPT {file}")
    saved = read_section(
        ckpt,
        repr(str(path)),
        f", an exported folder (with {LIT_META}) or a Hugging Face GPT-2 folder (with config.json)",
    )
    fix = "train or convert it again"
    config = _config(saved.get("model_config"), f"checkpoint {path}", fix)
    tokenizer = _tokenizer(saved.get("tokenizer"), f"checkpoint {path}", fix)
    state = plain_state_dict(ckpt["state_dict"])
    return Pretrained(_output_layer(state, config), config, tokenizer, f"lit-gpt checkpoint {path}")


def _read_export(folder: Path) -> Pretrained:
    fix = _fix(folder)
    meta = _read_json(folder / LIT_META, fix)
    config = _config(meta.get("model_config"), str(folder / LIT_META), fix)
    state = _read_weights(folder)
    if meta.get("format") == "hf":
        state = _from_hf(state)
        if not config.bias:  # the export wrote zero biases for transformers
            state = {k: v for k, v in state.items() if not k.endswith(".bias")}
    tokenizer = _tokenizer(meta.get("tokenizer"), str(folder / LIT_META), fix)
    return Pretrained(_output_layer(state, config), config, tokenizer, f"lit-gpt export {folder}")


def _fix(folder: Path) -> str:
    """How to get a good copy of ``folder`` again, for the error messages."""
    if (folder / LIT_META).is_file():
        return "export the checkpoint again with lit-gpt export"
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith("models--"):  # the Hub's cache
        return f"delete {folder.parent.parent} and run again to download the model afresh"
    return "download the complete folder again (e.g. with huggingface-cli download, or save_pretrained)"


def _read_json(file: Path, fix: str) -> dict[str, Any]:
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8 (a half-written or overwritten file)
        raise LitGPTError(f"{file} is damaged ({first_line(e)}): {fix}") from None
    if not isinstance(data, dict):
        raise LitGPTError(f"{file} is damaged (it holds a JSON {type(data).__name__}, not an object): {fix}")
    return data


def _config(fields_: Any, where: str, fix: str) -> GPTConfig:
    if not isinstance(fields_, dict):
        raise LitGPTError(f"{where} has no model config: {fix}")
    try:
        return GPTConfig(**fields_)
    except (TypeError, ValueError) as e:  # an unknown key (a newer lit-gpt?) or a bad value
        raise LitGPTError(f"{where} holds a model config lit-gpt cannot build ({first_line(e)}): {fix}") from None


def _tokenizer(saved: Any, where: str, fix: str) -> Tokenizer | None:
    if not saved:
        return None
    try:
        return tokenizer_from_dict(saved)
    except (KeyError, TypeError, ValueError) as e:
        raise LitGPTError(f"{where} holds a tokenizer lit-gpt cannot read ({first_line(e)}): {fix}") from None


def _read_hf(folder: Path) -> Pretrained:
    fix = _fix(folder)
    cfg = _read_json(folder / "config.json", fix)
    missing = [k for k in ("vocab_size", "n_layer", "n_head", "n_embd") if k not in cfg]
    if missing and cfg.get("model_type", "gpt2") == "gpt2":
        raise LitGPTError(f"{folder}/config.json has no {', '.join(missing)}: it is incomplete; {fix}")
    problems = []
    if cfg.get("model_type") != "gpt2":
        problems.append(f"model_type is {cfg.get('model_type')!r}; only GPT-2 (model_type 'gpt2') folders load")
    act = cfg.get("activation_function", "gelu_new")
    if act not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu"):
        problems.append(f"activation_function {act!r} is not supported (gelu, gelu_new or relu)")
    if abs(cfg.get("layer_norm_epsilon", 1e-5) - 1e-5) > 1e-12:
        problems.append(f"layer_norm_epsilon is {cfg['layer_norm_epsilon']}; lit-gpt's LayerNorm uses 1e-5")
    for flag in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        if cfg.get(flag):
            problems.append(f"{flag} is not supported")
    if cfg.get("scale_attn_weights") is False:
        problems.append("scale_attn_weights false is not supported")
    if problems:
        raise LitGPTError(f"{folder}/config.json: " + "; ".join(problems))
    # gelu_new, gelu_pytorch_tanh and gelu_fast are one formula, the tanh approximation GPT-2 was trained with.
    n_inner = cfg.get("n_inner")
    fields_ = {
        "vocab_size": cfg["vocab_size"],
        "block_size": cfg.get("n_positions", 1024),
        "n_layer": cfg["n_layer"],
        "n_head": cfg["n_head"],
        "n_embd": cfg["n_embd"],
        "bias": True,
        "mlp": {"gelu": "gelu", "relu": "relu"}.get(act, "gelu_tanh"),
        # HF's n_inner (empty: 4 x n_embd) is the MLP's hidden width; the default stays empty, as lit-gpt's does.
        "mlp_hidden": n_inner if n_inner is not None and n_inner != 4 * cfg["n_embd"] else None,
        "tie_weights": cfg.get("tie_word_embeddings", True) is not False,  # transformers ties unless told not to
    }
    config = _config(fields_, f"{folder}/config.json", fix)
    state = _output_layer(_from_hf(_read_weights(folder)), config)
    return Pretrained(state, config, _hf_tokenizer(folder), f"GPT-2 {folder}")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    def load(file: Path) -> dict[str, torch.Tensor]:
        try:
            return load_file(file)
        except (SafetensorError, OSError) as e:  # cut short (an interrupted copy or download), or overwritten
            raise LitGPTError(f"{file} is damaged or incomplete ({first_line(e)}): {_fix(folder)}") from None

    if (folder / "model.safetensors").is_file():
        return load(folder / "model.safetensors")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _read_json(index, _fix(folder)).get("weight_map")
        if not isinstance(weight_map, dict):
            raise LitGPTError(f"{index} has no weight_map: it is damaged; {_fix(folder)}")
        return {k: v for f in sorted(set(weight_map.values())) for k, v in load(folder / f).items()}
    if (folder / "pytorch_model.bin").is_file():
        try:
            return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        except Exception as e:
            raise LitGPTError(
                f"refused to load {folder}/pytorch_model.bin: {str(e).splitlines()[0]} (only plain tensors load)"
            ) from None
    raise LitGPTError(f"{folder} has no model.safetensors or pytorch_model.bin")


def _from_hf(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face GPT2LMHeadModel names and Conv1D layout -> lit-gpt's (``lm_head.weight`` kept as it is, for
    ``_output_layer`` to keep or drop)."""
    out = {}
    for key, value in hf.items():
        if key.endswith((".attn.bias", ".attn.masked_bias")):
            continue  # the causal-mask buffers of old checkpoints
        if key == "lm_head.weight":
            out[key] = value
            continue
        name = key.removeprefix("transformer.")
        out["transformer." + name] = value.t().contiguous() if name.endswith(CONV1D) else value
    return out


def _output_layer(state: dict[str, torch.Tensor], config: GPTConfig) -> dict[str, torch.Tensor]:
    """A tied output layer is the token embedding: keep one copy (``transformer.wte.weight``). An untied one is a
    trained matrix of its own: keep it (``build_model`` reports it if it is missing)."""
    if not config.tie_weights:
        return state
    if "transformer.wte.weight" not in state and "lm_head.weight" in state:
        state["transformer.wte.weight"] = state["lm_head.weight"]
    return {k: v for k, v in state.items() if k != "lm_head.weight"}


def _hf_tokenizer(folder: Path) -> Tokenizer | None:
    if (folder / "tokenizer.json").is_file():
        return HFTokenizer.from_file(folder / "tokenizer.json")
    if (folder / "vocab.json").is_file() and (folder / "merges.txt").is_file():  # the slow tokenizer's files
        from tokenizers import ByteLevelBPETokenizer

        bpe = ByteLevelBPETokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
        return HFTokenizer(bpe._tokenizer.to_str())
    return None


def architecture_conflicts(pre: Pretrained, wanted: Any) -> list[str]:
    """The ``model.config`` keys (of a GPTConfig or a parsed config section) that ask for another architecture than
    the pretrained model's. A value equal to GPTConfig's default counts as not set: the parsed config cannot tell
    a default from a user's choice, and the pretrained model's architecture wins either way."""
    get = wanted.get if hasattr(wanted, "get") else lambda k, d=None: getattr(wanted, k, d)
    src = pre.config
    problems = []
    for f in fields(GPTConfig):
        if f.name in FROM_CONFIG or f.name == "init":  # loaded weights replace the initialisation: any is fine
            continue
        value, theirs = get(f.name, f.default), getattr(src, f.name)
        if value == f.default or value == theirs:
            continue
        if f.name == "mlp_hidden" and isinstance(value, int) and value == mlp_hidden_size(src):
            continue  # the width PATH has anyway, spelt out
        problems.append(f"model.config.{f.name} {_shown(value)} conflicts with {pre.origin}'s {_shown(theirs)}")
    return problems


def _refuse_conflicts(conflicts: list[str]) -> None:
    if conflicts:
        drop = "drop the option" if len(conflicts) == 1 else "drop these options"
        raise LitGPTError("; ".join(conflicts) + f": the architecture comes from --model.init_from; {drop}")


def _shown(value: Any) -> str:
    """A value as it is written on the command line."""
    if value is None:
        return "null"
    return str(value).lower() if isinstance(value, bool) else str(value)


def target_config(pre: Pretrained, wanted: GPTConfig, data_vocab: int | None = None) -> GPTConfig:
    """The config to build: PATH's architecture with ``wanted``'s block_size, dropout and (larger) vocab_size. Any
    other key of ``wanted`` that asks for something else is an error (``architecture_conflicts``)."""
    src = pre.config
    _refuse_conflicts(architecture_conflicts(pre, wanted))
    vocab = wanted.vocab_size or src.vocab_size
    problems = []
    if vocab < src.vocab_size:
        problems.append(f"model.config.vocab_size {vocab} is smaller than the pretrained vocabulary ({src.vocab_size})")
    elif vocab != src.vocab_size and src.bigram:
        problems.append("a bigram model's vocabulary cannot be padded")
    if data_vocab is not None and data_vocab > vocab:
        problems.append(f"the data's tokenizer has {data_vocab} tokens but the pretrained model only {vocab}")
    if wanted.block_size > src.block_size and src.position == "learned" and not src.bigram:
        problems.append(
            f"model.config.block_size {wanted.block_size} is longer than the pretrained model's {src.block_size} "
            f"(it has no position embeddings beyond): use --model.config.block_size {src.block_size} or less"
        )
    if problems:
        raise LitGPTError(f"cannot initialise from {pre.origin}: " + "; ".join(problems))
    return replace(src, vocab_size=vocab, block_size=wanted.block_size, dropout=wanted.dropout)


@torch.no_grad()
def build_model(pre: Pretrained, config: GPTConfig) -> GPT:
    """A ``GPT`` of ``config`` (from ``target_config``) holding the pretrained weights."""
    model = GPT(config)
    state = dict(pre.state)
    for key in ("transformer.wte.weight", "lm_head.weight"):  # an untied output layer is padded like the embedding
        rows = state.get(key)
        if rows is not None and rows.size(0) < config.vocab_size:  # pad: new rows are the mean row
            extra = rows.float().mean(0, keepdim=True).expand(config.vocab_size - rows.size(0), -1).to(rows.dtype)
            state[key] = torch.cat([rows, extra])
    wpe = state.get("transformer.wpe.weight")
    if wpe is not None and wpe.size(0) > config.block_size:  # a shorter context: the first positions (nanoGPT's crop)
        state["transformer.wpe.weight"] = wpe[: config.block_size]
    if model.lm_head is not None and config.tie_weights:
        state["lm_head.weight"] = state.get("transformer.wte.weight")
    expected = model.state_dict()
    check_weights(pre, state, expected)
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)
    return model


def check_weights(pre: Pretrained, state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    """Raise one ``LitGPTError`` unless ``state`` has exactly the names and shapes of ``expected`` (a model's
    ``state_dict``, on any device, "meta" included)."""
    problems = [f"missing {k}" for k in expected if k not in state]
    problems += [f"unexpected {k}" for k in state if k not in expected]
    problems += [
        f"{k} is {tuple(state[k].shape)} but the model's is {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k] is not None and state[k].shape != v.shape
    ]
    if problems:
        shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more" if len(problems) > 6 else "")
        raise LitGPTError(f"the weights of {pre.origin} do not fit its config: {shown}")


def data_tokenizer(init_from: str, data_tokenizer: str, cache_dir: str) -> str:
    """The ``--data.tokenizer`` value that tokenizes the finetuning corpus with the pretrained model's tokenizer:
    its JSON, written once under ``cache_dir/tokenizers/``. Without a tokenizer in PATH (a GPT-2 folder with no
    tokenizer files) the user's choice is kept, if they made one."""
    pre = load_pretrained(init_from)
    if pre.tokenizer is None:
        if data_tokenizer == "char":
            raise LitGPTError(
                f"{pre.origin} has no tokenizer (tokenizer.json or vocab.json + merges.txt): give the one it was "
                "trained with, e.g. --data.tokenizer gpt2 or --data.tokenizer hf:PATH/tokenizer.json"
            )
        return data_tokenizer
    path = Path(cache_dir) / "tokenizers" / f"{pre.tokenizer.fingerprint()}.json"
    if data_tokenizer not in ("char", str(path)):
        raise LitGPTError(
            f"--data.tokenizer {data_tokenizer!r} conflicts with --model.init_from: the pretrained model's own "
            "tokenizer is used; leave --data.tokenizer out"
        )
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        pre.tokenizer.save(tmp)
        tmp.replace(path)  # atomic: ranks that start together never read half a file
    return str(path)


def prepare_init_from(config: Any) -> None:
    """Before anything is built (a parsed fit config): check that the pretrained model fits ``model.config`` and
    point ``data.tokenizer`` at its tokenizer, so shape problems surface before the data is tokenized."""
    model, data = config.model, config.data
    wanted = model.config
    pre = load_pretrained(model.init_from)
    _refuse_conflicts(architecture_conflicts(pre, wanted))  # on the parsed section: every key the user could set
    shape = GPTConfig(
        vocab_size=wanted.get("vocab_size"), block_size=wanted.get("block_size", 64), dropout=wanted.get("dropout", 0.0)
    )
    target_config(pre, shape)
    data.tokenizer = data_tokenizer(model.init_from, data.tokenizer, data.cache_dir)


def load_for_sampling(
    path: str | Path, device: str | torch.device = "cpu", meta: str | None = None
) -> tuple[GPT, Tokenizer]:
    """The model (in eval mode) and tokenizer to sample from: anything ``--model.init_from`` takes (a lit-gpt
    checkpoint or run folder, a ``lit-gpt export`` folder, a Hugging Face GPT-2 folder, a Hub name, a nanoGPT
    ``ckpt.pt``, whose ``meta.pkl`` ``meta`` may name)."""
    pre = pretrained_for_sampling(path, meta)
    return build_model(pre, pre.config).to(device).eval(), pre.tokenizer


def pretrained_for_sampling(path: str | Path, meta: str | None = None) -> Pretrained:
    """What ``load_for_sampling`` builds its model from, with the tokenizer sampling needs (one line when there is
    none); for a caller that needs the config and tokenizer but not a model (``lit-gpt serve``'s HTTP side)."""
    pre = load_pretrained(path, flag="--checkpoint", meta=meta)
    if pre.tokenizer is None:
        raise LitGPTError(
            f"{pre.origin} has no tokenizer (for a GPT-2 folder: tokenizer.json, or vocab.json + merges.txt): it "
            "cannot turn generated ids into text"
        )
    return pre
