"""``lit-gpt serve``: an OpenAI-compatible completions API on LitServe, with continuous batching and a playground.

Two processes, as LitServe runs them. The HTTP side (this process) checks each request against the model's
tokenizer and context, answers a bad one with a 400 and a one-line reason, and streams the good ones' tokens as
server-sent events. The inference worker (LitServe spawns it) runs ``ContinuousBatchingLoop``: every step it lets
waiting requests join the running batch (``lit_gpt.continuous_batching``), decodes one token for all of them, and
sends each its text. A client that disconnects mid-stream sends a cancel down the same queue, which frees its row.

Endpoints: ``POST /v1/completions`` (OpenAI's completions API: prompt, max_tokens, temperature, top_p, top_k, seed,
stop, n, stream), ``GET /v1/models``, ``GET /health`` (LitServe's), and the playground at ``GET /``.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from importlib import resources
from typing import Any, Literal

import litserve as ls
import torch
from fastapi import Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from litserve.loops.continuous_batching_loop import ContinuousBatchingLoop, Output
from litserve.specs.base import LitSpec
from litserve.utils import LitAPIStatus, ResponseBufferItem
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from lit_gpt.continuous_batching import RunningBatch, Sampling
from lit_gpt.errors import LitGPTError
from lit_gpt.generate import StreamDecoder
from lit_gpt.init_from import load_for_sampling, pretrained_for_sampling
from lit_gpt.malloc import reuse_freed_memory
from lit_gpt.tokenizer import Tokenizer, UnknownCharactersError

PLAYGROUND = "playground.html"
logger = logging.getLogger(__name__)


class CompletionRequest(BaseModel):
    """The body of ``POST /v1/completions``: OpenAI's fields that a base model can honour, plus ``top_k``."""

    model_config = ConfigDict(extra="forbid")  # an unknown field is a mistake to report, not to ignore

    model: str | None = None  # any name: one model is served
    prompt: str
    max_tokens: int = 16  # OpenAI's default
    temperature: float = Field(1.0, ge=0, le=2)  # 0 is greedy
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(None, gt=0)
    seed: int | None = None  # choice i of n draws with seed + i
    stop: str | list[str] | None = Field(None, max_length=4)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: dict[Literal["include_usage"], bool] | None = None
    user: str | None = None


class BadRequest(Exception):
    """A request the server refuses; ``message`` is one line."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def bad_request(e: BadRequest) -> JSONResponse:
    """OpenAI's error body, which its client raises as ``BadRequestError`` with the message."""
    error = {"message": e.message, "type": "invalid_request_error", "param": e.param, "code": None}
    return JSONResponse({"error": error}, status_code=400)


def validation_message(e: ValidationError) -> str:
    parts = []
    for err in e.errors():
        field = ".".join(str(x) for x in err["loc"]) or "body"
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown field {field!r}")
        else:
            parts.append(f"{field}: {err['msg']}")
    return "; ".join(parts)


