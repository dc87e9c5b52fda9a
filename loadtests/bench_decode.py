"""Decode cost of OTLP/protobuf trace requests: reference (protobuf objects) vs the numba wire decoder.

    .venv/bin/python loadtests/bench_decode.py [--sizes 512,100] [--spans 50000] [--repeat 7]

Input: synthetic GenAI traffic from loadtests.llmgen (HTTP server, DB and LLM client spans with
GenAI semantic-convention attributes), pre-serialised into requests of each `--sizes` spans, at
least `--spans` spans per size. Measured in the same run, over all requests, best of `--repeat`
in CPU time of this process (the machine may be shared; the issue counts spans per CPU-second),
the three paths interleaved round by round so that load from elsewhere hits them alike:

* reference: `ExportTraceServiceRequest.ParseFromString` + `SpanBatch.from_request`, what the
  receiver did before (and still does with `wire_decoder: reference`);
* fast: `gateway.wire.traces.decode_spans`, the receiver's default; the request stays unparsed;
* fast + parse: the same, then `batch.request` (what a stage that needs the objects pays later).

Before timing, every fast batch is checked against the reference batch (columns, dtypes, strings).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest  # noqa: E402

from gateway.batch import SpanBatch  # noqa: E402
from gateway.wire.traces import decode_spans, warm_up  # noqa: E402
from loadtests.llmgen.model import TrafficConfig  # noqa: E402
from loadtests.llmgen.otlp import generate_chunks  # noqa: E402


def traffic(spans_per_request: int, min_spans: int) -> list[bytes]:
    cfg = TrafficConfig(seed=11, duration_s=30 * 86400.0, spans_per_request=spans_per_request)
    wires: list[bytes] = []
    total = 0
    for chunk in generate_chunks(cfg):
        if chunk.spans != spans_per_request:
            continue  # only full requests, so the size is what it says
        wires.append(chunk.wire)
        total += chunk.spans
        if total >= min_spans:
            break
    return wires


def reference(wire: bytes) -> SpanBatch:
    req = ExportTraceServiceRequest()
    req.ParseFromString(wire)
    return SpanBatch.from_request(req, wire=wire)


def fast(wire: bytes) -> SpanBatch:
    batch = decode_spans(wire)
    assert batch is not None
    return batch


def fast_then_parse(wire: bytes) -> SpanBatch:
    batch = fast(wire)
    batch.request  # noqa: B018 - the lazy parse is what is measured
    return batch


def verify(wires: list[bytes]) -> None:
    for w in wires:
        a, b = fast(w), reference(w)
        assert list(a.columns) == list(b.columns) and a.strings.values == b.strings.values
        for name, col in b.columns.items():
            assert a.columns[name].dtype == col.dtype and np.array_equal(a.columns[name], col), name


PATHS: dict[str, Callable[[bytes], SpanBatch]] = {
    "reference": reference,
    "fast": fast,
    "fast + parse": fast_then_parse,
}


def best_cpu(wires: list[bytes], repeat: int) -> dict[str, float]:
    """Per path, the least CPU time over `repeat` interleaved rounds."""
    best = dict.fromkeys(PATHS, float("inf"))
    for _ in range(repeat):
        for label, fn in PATHS.items():
            t0 = time.process_time()
            for w in wires:
                fn(w)
            best[label] = min(best[label], time.process_time() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="512,100", help="spans per request, comma-separated")
    ap.add_argument("--spans", type=int, default=50_000, help="at least this many spans per size")
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    print(f"warm-up (compile or cache load): {warm_up() * 1e3:.1f} ms")
    print(
        f"{'spans/req':>9} {'bytes/span':>10} {'path':<14} {'µs/span':>8} {'spans/CPU-s':>12} {'speed-up':>8}"
    )
    for size in (int(s) for s in args.sizes.split(",")):
        wires = traffic(size, args.spans)
        n = sum(len(reference(w)) for w in wires)
        verify(wires)
        per_span = sum(map(len, wires)) / n
        best = best_cpu(wires, args.repeat)
        base = best["reference"]
        for label, t in best.items():
            rate = f"{t / n * 1e6:>8.2f} {n / t:>12,.0f} {base / t:>7.1f}x"
            print(f"{size:>9} {per_span:>10.0f} {label:<14} {rate}")


if __name__ == "__main__":
    main()
