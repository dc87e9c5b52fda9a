"""Golden regression test of `detect`: the anomaly events it emits on fixed llmgen traffic.

Deterministic llmgen traffic with one injected anomaly of every type is replayed through the
detector in several ways (the connector in order, late and out-of-order delivery, a high-rate
stretch in 8192-span batches, two workers handing calls over, a series cap) and every emitted
event, the alerts the deduplicator holds at the end and the detector's counters are compared, as
canonical JSON, with `tests/fixtures/detect_golden/golden.jsonl.gz`, recorded from the code as it
was. Optimisations of `processors/detect` must leave this byte-identical; a deliberate change of
detection behaviour re-records it:

    .venv/bin/python -m tests.processors.test_detect_golden --record

(`--check` prints the first difference without pytest.)
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import itertools
import logging
from collections.abc import Iterable, Iterator
from dataclasses import replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from gateway.anomaly import AnomalyBatch, AnomalyEvent
from gateway.batch import Batch, Signal, SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from loadtests.llmgen import TrafficConfig, generate, inject_all
from processors.detect.calls import CallRows
from processors.detect.connector import FACTORY as DETECT
from processors.detect.connector import DetectConfig, DetectConnector, Detector
from processors.detect.routing import decode_rows, encode_rows, owner_of
from tests.processors.test_detect_connector import annotator

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "detect_golden" / "golden.jsonl.gz"

# seed 3 over 6 h yields alerts of all twelve types
BASE = inject_all(TrafficConfig(seed=3, duration_s=6 * 3600.0))
# a fifth of the spans delivered up to 40 s late: most within `lateness` (10 s), a few beyond it
LATE = replace(BASE, out_of_order_fraction=0.2, max_lateness_s=40.0)
# nearer the benchmark's regime: many calls per series per batch, event time moving ~30 s per
# 8192-span batch, late spans against a 5 s `lateness`
FAST_LATE = inject_all(
    TrafficConfig(seed=3, duration_s=300.0, rate_scale=50.0, out_of_order_fraction=0.3, max_lateness_s=12.0)
)
GROUPS = (1, 3, 16, 2, 7)  # requests per batch reaching detect, cycled (16 × 512 = 8192 spans)


@cache
def _annotated(config: TrafficConfig) -> tuple[SpanBatch, ...]:
    genai = annotator()
    out = []
    for req in generate(config):
        batch = SpanBatch.from_request(req)
        genai.annotate(batch)
        out.append(batch)
    return tuple(out)


def batches(config: TrafficConfig, groups: Iterable[int]) -> Iterator[SpanBatch]:
    """The annotated requests of `config`, concatenated as a `batch` processor would."""
    reqs = _annotated(config)
    sizes = itertools.cycle(groups)
    i = 0
    while i < len(reqs):
        g = next(sizes)
        batch = SpanBatch.concat(reqs[i : i + g])
        assert isinstance(batch, SpanBatch)
        yield batch
        i += g


# ---------------------------------------------------------------- canonical form
def event_json(ev: AnomalyEvent) -> dict[str, Any]:
    """Everything an alert says except the wall clock, with the unrounded score."""
    out = ev.to_json()
    del out["detected_at"]
    out["score"] = ev.score
    return out


def summary(det: Detector) -> dict[str, Any]:
    open_alerts = sorted(det.dedup._open.values(), key=lambda e: (e.first_seen_ns, e.id))
    return {
        "series": [list(k) for k in det.keys],
        "dropped_series": det.dropped_series,
        "late_points": det.late_points,
        "max_t_ns": det.max_t_ns,
        "watermark_ns": det.watermark_ns,
        "models": det.model_names,
        "open_alerts": [event_json(e) for e in open_alerts],
    }


def lines(scenario: str, events: list[AnomalyEvent], detectors: list[Detector]) -> list[bytes]:
    out = [{"scenario": scenario, "event": i, **event_json(e)} for i, e in enumerate(events)]
    out += [{"scenario": scenario, "worker": w, "summary": summary(d)} for w, d in enumerate(detectors)]
    return [orjson.dumps(o, option=orjson.OPT_SORT_KEYS) for o in out]


# ---------------------------------------------------------------- scenarios
def run_detector(cfg: DetectConfig, feed: Iterable[SpanBatch]) -> tuple[list[AnomalyEvent], Detector]:
    det = Detector(cfg)
    out: list[AnomalyEvent] = []
    for batch in feed:
        det.ingest(batch)
        out += det.advance()
    out += det.advance(flush=True)
    return out, det


class _Collect:
    def __init__(self) -> None:
        self.events: list[AnomalyEvent] = []

    async def consume(self, batch: Batch) -> None:
        assert isinstance(batch, AnomalyBatch)
        self.events += batch.events


def run_connector(cfg: DetectConfig, feed: Iterable[SpanBatch]) -> tuple[list[AnomalyEvent], Detector]:
    """Through `DetectConnector.consume` and its shutdown flush, as a gateway drives it."""
    ctx = ComponentContext(
        ComponentId("detect"), Kind.CONNECTOR, logging.getLogger("t"), SelfTelemetry(), Admission(), "traces"
    )
    conn = DETECT.create(ctx, cfg)
    assert isinstance(conn, DetectConnector)
    sink = _Collect()
    conn.set_consumer(Signal.ANOMALIES, sink)

    async def go() -> None:
        for batch in feed:
            await conn.consume(batch)
        await conn.shutdown()

    asyncio.run(go())
    return sink.events, conn.detector


def run_workers(
    cfg: DetectConfig, feed: Iterable[SpanBatch], workers: int = 2
) -> tuple[list[AnomalyEvent], list[Detector]]:
    """Batches arrive at the workers in turn; each hands the calls of series it does not own to
    their owner (through the wire codec) with its newest event time, as routing.SeriesRouter does."""
    dets = [Detector(cfg) for _ in range(workers)]
    out: list[AnomalyEvent] = []
    for k, batch in enumerate(feed):
        me = k % workers
        rows = CallRows.from_batch(batch)
        if rows is None:
            continue
        per_key = np.array([owner_of(s, m, workers) for s, _p, _o, m in rows.keys], dtype=np.int64)
        owners = per_key[rows.key]
        max_t = int(rows.t_ns.max())
        for w in [*(p for p in range(workers) if p != me), me]:  # peers' shares are sent first
            share = rows.take(owners == w)
            if w != me and len(share):
                share = decode_rows(encode_rows(share))
            if len(share):
                dets[w].ingest_calls(share)
            out += dets[w].advance(now_event_ns=max_t)
    for d in dets:
        out += d.advance(flush=True)
    return out, dets


def scenarios() -> Iterator[tuple[str, list[AnomalyEvent], list[Detector]]]:
    cfg = DetectConfig(idle_advance=False)
    events, det = run_connector(cfg, batches(BASE, GROUPS))
    yield "connector_in_order", events, [det]
    events, det = run_detector(cfg, batches(LATE, GROUPS))
    yield "late_and_out_of_order", events, [det]
    events, det = run_detector(cfg.model_copy(update={"lateness": 5.0}), batches(FAST_LATE, (16, 5)))
    yield "high_rate_late", events, [det]
    events, dets = run_workers(cfg, batches(BASE, GROUPS))
    yield "two_workers", events, dets
    capped = cfg.model_copy(update={"max_series": 5})
    events, det = run_detector(capped, itertools.islice(batches(BASE, (4,)), 12))
    yield "series_cap", events, [det]


def replay() -> list[bytes]:
    out: list[bytes] = []
    for name, events, dets in scenarios():
        out += lines(name, events, dets)
    return out


def read_golden() -> list[bytes]:
    return gzip.decompress(GOLDEN.read_bytes()).splitlines()


def first_difference(expected: list[bytes], actual: list[bytes]) -> str | None:
    for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
        if e != a:
            return f"line {i + 1} differs:\n  expected {e.decode()}\n  actual   {a.decode()}"
    if len(expected) != len(actual):
        return f"{len(expected)} lines expected, {len(actual)} produced"
    return None


def test_detect_output_matches_the_golden_file() -> None:
    actual = replay()
    expected = read_golden()
    diff = first_difference(expected, actual)
    assert diff is None, (
        f"{diff}\n(re-record deliberately: python -m tests.processors.test_detect_golden --record)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="store_true", help="overwrite the golden file with today's output")
    args = ap.parse_args()
    actual = replay()
    if args.record:
        GOLDEN.parent.mkdir(parents=True, exist_ok=True)
        GOLDEN.write_bytes(gzip.compress(b"".join(line + b"\n" for line in actual), mtime=0))
        print(f"recorded {len(actual)} lines to {GOLDEN}")
        return
    diff = first_difference(read_golden(), actual)
    print(diff or f"{len(actual)} lines identical")
    raise SystemExit(1 if diff else 0)


if __name__ == "__main__":
    main()
