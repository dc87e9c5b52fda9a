"""Persistent sending queues across restarts and crashes, with real exporters and real backends."""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from exporters.file import FACTORY as FILE_FACTORY
from exporters.file import FileExporter
from gateway.anomaly import AnomalyBatch, AnomalyEvent, AnomalyType, Severity
from gateway.batch import SpanBatch
from gateway.component import ComponentId, Kind
from gateway.persistent_queue import storage_dir_name
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.conftest import REPO_ROOT, free_port
from tests.exporters.test_otlp import FAST_RETRY, GrpcSink, build, metric, run
from tests.gateway.test_otlpjson import make_traces


def spans(n: int, tag: str = "svc") -> list[SpanBatch]:
    return [SpanBatch.from_request(make_traces(1, service=f"{tag}-{i}")) for i in range(n)]


def wal_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*/*.wal"))


async def until(pred: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


# ---------------------------------------------------------------- exporter restarts
def test_backlog_left_at_shutdown_is_delivered_in_order_after_restart(tmp_path: Path) -> None:
    port = free_port()
    sent = spans(30)
    config = {
        "endpoint": f"127.0.0.1:{port}",
        "timeout": "1s",
        "retry_on_failure": {**FAST_RETRY, "max_elapsed_time": 0},
        "sending_queue": {"num_consumers": 1, "storage": {"directory": str(tmp_path)}},
    }

    async def first_run() -> tuple[float, float]:
        exp, tel = build(config, name="backend")
        await exp.start()
        for b in sent:  # accepted although the backend is down: they are on disk
            await exp.consume(b)
        queued = metric(tel, "otelcol_exporter_queue_size", "otlp/backend")
        on_disk = metric(tel, "llm_sentinel_exporter_queue_storage_bytes", "otlp/backend")
        with contextlib.suppress(TimeoutError):  # as the runtime bounds it: the queue cannot drain
            await asyncio.wait_for(exp.shutdown(), 0.3)
        return queued, on_disk

    queued, on_disk = run(first_run())
    assert queued >= len(sent) - 1  # one may be in flight (retrying)
    assert on_disk > sum(b.nbytes for b in sent)
    assert wal_files(tmp_path), "the backlog must stay on disk"

    async def second_run() -> tuple[list[bytes], float, float]:
        exp, tel = build(config, name="backend")
        await exp.start()
        backlog = metric(tel, "otelcol_exporter_queue_size", "otlp/backend")
        async with GrpcSink(port=port) as sink:
            await until(lambda: len(sink.received) >= len(sent))
            await exp.shutdown()
        return (
            [r.body for r in sink.received],
            backlog,
            metric(tel, "llm_sentinel_exporter_queue_storage_bytes", "otlp/backend"),
        )

    bodies, backlog, left = run(second_run())
    assert backlog >= len(sent) - 1  # counted in the queue size before it drains
    assert bodies == [b.serialize() for b in sent]  # all of it, in order, exactly once here
    assert left == 0 and wal_files(tmp_path) == []  # drained: compacted away


def test_alerts_and_spans_survive_a_restart_of_the_file_exporter(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    storage = tmp_path / "queue"
    alerts = AnomalyBatch(
        [
            AnomalyEvent(
                time_ns=1_700_000_000_000_000_000 + i,
                service="checkout",
                provider="openai",
                operation="chat",
                model="gpt-4o",
                metric="latency_s",
                type=AnomalyType.LATENCY_SPIKE,
                severity=Severity.CRITICAL,
                value=9.5,
                baseline=1.0,
                score=0.99,
                detector="ensemble",
            )
            for i in range(2)
        ]
    )
    batches: list[Any] = [*spans(2), alerts, *spans(1, "late")]

    def exporter() -> tuple[FileExporter, SelfTelemetry]:
        tel = SelfTelemetry()
        ctx = _context(ComponentId("file", "alerts"), Kind.EXPORTER, tel, Admission())
        cfg = FILE_FACTORY.config.model_validate(
            {
                "path": str(out),
                "append": True,
                "flush_interval": 0,
                "sending_queue": {"storage": {"directory": str(storage)}},
            }
        )
        exp = FILE_FACTORY.create(ctx, cfg)
        assert isinstance(exp, FileExporter)
        return exp, tel

    async def accept_only() -> None:
        exp, _ = exporter()
        for b in batches:  # never started: nothing is sent, everything is persisted
            await exp.consume(b)
        await exp.shutdown()

    run(accept_only())
    assert (storage / "file-alerts").is_dir() and not out.exists()

    async def deliver() -> float:
        exp, tel = exporter()
        await exp.start()
        await until(lambda: exp._storage is not None and exp._storage.unacked() == 0)
        await exp.shutdown()
        return metric(tel, "otelcol_exporter_sent_anomalies_total", "file/alerts")

    assert run(deliver()) == 2
    lines = out.read_bytes().splitlines()
    assert len(lines) == 5
    assert [orjson.loads(x)["resourceSpans"][0]["resource"]["attributes"][0]["value"] for x in lines[:2]] == [
        {"stringValue": "svc-0"},
        {"stringValue": "svc-1"},
    ]
    assert b"\n".join(lines[2:4]) + b"\n" == alerts.serialize()  # alerts exactly as they were
    assert b"late-0" in lines[4]


def test_two_exporters_cannot_share_a_queue_directory(tmp_path: Path) -> None:
    config = {"endpoint": "127.0.0.1:1", "sending_queue": {"storage": {"directory": str(tmp_path)}}}

    async def scenario() -> str:
        one, _ = build(config, name="x")
        two, _ = build(config, name="x")
        await one.start()
        try:
            with pytest.raises(RuntimeError) as info:
                await two.start()
        finally:
            await one.shutdown()
        await two.start()  # free again
        await two.shutdown()
        return str(info.value)

    msg = run(scenario())
    assert "otlp/x" in msg and "in use" in msg and str(os.getpid()) in msg


# ---------------------------------------------------------------- a hard crash of a real gateway
class Backend:
    """A plain HTTP server that answers OTLP/HTTP 200 and records the span names it received."""

    def __init__(self, port: int) -> None:
        self.names: list[str] = []
        received = self.names

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                req = ExportTraceServiceRequest.FromString(body)
                received.extend(
                    sp.name for rs in req.resource_spans for ss in rs.scope_spans for sp in ss.spans
                )
                payload = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


class Gateway:
    """`sentinel run --config` in a subprocess, its output in a file."""

    def __init__(self, config: Path, log: Path) -> None:
        self._log = log.open("ab")
        self.log_path = log
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "--config", str(config)],
            cwd=REPO_ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, admin: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log_path.read_text()
            url = f"http://127.0.0.1:{admin}/readyz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
            time.sleep(0.05)
        raise AssertionError(f"not ready:\n{self.log_path.read_text()}")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


@pytest.fixture
def gateways() -> Iterator[list[Gateway]]:
    started: list[Gateway] = []
    yield started
    for g in started:
        g.close()


def post_span(port: int, name: str) -> int:
    req = make_traces(1)
    req.resource_spans[0].scope_spans[0].spans[0].name = name
    http_req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/traces",
        data=req.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        method="POST",
    )
    with urllib.request.urlopen(http_req, timeout=10) as resp:
        return int(resp.status)


def test_sigkill_after_200_loses_nothing(tmp_path: Path, gateways: list[Gateway]) -> None:
    n = 40
    http_port, admin, backend = free_port(), free_port(), free_port()
    queue_dir = tmp_path / "queue"
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{http_port}"}}}},
        "exporters": {
            "otlp/backend": {
                "endpoint": f"http://127.0.0.1:{backend}",
                "protocol": "http/protobuf",
                "compression": "none",
                "timeout": "1s",
                "retry_on_failure": {
                    "initial_interval": "20ms",
                    "max_interval": "100ms",
                    "max_elapsed_time": 0,
                },
                "sending_queue": {
                    "num_consumers": 1,
                    "storage": {"directory": str(queue_dir), "fsync": "batch"},
                },
            }
        },
        "service": {
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["otlp/backend"]}},
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{admin}"}, "logs": {"level": "warn"}},
            "shutdown_timeout": "5s",
        },
    }
    cfg_path = tmp_path / "gateway.yaml"
    cfg_path.write_text(yaml.safe_dump(config))
    log = tmp_path / "gateway.log"

    # 1. the backend is down; every request is answered 200 once it is on disk; then a hard kill
    gw = Gateway(cfg_path, log)
    gateways.append(gw)
    gw.wait_ready(admin)
    names = [f"span-{i:03d}" for i in range(n)]
    assert all(post_span(http_port, name) == 200 for name in names)
    gw.proc.send_signal(signal.SIGKILL)
    assert gw.proc.wait(10) == -signal.SIGKILL
    assert wal_files(queue_dir) and (queue_dir / storage_dir_name("otlp/backend")).is_dir()

    # 2. backend up, same config and directory: the backlog is delivered, in order
    with Backend(backend) as sink:
        gw2 = Gateway(cfg_path, log)
        gateways.append(gw2)
        gw2.wait_ready(admin)
        deadline = time.monotonic() + 15
        while len(set(sink.names)) < n and time.monotonic() < deadline:
            time.sleep(0.05)
        assert set(sink.names) == set(names), log.read_text()[-3000:]
        first_seen = list(dict.fromkeys(sink.names))
        assert first_seen == names
        gw2.proc.send_signal(signal.SIGTERM)
        assert gw2.proc.wait(20) == 0, log.read_text()[-3000:]
    # nothing was ever delivered before the kill, so nothing is duplicated either
    assert len(sink.names) == n
    assert wal_files(queue_dir) == []
    assert "Traceback" not in log.read_text()
