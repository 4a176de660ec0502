"""``lit-gpt serve`` as a user meets it: OpenAI's client and plain HTTP against a server on loopback, streamed and
batched; bad requests answered in one line while it keeps serving; a client that leaves frees its row; the
playground page in headless Chromium."""

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_cli
from test_export import write_checkpoint

from lit_gpt.model import GPTConfig

sys.path.insert(0, str(ROOT / "scripts"))
from bench_serve import Server  # noqa: E402 - lit-gpt serve in a child process, as the benchmark starts it

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def launch(checkpoint: Path, *args: str) -> Server:
    return Server(checkpoint, *args, log=checkpoint.parent / f"serve-{time.monotonic_ns()}.log", wait=90)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "model.ckpt"
    write_checkpoint(path, GPTConfig(vocab_size=1, block_size=64, n_layer=2, n_head=2, n_embd=64))
    return path


@pytest.fixture(scope="module")
def server(checkpoint):
    s = launch(checkpoint, "--max_batch_size", "4", "--max_tokens_limit", "100000")
    yield s
    log = s.stop()
    assert "Traceback" not in log, log  # a stop is quiet


def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=f"http://127.0.0.1:{server.port}/v1", api_key="unused", max_retries=0)


def test_openai_client_completes_and_streams_the_same_seeded_text(server):
    c = client(server)
    ask = {"model": "m", "prompt": "ROMEO:", "max_tokens": 24, "seed": 7, "temperature": 0.8}
    whole = c.completions.create(**ask)
    assert whole.choices[0].finish_reason == "length"
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens, whole.usage.total_tokens) == (6, 24, 30)
    pieces = [
        chunk.choices[0].text
        for chunk in c.completions.create(
            model="m", prompt="ROMEO:", max_tokens=24, seed=7, temperature=0.8, stream=True
        )
        if chunk.choices
    ]
    assert len(pieces) > 1  # streamed as the tokens came, not in one piece
    assert "".join(pieces) == whole.choices[0].text and len(whole.choices[0].text) == 24  # one char per token
    assert (
        server.get("/v1/models")[0] == 200 and json.loads(server.get("/v1/models")[1])["data"][0]["object"] == "model"
    )
    assert server.get("/health") == (200, b"ok")


def test_n_choices_stop_strings_and_top_k(server):
    c = client(server)
    r = c.completions.create(
        model="m", prompt="A", max_tokens=40, n=3, seed=1, stop=["e", "th"], extra_body={"top_k": 5}
    )
    assert [ch.index for ch in r.choices] == [0, 1, 2]
    assert r.usage.prompt_tokens == 1 and r.usage.total_tokens == 1 + r.usage.completion_tokens  # the prompt once
    shown = sum(len(ch.text) for ch in r.choices)  # a char a token, plus a stop string's 1 or 2 for a stopped one
    assert shown <= r.usage.completion_tokens <= shown + 2 * len(r.choices)
    assert len({ch.text for ch in r.choices}) > 1  # choice i draws with seed + i
    for ch in r.choices:
        assert "e" not in ch.text and "th" not in ch.text
        assert ch.finish_reason == "stop" or len(ch.text) == 40
    alone = c.completions.create(
        model="m", prompt="A", max_tokens=40, seed=2, stop=["e", "th"], extra_body={"top_k": 5}
    )
    assert alone.choices[0].text == r.choices[1].text


def test_concurrent_requests_are_batched_and_a_seeded_one_gives_the_same_text(server):
    alone = server.post({"prompt": "KING:", "max_tokens": 60, "seed": 3})[1]["choices"][0]["text"]
    results, errors = {}, []

    def one(i: int) -> None:
        try:
            results[i] = server.post({"prompt": "KING:" if i == 3 else "Q" * i, "max_tokens": 60 + i, "seed": i})
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, 7)]  # 6 clients, 4 rows: two wait
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(status == 200 for status, _ in results.values())
    assert results[3][1]["choices"][0]["text"][:60] == alone  # one character a token
    assert all(r["usage"]["completion_tokens"] == 60 + i for i, (_, r) in results.items())


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "a JSON object"),
        ({"prompt": "A", "max_tokens": 3, "colour": "red"}, "unknown field 'colour'"),
        ({"max_tokens": 3}, "prompt: Field required"),
        ({"prompt": "A", "max_tokens": 0}, "max_tokens must be 1 to 100000"),
        ({"prompt": "A", "max_tokens": 100001}, "max_tokens must be 1 to 100000"),
        ({"prompt": "A", "temperature": -1}, "temperature"),
        ({"prompt": "héllo ☃", "max_tokens": 3}, "characters this model never saw"),
        ({"prompt": "A" * 65, "max_tokens": 3}, "longer than the model's context of 64"),
        ({"prompt": "", "max_tokens": 3}, "the prompt is empty"),
    ],
)
def test_a_bad_request_gets_a_400_with_one_line_and_the_server_keeps_serving(server, body, reason):
    status, answer = server.post(body)
    assert status == 400
    message = answer["error"]["message"]
    assert reason in message and "\n" not in message
    assert server.post({"prompt": "A", "max_tokens": 2})[0] == 200


