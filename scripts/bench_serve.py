"""Load on ``lit-gpt serve``: 1, 8 and 32 concurrent streaming clients on loopback; requests/s, tokens/s, time to
first token and latency for each.

    python scripts/bench_serve.py --write

Each model is served once (random weights of its shape: speed does not depend on what the weights say) and each
client sends ``--requests`` streamed requests of ``--max_tokens`` tokens one after another. The models: the CPU
quick-start config's (configs/shakespeare_char_cpu.yaml) and nanoGPT's shakespeare_char shape (6 layers, 6 heads,
384 wide, block 256). ``--write`` replaces this script's section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from benchmarks_doc import machine, write_section  # noqa: E402

from lit_gpt.corpus import shakespeare_text  # noqa: E402
from lit_gpt.model import GPT, GPTConfig  # noqa: E402
from lit_gpt.tokenizer import CharTokenizer  # noqa: E402


def cpu_config_shape() -> dict:
    config = yaml.safe_load((ROOT / "configs" / "shakespeare_char_cpu.yaml").read_text())["model"]["config"]
    return {k: config[k] for k in ("n_layer", "n_head", "n_embd", "block_size", "bias") if k in config}


MODELS = {
    "configs/shakespeare_char_cpu.yaml": cpu_config_shape,
    "shakespeare_char (6L, 6H, 384, block 256)": lambda: {"n_layer": 6, "n_head": 6, "n_embd": 384, "block_size": 256},
}


def random_checkpoint(path: Path, shape: dict) -> Path:
    """A lit-gpt checkpoint of this shape with random weights and Shakespeare's characters."""
    tokenizer = CharTokenizer.from_text(shakespeare_text("hamlet"))
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, **shape))
    state = {"model." + k: v for k, v in model.state_dict().items()}
    meta = {"model_config": asdict(model.config), "tokenizer": tokenizer.to_dict()}
    torch.save({"state_dict": state, "global_step": 0, "lit_gpt": meta}, path)
    return path


