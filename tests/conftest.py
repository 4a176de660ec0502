import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def pytest_xdist_auto_num_workers(config) -> int:
    """``-n auto`` (pyproject's addopts): a worker per core, at most 4. The tests' training runs already use every
    core for torch's threads; more workers than that only make them contend."""
    return min(os.cpu_count() or 1, 4)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """A small real corpus: one built-in play (Hamlet, 170 kB), written out as a plain text file."""
    from lit_gpt.corpus import shakespeare_text

    path = tmp_path_factory.mktemp("corpus") / "hamlet.txt"
    path.write_text(shakespeare_text("hamlet"), encoding="utf-8")
    return path


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``lit-gpt`` as a user would, in a child process."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lit_gpt.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


# Tiny, fast settings for CLI runs: a 2-layer model on Hamlet, a few dozen steps.
TINY = [
    "--model.config.n_layer", "2", "--model.config.n_head", "2", "--model.config.n_embd", "32",
    "--model.config.block_size", "32", "--model.warmup_steps", "5", "--data.batch_size", "8",
    "--data.val_batches", "4", "--trainer.accelerator", "cpu", "--trainer.enable_model_summary", "false",
    "--throughput.measure_cpu_peak", "false", "--sample.max_new_tokens", "40",
]  # fmt: skip


def assert_cached_logits_equal_full_forward(model) -> None:
    """A prompt prefilled into the KV cache, then decoded one token at a time, gives the logits of one full forward
    pass (a vocabulary of at least 50, block_size at least 12)."""
    import torch

    idx = torch.randint(0, 50, (3, 12))
    full, _ = model(idx)
    model.set_kv_cache(3)
    prefill, _ = model(idx[:, :5], input_pos=0)
    steps = [model(idx[:, t : t + 1], input_pos=t)[0] for t in range(5, 12)]
    model.set_kv_cache(None)
    torch.testing.assert_close(torch.cat([prefill, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def tiny_gpt2(folder: Path, activation: str = "gelu", vocab: int = 101, safe: bool = True, tokenizer=None):
    """A randomly initialised GPT-2 saved as a user's download would be (no Hub access needed)."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.GPT2Config(
        vocab_size=vocab, n_positions=32, n_embd=32, n_layer=2, n_head=4, activation_function=activation
    )
    hf = transformers.GPT2LMHeadModel(config).eval()
    hf.save_pretrained(folder)
    if not safe:  # an older download: a pickled state dict (transformers 5 writes safetensors only)
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
    if tokenizer is not None:
        tokenizer.save(str(folder / "tokenizer.json"))
    return hf
