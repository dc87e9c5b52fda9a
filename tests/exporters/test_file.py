"""file exporter: OTLP/JSON lines that decode back to the requests, rotation, append, flushing."""

from __future__ import annotations

import asyncio
import os
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from exporters.file import FACTORY, FileConfig, FileExporter
from gateway.batch import LogBatch, MetricBatch, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.otlpjson import decode, encode
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from tests.gateway.test_otlpjson import make_logs, make_metrics, make_traces

TOP_KEYS: dict[str, Any] = {
    "resourceSpans": ExportTraceServiceRequest,
    "resourceMetrics": ExportMetricsServiceRequest,
    "resourceLogs": ExportLogsServiceRequest,
}
BACKUP_RE = re.compile(r"^out-\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3}(-\d+)?\.jsonl$")


def run(coro: Any, timeout: float = 30) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def build(config: dict[str, Any], name: str = "") -> tuple[FileExporter, SelfTelemetry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("file", name), Kind.EXPORTER, tel, Admission())
    exp = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(exp, FileExporter)
    return exp, tel


async def export_all(exp: FileExporter, batches: list[Any]) -> None:
    await exp.start()
    try:
        for b in batches:
            await exp.consume(b)
    finally:
        await exp.shutdown()


def read_lines(path: Path) -> list[Any]:
    """Every line of `path`, decoded by the signal its top-level key names."""
    out = []
    for line in path.read_bytes().splitlines():
        (key,) = orjson.loads(line).keys()
        out.append(decode(line, TOP_KEYS[key]))
    return out


def span_names(requests: list[Any]) -> list[str]:
    return [sp.name for r in requests for rs in r.resource_spans for ss in rs.scope_spans for sp in ss.spans]


