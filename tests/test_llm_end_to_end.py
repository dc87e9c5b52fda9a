"""LLM understanding end to end, on the embedded default config.

1. Live: a real `openai` client, instrumented by the real OpenLLMetry package,
   calls the fake OpenAI server; its OTLP goes to a running gateway. The LLM
   metrics on /metrics count every call right, and nothing it wrote carries PII.
2. Replay: every recorded payload of every family (traces, metrics, logs) goes
   through the gateway; no fixture PII survives into the file or debug output.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from gateway.config.model import default_config_text
from tests.conftest import REPO_ROOT, RunningGateway, free_port, wait_until
from tests.fakes.openai_server import FakeOpenAIServer

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "genai"
PII = (
    "alice.smith@example.com",
    "4111 1111 1111 1111",
    "123-45-6789",
    "415-555-0134",
    "sk-proj-abcdefghijklmnopqrstuvwx0123456789",
    "AKIAIOSFODNN7EXAMPLE",
    "eyJhbGciOiJIUzI1NiJ9.abc.def",
)
LOOKALIKE = "4111 1111 1111 1112"  # fails the Luhn check: must survive
CONTENT_TYPES = {"traces": "/v1/traces", "metrics": "/v1/metrics", "logs": "/v1/logs"}


@pytest.fixture
def default_gateway(monkeypatch, tmp_path):
    ports = {"grpc": free_port(), "http": free_port(), "admin": free_port()}
    monkeypatch.setenv("SENTINEL_GRPC_ENDPOINT", f"127.0.0.1:{ports['grpc']}")
    monkeypatch.setenv("SENTINEL_HTTP_ENDPOINT", f"127.0.0.1:{ports['http']}")
    monkeypatch.setenv("SENTINEL_ADMIN_ENDPOINT", f"127.0.0.1:{ports['admin']}")
    monkeypatch.setenv("SENTINEL_DATA_DIR", str(tmp_path))
    # The gateway runs inside this pytest process, whose RSS (every kernel and fixture the suite has
    # loaded so far) is what memory_limiter measures: give it room so only the config's logic is tested.
    text = default_config_text()
    assert "limit_mib: 512" in text
    gw = RunningGateway(text.replace("limit_mib: 512", "limit_mib: 4096")).start()
    gw.ports = ports
    gw.out = tmp_path / "otlp.jsonl"
    try:
        yield gw
    finally:
        gw.stop()


def scrape(admin_port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples, name: str, **labels: str) -> float:
    return sum(
        v
        for (n, lab), v in samples.items()
        if n == name and all(dict(lab).get(k) == x for k, x in labels.items())
    )


def assert_no_pii(text: str) -> None:
    for secret in PII:
        assert secret not in text, f"{secret!r} leaked"


def test_live_instrumented_openai_client(default_gateway):
    gw = default_gateway
    with FakeOpenAIServer() as fake:
        proc = subprocess.run(
            [
                sys.executable,
                str(FIXTURES / "_scenario_app.py"),
                "--family",
                "openllmetry",
                "--openai-base-url",
                fake.base_url,
                "--capture-url",
                f"http://127.0.0.1:{gw.ports['http']}",
                "--no-control",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=REPO_ROOT,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    svc = "chat-app-openllmetry"

    def calls() -> float:
        return total(scrape(gw.ports["admin"]), "llm_sentinel_requests_total", service_name=svc)

    wait_until(lambda: calls() == 7, timeout=20)
    m = scrape(gw.ports["admin"])
    assert total(m, "llm_sentinel_requests_total", service_name=svc, outcome="rate_limited") == 1
    assert total(m, "llm_sentinel_requests_total", service_name=svc, outcome="ok") == 6
    assert total(m, "llm_sentinel_finish_reasons_total", service_name=svc, finish_reason="length") == 1
    chat = {"service_name": svc, "gen_ai_request_model": "gpt-4o-mini", "gen_ai_operation_name": "chat"}
    # chat, chat_truncated and chat_stream_usage report 115 input tokens; a stream without usage reports none
    assert total(m, "gen_ai_client_token_usage_count", gen_ai_token_type="input", **chat) == 3
    assert total(m, "gen_ai_client_token_usage_sum", gen_ai_token_type="input", **chat) == 3 * 115
    # four successful gpt-4o-mini chats plus the rate-limited one (labelled error_type=RateLimitError)
    assert total(m, "gen_ai_client_operation_duration_seconds_count", **chat) == 5
    assert (
        total(m, "gen_ai_client_operation_duration_seconds_count", error_type="RateLimitError", **chat) == 1
    )
    assert total(m, "gen_ai_client_operation_time_to_first_chunk_seconds_count", **chat) == 2
    assert total(m, "llm_sentinel_cost_usd_total", service_name=svc) > 0
    assert total(m, "llm_sentinel_redactions_total") > 0
    wait_until(lambda: gw.out.exists() and b"resourceSpans" in gw.out.read_bytes(), timeout=10)
    gw.stop()
    written = gw.out.read_text()
    assert "[REDACTED:email]" in written
    assert_no_pii(written)


def test_no_fixture_pii_survives_any_output(default_gateway, caplog):
    gw = default_gateway
    sent = {"traces": 0, "metrics": 0, "logs": 0}
    with caplog.at_level(logging.INFO):
        for path in sorted(FIXTURES.glob("*/*.binpb")):
            signal = path.name.split(".")[-2]
            r = requests.post(
                f"http://127.0.0.1:{gw.ports['http']}{CONTENT_TYPES[signal]}",
                data=path.read_bytes(),
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            )
            assert r.status_code == 200, (path, r.text)
            sent[signal] += 1
        wait_until(lambda: gw.out.exists() and gw.out.read_text().count("\n") >= 3, timeout=10)
        gw.stop()
    assert min(sent.values()) > 10
    written = gw.out.read_text()
    assert_no_pii(written)
    assert LOOKALIKE in written
    assert_no_pii(caplog.text)
    lines = written.count("\n")
    assert lines >= 3


def test_metrics_only_count_llm_calls(default_gateway):
    """OpenLIT's extra httpx spans and the semconv fixture's HTTP/DB spans are not LLM calls."""
    gw = default_gateway
    for family in ("openlit", "semconv-1.37"):
        for path in sorted((FIXTURES / family).glob("*.traces.binpb")):
            requests.post(
                f"http://127.0.0.1:{gw.ports['http']}/v1/traces",
                data=path.read_bytes(),
                headers={"Content-Type": "application/x-protobuf"},
                timeout=10,
            ).raise_for_status()
    n_files = len(list((FIXTURES / "openlit").glob("*.traces.binpb"))) + len(
        list((FIXTURES / "semconv-1.37").glob("*.traces.binpb"))
    )
    wait_until(lambda: total(scrape(gw.ports["admin"]), "llm_sentinel_requests_total") == n_files, timeout=10)
    assert Path(gw.out).parent.exists()
