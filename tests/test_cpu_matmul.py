"""float32 CPU matmuls on oneDNN (lit_gpt/cpu_matmul.py): the same numbers as F.linear, on every path a user trains."""

import platform
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_cli
from torch import nn

from lit_gpt.cpu_matmul import MIN_MACS, OneDNNLinear, onednn_available, onednn_wanted, use_onednn_linears
from lit_gpt.lightning_module import LitGPT
from lit_gpt.lora import apply_lora
from lit_gpt.model import GPT, GPTConfig

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN")


def on_onednn(y: torch.Tensor) -> bool:
    return type(y.grad_fn).__name__ == "_OneDNNLinearBackward"


@pytest.mark.parametrize("features", [(64, 192), (256, 64)])  # wider and narrower out: both weight-gradient paths
@pytest.mark.parametrize("bias", [True, False])
def test_forward_and_gradients_equal_f_linear(features, bias):
    torch.manual_seed(0)
    layer = nn.Linear(*features, bias=bias)
    plain = nn.Linear(*features, bias=bias)
    plain.load_state_dict(layer.state_dict())
    use_onednn_linears(layer)
    x = torch.randn(4, 64, features[0], requires_grad=True)  # (B, T, in): well above MIN_MACS
    x_plain = x.detach().clone().requires_grad_()
    y, y_plain = layer(x), plain(x_plain)
    assert on_onednn(y)
    torch.testing.assert_close(y, y_plain, rtol=1e-5, atol=1e-5)
    grad = torch.randn_like(y)
    y.backward(grad)
    y_plain.backward(grad)
    torch.testing.assert_close(x.grad, x_plain.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.weight.grad, plain.weight.grad, rtol=1e-4, atol=1e-4)
    if bias:
        torch.testing.assert_close(layer.bias.grad, plain.bias.grad, rtol=1e-4, atol=1e-4)


