"""nanoGPT's checkpoints, both ways: the ``ckpt.pt`` its ``train.py`` writes loads as any pretrained model, and
``lit-gpt export --format nanogpt`` writes one that its ``sample.py --init_from=resume`` samples from.

nanoGPT's ``ckpt.pt`` is ``{model_args, model, optimizer, iter_num, best_val_loss, config}``: ``model`` is the state
dict of its ``model.py`` (the parameter names lit-gpt's GPT uses; ``_orig_mod.`` prefixes when it was compiled) and
``model_args`` the seven fields of its ``GPTConfig``. Its vocabulary is the ``meta.pkl`` of the data folder its
config names (``data/<dataset>/meta.pkl``, a char vocabulary), or GPT-2's BPE when there is none, as ``sample.py``
decides. ``meta.pkl`` is a pickle: only plain data is read from it (a pickle that names any class or function,
which is how a pickle runs code, is refused).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path
from typing import Any

import torch

from lit_gpt.errors import LitGPTError, first_line
from lit_gpt.model import GPTConfig, mlp_hidden_size
from lit_gpt.tokenizer import CharTokenizer, Tokenizer

MODEL_ARGS = ("n_layer", "n_head", "n_embd", "block_size", "bias", "vocab_size", "dropout")  # nanoGPT's GPTConfig
GPT2_VOCAB = 50257  # sample.py falls back to GPT-2's BPE; nanoGPT pads it to 50304 rows


def is_nanogpt(checkpoint: Any) -> bool:
    """Whether a loaded checkpoint is nanoGPT's (its ``model_args`` and ``model`` keys)."""
    return isinstance(checkpoint, dict) and "model_args" in checkpoint and "model" in checkpoint


def config_from(checkpoint: dict[str, Any], where: str) -> GPTConfig:
    """lit-gpt's config for nanoGPT's ``model_args``: GPT-2's block, exact GELU, tied output layer."""
    args = checkpoint["model_args"]
    missing = [k for k in MODEL_ARGS if not isinstance(args, dict) or k not in args]
    if missing:
        raise LitGPTError(f"{where}'s model_args lack {', '.join(missing)}: it is not a complete nanoGPT checkpoint")
    try:
        return GPTConfig(**{k: args[k] for k in MODEL_ARGS})
    except (TypeError, ValueError) as e:
        raise LitGPTError(f"{where}'s model_args describe no model lit-gpt can build ({first_line(e)})") from None


def state_from(checkpoint: dict[str, Any]) -> dict[str, torch.Tensor]:
    """nanoGPT's ``model`` state dict in lit-gpt's names: compile's ``_orig_mod.`` dropped, as ``sample.py`` does,
    and the causal-mask buffer of torch < 2.0 (``attn.bias``) left out."""
    state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    return {k: v for k, v in state.items() if not k.endswith(".attn.bias")}


def find_meta(checkpoint_file: Path, checkpoint: dict[str, Any], meta: str | Path | None = None) -> Path | None:
    """The ``meta.pkl`` of a nanoGPT checkpoint: ``meta`` when given, else one beside the checkpoint, else
    ``data/<dataset>/meta.pkl`` under the checkpoint's folder or one of its parents, else under the working
    directory (where ``sample.py`` looks). None when there is none (the model then uses GPT-2's BPE)."""
    if meta is not None:
        path = Path(meta).expanduser()
        if not path.is_file():
            raise LitGPTError(f"--meta {str(meta)!r} does not exist: give the meta.pkl of the model's training data")
        return path
    candidates = [checkpoint_file.parent / "meta.pkl"]
    dataset = (checkpoint.get("config") or {}).get("dataset") if isinstance(checkpoint.get("config"), dict) else None
    if isinstance(dataset, str) and dataset:
        folders = [checkpoint_file.resolve().parent, *checkpoint_file.resolve().parents, Path.cwd()]
        candidates += [folder / "data" / dataset / "meta.pkl" for folder in folders]
        candidates.append(Path(dataset) / "meta.pkl")  # an absolute dataset path (written by export, below)
    return next((c for c in candidates if c.is_file()), None)


