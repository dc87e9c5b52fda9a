"""The fake OpenAI server, exercised through the real `openai` SDK."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.openai_server import (
    REASONING_TOKENS,
    REPLY_TEXT,
    REPLY_WORD_COUNT,
    FakeOpenAIServer,
    response_model,
)

openai = pytest.importorskip("openai")

REPO = Path(__file__).resolve().parent.parent.parent
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to alice.smith@example.com please."},
]


@pytest.fixture(scope="module")
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(latency_ms=5, first_chunk_delay_ms=20, chunk_delay_ms=0).start() as srv:
        yield srv


@pytest.fixture
def client(server: FakeOpenAIServer) -> Any:
    return openai.OpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)


def test_response_model_is_dated_snapshot() -> None:
    assert response_model("gpt-4o-mini") == "gpt-4o-mini-2024-07-18"
    assert response_model("some-custom-model") == "some-custom-model"


def test_chat_non_streaming(client: Any) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert r.model == "gpt-4o-mini-2024-07-18"
    assert r.object == "chat.completion"
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == REPLY_TEXT
    u = r.usage
    assert u.completion_tokens == REPLY_WORD_COUNT
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    assert u.prompt_tokens_details.cached_tokens > 0
    assert u.prompt_tokens_details.cached_tokens <= u.prompt_tokens
    assert u.completion_tokens_details.reasoning_tokens == 0
    # deterministic: same request, same usage and content
    r2 = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=100)
    assert r2.usage.prompt_tokens == u.prompt_tokens
    assert r2.choices[0].message.content == r.choices[0].message.content
    assert r2.id != r.id


def test_chat_reasoning_model_reports_reasoning_tokens(client: Any) -> None:
    r = client.chat.completions.create(model="o4-mini", messages=MESSAGES[1:], max_completion_tokens=1000)
    assert r.model == "o4-mini-2025-04-16"
    assert r.usage.completion_tokens_details.reasoning_tokens == REASONING_TOKENS
    assert r.usage.completion_tokens == REPLY_WORD_COUNT + REASONING_TOKENS


def test_chat_truncated_finish_reason_length(client: Any) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    assert r.choices[0].message.content == " ".join(REPLY_TEXT.split(" ")[:5])


def test_chat_streaming_with_usage(client: Any) -> None:
    t0 = time.perf_counter()
    stream = client.chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = []
    ttfc = None
    for chunk in stream:
        if ttfc is None:
            ttfc = time.perf_counter() - t0
        chunks.append(chunk)
    assert ttfc is not None and ttfc >= 0.015
    assert all(c.model == "gpt-4o-mini-2024-07-18" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY_TEXT
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    # usage only on the final, choice-less chunk
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == REPLY_WORD_COUNT
    assert chunks[-1].usage.prompt_tokens_details.cached_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_chat_streaming_without_usage(client: Any) -> None:
    chunks = list(
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True, max_tokens=3)
    )
    assert all(getattr(c, "usage", None) is None for c in chunks)
    assert all(c.choices for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == " ".join(REPLY_TEXT.split(" ")[:3])


def test_raw_sse_framing(server: FakeOpenAIServer) -> None:
    body = json.dumps(
        {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    req = urllib.request.Request(
        f"{server.base_url}/chat/completions",
        data=body,
        headers={"Content-Type": "application/json", "Authorization": "Bearer sk-test"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        raw = resp.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][len("data: ") :])
    assert last["choices"] == [] and last["usage"]["total_tokens"] > 0


@pytest.mark.parametrize(
    ("model", "headers"),
    [("rate-limited-model", None), ("gpt-4o-mini", {"x-fake-status": "429"})],
)
def test_rate_limit_429(
    server: FakeOpenAIServer, client: Any, model: str, headers: dict[str, str] | None
) -> None:
    before = len(server.requests)
    with pytest.raises(openai.RateLimitError) as ei:
        client.chat.completions.create(model=model, messages=MESSAGES, extra_headers=headers)
    err = ei.value
    assert err.status_code == 429
    assert err.response.headers["retry-after"] == "1"
    assert err.code == "rate_limit_exceeded"
    assert "Rate limit reached" in err.message
    assert len(server.requests) == before + 1  # max_retries=0: exactly one call


def test_server_error_500(client: Any) -> None:
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="server-error-model", messages=MESSAGES)


def test_embeddings(client: Any, server: FakeOpenAIServer) -> None:
    # the SDK asks for base64 by default and decodes it
    r = client.embeddings.create(model="text-embedding-3-small", input=["alpha beta", "gamma"])
    assert server.requests[-1].body.get("encoding_format") == "base64"
    assert r.model == "text-embedding-3-small"
    assert [d.index for d in r.data] == [0, 1]
    assert len(r.data[0].embedding) == 8
    assert abs(sum(v * v for v in r.data[0].embedding) - 1.0) < 1e-3
    assert r.usage.prompt_tokens == 3 and r.usage.total_tokens == 3
    # float format and explicit dimensions give the same (rounded) vector
    f = client.embeddings.create(
        model="text-embedding-3-small", input="alpha beta", encoding_format="float", dimensions=8
    )
    assert f.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    big = client.embeddings.create(model="text-embedding-ada-002", input="x", dimensions=16)
    assert len(big.data[0].embedding) == 16
    assert big.model == "text-embedding-ada-002-v2"


def test_cli_runs_as_module(tmp_path: Path) -> None:
    from tests.conftest import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.openai_server", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    assert json.loads(resp.read()) == {"status": "ok"}
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        c = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
        assert c.chat.completions.create(model="gpt-4o", messages=MESSAGES).model == "gpt-4o-2024-08-06"
    finally:
        proc.terminate()
        proc.wait(10)
