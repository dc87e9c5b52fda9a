"""Cost of the `detect` Detector per span on live-like generated traffic.

    .venv/bin/python -m loadtests.bench_detect [--rate-scale 1000] [--group 16] [--repeat 5]

64 llmgen requests of 512 spans (per-series rates × `--rate-scale`, so event time advances
as it would at high load) are annotated by `genai`, replayed 6 times with their timestamps
shifted forward each pass (loadtests.timeshift), concatenated `--group` at a time (16 = the
default `batch` processor's 8192 spans) and fed to a Detector; prints CPU µs per span after
one warm-up pass. With `--repeat N` a fresh Detector runs N times over the same batches and the
median, min and max are printed (the machine is shared: compare medians of the same run).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import SpanBatch
from loadtests.llmgen import TrafficConfig, generate
from loadtests.timeshift import shift_times
from processors.detect.connector import DetectConfig, Detector
from tests.processors.test_detect_connector import annotator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate-scale", type=float, default=1000.0)
    ap.add_argument("--group", type=int, default=16, help="requests per batch reaching detect")
    ap.add_argument("--repeat", type=int, default=1, help="runs over the same batches (median shown)")
    args = ap.parse_args()
    traffic = TrafficConfig(
        seed=1, duration_s=3600.0, spans_per_request=512, rate_scale=args.rate_scale, slice_s=1.0
    )
    reqs = list(itertools.islice(generate(traffic), 64))
    wires = [r.SerializeToString() for r in reqs]
    starts = [SpanBatch.from_request(r).columns for r in reqs]
    cycle = int(max(c["end_ns"].max() for c in starts) - min(c["start_ns"].min() for c in starts)) + 10**6
    genai = annotator()
    batches = []
    for k in range(6):
        for w in wires:
            b = SpanBatch.from_request(ExportTraceServiceRequest.FromString(shift_times(w, k * cycle)))
            genai.annotate(b)
            batches.append(b)
    g = args.group
    big: list[Any] = [SpanBatch.concat(batches[i : i + g]) for i in range(0, len(batches), g)]
    warm = max(64 // g, 1)
    n = sum(len(b) for b in big[warm:])
    runs = [_run(big, warm) / n * 1e6 for _ in range(max(args.repeat, 1))]
    us = statistics.median(runs)
    spread = f" (min {min(runs):.3f}, max {max(runs):.3f}, {len(runs)} runs)" if len(runs) > 1 else ""
    print(
        f"rate scale {args.rate_scale:g}, {len(big[-1])} spans per batch: "
        f"detect {us:.3f} µs/span ({1e6 / us:,.0f} spans per CPU-second){spread}"
    )


def _run(big: list[Any], warm: int) -> float:
    """CPU seconds a fresh Detector spends on `big[warm:]` after taking `big[:warm]`."""
    det = Detector(DetectConfig(idle_advance=False))
    for b in big[:warm]:
        det.ingest(b)
        det.advance()
    t0 = time.process_time()
    for b in big[warm:]:
        det.ingest(b)
        det.advance()
    return time.process_time() - t0


if __name__ == "__main__":
    main()
