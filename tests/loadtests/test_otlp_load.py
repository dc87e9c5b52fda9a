"""Smoke test of the OTLP load generator: short runs against the naive receiver and the gateway."""

from __future__ import annotations

import pytest

from loadtests.otlp_load import build_payloads, run
from loadtests.rawhttp import _parse_head


@pytest.fixture(scope="module")
def payloads():
    return build_payloads(8, 64, gzipped=False)


@pytest.mark.parametrize(
    ("target", "transport", "client"),
    [
        ("naive", "http", "aiohttp"),
        ("naive", "grpc", "-"),
        ("gateway", "http", "aiohttp"),
        ("gateway", "http", "raw"),
        ("gateway", "grpc", "-"),
    ],
)
def test_load_arrives(payloads, target: str, transport: str, client: str) -> None:
    res = run(
        target=target,
        transport=transport,
        http_client="aiohttp" if client == "-" else client,
        spans_per_request=64,
        concurrency=2,
        duration=1.0,
        warmup=0.3,
        payloads=payloads,
    )
    assert res.errors == 0 and not res.error_samples, res.error_samples
    assert res.requests_ok > 0 and res.spans_per_s > 0 and res.spans_per_cpu_s > 0
    assert res.p50_ms > 0 and res.peak_rss_mib > 0 and res.rss_mib_median > 0
    assert res.http_client == client
    # every span the responses acknowledged was counted by the target itself
    assert res.client_spans > 0 and res.target_spans == res.client_spans


def test_raw_client_reads_response_heads() -> None:
    head = b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 1\r\nContent-Length: 12\r\n\r\n"
    assert _parse_head(head) == (429, 12, False)
    assert _parse_head(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n") == (200, 0, True)
    with pytest.raises(ValueError, match="chunked"):
        _parse_head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    with pytest.raises(ValueError, match="not an HTTP"):
        _parse_head(b"SSH-2.0-x\r\n\r\n")