def test_every_signal_shares_one_file_and_decodes_back(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "dir" / "out.jsonl"  # parents are created
    sent = [
        SpanBatch.from_request(make_traces()),
        MetricBatch.from_request(make_metrics()),
        LogBatch.from_request(make_logs()),
    ]
    exp, tel = build({"path": str(path)})
    run(export_all(exp, sent))
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and raw.count(b"\n") == 3
    assert [next(iter(orjson.loads(line))) for line in raw.splitlines()] == list(TOP_KEYS)
    assert read_lines(path) == [b.request for b in sent]
    assert tel.registry.get_sample_value("otelcol_exporter_sent_spans_total", {"exporter": "file"}) == 2


def test_rotation_keeps_lines_whole_ordered_and_backups_bounded(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    batches = [SpanBatch.from_request(make_traces(1, service=f"svc-{i}")) for i in range(12)]
    for i, b in enumerate(batches):
        b.request.resource_spans[0].scope_spans[0].spans[0].name = f"span-{i:02d}"
    line_len = len(encode(batches[0].request)) + 1
    max_mb = (line_len * 2.5) / (1024 * 1024)  # two lines per file
    exp, _ = build({"path": str(path), "rotation": {"max_megabytes": max_mb, "max_backups": 3}})
    run(export_all(exp, batches))

    backups = sorted(p for p in tmp_path.iterdir() if p != path)
    assert len(backups) == 3 and all(BACKUP_RE.match(p.name) for p in backups), backups
    for p in [*backups, path]:
        assert p.stat().st_size <= max_mb * 1024 * 1024
    # Oldest backups were deleted; what is left is the newest lines, in order, each line whole.
    names = span_names([r for p in [*backups, path] for r in read_lines(p)])
    assert names == [f"span-{i:02d}" for i in range(12 - len(names), 12)]
    assert len(names) == 8


def test_a_line_larger_than_the_limit_still_gets_written(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exp, _ = build({"path": str(path), "rotation": {"max_megabytes": 0.0001}})  # ~100 bytes
    big = [SpanBatch.from_request(make_traces(3)) for _ in range(2)]
    run(export_all(exp, big))
    assert len(read_lines(path)) == 1
    (backup,) = [p for p in tmp_path.iterdir() if p != path]
    assert read_lines(backup) == [big[0].request]


def test_append_false_truncates_and_append_true_keeps(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    first = SpanBatch.from_request(make_traces(1))
    second = LogBatch.from_request(make_logs())
    run(export_all(build({"path": str(path)})[0], [first]))
    run(export_all(build({"path": str(path), "append": True})[0], [second]))
    assert read_lines(path) == [first.request, second.request]
    run(export_all(build({"path": str(path)})[0], [second]))
    assert read_lines(path) == [second.request]


def test_append_false_with_rotation_keeps_the_previous_file_as_backup(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    old = SpanBatch.from_request(make_traces(1))
    new = LogBatch.from_request(make_logs())
    run(export_all(build({"path": str(path)})[0], [old]))
    run(export_all(build({"path": str(path), "rotation": {}})[0], [new]))
    assert read_lines(path) == [new.request]
    (backup,) = [p for p in tmp_path.iterdir() if p != path]
    assert BACKUP_RE.match(backup.name) and read_lines(backup) == [old.request]


def test_max_days_deletes_old_backups(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    fmt = "%Y-%m-%dT%H-%M-%S.%f"
    old = tmp_path / f"out-{(datetime.now(UTC) - timedelta(days=3)).strftime(fmt)[:-3]}.jsonl"
    recent = tmp_path / f"out-{(datetime.now(UTC) - timedelta(hours=1)).strftime(fmt)[:-3]}.jsonl"
    unrelated = tmp_path / "other-2000-01-01T00-00-00.000.jsonl"
    for p in (old, recent, unrelated):
        p.write_bytes(b"")
    exp, _ = build({"path": str(path), "append": True, "rotation": {"max_days": 2}})
    run(export_all(exp, [SpanBatch.from_request(make_traces(1))]))
    assert not old.exists()
    assert recent.exists() and unrelated.exists()


def test_flush_interval_makes_lines_visible_before_shutdown(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def scenario() -> tuple[int, int]:
        exp, _ = build({"path": str(path), "flush_interval": "50ms"})
        await exp.start()
        await exp.consume(SpanBatch.from_request(make_traces(1)))
        deadline = time.monotonic() + 5
        while path.stat().st_size == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        visible = path.stat().st_size
        await exp.shutdown()
        return visible, path.stat().st_size

    visible, final = run(scenario())
    assert visible > 0 and visible == final


def test_many_consumers_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    batches = [SpanBatch.from_request(make_traces(5)) for _ in range(40)]
    exp, _ = build({"path": str(path), "sending_queue": {"num_consumers": 8}})
    run(export_all(exp, batches))
    assert len(read_lines(path)) == 40


def test_single_consumer_is_the_default_and_keeps_order(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    exp, _ = build({"path": str(path), "sending_queue": {"queue_size": 50}})
    assert exp.config.sending_queue.num_consumers == 1
    batches = [SpanBatch.from_request(make_traces(1)) for _ in range(20)]
    for i, b in enumerate(batches):
        b.request.resource_spans[0].scope_spans[0].spans[0].name = f"s{i}"
    run(export_all(exp, batches))
    assert span_names(read_lines(path)) == [f"s{i}" for i in range(20)]


def test_two_exporters_cannot_share_a_path(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"

    async def scenario() -> str:
        a, _ = build({"path": str(path)}, "a")
        b, _ = build({"path": str(tmp_path / "." / "out.jsonl")}, "b")
        await a.start()
        try:
            with pytest.raises(RuntimeError) as info:
                await b.start()
        finally:
            await b.shutdown()
            await a.shutdown()
        c, _ = build({"path": str(path)}, "c")  # free again after shutdown
        await c.start()
        await c.shutdown()
        return str(info.value)

    assert "already written" in run(scenario())


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="path"):
        FACTORY.config.model_validate({})
    with pytest.raises(ValueError, match="path"):
        FACTORY.config.model_validate({"path": " "})
    with pytest.raises(ValueError, match="max_megabytes"):
        FACTORY.config.model_validate({"path": "x", "rotation": {"max_megabytes": 0}})
    cfg = FileConfig.model_validate({"path": "x", "rotation": {}})
    assert cfg.rotation is not None
    assert cfg.rotation.max_megabytes == 100 and cfg.rotation.max_backups == 100
    assert cfg.rotation.max_days == 0 and cfg.rotation.localtime is False
    assert cfg.flush_interval == 1.0 and cfg.append is False


def test_unwritable_path_fails_start_with_a_clear_message(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")

    async def scenario() -> str:
        exp, _ = build({"path": str(blocker / "out.jsonl")})
        with pytest.raises(RuntimeError) as info:
            await exp.start()
        await exp.shutdown()
        return str(info.value)

    msg = run(scenario())
    assert "cannot open" in msg and os.fspath(blocker) in msg
