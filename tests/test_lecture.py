"""The lecture's steps as configs (configs/lecture/): each is a switch on the one model, builds, and learns."""

import math

import lightning as L
import pytest
import torch
import yaml
from conftest import ROOT

from lit_gpt.lightning_cli import fit_cli
from lit_gpt.model import GPT, GPTConfig

LECTURE = ROOT / "configs" / "lecture"
SMALL = sorted(p.stem for p in LECTURE.glob("*.yaml") if p.stem != "7_full")


class LossRecorder(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def train(config: str, corpus, tmp_path, *extra: str) -> tuple[L.LightningModule, list[float]]:
    """A few dozen steps of a lecture config through the CLI's own parser, in this process."""
    args = [
        "--config", str(LECTURE / f"{config}.yaml"), "--data.source", str(corpus),
        "--data.cache_dir", str(tmp_path / "data"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        "--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false",
        "--trainer.enable_checkpointing", "false", "--sample.max_new_tokens", "0",
        "--throughput.measure_cpu_peak", "false", "--data.val_batches", "2", *extra,
    ]  # fmt: skip
    cli = fit_cli(args, run=False)
    recorder = LossRecorder()
    cli.trainer.callbacks.append(recorder)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return cli.model, recorder.losses


def test_the_lecture_has_every_step():
    assert SMALL == ["1_bigram", "2_one_head", "3_multi_head", "4_feed_forward", "5_residual", "6_layernorm"]
    assert (LECTURE / "7_full.yaml").exists()


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: more threads only add overhead
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("config", SMALL)
def test_each_small_step_trains_with_falling_loss(config, corpus, tmp_path, one_thread):
    model, losses = train(config, corpus, tmp_path, "--trainer.max_steps", "60", "--trainer.val_check_interval", "60")
    assert len(losses) == 60
    vocab = model.model.config.vocab_size
    assert abs(losses[0] - math.log(vocab)) < 0.5  # about a uniform guess (PyTorch's init is a little off it)
    first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
    assert last < first - 0.1, (first, last)
    assert all(math.isfinite(x) for x in losses)


def test_the_small_steps_use_the_lectures_sizes():
    for name in SMALL:
        cfg = yaml.safe_load((LECTURE / f"{name}.yaml").read_text())
        assert cfg["model"]["config"]["block_size"] == 8
        assert cfg["data"]["batch_size"] == 32
        if name != "1_bigram":
            assert cfg["model"]["config"]["n_embd"] == 32


def lecture_model(name: str, vocab: int = 65) -> GPT:
    fields = yaml.safe_load((LECTURE / f"{name}.yaml").read_text())["model"]["config"]
    return GPT(GPTConfig(vocab_size=vocab, **fields))


def test_each_step_adds_what_it_says():
    keys = {name: set(lecture_model(name).state_dict()) for name in [*SMALL, "7_full"]}
    assert keys["1_bigram"] == {"transformer.wte.weight"}
    assert lecture_model("1_bigram").transformer.wte.weight.shape == (65, 65)
    one = keys["2_one_head"]
    assert "transformer.wpe.weight" in one and not any("c_proj" in k or "ln_" in k or "mlp" in k for k in one)
    assert lecture_model("3_multi_head").transformer.h[0].attn.n_head == 4
    assert keys["3_multi_head"] == one  # heads split the same matrices
    assert keys["4_feed_forward"] - one == {"transformer.h.0.mlp.c_fc.weight", "transformer.h.0.mlp.c_fc.bias"}
    assert lecture_model("4_feed_forward").transformer.h[0].mlp.c_fc.weight.shape == (32, 32)
    five = keys["5_residual"]
    assert "transformer.h.2.attn.c_proj.weight" in five and not any("ln_" in k for k in five)
    assert lecture_model("5_residual").transformer.h[0].mlp.c_fc.weight.shape == (128, 32)  # 4x wide
    assert keys["6_layernorm"] - five == {
        f"transformer.{m}.{p}" for m in ("h.0.ln_1", "h.0.ln_2", "h.1.ln_1", "h.1.ln_2", "h.2.ln_1", "h.2.ln_2", "ln_f")
        for p in ("weight", "bias")
    }  # fmt: skip


def test_residual_switch_changes_the_function_not_the_weights():
    torch.manual_seed(0)
    a = GPT(GPTConfig(vocab_size=65, block_size=8, n_layer=2, n_head=4, n_embd=32)).eval()
    b = GPT(GPTConfig(vocab_size=65, block_size=8, n_layer=2, n_head=4, n_embd=32, residual=False)).eval()
    b.load_state_dict(a.state_dict())
    idx = torch.randint(0, 65, (2, 8))
    assert not torch.allclose(a(idx)[0], b(idx)[0])


def test_bigram_initial_loss_is_ln_vocab_and_it_ignores_context():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=8, bigram=True))
    idx = torch.randint(0, 65, (64, 8))
    _, loss = model(idx, torch.randint(0, 65, (64, 8)))
    assert loss.item() == pytest.approx(math.log(65), abs=0.02)
    # The next token's logits depend on the current token only.
    logits, _ = model(idx)
    torch.testing.assert_close(logits[0, -1], model.transformer.wte.weight[idx[0, -1]])
    changed = idx.clone()
    changed[:, :-1] = (changed[:, :-1] + 1) % 65
    torch.testing.assert_close(model(changed)[0][:, -1], logits[:, -1])
    assert model.num_params() == 65 * 65 and model.flops_per_token() == 6 * 65 * 65


def test_full_lecture_model_is_the_lectures_shape():
    cfg = yaml.safe_load((LECTURE / "7_full.yaml").read_text())
    shape = cfg["model"]["config"]
    assert (shape["n_layer"], shape["n_head"], shape["n_embd"], shape["block_size"]) == (6, 6, 384, 256)
    assert shape["dropout"] == 0.2 and cfg["model"]["learning_rate"] == 3e-4 and cfg["trainer"]["max_steps"] == 5000
    model = lecture_model("7_full")
    assert 10.5e6 < model.num_params() < 11e6  # the lecture's "10.788929 M parameters" has an untied output layer


def test_full_lecture_config_trains_a_few_steps(corpus, tmp_path):
    # Its shape at full size is a GPU's work; a narrower context and batch keep the step a CPU's.
    model, losses = train(
        "7_full", corpus, tmp_path, "--trainer.max_steps", "8", "--trainer.val_check_interval", "8",
        "--model.config.block_size", "32", "--data.batch_size", "4", "--model.learning_rate", "1e-3",
        "--model.min_lr", "1e-3", "--trainer.accelerator", "cpu",
    )  # fmt: skip
    assert model.model.config.n_layer == 6 and model.model.config.n_embd == 384
    assert len(losses) == 8 and losses[-1] < losses[0] - 0.3
