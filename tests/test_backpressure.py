"""Backpressure with real clients: OTel SDK exporters in several processes overload a gateway
process, get 429/503 + Retry-After or UNAVAILABLE + RetryInfo, retry, and every span they
created arrives exactly once, while the gateway's peak RSS stays under its memory limit.

Two shapes: (a) more offered than the pipeline processes: the file exporter's OTLP/JSON
encoding and detection are the slowest stages, and a two-batch queue in front of them makes
the batch buffer fill at once; (b) a slow downstream: an `otlp` exporter with a two-batch
queue to a sink that takes one request at a time.

The clients are `loadtests.sdk_client` processes: real SDK spans, the SDK's own exporters
and retries; a batch the SDK gives up on is exported again (counted), as an application
that must not lose data would. Span ids are compared end to end: created by the clients ==
accepted by the gateway == written by the sink, with no duplicates.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from loadtests.overload import MIB, ClientSpec, Gateway, Limits, SlowSink, clients, gateway_config, reports
from tests.conftest import free_port, wait_until
from tests.receivers.otlp_helpers import spans_in_file

# The full pipeline's working set on a 2-core machine is ~190-240 MiB idle and ~270-350 MiB
# once warm under load; 450 MiB leaves little headroom on purpose.
LIMIT = Limits(limit_mib=450, spike_mib=80, request_limit_mib=1)
SDK_SPANS = 2000  # per client of real SDK spans, their ids checked end to end
PREBUILT_SPANS = 6144  # per client of prebuilt llmgen requests: cheap to send, so they overload


def spec(gw: Gateway, tmp: Path, i: int, transport: str, payload: str) -> ClientSpec:
    sdk = payload == "sdk"
    return ClientSpec(
        transport=transport,
        endpoint=f"127.0.0.1:{gw.ports[transport]}",
        spans=SDK_SPANS if sdk else PREBUILT_SPANS,
        batch=200 if sdk else 512,
        threads=4,
        payload=payload,
        timeout=30,
        deadline=60,
        seed=i + 1,
        ids_out=str(tmp / f"ids-{i}.txt") if sdk else "",
    )


def run_clients(gw: Gateway, tmp: Path, mix: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """One client process per (transport, payload); their reports once all are done."""
    with clients([spec(gw, tmp, i, t, p) for i, (t, p) in enumerate(mix)]) as procs:
        return reports(procs, timeout=80)


def created_ids(tmp: Path, mix: list[tuple[str, str]]) -> list[str]:
    return [
        line
        for i, (_, payload) in enumerate(mix)
        if payload == "sdk"
        for line in (tmp / f"ids-{i}.txt").read_text().split()
    ]


def check_clients(reps: list[dict[str, Any]], mix: list[tuple[str, str]], *, each_transport: bool) -> int:
    """Every client delivered everything; refusals happened (on each transport if asked), always
    with a retry hint. Returns the spans created."""
    refused = {"http": 0, "grpc": 0}
    for rep, (transport, _) in zip(reps, mix, strict=True):
        assert rep["created"] > 0 and rep["delivered"] == rep["created"] and rep["undelivered"] == 0, rep
        assert rep["refusals_without_hint"] == 0, rep
        codes = {"http": ("429", "503"), "grpc": ("UNAVAILABLE",)}[transport]
        refused[transport] += sum(rep["responses"].get(code, 0) for code in codes)
        if rep["refusals_with_hint"]:
            assert rep["hint_min_s"] >= 1.0, rep
    assert all(refused.values()) if each_transport else any(refused.values()), refused
    return sum(int(rep["created"]) for rep in reps)


@pytest.fixture
def gw_ports() -> dict[str, int]:
    return {"grpc": free_port(), "http": free_port(), "admin": free_port()}


def test_cpu_overload_pushes_back_and_loses_nothing(gw_ports: dict[str, int], tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    mix = [("http", "prebuilt"), ("grpc", "prebuilt"), ("http", "sdk"), ("grpc", "sdk")]
    cfg = gateway_config(gw_ports, out, LIMIT)
    # the CPU-heavy end of the pipeline (OTLP/JSON encoding, detection) sets the pace: a short
    # queue in front of it makes the batch buffer fill, then receivers refuse
    cfg["exporters"]["file/out"]["sending_queue"] = {"queue_size": 2, "num_consumers": 1}
    cfg["processors"]["batch"] = {"send_batch_size": 512, "timeout": "50ms", "max_buffered_items": 1024}
    with Gateway(cfg, gw_ports, tmp_path) as gw:
        reps = run_clients(gw, tmp_path, mix)
        total = check_clients(reps, mix, each_transport=True)
        wait_until(lambda: gw.metrics().get("otelcol_exporter_sent_spans_total{file/out}", 0) >= total, 30)
        metrics = gw.metrics()
        peak = gw.peak_rss()
    assert metrics["otelcol_receiver_accepted_spans_total"] == total
    assert metrics["otelcol_exporter_sent_spans_total{file/out}"] == total
    assert metrics.get("otelcol_processor_dropped_items_total", 0) == 0
    written = Counter(s.span_id.hex() for s in spans_in_file(out))
    assert sum(written.values()) == total  # nothing twice from a request a client gave up on
    sdk_ids = created_ids(tmp_path, mix)
    assert len(sdk_ids) == 2 * SDK_SPANS and all(written[i] == 1 for i in sdk_ids)
    assert peak < LIMIT.limit_mib * MIB, f"peak RSS {peak / MIB:.0f} MiB"


def test_slow_downstream_fills_the_queue_then_everything_arrives(
    gw_ports: dict[str, int], tmp_path: Path
) -> None:
    mix = [("http", "sdk"), ("grpc", "sdk")]
    limits = Limits(LIMIT.limit_mib, LIMIT.spike_mib, request_limit_mib=0)  # pushback from the queue only
    with SlowSink(delay=0.2, keep_ids=True) as sink:
        cfg = gateway_config(gw_ports, tmp_path / "unused.jsonl", limits, sink=sink.endpoint, detect=False)
        cfg["processors"]["batch"] = {"send_batch_size": 256, "timeout": "50ms", "max_buffered_items": 512}
        cfg["exporters"]["otlp/sink"]["sending_queue"]["queue_size"] = 2
        with Gateway(cfg, gw_ports, tmp_path) as gw:
            reps = run_clients(gw, tmp_path, mix)
            total = check_clients(reps, mix, each_transport=False)  # one client may finish first
            wait_until(lambda: sink.spans >= total, 30)
            metrics = gw.metrics()
            peak = gw.peak_rss()
    assert metrics["otelcol_receiver_accepted_spans_total"] == total
    assert metrics.get("otelcol_exporter_enqueue_failed_spans_total", 0) > 0  # the queue did fill
    assert sink.spans == total and len(set(sink.ids)) == total
    assert sorted(i.hex() for i in sink.ids) == sorted(created_ids(tmp_path, mix))
    assert peak < limits.limit_mib * MIB, f"peak RSS {peak / MIB:.0f} MiB"
