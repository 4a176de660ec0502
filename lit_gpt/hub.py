"""Pretrained weights by name from the Hugging Face Hub: ``gpt2`` ... ``gpt2-xl`` (nanoGPT's ``init_from`` names) or
``hf:OWNER/REPO[@REVISION]`` for any GPT-2-architecture repository.

Only what lit-gpt reads is fetched (``config.json``, the safetensors weights, the tokenizer files), into the Hub's
own cache (``HF_HUB_CACHE``, shared with transformers), once: a later run, even offline, reads the cached snapshot.
A local path always wins over a name, so a folder called ``gpt2`` is read as a folder.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lit_gpt.errors import LitGPTError, first_line

GPT2_NAMES = ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl")  # as in nanoGPT's sample.py / train.py
CONFIG_FILES = ["config.json", "tokenizer.json", "vocab.json", "merges.txt"]
SAFETENSORS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]


def hub_repo(name: str) -> tuple[str, str | None] | None:
    """``(repo_id, revision)`` when ``name`` names a Hub model rather than a local path, else ``None``."""
    if Path(name).expanduser().exists():
        return None
    if name in GPT2_NAMES:
        return f"openai-community/{name}", None
    if name.startswith("hf:"):
        repo, _, revision = name.removeprefix("hf:").partition("@")
        return repo, revision or None
    return None


def resolve(name: str) -> Path:
    """The local folder for ``name``: a path as given, or a Hub model's downloaded snapshot."""
    found = hub_repo(name)
    if found is None:
        return Path(name).expanduser()
    return _download(*found)


OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def offline_mode(*variables: str) -> str | None:
    """``NAME=VALUE`` of the Hugging Face offline switch that is on (of ``variables``, default all), else None: a
    user who turned it on wants to hear how to provide the files, not to check the network."""
    for name in variables or OFFLINE_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={value}"
    return None


@functools.lru_cache(maxsize=8)  # the CLI resolves the same name for the tokenizer and then the weights
def _download(repo: str, revision: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError, RevisionNotFoundError

    where = repo + (f"@{revision}" if revision else "")
    try:
        folder = Path(snapshot_download(repo, revision=revision, allow_patterns=CONFIG_FILES + SAFETENSORS))
        if not any(folder.glob("*.safetensors")):  # an old repository: pickled weights only (read as tensors only)
            folder = Path(snapshot_download(repo, revision=revision, allow_patterns=["pytorch_model.bin"]))
    except (HFValidationError, RepositoryNotFoundError) as e:
        raise LitGPTError(
            f"{where!r} is not a model on the Hugging Face Hub ({first_line(e)}); give a repository id such as "
            f"hf:openai-community/gpt2, one of {', '.join(GPT2_NAMES)}, or a local path"
        ) from None
    except RevisionNotFoundError:
        raise LitGPTError(f"the Hugging Face Hub repository {repo!r} has no revision {revision!r}") from None
    except GatedRepoError:
        raise LitGPTError(f"{where!r} is gated on the Hugging Face Hub: accept its terms and set HF_TOKEN") from None
    except Exception as e:  # no network and nothing cached, a proxy, a full disk...
        if offline := offline_mode("HF_HUB_OFFLINE"):
            raise LitGPTError(
                f"offline mode is on ({offline}) and {where!r} is not in the local Hugging Face cache: on a machine "
                f"with network run `hf download {repo}` and copy its cache (HF_HUB_CACHE) here, give the path of a "
                "local copy of the folder, or unset HF_HUB_OFFLINE to download it"
            ) from None
        raise LitGPTError(
            f"could not download {where!r} from the Hugging Face Hub and it is not in the local cache "
            f"({first_line(e)}): check the network, or download the folder on another machine and give its path"
        ) from None
    if not (folder / "config.json").is_file():
        raise LitGPTError(f"the Hugging Face Hub repository {where!r} has no config.json: it is not a GPT-2 model")
    return folder
