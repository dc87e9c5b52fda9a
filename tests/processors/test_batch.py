"""The batch processor against real batches: triggers, splitting, shutdown, backpressure, config."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

from gateway.batch import Batch, LogBatch, MetricBatch, SpanBatch
from gateway.component import ComponentId, Kind, PermanentError, RefusedError, ThrottledError
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from processors.batch import FACTORY, BatchConfig, BatchProcessor


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class Capture:
    """End of the chain: records what arrives; can fail or stall on demand."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.batches: list[Batch] = []
        self.fail = fail
        self.gate: asyncio.Event | None = None
        self.arrived = asyncio.Event()

    async def consume(self, batch: Batch) -> None:
        if self.gate is not None:
            await self.gate.wait()
        if self.fail is not None:
            raise self.fail
        self.batches.append(batch)
        self.arrived.set()

    def span_names(self) -> list[str]:
        return [sp.name for b in self.batches for sp in b.iter_items()]

    def sizes(self) -> list[int]:
        return [b.item_count for b in self.batches]


class Harness:
    def __init__(self, **config: Any) -> None:
        self.telemetry = SelfTelemetry()
        self.admission = Admission()
        ctx = _context(ComponentId("batch"), Kind.PROCESSOR, self.telemetry, self.admission, "traces")
        proc = FACTORY.create(ctx, BatchConfig.model_validate(config))
        assert isinstance(proc, BatchProcessor)
        self.proc = proc
        self.sink = Capture()
        self.proc.set_next(self.sink)

    def sent(self, trigger: str) -> float:
        labels = {"processor": "batch", "pipeline": "traces", "trigger": trigger}
        return (
            self.telemetry.registry.get_sample_value(
                "otelcol_processor_batch_batch_send_size_items_total", labels
            )
            or 0.0
        )

    def dropped(self) -> float:
        labels = {"processor": "batch", "pipeline": "traces"}
        return (
            self.telemetry.registry.get_sample_value("otelcol_processor_dropped_items_total", labels) or 0.0
        )


_counter = iter(range(10**9))


def spans(n: int, services: int = 1) -> SpanBatch:
    """A request of `n` spans named s<k> (k global and increasing), spread over `services` resources."""
    req = ExportTraceServiceRequest()
    per = -(-n // services)
    left = n
    for r in range(services):
        rs = req.resource_spans.add()
        kv = rs.resource.attributes.add()
        kv.key, kv.value.string_value = "service.name", f"svc{r}"
        ss = rs.scope_spans.add()
        for _ in range(min(per, left)):
            k = next(_counter)
            sp = ss.spans.add(
                name=f"s{k}", trace_id=k.to_bytes(16, "big"), span_id=(k + 1).to_bytes(8, "big")
            )
            sp.start_time_unix_nano, sp.end_time_unix_nano = 1, 2
        left -= min(per, left)
    return SpanBatch.from_request(req, wire=req.SerializeToString())


def logs(n: int) -> LogBatch:
    req = ExportLogsServiceRequest()
    sl = req.resource_logs.add().scope_logs.add()
    for k in range(n):
        sl.log_records.add(time_unix_nano=k + 1).body.string_value = f"line {k}"
    return LogBatch.from_request(req)


def gauges(points_per_metric: list[int]) -> MetricBatch:
    req = ExportMetricsServiceRequest()
    sm = req.resource_metrics.add().scope_metrics.add()
    for i, p in enumerate(points_per_metric):
        m = sm.metrics.add(name=f"m{i}")
        for j in range(p):
            m.gauge.data_points.add(as_int=j)
    return MetricBatch.from_request(req)


async def settle(pred: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------- triggers
def test_size_trigger_sends_once_enough_items_are_buffered() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=10, timeout="10s")
        await h.proc.start()
        await h.proc.consume(spans(6))
        await asyncio.sleep(0.02)
        assert h.sink.batches == []  # below size, timer far away
        assert h.admission.total_held() > 0
        await h.proc.consume(spans(5))
        await settle(lambda: h.sink.batches)
        assert h.sink.sizes() == [11]  # send_batch_size is a trigger, not a cap
        assert h.sent("size") == 11
        assert h.admission.held_bytes["batch:traces:batch"] == 0
        await h.proc.shutdown()

    run(main())


def test_consume_returns_before_the_next_consumer_is_done() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=1, timeout="10s")
        h.sink.gate = asyncio.Event()  # downstream stalls
        await h.proc.start()
        await asyncio.wait_for(h.proc.consume(spans(3)), 0.5)
        h.sink.gate.set()
        await settle(lambda: h.sink.batches)
        await h.proc.shutdown()

    run(main())


