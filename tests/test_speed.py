"""The speed features: KV-cached batched decoding, sampling filters, streaming, compile, profiling."""

import io
import json

import pytest
import torch
from conftest import ROOT, TINY, run_cli

from lit_gpt.generate import StreamDecoder, generate_text, generate_tokens, sample_next, stream
from lit_gpt.lightning_module import LitGPT
from lit_gpt.model import GPT, GPTConfig
from lit_gpt.tokenizer import CharTokenizer, Tokenizer


def test_batched_cached_generation_equals_uncached():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=32, n_layer=2, n_head=2, n_embd=32)).eval()
    prompts = torch.randint(0, 40, (3, 5))
    cached = torch.stack(list(generate_tokens(model, prompts, 20, temperature=0, use_cache=True)), 1)
    plain = torch.stack(list(generate_tokens(model, prompts, 20, temperature=0, use_cache=False)), 1)
    assert cached.shape == (3, 20) and torch.equal(cached, plain)
    # each row continues its own prompt: the rows differ
    assert not torch.equal(cached[0], cached[1])


def test_decoding_switches_onednn_off_only_while_the_model_runs():
    # generate_tokens runs the model on ATen's elementwise kernels (oneDNN's GELU is slow on one token); the
    # caller's setting must be back between tokens, after the last one, and after a sample stopped early.
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    seen = []
    model.register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    tokens = generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), 12)  # slides the window too
    for _ in tokens:
        assert torch.backends.mkldnn.enabled
    assert seen and not any(seen) and torch.backends.mkldnn.enabled
    early = generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), 12)
    next(early)
    early.close()
    assert torch.backends.mkldnn.enabled


def test_top_k_and_top_p_only_sample_the_allowed_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]])).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {0, 1}
    # nucleus 0.85: the smallest prefix reaching 85% is {0, 1, 2} (0.5 + 0.3 + 0.1)
    assert set(sample_next(logits, top_p=0.85, generator=g).tolist()) == {0, 1, 2}
    # a prefix whose mass is exactly top_p is enough: {0} alone for 0.5 (as Hugging Face's top-p keeps it)
    halves = torch.log(torch.tensor([[0.5, 0.25, 0.25]])).repeat(2000, 1)
    assert set(sample_next(halves, top_p=0.5, generator=g).tolist()) == {0}
    assert set(sample_next(logits, temperature=0).tolist()) == {0}
    # top_p=1 and no top_k: every token can come up
    assert set(sample_next(logits, generator=g).tolist()) == {0, 1, 2, 3, 4}


def test_a_vocabulary_padded_beyond_the_tokenizer_never_samples_a_padding_id():
    # GPT-2's 50257 tokens padded to 50304 for faster matmuls; here 10 characters padded to 64, with the padding
    # ids made the most likely: no sample may pick one, since no tokenizer can decode it.
    tokenizer = CharTokenizer(list("abcdefghij"))
    model = GPT(GPTConfig(vocab_size=64, block_size=16, n_layer=1, n_head=1, n_embd=16)).eval()
    with torch.no_grad():
        model.lm_head.weight[10:] *= 50
    text = generate_text(model, tokenizer, "abc", 60, temperature=2.0, top_k=None)
    assert len(text) == 63 and set(text) <= set("abcdefghij")
    out = io.StringIO()
    stream(model, tokenizer, "abc", 60, out=out, temperature=2.0)
    assert len(out.getvalue()) == 64 and set(out.getvalue()) <= set("abcdefghij\n")


class ByteTokenizer(Tokenizer):
    """One token per UTF-8 byte, as a byte-level BPE can split a character across tokens."""

    kind = "test-bytes"

    @property
    def vocab_size(self) -> int:
        return 256

    def encode(self, text):
        return list(text.encode())

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")

    def state(self):
        return {}

    @classmethod
    def from_state(cls, state):
        return cls()