class _PlainData(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numbers only: a pickle runs code by naming a callable, refused here."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"it names {module}.{name}")


def read_meta(path: Path) -> CharTokenizer:
    """The char vocabulary of a nanoGPT ``meta.pkl`` (``{vocab_size, itos, stoi}``), read as plain data only."""
    try:
        meta = _PlainData(io.BytesIO(path.read_bytes())).load()
    except pickle.UnpicklingError as e:
        raise LitGPTError(
            f"refused to read {path}: {e}, so unpickling it could run code (a nanoGPT meta.pkl holds only "
            "plain data); prepare the data again with nanoGPT's prepare.py"
        ) from None
    except (OSError, EOFError, ValueError) as e:
        raise LitGPTError(
            f"{path} is damaged ({first_line(e)}): prepare the data again with nanoGPT's prepare.py"
        ) from None
    itos = meta.get("itos") if isinstance(meta, dict) else None
    if not isinstance(itos, dict) or sorted(itos) != list(range(len(itos))):
        raise LitGPTError(f"{path} has no itos table of ids 0..N-1: it is not a nanoGPT char meta.pkl")
    chars = [itos[i] for i in range(len(itos))]
    try:
        return CharTokenizer(chars)
    except ValueError as e:
        raise LitGPTError(f"{path}'s itos is not a char vocabulary ({e})") from None


def tokenizer_for(checkpoint_file: Path, checkpoint: dict[str, Any], vocab_size: int, meta: str | None) -> Tokenizer:
    """The tokenizer ``sample.py`` would use: the meta.pkl's chars, or GPT-2's BPE when there is no meta.pkl."""
    found = find_meta(checkpoint_file, checkpoint, meta)
    if found is not None:
        tokenizer = read_meta(found)
        if tokenizer.vocab_size > vocab_size:
            raise LitGPTError(
                f"{found} has {tokenizer.vocab_size} characters but {checkpoint_file} only {vocab_size} token ids: "
                "give the meta.pkl of the data this model was trained on (--meta PATH)"
            )
        return tokenizer
    if vocab_size < GPT2_VOCAB:
        dataset = (checkpoint.get("config") or {}).get("dataset", "?")
        raise LitGPTError(
            f"{checkpoint_file} has a {vocab_size}-token vocabulary but no meta.pkl was found (looked beside it and "
            f"in data/{dataset}/ from its folder and the working directory): copy the meta.pkl of its data beside "
            "ckpt.pt, or give --meta PATH"
        )
    from lit_gpt.bpe import GPT2Tokenizer

    return GPT2Tokenizer()


def nanogpt_problems(config: GPTConfig) -> list[str]:
    """What keeps a model from being nanoGPT's ``model.py``."""
    problems = []
    if config.bigram:
        problems.append("a bigram model")
    for name, want in (
        ("residual", True), ("projections", True), ("norm", "layernorm"), ("position", "learned"), ("mlp", "gelu"),
        ("tie_weights", True), ("qk_norm", False), ("logit_softcap", 0.0),
    ):  # fmt: skip
        if getattr(config, name) != want:
            problems.append(f"{name} is {getattr(config, name)!r} (nanoGPT: {want!r})")
    if mlp_hidden_size(config) != 4 * config.n_embd:
        problems.append(f"the MLP is {mlp_hidden_size(config)} wide (nanoGPT: 4 x n_embd)")
    return problems


def tokenizer_problem(tokenizer: Tokenizer | None) -> str | None:
    """Why ``sample.py`` could not use the tokenizer, or None: it knows char vocabularies (meta.pkl) and GPT-2's
    BPE only."""
    if tokenizer is None or isinstance(tokenizer, CharTokenizer) or tokenizer.kind == "gpt2":
        return None
    probe = "Hello, world!\n  It's 2026."
    if tokenizer.vocab_size == GPT2_VOCAB and tokenizer.kind == "hf":
        try:
            import tiktoken

            if tokenizer.encode(probe) == tiktoken.get_encoding("gpt2").encode_ordinary(probe):
                return None  # GPT-2's own tokenizer.json (a model initialised from the Hub's gpt2)
        except Exception:  # tiktoken's files are downloaded at first use: offline, it cannot be compared
            pass
    return f"its {tokenizer.kind} tokenizer is neither a char vocabulary nor GPT-2's BPE, the two sample.py knows"


def write(
    folder: Path, state: dict[str, torch.Tensor], config: GPTConfig, tokenizer: Tokenizer | None, final: Path
) -> None:
    """``folder/ckpt.pt`` in nanoGPT's format (and ``meta.pkl`` for a char model), for a folder that will be renamed
    to ``final``. ``config.dataset`` is ``final``'s absolute path: ``sample.py`` reads ``data/<dataset>/meta.pkl``,
    which for an absolute path is the export's own meta.pkl (moved elsewhere, copy meta.pkl into nanoGPT's
    ``data/<name>/``)."""
    model = {k: v.contiguous() for k, v in state.items() if k != "lm_head.weight"}
    model["lm_head.weight"] = model["transformer.wte.weight"]  # nanoGPT's state dict holds the tied matrix twice
    if isinstance(tokenizer, CharTokenizer):
        meta = {
            "vocab_size": tokenizer.vocab_size,
            "itos": dict(enumerate(tokenizer.chars)),
            "stoi": {c: i for i, c in enumerate(tokenizer.chars)},
        }
        with open(folder / "meta.pkl", "wb") as f:
            pickle.dump(meta, f)
    args = {k: getattr(config, k) for k in MODEL_ARGS}
    ckpt = {
        "model": model,
        "model_args": args,
        "iter_num": 0,
        "best_val_loss": float("nan"),  # unknown here; sample.py does not read it
        "config": {**args, "dataset": str(final.resolve()), "init_from": "lit-gpt export"},
    }
    torch.save(ckpt, folder / "ckpt.pt")