def test_clients_that_leave_mid_stream_free_their_rows(server):
    conns = []
    for _ in range(4):  # every row of the server's batch
        conn = server.connection()
        conn.request("POST", "/v1/completions", json.dumps({"prompt": "A", "max_tokens": 100000, "stream": True}))
        response = conn.getresponse()
        assert response.status == 200 and response.read(6) == b"data: "  # streaming
        conns.append(conn)
    for conn in conns:  # gone, 99,999 tokens early: minutes of decoding each row would otherwise hold
        conn.sock.close()
        conn.close()
    start = time.monotonic()
    status, answer = server.post({"prompt": "B", "max_tokens": 5})
    assert status == 200 and answer["usage"]["completion_tokens"] == 5
    assert time.monotonic() - start < 20


def test_serve_refuses_a_missing_checkpoint_a_busy_port_and_an_absent_gpu_in_one_line(tmp_path, server, checkpoint):
    missing = run_cli("serve", "--checkpoint", str(tmp_path / "nope.ckpt"), cwd=tmp_path)
    busy = run_cli("serve", "--checkpoint", str(checkpoint), "--port", str(server.port), cwd=tmp_path)
    refused = [missing, busy]
    if not torch.cuda.is_available():  # with a GPU, --device cuda would serve
        refused.append(run_cli("serve", "--checkpoint", str(checkpoint), "--device", "cuda", cwd=tmp_path))
        assert "no CUDA GPU is visible here; use --device cpu" in refused[-1].stderr
    for r in refused:
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "nope.ckpt" in missing.stderr
    assert f"cannot listen on 127.0.0.1:{server.port}" in busy.stderr and "--port" in busy.stderr


@pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)",
)
def test_the_playground_streams_a_completion_in_chromium(server):
    pytest.importorskip("selenium")
    from selenium.webdriver.common.by import By
    from tensorboard_screenshot import headless_chromium

    browser = headless_chromium(CHROMIUM, CHROMEDRIVER, 1000, 800)
    try:
        browser.get(f"http://127.0.0.1:{server.port}/")
        prompt = browser.find_element(By.ID, "prompt")
        prompt.clear()
        prompt.send_keys("HAMLET:")
        tokens = browser.find_element(By.ID, "max_tokens")
        tokens.clear()
        tokens.send_keys("400")
        # The page records the completion's length at every change, so a slow poll cannot miss the streaming
        browser.execute_script(
            "window.lengths = []; new MutationObserver(() => { const c = document.getElementById('completion');"
            " if (c) window.lengths.push(c.textContent.length); })"
            ".observe(document.getElementById('output'), {childList: true, subtree: true, characterData: true});"
        )
        browser.find_element(By.ID, "generate").click()
        deadline = time.monotonic() + 60
        while "400 tokens" not in browser.find_element(By.ID, "stats").text and time.monotonic() < deadline:
            time.sleep(0.2)
        seen = sorted(set(browser.execute_script("return window.lengths")))
        stats = browser.find_element(By.ID, "stats").text
        assert "400 tokens" in stats and "tokens/s" in stats, stats
        assert browser.find_element(By.ID, "output").text.startswith("HAMLET:")
        assert len(seen) > 1, seen  # the text grew while it streamed, not all at once
    finally:
        browser.quit()


def test_a_completion_ends_at_a_stop_string_and_never_shows_its_start():
    from lit_gpt.serve import Completion
    from lit_gpt.tokenizer import CharTokenizer

    tok = CharTokenizer.from_text("abcdexz\n")
    c = Completion(tok, max_tokens=20, stop=["\n\n", "cde"])
    sent = [c.push(t) for t in tok.encode("ab\ncdx\n\nzz")[:8]]
    assert sent[2:5] == [("", None), ("\n", None), ("", None)]  # "\n", then "c", "cd" could start a stop string
    assert sent[5] == ("cdx", None)  # "cd" was not "cde": sent once known
    assert "".join(text for text, _ in sent) == "ab\ncdx" and sent[7] == ("", "stop")  # ends before "\n\n"
    short = Completion(tok, max_tokens=2, stop=[])
    assert [short.push(t) for t in tok.encode("ab")] == [("a", None), ("b", "length")]