def usage_of(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    """OpenAI's token counts: the prompt once, the completions of all n choices."""
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def stop_strings(stop: str | list[str] | None) -> list[str]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    return [s for s in stops if s]


class Completion:
    """One choice's text as its tokens arrive: decoded (an incomplete UTF-8 character held back), cut at the first
    stop string, and never showing a stop string's start until it is known not to be one."""

    def __init__(self, tokenizer: Tokenizer, max_tokens: int, stop: list[str], prompt_tokens: int = 0) -> None:
        self.decoder, self.max_tokens, self.stop = StreamDecoder(tokenizer), max_tokens, stop
        self.eot, self.pending, self.tokens, self.prompt_tokens = tokenizer.eot_id, "", 0, prompt_tokens

    def push(self, token: int) -> tuple[str, str | None]:
        """The text to send now, and the finish reason ("stop", "length") when this token ends the choice."""
        self.tokens += 1
        if token == self.eot:  # a BPE model's end of text
            return self.pending, "stop"
        self.pending += self.decoder.push([token])
        for s in self.stop:
            if s in self.pending:
                return self.pending[: self.pending.index(s)], "stop"
        if self.tokens >= self.max_tokens:
            return self.pending, "length"
        hold = max((k for s in self.stop for k in range(1, len(s)) if self.pending.endswith(s[:k])), default=0)
        text, self.pending = self.pending[: len(self.pending) - hold], self.pending[len(self.pending) - hold :]
        return text, None


class _ManagerGone(logging.Filter):
    """Drops LitServe's "Monitoring worker crashed" traceback when its monitor thread polls the multiprocessing
    manager that the shutdown already stopped (a race in LitServe's own shutdown, harmless)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, (BrokenPipeError, EOFError, ConnectionResetError))


def quiet_shutdown() -> None:
    """Ctrl+C or SIGTERM end the server without a traceback. SIGTERM (a scheduler, ``kill``) in this process
    raises KeyboardInterrupt as Ctrl+C does, which LitServe answers by ending its HTTP and inference processes;
    those ignore the Ctrl+C that reaches the whole process group and end on the SIGTERM that LitServe sends, or
    when this process is gone."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    logging.getLogger("litserve.server").addFilter(_ManagerGone())
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background (SIGINT ignored)

    def child() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        _exit_with_parent()

    os.register_at_fork(after_in_child=child)


def _exit_with_parent() -> None:
    """End this worker when the server process that spawned it is gone (killed, even with SIGKILL), instead of
    living on as an orphan holding the model's memory."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, daemon=True, name="lit-gpt-parent-watch").start()


class Loop(ContinuousBatchingLoop):
    """LitServe's continuous batching loop, resting while nothing is in flight."""

    async def run(self, lit_api, *args, **kwargs):
        if not lit_api.has_active_requests():
            # LitServe calls run() again as soon as it returns: without a pause an idle server spins a core.
            await asyncio.sleep(0.005)
            return
        await super().run(lit_api, *args, **kwargs)


class CompletionsSpec(LitSpec):
    """The HTTP side: checks each request, queues one job per choice, and streams or gathers the pieces."""

    def __init__(self, tokenizer: Tokenizer, block_size: int, model_name: str, max_tokens_limit: int) -> None:
        super().__init__()
        self.api_path = "/v1/completions"
        self.tokenizer, self.block_size, self.model_name = tokenizer, block_size, model_name
        self.max_tokens_limit = max_tokens_limit

    def __getstate__(self) -> dict[str, Any]:  # the worker process needs none of the HTTP side
        state = super().__getstate__()
        state["tokenizer"] = None
        return state

    @property
    def stream(self) -> bool:
        return True  # the worker always streams; a request without stream: true is gathered here

    def pre_setup(self, lit_api) -> None:
        self.add_endpoint(self.api_path, self.completions, ["POST"])
        self.add_endpoint("/v1/models", self.models, ["GET"])
        self.add_endpoint("/", self.playground, ["GET"])

    def decode_request(self, request, context_kwargs=None):
        return request

    def encode_response(self, output, context_kwargs=None):
        return output

    async def models(self) -> dict[str, Any]:
        card = {"id": self.model_name, "object": "model", "created": int(time.time()), "owned_by": "lit-gpt"}
        return {"object": "list", "data": [card]}

    async def playground(self) -> HTMLResponse:
        return HTMLResponse(resources.files("lit_gpt").joinpath(PLAYGROUND).read_text(encoding="utf-8"))

    def check(self, body: bytes) -> tuple[CompletionRequest, list[int]]:
        try:
            data = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"the request body is not JSON ({e})") from None
        if not isinstance(data, dict):
            raise BadRequest("the request body must be a JSON object")
        try:
            req = CompletionRequest.model_validate(data)
        except ValidationError as e:
            raise BadRequest(validation_message(e)) from None
        if not 1 <= req.max_tokens <= self.max_tokens_limit:
            raise BadRequest(
                f"max_tokens must be 1 to {self.max_tokens_limit} (lit-gpt serve --max_tokens_limit), got "
                f"{req.max_tokens}",
                "max_tokens",
            )
        try:
            ids = self.tokenizer.encode(req.prompt)
        except UnknownCharactersError as e:
            raise BadRequest(f"the prompt has characters this model never saw: {e.chars}", "prompt") from None
        if not ids:
            raise BadRequest("the prompt is empty: give at least one token to start from", "prompt")
        if len(ids) > self.block_size:
            raise BadRequest(
                f"the prompt is {len(ids)} tokens, longer than the model's context of {self.block_size}", "prompt"
            )
        return req, ids

    async def completions(self, request: Request):
        try:
            req, ids = self.check(await request.body())
        except BadRequest as e:
            return bad_request(e)
        job = {"ids": ids, "max_tokens": req.max_tokens, "stop": stop_strings(req.stop)}
        job.update(temperature=req.temperature, top_p=req.top_p, top_k=req.top_k)
        uids, streams = [], []
        for i in range(req.n):
            uid, q, event = uuid.uuid4(), deque(), asyncio.Event()
            self.response_buffer[uid] = ResponseBufferItem(response_queue=q, event=event)
            seed = None if req.seed is None else req.seed + i
            self.request_queue.put((self.response_queue_id, uid, time.monotonic(), {**job, "seed": seed}))
            uids.append(uid)
            streams.append(self.data_streamer(q, event, send_status=True))
        head = {"id": f"cmpl-{uuid.uuid4().hex[:24]}", "object": "text_completion", "created": int(time.time())}
        head["model"] = self.model_name
        events = self.merged(uids, streams)
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.get("include_usage"))
            return StreamingResponse(self.sse(head, events, len(ids), usage), media_type="text/event-stream")
        texts, reasons, tokens = [""] * req.n, [None] * req.n, 0
        try:
            async for i, piece in events:
                texts[i] += piece["text"]
                if piece.get("finish_reason"):
                    reasons[i], tokens = piece["finish_reason"], tokens + piece["tokens"]
        except RuntimeError as e:  # the worker failed this request (logged there): a 500 saying so, in one line
            return JSONResponse({"error": {"message": str(e), "type": "server_error"}}, status_code=500)
        choices = [
            {"text": t, "index": i, "logprobs": None, "finish_reason": r}
            for i, (t, r) in enumerate(zip(texts, reasons, strict=True))
        ]
        return {**head, "choices": choices, "usage": usage_of(len(ids), tokens)}

    async def merged(self, uids: list, streams: list):
        """(choice index, piece) from the n choices' worker streams as they come; on exit (the last piece, an
        error, or the client gone) the worker is told to drop every choice still running."""
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(i: int, stream) -> None:
            async for data, status in stream:
                await merged.put((i, data, status))
            await merged.put((i, None, None))

        tasks = [asyncio.create_task(pump(i, s)) for i, s in enumerate(streams)]
        running = set(range(len(uids)))
        try:
            while running:
                i, data, status = await merged.get()
                if data is None:
                    running.discard(i)
                    continue
                if status == LitAPIStatus.ERROR:
                    raise RuntimeError(f"the inference worker failed: {data}")
                piece = json.loads(data)
                if piece.get("finish_reason"):
                    running.discard(i)
                yield i, piece
        finally:
            for task in tasks:
                task.cancel()
            for i in running:  # unfinished: free their rows
                self.request_queue.put((self.response_queue_id, uuid.uuid4(), time.monotonic(), {"cancel": uids[i]}))
            for uid in uids:
                self.response_buffer.pop(uid, None)

    async def sse(self, head: dict, events, prompt_tokens: int, include_usage: bool):
        tokens = 0
        try:
            async for i, piece in events:
                reason = piece.get("finish_reason")
                if reason:
                    tokens += piece["tokens"]
                if piece["text"] or reason:
                    choice = {"text": piece["text"], "index": i, "logprobs": None, "finish_reason": reason}
                    yield f"data: {json.dumps({**head, 'choices': [choice]})}\n\n"
        except RuntimeError as e:  # the status line is sent already: say it in the stream, as OpenAI does
            yield f"data: {json.dumps({'error': {'message': str(e), 'type': 'server_error'}})}\n\n"
            return
        if include_usage:
            usage = usage_of(prompt_tokens, tokens)
            yield f"data: {json.dumps({**head, 'choices': [], 'usage': usage})}\n\n"
        yield "data: [DONE]\n\n"