def test_timeout_trigger_sends_partial_batch() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=1000, timeout="50ms")
        await h.proc.start()
        t0 = time.monotonic()
        await h.proc.consume(spans(3))
        await h.proc.consume(spans(4))
        await asyncio.wait_for(h.sink.arrived.wait(), 1.0)
        waited = time.monotonic() - t0
        assert 0.04 <= waited < 0.5
        assert h.sink.sizes() == [7]
        assert h.sent("timeout") == 7 and h.sent("size") == 0
        await h.proc.shutdown()

    run(main())


def test_zero_timeout_sends_every_batch_at_once_ignoring_send_batch_size() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=100, timeout=0, send_batch_max_size=100)
        await h.proc.start()
        await h.proc.consume(spans(3))
        await settle(lambda: h.sink.batches)
        assert h.sink.sizes() == [3]
        await h.proc.consume(spans(250))
        await settle(lambda: sum(h.sink.sizes()) == 253)
        assert h.sink.sizes() == [3, 100, 100, 50]
        await h.proc.shutdown()

    run(main())


# ---------------------------------------------------------------- splitting
def test_max_size_splits_and_keeps_every_span_once_in_order() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=40, send_batch_max_size=50, timeout="10s")
        await h.proc.start()
        inputs = [spans(n, services=s) for n, s in ((7, 1), (33, 3), (61, 2), (12, 4), (3, 1))]
        expected = [sp.name for b in inputs for sp in b.iter_items()]
        for b in inputs:
            await h.proc.consume(b)
        await h.proc.shutdown()
        assert h.sink.span_names() == expected
        assert max(h.sink.sizes()) <= 50
        assert sum(h.sink.sizes()) == 116
        assert h.sent("size") + h.sent("shutdown") == 116
        # rows of every sent batch point at the right span and service
        for out in h.sink.batches:
            assert out.string_column("name") == [sp.name for sp in out.iter_items()]
            assert len(out) == out.item_count

    run(main())


def test_size_trigger_with_max_size_keeps_the_remainder_buffered() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=40, send_batch_max_size=50, timeout="10s")
        await h.proc.start()
        first = spans(95)
        await h.proc.consume(first)
        await settle(lambda: len(h.sink.batches) == 2)
        await asyncio.sleep(0.02)
        assert h.sink.sizes() == [50, 45]  # 95 ≥ 40 → 50 out; 45 ≥ 40 → out; nothing left
        await h.proc.consume(spans(30))
        await asyncio.sleep(0.02)
        assert h.sink.sizes() == [50, 45]  # 30 < 40 waits
        await h.proc.shutdown()
        assert h.sink.sizes() == [50, 45, 30]
        assert h.sent("shutdown") == 30

    run(main())


def test_metrics_are_counted_and_split_by_data_points() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=10, send_batch_max_size=10, timeout="10s")
        await h.proc.start()
        await h.proc.consume(gauges([4, 4]))
        await asyncio.sleep(0.01)
        assert h.sink.batches == []
        await h.proc.consume(gauges([3, 6]))
        await settle(lambda: h.sink.batches)
        await h.proc.shutdown()
        # 17 points: 4+4 (adding 3 would exceed 10, metrics stay whole) go at once; 9 < 10 wait
        assert h.sink.sizes() == [8, 9]
        assert (h.sent("size"), h.sent("shutdown")) == (8, 9)
        assert [m.name for b in h.sink.batches for m in b.iter_items()] == ["m0", "m1", "m0", "m1"]

    run(main())


def test_logs_are_batched() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=5, timeout="10s")
        await h.proc.start()
        for _ in range(3):
            await h.proc.consume(logs(2))
        await settle(lambda: h.sink.batches)
        await h.proc.shutdown()
        assert h.sink.sizes() == [6]
        assert all(isinstance(b, LogBatch) for b in h.sink.batches)
        bodies = [lr.body.string_value for b in h.sink.batches for lr in b.iter_items()]
        assert bodies == ["line 0", "line 1"] * 3

    run(main())


# ---------------------------------------------------------------- shutdown, failures, backpressure
def test_shutdown_flushes_everything_buffered() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=1000, timeout="1h")
        await h.proc.start()
        await h.proc.consume(spans(5))
        await h.proc.consume(logs(0))  # empty: ignored
        await h.proc.shutdown()
        assert h.sink.sizes() == [5]
        assert h.sent("shutdown") == 5
        assert h.admission.total_held() == 0
        # after shutdown data still moves on rather than being stranded in a buffer
        await h.proc.consume(spans(2))
        assert h.sink.sizes() == [5, 2]

    run(main())