def test_what_onednn_cannot_speed_up_keeps_f_linear():
    layer = nn.Linear(64, 64)
    use_onednn_linears(layer)
    big = torch.randn(MIN_MACS // (64 * 64), 64, requires_grad=True)
    assert on_onednn(layer(big))
    assert not on_onednn(layer(big[:-1]))  # one row under the threshold: a decode step's matmul
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts to bf16, which goes to oneDNN by itself
        out = layer(big)
    assert out.dtype == torch.bfloat16 and not on_onednn(out)
    layer.to(torch.bfloat16)  # bf16-true weights
    assert not on_onednn(layer(big.detach().bfloat16().requires_grad_()))


def test_a_frozen_weight_gets_no_gradient_and_the_input_still_does():
    layer = nn.Linear(64, 192)
    use_onednn_linears(layer)
    layer.requires_grad_(False)
    x = torch.randn(256, 64, requires_grad=True)
    layer(x).sum().backward()
    assert layer.weight.grad is None and x.grad is not None


def test_the_swap_keeps_parameter_names_and_leaves_lora_layers_alone():
    model = GPT(GPTConfig(vocab_size=50, block_size=16, n_layer=2, n_head=2, n_embd=32))
    apply_lora(model, rank=4, alpha=8.0)
    keys = list(model.state_dict())
    swapped = use_onednn_linears(model)
    assert list(model.state_dict()) == keys  # checkpoints load either way
    kinds = {n: type(m) for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    lora = [n for n, kind in kinds.items() if kind.__name__ == "LoRALinear"]
    assert lora and swapped == len(kinds) - len(lora)
    assert all(kind is OneDNNLinear for n, kind in kinds.items() if n not in lora)


def test_a_compiled_model_on_onednn_gives_the_same_loss_and_gradients():
    # torch.compile sees the oneDNN matmul as one opaque op (inductor cannot lower it with trainable weights).
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=1, n_head=2, n_embd=64)
    torch.manual_seed(0)
    eager = GPT(config)
    compiled = GPT(config)
    compiled.load_state_dict(eager.state_dict())
    use_onednn_linears(compiled)
    compiled.compile()
    x, y = torch.randint(0, 65, (4, 64)), torch.randint(0, 65, (4, 64))
    _, loss = eager(x, y)
    _, loss_compiled = compiled(x, y)
    loss.backward()
    loss_compiled.backward()
    torch.testing.assert_close(loss_compiled, loss, rtol=1e-5, atol=1e-5)
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize(
    ("vendor", "capability", "family", "onednn"),
    [
        ("AuthenticAMD", "AVX512", 26, True),  # Zen 5: MKL runs its AVX2 kernels, oneDNN full-width AVX-512 (~2x)
        ("AuthenticAMD", "AVX512", 25, False),  # Zen 4: AVX-512 on 256-bit units, oneDNN 0.93-1.02x (benchmarks.md)
        ("AuthenticAMD", "AVX2", 25, False),  # Zen 3: both on AVX2, MKL's 0-13% faster (docs/benchmarks.md)
        ("GenuineIntel", "AVX512", 6, False),  # MKL is at home
    ],
)
def test_auto_is_onednn_on_amd_cpus_with_full_width_avx512_only(monkeypatch, vendor, capability, family, onednn):
    from lit_gpt import cpu_matmul

    assert not onednn_wanted("onednn", "cuda") and not onednn_wanted("aten", "cpu")
    assert onednn_wanted("onednn", "cpu")
    monkeypatch.setattr(cpu_matmul, "_amd_x86", lambda: vendor == "AuthenticAMD")
    monkeypatch.setattr(cpu_matmul, "_amd_family", lambda: family)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    assert onednn_wanted("auto", "cpu") is onednn
    assert not onednn_wanted("auto", "cuda")


def test_the_cpu_family_is_read_as_the_kernel_reports_it():
    from lit_gpt import cpu_matmul

    family = cpu_matmul._amd_family()
    assert isinstance(family, int) and family >= 0
    if Path("/proc/cpuinfo").exists() and "cpu family" in Path("/proc/cpuinfo").read_text():
        assert family > 0


def test_training_and_sampling_on_onednn_follow_aten(tmp_path, corpus):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    def train(choice: str) -> list[float]:
        run = tmp_path / choice
        run.mkdir()
        r = run_cli(
            "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
            "--model.config.n_embd", "64", "--model.config.block_size", "64", "--data.source", str(corpus),
            "--trainer.max_steps", "30", "--trainer.log_every_n_steps", "1", "--trainer.val_check_interval", "30",
            "--sample.max_new_tokens", "0", "--model.cpu_matmul", choice, cwd=run,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        events = EventAccumulator(str(next((run / "runs").rglob("events.out.tfevents.*")).parent))
        events.Reload()
        return [e.value for e in events.Scalars("train/loss")]

    onednn, aten = train("onednn"), train("aten")
    assert len(onednn) == 30 and onednn[-1] < onednn[0] - 0.5
    assert onednn == pytest.approx(aten, abs=1e-4)

    # A 64-token prompt's MLP matmuls are big enough for oneDNN; a greedy sample must not change.
    prompt = tmp_path / "prompt.txt"
    prompt.write_text(corpus.read_text(encoding="utf-8")[:64], encoding="utf-8")

    def sample(choice: str) -> str:
        r = run_cli(
            "generate", "--checkpoint", str(tmp_path / "onednn" / "runs"), "--prompt_file", str(prompt),
            "--max_new_tokens", "40", "--temperature", "0", "--cpu_matmul", choice, cwd=tmp_path,
        )  # fmt: skip
        assert r.returncode == 0, r.stderr[-2000:]
        return r.stdout

    assert sample("onednn") == sample("aten")


def test_a_bad_choice_is_one_clear_error(tmp_path, corpus):
    r = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--data.source", str(corpus), "--model.cpu_matmul", "mkl", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 2
    assert "cpu_matmul" in r.stderr and "onednn" in r.stderr and "Traceback" not in r.stderr
    with pytest.raises(Exception, match="cpu_matmul must be auto, onednn or aten"):
        LitGPT(cpu_matmul="mkl")


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="oneDNN's ISA limit is x86's")
@pytest.mark.parametrize(("precision", "warned"), [("bf16-mixed", True), ("32-true", False)])
def test_a_bf16_run_on_a_cpu_without_native_bf16_matmuls_says_to_train_in_float32(tmp_path, corpus, precision, warned):
    # ONEDNN_MAX_CPU_ISA=AVX2 holds oneDNN to what an AVX2-only CPU has: torch's bf16 matmuls then take the slow
    # fallback, which made the speedrun recipe's bf16-mixed step 16x its float32 one (docs/benchmarks.md).
    r = run_cli(
        "fit", *TINY, "--data.source", str(corpus), "--trainer.precision", precision, "--trainer.max_steps", "1",
        "--sample.max_new_tokens", "0", "--trainer.enable_progress_bar", "false",
        cwd=tmp_path, env={"ONEDNN_MAX_CPU_ISA": "AVX2"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stderr.splitlines() if line.startswith("lit-gpt: warning")]
    if warned:
        assert len(lines) == 1 and "use --trainer.precision 32-true" in lines[0], r.stderr[-3000:]
    else:
        assert lines == [], lines