def test_streaming_never_prints_half_a_character():
    decoder = StreamDecoder(ByteTokenizer())
    pieces = [decoder.push([b]) for b in "né ✓".encode()]
    assert "".join(pieces) == "né ✓"
    assert all("\ufffd" not in p for p in pieces)


class SpaceTokenizer(ByteTokenizer):
    """Words with a leading space, as SentencePiece's '▁': decoding drops the space at the start of the text, so a
    token's text depends on what came before it. Records how many ids each decode reads."""

    kind = "test-words"
    WORDS = ["To", " be,", " or", " not", " to", " be", "é", "✓"]

    def __init__(self) -> None:
        self.read: list[int] = []

    def encode(self, text):
        raise NotImplementedError

    def decode(self, ids):
        self.read.append(len(ids))
        return "".join(self.WORDS[i] for i in ids).removeprefix(" ")


def test_streaming_gives_the_decoded_text_at_a_constant_cost_per_token():
    tok = SpaceTokenizer()
    ids = [0, 1, 2, 3, 4, 5, 6, 7] * 300
    decoder = StreamDecoder(tok)
    assert "".join(decoder.push([i]) for i in ids) == tok.decode(ids)  # spaces kept between pieces
    assert max(tok.read[:-1]) <= 2  # each push decodes the new token and one before it, not everything so far


def test_a_compiled_model_saves_the_same_keys():
    def keys(compile: bool) -> list[str]:
        module = LitGPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8), compile=compile)
        module.configure_model()
        return list(module.state_dict())

    compiled = keys(True)
    assert compiled == keys(False)
    assert not any("_orig_mod" in k for k in compiled)


def test_compile_true_compiles_the_model_in_place():
    # The keys test above would pass if compile were silently dropped: check the model really runs compiled.
    module = LitGPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8), compile=True)
    module.configure_model()
    assert module.model._compiled_call_impl is not None
    plain = LitGPT(GPTConfig(vocab_size=20, block_size=8, n_layer=1, n_head=1, n_embd=8))
    plain.configure_model()
    assert plain.model._compiled_call_impl is None


def test_a_compiled_model_validates_and_samples_uncompiled_on_a_cpu_unless_asked():
    # On a CPU the validation graph took 14 s to compile for a 1.03-1.16x faster forward pass, and a sample's graphs
    # 48 s for 200 tokens drawn in 0.5 s without: neither compiles, and compile_validation true still compiles.
    from types import SimpleNamespace

    from torch._dynamo.utils import counters

    from lit_gpt.callbacks import SampleText

    tokenizer = CharTokenizer.from_text("\nabcdefghijklmnopqrs")
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=8, n_layer=1, n_head=1, n_embd=8)
    x = torch.randint(0, tokenizer.vocab_size, (2, 8))

    def graphs_compiled_by_validation(**options) -> tuple[int, LitGPT]:
        module = LitGPT(config, compile=True, **options)
        module.configure_model()
        module.tokenizer = tokenizer
        before = counters["stats"]["unique_graphs"]
        with torch.no_grad():
            module.validation_step((x, x), 0)
        return counters["stats"]["unique_graphs"] - before, module

    graphs, module = graphs_compiled_by_validation()
    assert graphs == 0 and module.val_loss.compute() > 0
    sample = SampleText(max_new_tokens=12)
    before = counters["stats"]["unique_graphs"]
    sample.on_validation_end(SimpleNamespace(sanity_checking=False, is_global_zero=True, loggers=[]), module)
    assert counters["stats"]["unique_graphs"] == before
    assert len(sample.last_sample) == 1 + 12 and set(sample.last_sample) <= set(tokenizer.decode(range(20)))
    assert module.model.training  # sampling put it back in training mode
    graphs, _ = graphs_compiled_by_validation(compile_validation=True)
    assert graphs == 1