class CompletionsAPI(ls.LitAPI):
    """The inference worker's side: the running batch, fed by LitServe's ContinuousBatchingLoop."""

    def __init__(self, checkpoint: str, dtype: str, meta: str | None, spec: CompletionsSpec, max_batch_size: int):
        super().__init__(max_batch_size=max_batch_size, spec=spec, loop=Loop())
        self.checkpoint, self.dtype, self.meta = checkpoint, dtype, meta

    def setup(self, device: str) -> None:
        self.configure_process(device)
        model, self.tokenizer = load_for_sampling(self.checkpoint, device, self.meta)
        model.to(getattr(torch, self.dtype))
        self.batch = RunningBatch(model, self.max_batch_size, self.tokenizer.vocab_size)
        self.incoming: deque = deque()  # from LitServe's thread: requests and cancels, in arrival order
        self.waiting: deque = deque()  # requests that find the batch full wait here, first come first served
        self.live: dict[Any, Completion] = {}

    @staticmethod
    def configure_process(device: str) -> None:
        """What the worker process sets for itself before it loads the model."""
        logging.getLogger("litserve").setLevel(logging.WARNING)  # its per-worker INFO lines say nothing to a user
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C reaches the whole group: the server process ends us
        _exit_with_parent()
        reuse_freed_memory()
        if device == "cpu":  # leave a core to the HTTP process: torch's threads wait on each other when it preempts one
            torch.set_num_threads(max(1, torch.get_num_threads() - 1))

    def add_request(self, uid, request: dict) -> None:
        self.incoming.append((uid, request))  # deque.append is thread-safe; step() (another thread) reads it

    def has_capacity(self) -> bool:
        return True  # every request is taken in: admission to the batch is step()'s

    def has_active_requests(self) -> bool:
        return bool(self.incoming or self.waiting or self.live)

    def encode_response(self, output):
        return output

    def step(self, prev_outputs) -> list:
        """Take in what arrived, let waiting requests join the batch, decode one token for all of them. A failure
        here (a GPU out of memory, say) fails the requests in flight, not the server: the next ones start afresh."""
        out: list = []

        def finish(uid) -> None:
            out.append(Output(uid, "", LitAPIStatus.FINISH_STREAMING))

        while self.incoming:
            uid, request = self.incoming.popleft()
            if "cancel" in request:  # the client went away: free its row, or its place in the queue
                gone = request["cancel"]
                if gone in self.live:
                    self.batch.remove(gone)
                    del self.live[gone]
                    finish(gone)
                self.waiting = deque(w for w in self.waiting if w[0] != gone)
                finish(uid)
            else:
                self.waiting.append((uid, request))
        try:
            while self.waiting and self.batch.has_room():
                uid, job = self.waiting.popleft()
                self.live[uid] = Completion(self.tokenizer, job["max_tokens"], job["stop"], len(job["ids"]))
                sampling = Sampling(job["temperature"], job["top_k"], job["top_p"], job["seed"])
                self.batch.add(uid, job["ids"], sampling)
            drawn = self.batch.step() if self.live else {}
        except Exception as e:
            message = " ".join(f"{type(e).__name__}: {e}".split())
            logger.error("lit-gpt serve: a decoding step failed (%s): its %d requests failed", message, len(self.live))
            out += [Output(uid, e, LitAPIStatus.ERROR) for uid in self.live]
            self.live.clear()
            self.batch.clear()
            return out
        for uid, token in drawn.items():
            completion = self.live[uid]
            text, reason = completion.push(token)
            piece: dict[str, Any] = {"text": text}
            if reason:
                piece.update(finish_reason=reason, tokens=completion.tokens, prompt_tokens=completion.prompt_tokens)
                self.batch.remove(uid)
                del self.live[uid]
            out.append(Output(uid, piece, LitAPIStatus.OK))
            if reason:
                finish(uid)
        return out


