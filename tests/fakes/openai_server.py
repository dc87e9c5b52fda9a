"""A small, deterministic, OpenAI-compatible HTTP server for tests.

Run standalone::

    python -m tests.fakes.openai_server --port 8399

or in-process::

    with FakeOpenAIServer().start() as srv:
        client = openai.OpenAI(base_url=srv.base_url, api_key="sk-test")

Behaviour (all deterministic):

* ``POST /v1/chat/completions``
  - non-streaming: one assistant message (fixed text), usage with
    ``prompt_tokens_details.cached_tokens`` and
    ``completion_tokens_details.reasoning_tokens``;
  - ``stream: true``: SSE ``data: {...}`` chunks (role chunk, one chunk per
    word, a finish chunk) ending with ``data: [DONE]``; when
    ``stream_options.include_usage`` is true every chunk carries
    ``"usage": null`` and an extra final chunk with ``choices: []`` carries the
    usage, exactly like the real API;
  - ``finish_reason`` is ``"length"`` when ``max_tokens`` /
    ``max_completion_tokens`` is smaller than the canned reply (it has
    :data:`REPLY_WORD_COUNT` words, so e.g. ``max_tokens=5`` truncates),
    ``"stop"`` otherwise.
* ``POST /v1/embeddings``: small deterministic vectors (8 dims by default or
  the request's ``dimensions``), float lists or base64 (``encoding_format``),
  with usage.
* ``GET /v1/models``: a short model list.
* Errors: model ``rate-limited-model`` (or request header
  ``x-fake-status: 429``) answers HTTP 429 with an OpenAI-style error body and
  ``retry-after``; model ``server-error-model`` (or ``x-fake-status: 500``)
  answers 500.  ``x-fake-status`` accepts 400/401/404/429/500/503.

Response models are the dated snapshot of the requested alias, as the real
API does (``gpt-4o-mini`` -> ``gpt-4o-mini-2024-07-18``); unknown names are
echoed unchanged.  Reasoning models (``o1*``, ``o3*``, ``o4*``, ``gpt-5*``)
report :data:`REASONING_TOKENS` reasoning tokens, others 0.  Cached prompt
tokens are half the prompt tokens rounded down to a multiple of 8 (the real
API only caches long prompts; a non-zero value is more useful for tests).
Header ``x-fake-cached-tokens`` / ``x-fake-reasoning-tokens`` override both.

Latency: ``latency_ms`` before a non-streamed answer, ``first_chunk_delay_ms``
before the first stream chunk and ``chunk_delay_ms`` between chunks, so
durations and time-to-first-token are non-zero.  Header ``x-fake-delay-ms``
overrides the first delay for one request.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import re
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

REPLY_TEXT = (
    "Thanks for reaching out. I have noted the contact address alice.smith@example.com "
    "and will follow up shortly. Your request has been processed."
)
REPLY_WORDS = REPLY_TEXT.split(" ")
REPLY_WORD_COUNT = len(REPLY_WORDS)
REASONING_TOKENS = 64
DEFAULT_EMBEDDING_DIMS = 8
SYSTEM_FINGERPRINT = "fp_fake0a1b2c"
CREATED = 1735689600  # 2025-01-01T00:00:00Z, fixed so bodies are reproducible

RATE_LIMITED_MODEL = "rate-limited-model"
SERVER_ERROR_MODEL = "server-error-model"

# Alias -> dated snapshot the real API reports in `model`.
DATED_MODELS: dict[str, str] = {
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4-turbo": "gpt-4-turbo-2024-04-09",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "gpt-3.5-turbo": "gpt-3.5-turbo-0125",
    "o1": "o1-2024-12-17",
    "o1-mini": "o1-mini-2024-09-12",
    "o3": "o3-2025-04-16",
    "o3-mini": "o3-mini-2025-01-31",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
    # embeddings: the API echoes the name, except ada-002 which reports "-v2"
    "text-embedding-ada-002": "text-embedding-ada-002-v2",
}

_TOKEN_RE = re.compile(r"\w+|[^\w\s]")

_ERRORS: dict[int, tuple[str, str | None, str]] = {
    400: ("invalid_request_error", "invalid_value", "Invalid request (fake)."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    404: (
        "invalid_request_error",
        "model_not_found",
        "The model does not exist or you do not have access to it.",
    ),
    429: (
        "tokens",
        "rate_limit_exceeded",
        "Rate limit reached for {model} in organization org-fake on tokens per min (TPM): "
        "Limit 30000, Used 30000, Requested 120. Please try again in 1s.",
    ),
    500: ("server_error", None, "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}


def response_model(model: str) -> str:
    """The model name the real API reports for a requested alias."""
    return DATED_MODELS.get(model, model)


def is_reasoning_model(model: str) -> bool:
    return model.startswith(("o1", "o3", "o4", "gpt-5"))


def count_tokens(text: str) -> int:
    """A crude, deterministic stand-in for a tokenizer."""
    return len(_TOKEN_RE.findall(text))


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # multi-part content
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def prompt_tokens_for(messages: list[dict[str, Any]]) -> int:
    total = 3
    for m in messages:
        total += 4 + count_tokens(_content_text(m.get("content"))) + count_tokens(str(m.get("name", "")))
    return total


def embedding_vector(text: str, dims: int) -> list[float]:
    digest = b""
    counter = 0
    while len(digest) < dims * 2:
        digest += hashlib.sha256(f"{counter}:{text}".encode()).digest()
        counter += 1
    raw = [(int.from_bytes(digest[i * 2 : i * 2 + 2], "big") / 32767.5) - 1.0 for i in range(dims)]
    norm = sum(v * v for v in raw) ** 0.5 or 1.0
    return [round(v / norm, 6) for v in raw]


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]
    body: Any
    received_at: float = field(default_factory=time.time)


class FakeOpenAIServer:
    """The fake server; an aiohttp app that can also run on a background thread."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        latency_ms: float = 20.0,
        first_chunk_delay_ms: float = 20.0,
        chunk_delay_ms: float = 2.0,
        retry_after_s: int = 1,
    ) -> None:
        self.host = host
        self.port = port
        self.latency_s = latency_ms / 1000.0
        self.first_chunk_delay_s = first_chunk_delay_ms / 1000.0
        self.chunk_delay_s = chunk_delay_ms / 1000.0
        self.retry_after_s = retry_after_s
        self.requests: list[RecordedRequest] = []
        self._counter = 0
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------ app
    def make_app(self) -> web.Application:
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/healthz", self._health)
        return app

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    def _next_id(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _headers(self, n: int, extra: dict[str, str] | None = None) -> dict[str, str]:
        h = {
            "x-request-id": f"req_fake{n:08d}",
            "openai-processing-ms": str(int(self.latency_s * 1000)),
            "openai-version": "2020-10-01",
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-limit-tokens": "30000",
            "x-ratelimit-remaining-tokens": "29000",
        }
        if extra:
            h.update(extra)
        return h

    async def _read(self, request: web.Request) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return self._error(400, "unknown", self._next_id(), message="We could not parse the JSON body.")
        if not isinstance(body, dict):
            return self._error(400, "unknown", self._next_id(), message="Request body must be an object.")
        self.requests.append(
            RecordedRequest(
                request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body
            )
        )
        return body

    def _error(self, status: int, model: str, n: int, message: str | None = None) -> web.Response:
        etype, code, template = _ERRORS.get(status, _ERRORS[500])
        payload = {
            "error": {
                "message": message or template.format(model=model),
                "type": etype,
                "param": None,
                "code": code,
            }
        }
        extra: dict[str, str] = {}
        if status == 429:
            extra = {
                "retry-after": str(self.retry_after_s),
                "retry-after-ms": str(self.retry_after_s * 1000),
                "x-ratelimit-remaining-tokens": "0",
                "x-ratelimit-reset-tokens": f"{self.retry_after_s}s",
            }
        return web.json_response(payload, status=status, headers=self._headers(n, extra))

    def _forced_status(self, request: web.Request, model: str) -> int | None:
        raw = request.headers.get("x-fake-status")
        if raw and raw.strip().isdigit() and int(raw) in _ERRORS:
            return int(raw)
        if model == RATE_LIMITED_MODEL:
            return 429
        if model == SERVER_ERROR_MODEL:
            return 500
        return None

    @staticmethod
    def _int_header(request: web.Request, name: str) -> int | None:
        raw = request.headers.get(name)
        return int(raw) if raw and raw.strip().isdigit() else None

    def _first_delay(self, request: web.Request, default: float) -> float:
        ms = self._int_header(request, "x-fake-delay-ms")
        return default if ms is None else ms / 1000.0

    # ----------------------------------------------------------------- chat
    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        n = self._next_id()
        model = str(body.get("model") or "")
        status = self._forced_status(request, model)
        if status is not None:
            await asyncio.sleep(self._first_delay(request, self.latency_s))
            return self._error(status, model, n)
        messages = body.get("messages")
        if not model or not isinstance(messages, list) or not messages:
            return self._error(400, model, n, message="'model' and a non-empty 'messages' are required.")

        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = list(REPLY_WORDS)
        finish = "stop"
        if isinstance(limit, int) and 0 < limit < len(words):
            words = words[:limit]
            finish = "length"
        raw_n = body.get("n")
        choices_n = raw_n if isinstance(raw_n, int) and raw_n > 0 else 1

        prompt_tokens = prompt_tokens_for([m for m in messages if isinstance(m, dict)])
        cached = self._int_header(request, "x-fake-cached-tokens")
        if cached is None:
            cached = (prompt_tokens // 2) // 8 * 8
        reasoning = self._int_header(request, "x-fake-reasoning-tokens")
        if reasoning is None:
            reasoning = REASONING_TOKENS if is_reasoning_model(model) else 0
        completion_tokens = (len(words) + reasoning) * choices_n
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": min(cached, prompt_tokens), "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": reasoning,
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        }
        common = {
            "id": f"chatcmpl-fake{n:010d}",
            "created": CREATED,
            "model": response_model(model),
            "service_tier": "default",
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }

        if body.get("stream"):
            opts = body.get("stream_options") or {}
            include_usage = bool(isinstance(opts, dict) and opts.get("include_usage"))
            return await self._stream_chat(request, n, common, words, finish, choices_n, usage, include_usage)

        await asyncio.sleep(self._first_delay(request, self.latency_s))
        text = " ".join(words)
        payload = {
            "id": common["id"],
            "object": "chat.completion",
            "created": common["created"],
            "model": common["model"],
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text, "refusal": None, "annotations": []},
                    "logprobs": None,
                    "finish_reason": finish,
                }
                for i in range(choices_n)
            ],
            "usage": usage,
            "service_tier": common["service_tier"],
            "system_fingerprint": common["system_fingerprint"],
        }
        return web.json_response(payload, headers=self._headers(n))

    async def _stream_chat(
        self,
        request: web.Request,
        n: int,
        common: dict[str, Any],
        words: list[str],
        finish: str,
        choices_n: int,
        usage: dict[str, Any],
        include_usage: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            status=200,
            headers={
                **self._headers(n),
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            },
        )
        await resp.prepare(request)

        async def send(choices: list[dict[str, Any]], with_usage: dict[str, Any] | None = None) -> None:
            chunk: dict[str, Any] = {"object": "chat.completion.chunk", **common, "choices": choices}
            if include_usage:
                chunk["usage"] = with_usage
            await resp.write(f"data: {json.dumps(chunk, separators=(',', ':'))}\n\n".encode())

        def choice(i: int, delta: dict[str, Any], reason: str | None = None) -> dict[str, Any]:
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": reason}

        await asyncio.sleep(self._first_delay(request, self.first_chunk_delay_s))
        await send(
            [choice(i, {"role": "assistant", "content": "", "refusal": None}) for i in range(choices_n)]
        )
        for w_i, word in enumerate(words):
            piece = word if w_i == 0 else " " + word
            for i in range(choices_n):
                await send([choice(i, {"content": piece})])
            if self.chunk_delay_s:
                await asyncio.sleep(self.chunk_delay_s)
        for i in range(choices_n):
            await send([choice(i, {}, finish)])
        if include_usage:
            await send([], usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    # ----------------------------------------------------------- embeddings
    async def _embeddings(self, request: web.Request) -> web.Response:
        body = await self._read(request)
        if isinstance(body, web.Response):
            return body
        n = self._next_id()
        model = str(body.get("model") or "")
        status = self._forced_status(request, model)
        if status is not None:
            await asyncio.sleep(self._first_delay(request, self.latency_s))
            return self._error(status, model, n)
        raw_input = body.get("input")
        texts: list[str]
        if isinstance(raw_input, str):
            texts = [raw_input]
        elif isinstance(raw_input, list) and raw_input and all(isinstance(x, int) for x in raw_input):
            texts = [" ".join(map(str, raw_input))]  # one pre-tokenized input
        elif isinstance(raw_input, list) and raw_input:
            texts = [x if isinstance(x, str) else " ".join(map(str, x)) for x in raw_input]
        else:
            return self._error(400, model, n, message="'input' must be a non-empty string or array.")
        raw_dims = body.get("dimensions")
        dims = max(1, min(raw_dims, 4096)) if isinstance(raw_dims, int) else DEFAULT_EMBEDDING_DIMS
        b64 = body.get("encoding_format") == "base64"
        data = []
        tokens = 0
        for i, text in enumerate(texts):
            vec = embedding_vector(text, dims)
            tokens += count_tokens(text)
            emb: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if b64 else vec
            data.append({"object": "embedding", "index": i, "embedding": emb})
        await asyncio.sleep(self._first_delay(request, self.latency_s))
        payload = {
            "object": "list",
            "data": data,
            "model": response_model(model),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
        return web.json_response(payload, headers=self._headers(n))

    async def _models(self, request: web.Request) -> web.Response:
        data = [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "system"}
            for m in sorted(set(DATED_MODELS) | set(DATED_MODELS.values()))
        ]
        return web.json_response({"object": "list", "data": data})

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # ------------------------------------------------------ thread control
    def start(self, timeout: float = 10.0) -> FakeOpenAIServer:
        """Serve on a background thread; returns once the port is bound."""
        if self._thread is not None:
            raise RuntimeError("already started")
        ready = threading.Event()
        errors: list[BaseException] = []
        loop = asyncio.new_event_loop()
        self._loop = loop

        async def _setup() -> None:
            runner = web.AppRunner(self.make_app(), access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            self._runner = runner
            self.port = int(runner.addresses[0][1])

        def _run() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(_setup())
            except BaseException as exc:  # surfaced to the caller of start()
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=_run, name="fake-openai-server", daemon=True)
        self._thread.start()
        if not ready.wait(timeout):
            raise TimeoutError("fake OpenAI server did not start")
        if errors:
            self._thread = None
            raise errors[0]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), loop).result(timeout)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()
        self._loop = self._thread = self._runner = None

    def __enter__(self) -> FakeOpenAIServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Deterministic fake OpenAI-compatible server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8399)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--first-chunk-delay-ms", type=float, default=20.0)
    parser.add_argument("--chunk-delay-ms", type=float, default=2.0)
    args = parser.parse_args(argv)
    server = FakeOpenAIServer(
        args.host,
        args.port,
        latency_ms=args.latency_ms,
        first_chunk_delay_ms=args.first_chunk_delay_ms,
        chunk_delay_ms=args.chunk_delay_ms,
    )
    web.run_app(
        server.make_app(),
        host=args.host,
        port=args.port,
        access_log=None,
        print=lambda *_: print(f"fake OpenAI server on http://{args.host}:{args.port}/v1", flush=True),
    )


if __name__ == "__main__":
    main()
