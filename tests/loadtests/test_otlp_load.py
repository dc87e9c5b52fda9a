"""Smoke test of the OTLP load generator: short runs against the naive receiver and the gateway."""

from __future__ import annotations

import pytest

from loadtests.otlp_load import build_payloads, run


@pytest.fixture(scope="module")
def payloads():
    return build_payloads(8, 64, gzipped=False)


@pytest.mark.parametrize(
    ("target", "transport"),
    [("naive", "http"), ("naive", "grpc"), ("gateway", "http"), ("gateway", "grpc")],
)
def test_load_arrives(payloads, target: str, transport: str) -> None:
    res = run(
        target=target,
        transport=transport,
        spans_per_request=64,
        concurrency=2,
        duration=1.0,
        warmup=0.3,
        payloads=payloads,
    )
    assert res.errors == 0 and not res.error_samples, res.error_samples
    assert res.requests_ok > 0 and res.spans_per_s > 0 and res.spans_per_cpu_s > 0
    assert res.p50_ms > 0 and res.peak_rss_mib > 0
    # every span the responses acknowledged was counted by the target itself
    assert res.client_spans > 0 and res.target_spans == res.client_spans