def _check_port(host: str, port: int) -> None:
    try:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise LitGPTError(f"cannot listen on {host}:{port} ({e.strerror}): choose another --port or --host") from None


def serve(
    *,
    checkpoint: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch_size: int = 16,
    max_tokens_limit: int = 2048,
    device: str = "auto",
    dtype: Literal["float32", "bfloat16", "float16"] = "float32",
    meta: str | None = None,
) -> None:
    """``lit-gpt serve``: serve a model over HTTP: OpenAI's completions API, batched, and a playground page.

    Args:
        checkpoint: Anything ``lit-gpt generate`` samples from: a .ckpt file or run folder, a lit-gpt export, a
            Hugging Face GPT-2 folder, a Hub name (gpt2, hf:OWNER/REPO) or a nanoGPT ckpt.pt.
        host: Address to listen on. 127.0.0.1 (the default) is this machine only; 0.0.0.0 is every network.
        port: Port to listen on.
        max_batch_size: Requests decoded together; more wait for a free row, first come first served.
        max_tokens_limit: The largest max_tokens a request may ask for.
        device: 'cpu', 'cuda', or 'auto' (CUDA when available).
        dtype: The weights' type; on a GPU bfloat16 or float16 halve what each token reads, on a CPU keep float32.
        meta: A nanoGPT checkpoint's meta.pkl, when it is not beside ckpt.pt (as for generate).
    """
    problems = []
    if max_batch_size <= 0:
        problems.append(f"max_batch_size must be positive, got {max_batch_size}")
    if max_tokens_limit <= 0:
        problems.append(f"max_tokens_limit must be positive, got {max_tokens_limit}")
    if not 0 < port < 65536:
        problems.append(f"port must be 1 to 65535, got {port}")
    if device not in ("auto", "cpu") and not device.startswith("cuda"):
        problems.append(f"device must be auto, cpu or cuda, got {device!r}")
    elif device.startswith("cuda") and not torch.cuda.is_available():
        problems.append(f"--device {device}: no CUDA GPU is visible here; use --device cpu")
    if problems:
        raise LitGPTError("; ".join(problems))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    _check_port(host, port)
    # Read here for its one-line errors and the tokenizer that checks requests; the worker builds the model.
    pre = pretrained_for_sampling(checkpoint, meta)
    spec = CompletionsSpec(pre.tokenizer, pre.config.block_size, checkpoint, max_tokens_limit)
    del pre
    api = CompletionsAPI(checkpoint, dtype, meta, spec, max_batch_size)
    server = ls.LitServer(api, accelerator="cuda" if device.startswith("cuda") else "cpu", devices=1, timeout=False)
    # LitServe answers GET / itself ("litserve running"); the playground takes its place.
    routes = server.app.router.routes
    routes[:] = [r for r in routes if not (getattr(r, "path", None) == "/" and getattr(r, "name", None) == "index")]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    where = "this machine only" if loopback else "every client that can reach this host: anyone may use it"
    print(f"lit-gpt serve: http://{host}:{port}/ (playground), /v1/completions; listening to {where}", file=sys.stderr)
    quiet_shutdown()
    server.run(
        host=host,
        port=port,
        num_api_servers=1,
        api_server_worker_type="process",  # LitServe's default: forked from this process, tokenizer and all
        generate_client_file=False,
        log_level="warning",
    )