class Server:
    """``lit-gpt serve`` in a child process on a free loopback port, up within a bounded wait; what it prints goes
    to ``log`` (default: this terminal). The tests use it too."""

    def __init__(self, checkpoint: Path, *args: str, log: Path | None = None, wait: float = 120) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        command = [sys.executable, "-m", "lit_gpt.cli", "serve", "--checkpoint", str(checkpoint)]
        self.log = log
        out = open(log, "w") if log else None  # noqa: SIM115 - the child writes it until stop()
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port), *args], cwd=ROOT, stdout=out, stderr=out, start_new_session=True
        )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                if self.get("/health")[0] == 200:
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"lit-gpt serve did not come up within {wait:.0f} s: {self.printed()}")

    def connection(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def get(self, path: str) -> tuple[int, bytes]:
        conn = self.connection(timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        finally:
            conn.close()

    def post(self, body: bytes | dict) -> tuple[int, dict]:
        """A completion request; its status and JSON answer."""
        conn = self.connection()
        try:
            conn.request("POST", "/v1/completions", body if isinstance(body, bytes) else json.dumps(body))
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    def printed(self) -> str:
        return self.log.read_text() if self.log else ""

    def stop(self) -> str:
        """SIGTERM, as a scheduler stops it (SIGKILL to its process group after 30 s); returns what it printed."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.printed()


def one_request(port: int, body: dict) -> dict:
    """A streamed completion: seconds to the first text, seconds in all, tokens; ``error`` when it failed."""
    start = time.perf_counter()
    first, tokens = None, 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    try:
        conn.request("POST", "/v1/completions", json.dumps(body))
        response = conn.getresponse()
        if response.status != 200:
            return {"error": f"HTTP {response.status}: {response.read()[:200]!r}"}
        for line in response:
            if not line.startswith(b"data: ") or line.strip() == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                return {"error": chunk["error"]["message"]}
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and any(c["text"] for c in chunk["choices"]):
                first = time.perf_counter() - start
    except OSError as e:
        return {"error": str(e)}
    finally:
        conn.close()
    return {"ttft": first or 0.0, "latency": time.perf_counter() - start, "tokens": tokens}


def load(port: int, clients: int, requests: int, max_tokens: int) -> dict:
    body = {"prompt": "ROMEO:", "max_tokens": max_tokens, "temperature": 0.8, "top_k": 200, "stream": True}
    body["stream_options"] = {"include_usage": True}
    results: list[dict] = []

    def client() -> None:
        for _ in range(requests):
            results.append(one_request(port, body))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]

    def pct(key: str, q: float) -> float:
        values = sorted(r[key] for r in ok)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))] if values else float("nan")

    return {
        "clients": clients,
        "requests": len(results),
        "failed": len(results) - len(ok),
        "errors": sorted({r["error"] for r in results if "error" in r})[:3],
        "requests_per_s": len(ok) / wall,
        "tokens_per_s": sum(r["tokens"] for r in ok) / wall,
        "ttft_p50": pct("ttft", 0.5),
        "ttft_p99": pct("ttft", 0.99),
        "latency_p50": pct("latency", 0.5),
        "latency_p99": pct("latency", 0.99),
        "mean_tokens": statistics.mean(r["tokens"] for r in ok) if ok else 0,
    }


def table(rows: list[dict]) -> list[str]:
    single = next((r for r in rows if r["clients"] == 1), rows[0])["tokens_per_s"]
    lines = [
        "| clients | requests (failed) | requests/s | tokens/s | x 1 client | first token p50 / p99 "
        "| latency p50 / p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['requests']} ({r['failed']}) | {r['requests_per_s']:.2f} | "
            f"{r['tokens_per_s']:.0f} | {r['tokens_per_s'] / single:.2f} | "
            f"{r['ttft_p50'] * 1000:.0f} / {r['ttft_p99'] * 1000:.0f} ms | "
            f"{r['latency_p50']:.2f} / {r['latency_p99']:.2f} s |"
        )
    return lines


def main(argv: list[str] | None = None) -> dict[str, list[dict]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--requests", type=int, default=4, help="requests each client sends, one after another")
    parser.add_argument("--max_tokens", type=int, default=128)
    parser.add_argument("--max_batch_size", type=int, default=16, help="lit-gpt serve --max_batch_size")
    parser.add_argument("--model", choices=list(MODELS), nargs="+", default=list(MODELS))
    parser.add_argument("--write", action="store_true", help="write the figures into docs/benchmarks.md")
    args = parser.parse_args(argv)
    figures: dict[str, list[dict]] = {}
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.model:
            checkpoint = random_checkpoint(Path(tmp) / "model.ckpt", MODELS[name]())
            server = Server(checkpoint, "--max_batch_size", str(args.max_batch_size))
            try:
                load(server.port, 1, 1, 8)  # warm-up: the first request's allocations and lazy imports
                rows = [load(server.port, c, args.requests, args.max_tokens) for c in args.clients]
            finally:
                server.stop()
            figures[name] = rows
            lines += [f"**{name}**", "", *table(rows), ""]
            for r in rows:
                if r["errors"]:
                    lines.append(f"{r['clients']} clients: failures: {'; '.join(r['errors'])}")
    ratios = []
    for name, rows in figures.items():
        by = {r["clients"]: r for r in rows}
        if 1 in by and 8 in by:
            ratios.append(f"{name}: {by[8]['tokens_per_s'] / by[1]['tokens_per_s']:.2f}x")
    if ratios:
        lines.append(f"Tokens/s at 8 clients against 1 (target: at least 3x): {', '.join(ratios)}.")
    lines.append(
        f"Each client sends {args.requests} streamed requests of {args.max_tokens} tokens in turn (temperature 0.8, "
        f"top_k 200); the server decodes up to {args.max_batch_size} together, the rest wait for a row. Clients "
        "and server share the machine's cores."
    )
    print("\n".join(lines))
    if args.write:
        command = " ".join(["python scripts/bench_serve.py", "--clients", *map(str, args.clients), "--requests",
                            str(args.requests), "--max_tokens", str(args.max_tokens), "--write"])  # fmt: skip
        write_section("lit-gpt serve under load", datetime.date.today().isoformat(), machine(), command, lines)
    return figures


if __name__ == "__main__":
    main()
