"""CPU cost of detection across workers: handing LLM calls to the worker that owns their series.

    .venv/bin/python -m loadtests.bench_workers [--hours 6] [--rate-scale 4] [--spans 512] [--repeat 3]

`sentinel run --workers 2` detects as one process does, by handing every call to the
worker owning its series (processors/detect/routing.py). This measures what that costs,
free of the noise of a shared machine: both workers' detection runs in this one process
and thread (two `Detector`s, two `SeriesRouter`s over a real unix socket, requests
alternating between them as the kernel would spread connections), so the process CPU
time covers everything the hand-off adds: splitting by owner, encoding, the socket,
decoding, acknowledging, and the owner's extra `advance()` per hand-off. Baseline in the
same run: one `Detector` taking every batch (`--workers 1`). Inputs are llmgen requests
already decoded and annotated by `genai` (not timed); best of `--repeat` runs. The alerts
of both ways are compared, and must be the same.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import tempfile
import time
from pathlib import Path

from gateway.anomaly import AnomalyEvent
from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from gateway.worker_config import WorkerSpec
from loadtests.llmgen import TrafficConfig, generate
from loadtests.llmgen.model import inject_all
from processors.detect.calls import CallRows
from processors.detect.connector import DetectConfig, Detector
from processors.detect.ensemble import warm_up
from processors.detect.routing import Accept, SeriesRouter
from processors.genai import FACTORY as GENAI
from processors.genai import GenAIProcessor


def call_chunks(hours: float, rate_scale: float, spans: int) -> list[CallRows]:
    """The LLM calls of each generated request, as the detect connector gets them."""
    tel = SelfTelemetry()
    ctx = ComponentContext(
        ComponentId.parse("genai"), Kind.PROCESSOR, logging.getLogger("bench"), tel, Admission()
    )
    genai = GENAI.create(ctx, GENAI.config.model_validate({}))
    assert isinstance(genai, GenAIProcessor)
    traffic = inject_all(
        TrafficConfig(seed=3, duration_s=hours * 3600, rate_scale=rate_scale, spans_per_request=spans)
    )
    out = []
    for req in generate(traffic):
        batch = SpanBatch.from_request(req)
        genai.annotate(batch)
        rows = CallRows.from_batch(batch)
        if rows is not None:
            out.append(rows)
    return out


def key(ev: AnomalyEvent) -> tuple[object, ...]:
    return (ev.time_ns, ev.service, ev.model, ev.type.value, ev.metric, ev.severity.value, round(ev.score, 9))


def one_worker(chunks: list[CallRows]) -> tuple[float, list[tuple[object, ...]]]:
    det = Detector(DetectConfig())
    found: list[AnomalyEvent] = []
    t0 = time.process_time()
    for rows in chunks:
        det.ingest_calls(rows)
        found += det.advance()
    found += det.advance(flush=True)
    return time.process_time() - t0, sorted(key(e) for e in found)


async def two_workers(chunks: list[CallRows], run_dir: Path) -> tuple[float, list[tuple[object, ...]]]:
    dets = [Detector(DetectConfig()), Detector(DetectConfig())]
    found: list[AnomalyEvent] = []

    def accept_for(det: Detector) -> Accept:
        async def accept(rows: CallRows | None, max_t_ns: int) -> None:
            if rows is not None:
                det.ingest_calls(rows)
            found.extend(det.advance(now_event_ns=max_t_ns))

        return accept

    routers = [
        SeriesRouter(WorkerSpec(i, 2, run_dir), "detect", accept_for(d), SelfTelemetry())
        for i, d in enumerate(dets)
    ]
    for r in routers:
        await r.start()
    while not all(r.ready() for r in routers):
        await asyncio.sleep(0.005)
    t0 = time.process_time()
    for i, rows in enumerate(chunks):
        await routers[i % 2].route(rows)
    for d in dets:
        found.extend(d.advance(flush=True))
    seconds = time.process_time() - t0
    await asyncio.gather(*(r.drain(5.0) for r in routers))
    for r in routers:
        await r.stop()
    return seconds, sorted(key(e) for e in found)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hours", type=float, default=6.0, help="simulated traffic (injected anomalies)")
    ap.add_argument("--rate-scale", type=float, default=4.0, help="llmgen call-rate multiplier")
    ap.add_argument("--spans", type=int, default=512, help="spans per request")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    warm_up()
    chunks = call_chunks(args.hours, args.rate_scale, args.spans)
    calls = sum(len(c) for c in chunks)
    one_worker(chunks[: len(chunks) // 4])  # the remaining kernels compile (or load) here
    best1, best2 = float("inf"), float("inf")
    alerts1: list[tuple[object, ...]] = []
    alerts2: list[tuple[object, ...]] = []
    for _ in range(args.repeat):
        s1, alerts1 = one_worker(chunks)
        with tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
            s2, alerts2 = asyncio.run(two_workers(chunks, Path(tmp)))
        best1, best2 = min(best1, s1), min(best2, s2)
    per1, per2 = best1 / calls * 1e6, best2 / calls * 1e6
    print(f"{len(chunks)} requests of {args.spans} spans, {calls:,} LLM calls, {len(alerts1)} alerts")
    print(f"one detector            {per1:6.2f} µs per call  ({best1:.3f} s CPU)")
    print(f"two workers, hand-off   {per2:6.2f} µs per call  ({best2:.3f} s CPU, both sides)")
    print(f"hand-off overhead       {per2 - per1:+6.2f} µs per call ({(per2 / per1 - 1) * 100:+.0f} %)")
    print(f"same alerts: {'yes' if alerts1 == alerts2 else 'NO'}")


if __name__ == "__main__":
    main()
