"""The memory limiter: refuses (retryably) above the soft limit, recovers below it, shares one checker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from pydantic import ValidationError

import processors.memory_limiter as ml
from gateway.batch import Batch, SpanBatch
from gateway.component import ComponentId, Kind, RefusedError
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry

MIB = ml.MIB


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


class Capture:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def spans(n: int = 2) -> SpanBatch:
    req = ExportTraceServiceRequest()
    ss = req.resource_spans.add().scope_spans.add()
    for k in range(n):
        ss.spans.add(name=f"s{k}", trace_id=(k + 1).to_bytes(16, "big"), span_id=(k + 1).to_bytes(8, "big"))
    return SpanBatch.from_request(req)


def limiter(
    admission: Admission, pipeline: str = "traces", name: str = "", **config: Any
) -> tuple[ml.MemoryLimiterProcessor, Capture]:
    ctx = _context(ComponentId("memory_limiter", name), Kind.PROCESSOR, SelfTelemetry(), admission, pipeline)
    proc = ml.FACTORY.create(ctx, ml.FACTORY.config.model_validate(config))
    assert isinstance(proc, ml.MemoryLimiterProcessor)
    sink = Capture()
    proc.set_next(sink)
    return proc, sink


class FakeMemory:
    """Stands in for the RSS measurement and for forced GCs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, rss_mib: float) -> None:
        self.rss = int(rss_mib * MIB)
        self.gcs = 0
        monkeypatch.setattr(ml, "measure_rss", lambda: self.rss)
        monkeypatch.setattr(ml, "free_memory", self._gc)

    def set(self, rss_mib: float) -> None:
        self.rss = int(rss_mib * MIB)

    def _gc(self) -> None:
        self.gcs += 1


async def settle(pred: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.002)


# ---------------------------------------------------------------- simulated pressure
def test_refuses_above_soft_limit_and_recovers_below_it(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=50)

    async def main() -> None:
        adm = Admission()
        proc, sink = limiter(adm, check_interval="5ms", limit_mib=100, spike_limit_mib=20)  # soft 80 MiB
        await proc.start()
        await proc.consume(spans())
        assert len(sink.batches) == 1

        mem.set(85)
        await settle(lambda: adm.refusing)  # the periodic check notices
        with pytest.raises(RefusedError) as info:
            await proc.consume(spans())
        err = info.value
        assert err.retryable and 1.0 <= (err.retry_after or 0) <= 5.0
        assert "85 MiB" in str(err) and "soft limit 80 MiB" in str(err)
        with pytest.raises(RefusedError):
            adm.check()  # receivers refuse before decoding
        assert len(sink.batches) == 1

        mem.set(79)
        await settle(lambda: not adm.refusing)
        adm.check()
        await proc.consume(spans())
        assert len(sink.batches) == 2
        await proc.shutdown()

    run(main())


def test_bytes_held_in_queues_count_towards_the_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeMemory(monkeypatch, rss_mib=50)

    async def main() -> None:
        adm = Admission()
        proc, _ = limiter(adm, check_interval="1h", limit_mib=100, spike_limit_mib=20)
        await proc.start()
        assert proc.checker is not None
        assert not adm.refusing
        adm.set_held("exporter:otlp", 35 * MIB)
        proc.checker.check()
        assert adm.refusing and "queued 35 MiB" in adm.reason
        adm.set_held("exporter:otlp", 0)
        proc.checker.check()
        assert not adm.refusing
        await proc.shutdown()

    run(main())


def test_hard_limit_forces_rate_limited_gc_and_transitions_are_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=10)

    async def main() -> None:
        adm = Admission()
        proc, _ = limiter(adm, check_interval="1h", limit_mib=100)  # spike defaults to 20%: soft 80 MiB
        await proc.start()
        checker = proc.checker
        assert checker is not None and checker.limits.soft == 80 * MIB
        mem.set(120)
        for _ in range(5):
            checker.check()
        assert adm.refusing
        assert mem.gcs == 1  # hard GC at most every 5s, and no second soft GC right after it
        checker.last_gc -= 6  # as if 6 s had passed
        checker.check()
        assert mem.gcs == 2
        mem.set(90)  # soft-limited only: no GC while already refusing
        checker.last_gc -= 60
        checker.check()
        assert mem.gcs == 2 and adm.refusing
        mem.set(20)
        for _ in range(3):
            checker.check()
        assert not adm.refusing
        await proc.shutdown()

    with caplog.at_level(logging.INFO, logger="sentinel.processor.memory_limiter"):
        run(main())
    msgs = [r.getMessage() for r in caplog.records]
    assert sum(m.startswith("refusing data") for m in msgs) == 1
    assert sum("back below the soft limit" in m for m in msgs) == 1