def test_a_gpt2_folder_with_byte_level_bpe_serves_any_text(tmp_path, corpus):
    from conftest import tiny_gpt2
    from tokenizers import ByteLevelBPETokenizer

    from lit_gpt.generate import generate_tokens
    from lit_gpt.init_from import load_for_sampling

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([corpus.read_text()], vocab_size=300, special_tokens=["<|endoftext|>"])
    tiny_gpt2(tmp_path / "gpt2", activation="gelu_new", vocab=bpe.get_vocab_size(), tokenizer=bpe)  # 32 positions
    s = launch(tmp_path / "gpt2", "--max_batch_size", "2")
    try:
        prompt = "héllo ☃, HAMLET:"
        status, answer = s.post({"prompt": prompt, "max_tokens": 40, "temperature": 0})  # past its 32 positions
        assert status == 200, answer
        choice = answer["choices"][0]
        # What generate's greedy decoding gives, up to the end-of-text token
        model, tok = load_for_sampling(tmp_path / "gpt2")
        ids = tok.encode(prompt)
        new = [int(t[0]) for t in generate_tokens(model, torch.tensor([ids]), 40, temperature=0, vocab_size=300)]
        new = new[: new.index(tok.eot_id)] if tok.eot_id in new else new
        assert choice["text"] == tok.decode(ids + new)[len(tok.decode(ids)) :]
        assert answer["usage"]["completion_tokens"] == min(40, len(new) + 1)
        conn = s.connection()
        ask = {"prompt": prompt, "max_tokens": 40, "temperature": 0, "stream": True}
        conn.request("POST", "/v1/completions", json.dumps(ask))
        events = [line[6:] for line in conn.getresponse().read().decode().split("\n\n") if line.startswith("data: ")]
        conn.close()
        # Byte-level tokens split characters; the pieces hold them back, so streamed text is the whole text
        assert events[-1] == "[DONE]"
        assert "".join(json.loads(e)["choices"][0]["text"] for e in events[:-1]) == choice["text"]
        assert s.post({"prompt": "A" * 200, "max_tokens": 3})[1]["error"]["message"].endswith("context of 32")
    finally:
        log = s.stop()
    assert "Traceback" not in log, log


def test_a_failing_step_fails_its_requests_and_the_worker_serves_the_next(checkpoint, monkeypatch):
    from litserve.utils import LitAPIStatus

    from lit_gpt.init_from import load_for_sampling
    from lit_gpt.serve import CompletionsAPI, CompletionsSpec

    tok = load_for_sampling(checkpoint)[1]
    api = CompletionsAPI(str(checkpoint), "float32", None, CompletionsSpec(tok, 64, "m", 100), max_batch_size=2)
    monkeypatch.setattr(CompletionsAPI, "configure_process", staticmethod(lambda device: None))  # not this process's
    api.setup("cpu")
    job = {"ids": tok.encode("A"), "max_tokens": 3, "stop": [], "temperature": 0.0, "top_k": None, "top_p": 1.0}
    api.add_request("a", {**job, "seed": None})
    api.add_request("b", {**job, "seed": None})
    first = api.step(None)
    assert [(o.uid, o.status) for o in first] == [("a", LitAPIStatus.OK), ("b", LitAPIStatus.OK)]
    real_step = api.batch.step
    monkeypatch.setattr(api.batch, "step", lambda: 1 / 0)  # e.g. a GPU out of memory
    failed = api.step(None)
    assert {(o.uid, o.status) for o in failed} == {("a", LitAPIStatus.ERROR), ("b", LitAPIStatus.ERROR)}
    assert not api.has_active_requests() and len(api.batch) == 0
    monkeypatch.setattr(api.batch, "step", real_step)
    api.add_request("c", {**job, "seed": None})
    pieces = [o for _ in range(3) for o in api.step(None)]
    assert [o.output.get("finish_reason") for o in pieces if o.status == LitAPIStatus.OK] == [None, None, "length"]
    assert pieces[-1].status == LitAPIStatus.FINISH_STREAMING and not api.has_active_requests()