def test_refused_batches_are_held_and_delivered_once_downstream_accepts() -> None:
    """A full exporter queue is waited out: data the client was told we accepted is not dropped."""

    async def main() -> None:
        h = Harness(send_batch_size=2, timeout="10s", max_buffered_items=4)
        h.sink.fail = RefusedError("queue full", retry_after=0.05)
        await h.proc.start()
        await h.proc.consume(spans(3))  # sent at once (size trigger), refused, held
        await asyncio.sleep(0.2)
        assert h.dropped() == 0 and not h.sink.batches
        await h.proc.consume(spans(4))  # fills the buffer to its limit
        with pytest.raises(ThrottledError) as err:  # now the client is pushed back: 429 + Retry-After
            await h.proc.consume(spans(1))
        assert err.value.retry_after is not None and err.value.retry_after >= 1.0
        h.sink.fail = None
        await settle(lambda: sum(h.sink.sizes()) == 7)
        assert h.dropped() == 0
        await h.proc.consume(spans(2))  # and accepts again
        await settle(lambda: sum(h.sink.sizes()) == 9)
        await h.proc.shutdown()
        assert h.admission.total_held() == 0

    run(main())


def test_permanent_downstream_errors_are_counted_and_do_not_stop_the_sender() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=2, timeout="10s")
        h.sink.fail = PermanentError("bad data")
        await h.proc.start()
        await h.proc.consume(spans(3))  # accepted: the client does not see the later failure
        await settle(lambda: h.dropped() == 3)
        h.sink.fail = None
        await h.proc.consume(spans(2))
        await settle(lambda: h.sink.batches)
        assert h.sink.sizes() == [2]
        assert h.sent("size") == 2
        await h.proc.shutdown()

    run(main())


def test_sender_survives_an_internal_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(cls: type, batches: Any) -> Batch:
        raise RuntimeError("boom")

    async def main() -> None:
        h = Harness(send_batch_size=10, timeout="10s")
        await h.proc.start()
        with monkeypatch.context() as m:
            m.setattr(SpanBatch, "concat", classmethod(broken))
            await h.proc.consume(spans(5))
            await h.proc.consume(spans(5))
            await settle(lambda: h.dropped() == 10)
        assert h.admission.total_held() == 0
        await h.proc.consume(spans(10))
        await settle(lambda: h.sink.batches)
        await h.proc.shutdown()
        assert h.sink.sizes() == [10]

    run(main())


def test_full_buffer_makes_consume_wait_for_the_sender() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=10, max_buffered_items=20, timeout="10s")
        h.sink.gate = asyncio.Event()
        await h.proc.start()
        await h.proc.consume(spans(12))  # sent, and stuck downstream
        await settle(lambda: h.proc._items == 0)
        await h.proc.consume(spans(25))  # buffered (the sender is busy)
        blocked = asyncio.create_task(h.proc.consume(spans(1)))
        await asyncio.sleep(0.05)
        assert not blocked.done()  # 25 ≥ 20: consume waits instead of growing the buffer
        h.sink.gate.set()
        await asyncio.wait_for(blocked, 1.0)
        await h.proc.shutdown()
        assert sum(h.sink.sizes()) == 38

    run(main())


def test_shutdown_releases_consumers_waiting_for_space() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=10, max_buffered_items=10, timeout="10s")
        h.sink.gate = asyncio.Event()
        await h.proc.start()
        await h.proc.consume(spans(10))
        await settle(lambda: h.proc._items == 0)
        await h.proc.consume(spans(10))
        waiting = asyncio.create_task(h.proc.consume(spans(1)))
        await asyncio.sleep(0.02)
        assert not waiting.done()
        stopping = asyncio.create_task(h.proc.shutdown())
        await asyncio.sleep(0.02)
        h.sink.gate.set()
        await asyncio.wait_for(asyncio.gather(waiting, stopping), 1.0)
        assert sum(h.sink.sizes()) == 21

    run(main())


# ---------------------------------------------------------------- config
def test_config_defaults_match_the_collector() -> None:
    cfg = BatchConfig.model_validate({})
    assert (cfg.send_batch_size, cfg.timeout, cfg.send_batch_max_size) == (8192, 0.2, 0)
    assert cfg.buffer_limit == 4 * 8192
    assert BatchConfig.model_validate({"timeout": "1s500ms"}).timeout == 1.5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"send_batch_size": 100, "send_batch_max_size": 50}, "send_batch_max_size"),
        ({"send_batch_size": 0}, "greater than or equal to 1"),
        ({"timeout": "-1s"}, "duration"),
        ({"timeout": -1}, "greater than or equal to 0"),
        ({"send_batch_size": 10, "max_buffered_items": 5}, "max_buffered_items"),
        ({"metadata_keys": ["tenant"]}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_config_is_rejected(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FACTORY.config.model_validate(body)