def test_soft_limit_gc_can_avoid_refusing(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=85)
    monkeypatch.setattr(ml, "free_memory", lambda: mem.set(60))  # the GC frees enough

    async def main() -> None:
        adm = Admission()
        proc, _ = limiter(adm, check_interval="1h", limit_mib=100, spike_limit_mib=20)
        await proc.start()
        assert not adm.refusing
        await proc.shutdown()

    run(main())


def test_instances_share_one_checker_with_the_strictest_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    mem = FakeMemory(monkeypatch, rss_mib=70)

    async def main() -> None:
        adm = Admission()
        a, _ = limiter(adm, "traces", check_interval="1h", limit_mib=100, spike_limit_mib=20)  # soft 80
        b, _ = limiter(
            adm, "logs", "small", check_interval="5ms", limit_mib=80, spike_limit_mib=20
        )  # soft 60
        other, _ = limiter(Admission(), check_interval="1h", limit_mib=1000)
        for p in (a, b, other):
            await p.start()
        assert a.checker is b.checker and a.checker is not other.checker
        assert adm.refusing  # 70 MiB is above the stricter soft limit
        mem.set(50)
        await settle(lambda: not adm.refusing)  # the shortest check_interval drives the shared loop
        mem.set(65)
        await a.shutdown()  # b still registered: the checker keeps running
        await settle(lambda: adm.refusing)
        await b.shutdown()  # last one out stops the checker and leaves admission accepting
        assert not adm.refusing
        assert id(adm) not in ml._CHECKERS
        await other.shutdown()

    run(main())


def test_percentage_limits_use_total_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ml, "total_memory", lambda: 1000 * MIB)
    cfg = ml.MemoryLimiterConfig.model_validate({"limit_percentage": 50, "spike_limit_percentage": 10})
    lim = ml.Limits.from_config(cfg)
    assert (lim.hard, lim.spike, lim.soft) == (500 * MIB, 100 * MIB, 400 * MIB)
    both = ml.MemoryLimiterConfig.model_validate({"limit_mib": 64, "limit_percentage": 50})
    assert ml.Limits.from_config(both).hard == 64 * MIB  # limit_mib takes precedence
    assert ml.total_memory is not ml._read_total_memory
    assert ml._read_total_memory() > 0
    assert ml._read_rss() > 0


# ---------------------------------------------------------------- real memory
def test_real_allocation_trips_the_limiter() -> None:
    async def main() -> None:
        adm = Admission()
        base = ml.measure_rss()
        limit_mib = (base + 160 * MIB) // MIB
        proc, _ = limiter(adm, check_interval="1h", limit_mib=limit_mib, spike_limit_mib=80)  # soft = base+80
        await proc.start()
        assert proc.checker is not None
        assert not adm.refusing
        block = b"\x01" * (120 * MIB)  # written, so resident
        proc.checker.check()
        assert adm.refusing, adm.reason
        del block
        proc.checker.check()
        assert not adm.refusing
        await proc.shutdown()

    run(main())


# ---------------------------------------------------------------- config
def test_config_defaults() -> None:
    cfg = ml.MemoryLimiterConfig.model_validate({"limit_mib": 512})
    assert cfg.check_interval == 1.0
    assert ml.Limits.from_config(cfg).spike == int(512 * MIB * 0.2)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "'limit_mib' or 'limit_percentage' must be greater than zero"),
        ({"limit_mib": 100, "spike_limit_mib": 100}, "'spike_limit_mib' .* must be smaller"),
        (
            {"limit_percentage": 50, "spike_limit_percentage": 60},
            "'spike_limit_percentage' .* must be smaller",
        ),
        ({"limit_percentage": 101}, "less than or equal to 100"),
        ({"limit_mib": 100, "check_interval": "0s"}, "greater than 0"),
        ({"limit_mib": -1}, "greater than or equal to 0"),
        (
            {"limit_mib": 100, "min_gc_interval_when_soft_limited": "1s"},
            "'min_gc_interval_when_soft_limited' must be at least",
        ),
        ({"limit_mib": 100, "ballast_size_mib": 10}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_config_is_rejected(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ml.FACTORY.config.model_validate(body)