def test_profiler_switch_writes_a_trace(tmp_path, corpus):
    r = run_cli(
        "fit", "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY,
        "--data.source", str(corpus), "--trainer.max_steps", "6", "--trainer.profiler", "pytorch",
        "--sample.max_new_tokens", "0", cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    traces = list((tmp_path / "runs").rglob("*.pt.trace.json"))
    assert traces, "no profiler trace written"
    events = json.loads(traces[0].read_text())["traceEvents"]
    assert any("aten::" in e.get("name", "") for e in events)


def test_the_progress_bar_draws_at_most_twice_a_second(tmp_path, corpus, monkeypatch):
    # Each frame is ~2 ms of Python on a drawing thread that holds the GIL: at Lightning's 10 a second a CPU step
    # ran 1-4% slower (scripts/bench_progress_bar.py). Count the frames of a real run through the CLI.
    import time

    from rich.live import Live

    from lit_gpt.lightning_cli import fit_cli

    frames = []
    draw = Live.refresh
    monkeypatch.setattr(Live, "refresh", lambda self: (frames.append(time.monotonic()), draw(self))[1])
    cli = fit_cli(
        [
            "--config", str(ROOT / "configs" / "shakespeare_char_cpu.yaml"), *TINY, "--data.source", str(corpus),
            "--data.cache_dir", str(tmp_path / "data"), "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
            "--trainer.max_steps", "400", "--trainer.limit_val_batches", "0", "--trainer.enable_checkpointing",
            "false", "--sample.max_new_tokens", "0", "--model.config.n_layer", "1", "--model.config.n_embd", "16",
            "--data.batch_size", "1",
        ],
        run=False,
    )  # fmt: skip
    start = time.monotonic()
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    seconds = time.monotonic() - start
    assert cli.trainer.global_step == 400
    # start and end draw once each; in between, at most one frame per half second (10 a second drew 23 in 2.4 s)
    assert 2 <= len(frames) <= 2 * seconds + 4, (len(frames), seconds)


def test_a_rotary_model_decodes_past_block_size_with_the_cache_exactly_as_without_it():
    # Past block_size a rotary model's cache is a ring of the last block_size tokens: every token sees the same
    # window as nanoGPT's re-read of the last block_size tokens, and nothing is re-read. (Learned positions slide
    # the window in steps instead, so their tokens differ from the uncached ones there.)
    torch.manual_seed(0)
    config = GPTConfig(vocab_size=40, block_size=8, n_layer=2, n_head=2, n_embd=32, position="rotary")
    model = GPT(config).double().eval()
    prompts = torch.randint(0, 40, (2, 3))
    cached = torch.stack(list(generate_tokens(model, prompts, 30, temperature=0, use_cache=True)), 1)
    plain = torch.stack(list(generate_tokens(model, prompts, 30, temperature=0, use_cache=False)), 1)
    assert torch.equal(cached, plain)
    # Each token past the block was one cached forward pass of one token, never a re-read of the window.
    lengths = []
    hook = model.register_forward_pre_hook(lambda _, args: lengths.append(args[0].size(1)))
    list(generate_tokens(model, prompts, 30, temperature=0))
    hook.remove()
    assert lengths == [3] + [1] * 29
    # The model still refuses a chunk of several tokens past block_size, or one token without a cache.
    model.set_kv_cache(2)
    model(prompts, input_pos=0)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(2, 8, dtype=torch.long), input_pos=4)
    model.set_kv_cache(None)
    with pytest.raises(ValueError, match="longer than block_size"):
        model(torch.zeros(2, 1, dtype=torch.long), input_pos=8)


def test_learned_positions_still_slide_the_window_past_block_size():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=40, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()
    lengths = []
    model.register_forward_pre_hook(lambda _, args: lengths.append(args[0].size(1)))
    list(generate_tokens(model, torch.zeros((1, 1), dtype=torch.long), 12))
    assert lengths == [1] * 8 + [6] + [1] * 2 + [6]  # each slide re-reads the last 3/4 of the window
