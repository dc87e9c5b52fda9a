"""Throughput of the `genai` processor (extraction + pricing + rules + metrics) on recorded spans.

    .venv/bin/python loadtests/bench_genai.py [--spans 2048] [--repeat 5]

Input: the recorded LLM spans of every instrumentation family
(tests/fixtures/genai/*/*.traces.binpb), concatenated and tiled to `--spans`
spans per batch, so the mix of attribute families is realistic. Measured: the
processor's `annotate()` on a pre-decoded batch, best of `--repeat` runs.
Baseline in the same run: the protobuf decode plus column build of the same
request (`SpanBatch.from_request`), the step every span already pays; the ratio
says how expensive understanding a span is relative to just receiving it.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import SpanBatch
from gateway.component import ComponentContext, ComponentId, Kind
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from processors.genai import FACTORY

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "genai"


def build_request(n_spans: int) -> bytes:
    paths = sorted(FIXTURES.glob("*/*.traces.binpb"))
    parts = [ExportTraceServiceRequest.FromString(p.read_bytes()) for p in paths]
    req = ExportTraceServiceRequest()
    count = 0
    while count < n_spans:
        for part in parts:
            for rs in part.resource_spans:
                req.resource_spans.append(rs)
                count += sum(len(ss.spans) for ss in rs.scope_spans)
            if count >= n_spans:
                break
    return req.SerializeToString()


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=2048)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    wire = build_request(args.spans)
    ctx = ComponentContext(
        ComponentId("genai"),
        Kind.PROCESSOR,
        logging.getLogger("bench"),
        SelfTelemetry(),
        Admission(),
        "traces",
    )
    proc = FACTORY.create(ctx, FACTORY.config())
    batch = SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire))
    n = len(batch)

    def decode() -> None:
        SpanBatch.from_request(ExportTraceServiceRequest.FromString(wire), wire=wire)

    def annotate_once() -> tuple[float, int]:
        b = SpanBatch.from_request(batch.request)  # fresh columns, same decoded request
        t = time.perf_counter()
        proc.annotate(b)
        return time.perf_counter() - t, int(b.columns["llm"].sum())

    annotate_once()  # warm caches (price lookups are memoised, as in a long-running gateway)
    t_decode = best(decode, args.repeat)
    runs = [annotate_once() for _ in range(args.repeat)]
    t_annotate, llm = min(runs)
    print(f"spans per batch: {n} ({llm} LLM calls), request {len(wire) / 1e6:.2f} MB")
    print(f"decode + columns (baseline): {n / t_decode:,.0f} spans/s  ({t_decode * 1e3:.1f} ms)")
    print(f"genai annotate:              {n / t_annotate:,.0f} spans/s  ({t_annotate * 1e3:.1f} ms)")
    print(f"annotate / decode time ratio: {t_annotate / t_decode:.2f}")


if __name__ == "__main__":
    main()
