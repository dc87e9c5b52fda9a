"""Throughput of the `genai` processor: reference vs wire fast path, extraction and full annotate.

    .venv/bin/python loadtests/bench_genai.py [--spans 512] [--requests 8] [--repeat 5]

Inputs, `--spans` spans per request:
- fixtures: the recorded LLM spans of every instrumentation family
  (tests/fixtures/genai/*/*.traces.binpb), concatenated and tiled, so the mix of
  attribute families is realistic (and content capture makes the spans large);
- llmgen: synthetic traffic (loadtests.llmgen, a 2 % error rate), `--requests` requests.

Measured per input, in CPU time, best of `--repeat` runs over all its requests, each on a fresh
batch built from the already decoded request (decoding is not timed):
`extract()` on the reference path (protobuf objects, per span Python) and on the
wire path (`batch.wire`), then the processor's whole `annotate()` (extraction,
pricing, sanity rules, metrics) both ways. The wire path's sub-steps: the scan
kernel alone, then `resolve_wire` (scan, per-string meanings, precedence rules,
reasons, interning); `annotate, wire` minus that is pricing, rules, metrics and
columns. Baseline in the same run: the protobuf decode plus column build
(`SpanBatch.from_request`), the step every span already pays.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import SpanBatch  # noqa: E402
from gateway.component import ComponentContext, ComponentId, Kind  # noqa: E402
from gateway.pressure import Admission  # noqa: E402
from gateway.telemetry import SelfTelemetry  # noqa: E402
from loadtests.llmgen import TrafficConfig, generate_chunks  # noqa: E402
from processors.genai import FACTORY, GenAIProcessor  # noqa: E402
from processors.genai.extract import extract  # noqa: E402
from processors.genai.wire_extract import resolve_wire, warm_up  # noqa: E402
from processors.genai.wire_scan import scan_wire  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "genai"
extract_module: Any = importlib.import_module("processors.genai.extract")  # the package re-exports `extract`


def fixture_requests(n_spans: int, n_requests: int) -> list[bytes]:
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
    return [req.SerializeToString()] * n_requests


def llmgen_requests(n_spans: int, n_requests: int) -> list[bytes]:
    cfg = TrafficConfig(
        seed=7, duration_s=6 * 3600.0, rate_scale=4.0, error_rate=0.02, spans_per_request=n_spans
    )
    out = []
    for chunk in generate_chunks(cfg):
        if chunk.spans == n_spans:
            out.append(chunk.wire)
        if len(out) == n_requests:
            break
    return out


def processor() -> GenAIProcessor:
    ctx = ComponentContext(
        ComponentId("genai"),
        Kind.PROCESSOR,
        logging.getLogger("bench"),
        SelfTelemetry(),
        Admission(),
        "traces",
    )
    proc = FACTORY.create(ctx, FACTORY.config())
    assert isinstance(proc, GenAIProcessor)
    return proc


def timed(wires: list[bytes], step: Callable[[SpanBatch], object], repeat: int) -> float:
    """Best total CPU seconds of `step` over fresh batches of all requests (batch building not timed)."""
    requests = [ExportTraceServiceRequest.FromString(w) for w in wires]
    best = float("inf")
    for _ in range(repeat):
        batches = [SpanBatch.from_request(r, wire=w) for r, w in zip(requests, wires, strict=True)]
        t0 = time.process_time()  # CPU time: the unit is spans per CPU-second
        for b in batches:
            step(b)
        best = min(best, time.process_time() - t0)
    return best


def reference(step: Callable[[SpanBatch], object]) -> Callable[[SpanBatch], object]:
    def run(batch: SpanBatch) -> object:
        extract_module.WIRE_FAST_PATH = False
        try:
            return step(batch)
        finally:
            extract_module.WIRE_FAST_PATH = True

    return run


def bench(name: str, wires: list[bytes], repeat: int) -> None:
    spans = sum(len(SpanBatch.from_request(ExportTraceServiceRequest.FromString(w))) for w in wires)
    size = sum(len(w) for w in wires) / len(wires)
    proc = processor()
    proc.annotate(
        SpanBatch.from_request(ExportTraceServiceRequest.FromString(wires[0]), wire=wires[0])
    )  # price memo

    def decode(b: SpanBatch) -> object:
        assert b.wire is not None
        return SpanBatch.from_request(ExportTraceServiceRequest.FromString(b.wire), wire=b.wire)

    print(f"\n{name}: {len(wires)} requests, {spans} spans, {size / 1e3:.0f} kB/request")
    print(f"  {'step':<28}{'us/span':>9}{'spans/s':>13}")

    def scan(b: SpanBatch) -> object:
        assert b.wire is not None
        return scan_wire(bytes(b.wire), len(b))

    rows = {
        "decode + columns (baseline)": timed(wires, decode, repeat),
        "extract, reference": timed(wires, lambda b: extract(b, reference=True), repeat),
        "extract, wire": timed(wires, extract, repeat),
        "  wire: scan kernel": timed(wires, scan, repeat),
        "  wire: resolve_wire": timed(wires, resolve_wire, repeat),
        "annotate, reference": timed(wires, reference(proc.annotate), repeat),
        "annotate, wire": timed(wires, proc.annotate, repeat),
    }
    for step, seconds in rows.items():
        print(f"  {step:<28}{seconds / spans * 1e6:>9.2f}{spans / seconds:>13,.0f}")
    rest = rows["annotate, wire"] - rows["  wire: resolve_wire"]
    print(f"  {'  wire: price, rules, metrics':<28}{rest / spans * 1e6:>9.2f}")
    ex = rows["extract, reference"] / rows["extract, wire"]
    an = rows["annotate, reference"] / rows["annotate, wire"]
    print(f"  speed-up wire vs reference: extract {ex:.1f}x, annotate {an:.1f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=512, help="spans per request")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    print(f"wire kernel warm-up (cache load or compile): {warm_up():.2f}s")
    bench("llmgen", llmgen_requests(args.spans, args.requests), args.repeat)
    bench("fixtures", fixture_requests(args.spans, args.requests), args.repeat)


if __name__ == "__main__":
    main()
