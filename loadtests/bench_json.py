"""OTLP/JSON trace input: the reference decoder vs the numba transcoder, same run, same requests.

    .venv/bin/python -m loadtests.bench_json [--requests 8] [--spans-per-request 512] [--rounds 15] [--json]

Requests are llmgen traffic (loadtests.llmgen, ~640 bytes of OTLP/JSON per span) written by
`otlpjson.encode`. Each round times every request with every method, interleaved; a method's figure
is the sum over requests of the fastest round (on a shared machine the minimum is the stable figure;
the median is printed too), as µs per span and spans per second of one core; and the mean CPU time
(process time, all rounds) as µs and spans per CPU-second, the unit of the throughput targets:

  orjson.loads        parsing the JSON into Python objects only: a floor for any orjson-based decoder
  otlpjson.decode     the reference: orjson, then a table-driven dict → protobuf constructor
  transcode           gateway.wire.json_traces.transcode_traces: JSON text → protobuf wire bytes
  transcode+parse     ... + ExportTraceServiceRequest.FromString: the same message object as the
                      reference (what checking equality costs; the receiver does not need it)
  transcode+columns   ... + gateway.wire.traces.decode_spans: the receiver's actual fast path for JSON
                      (JSON → wire → SpanBatch), when that module is present

Before timing, every request is checked: transcode == otlpjson.decode(...).SerializeToString().
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway import otlpjson
from gateway.wire import json_traces
from loadtests.llmgen import TrafficConfig, generate


def _requests(n: int, spans_per_request: int, seed: int) -> list[ExportTraceServiceRequest]:
    cfg = TrafficConfig(seed=seed, duration_s=6 * 3600, spans_per_request=spans_per_request)
    out: list[ExportTraceServiceRequest] = []
    for req in generate(cfg):
        if sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans) == spans_per_request:
            out.append(req)
        if len(out) == n:
            break
    return out


def _methods() -> dict[str, Callable[[bytes], Any]]:
    import orjson

    def parse(data: bytes) -> Any:
        wire = json_traces.transcode_traces(data)
        assert wire is not None
        return ExportTraceServiceRequest.FromString(wire)

    methods: dict[str, Callable[[bytes], Any]] = {
        "orjson.loads": orjson.loads,
        "otlpjson.decode": lambda data: otlpjson.decode(data, ExportTraceServiceRequest),
        "transcode": json_traces.transcode_traces,
        "transcode+parse": parse,
    }
    try:
        from gateway.wire import traces
    except ImportError:  # pragma: no cover - the wire decoder is another module's work
        return methods
    traces.warm_up()

    def columns(data: bytes) -> Any:
        wire = json_traces.transcode_traces(data)
        assert wire is not None
        batch = traces.decode_spans(wire)
        assert batch is not None
        return batch

    methods["transcode+columns"] = columns
    return methods


def run(n_requests: int, spans_per_request: int, rounds: int, seed: int = 11) -> dict[str, Any]:
    reqs = _requests(n_requests, spans_per_request, seed)
    bodies = [otlpjson.encode(r) for r in reqs]
    json_traces.warm_up()
    for body in bodies:
        want = otlpjson.decode(body, ExportTraceServiceRequest).SerializeToString()
        if json_traces.transcode_traces(body) != want:
            raise SystemExit("transcode differs from otlpjson.decode: a bug, not a benchmark result")
    methods = _methods()
    spans = len(bodies) * spans_per_request
    # per request and method: every round's wall time; plus each method's total CPU time
    times: dict[str, list[list[float]]] = {name: [[] for _ in bodies] for name in methods}
    cpu = dict.fromkeys(methods, 0.0)
    for _ in range(rounds):
        for name, fn in methods.items():
            c0 = time.process_time()
            for q, body in enumerate(bodies):
                t0 = time.perf_counter()
                fn(body)
                times[name][q].append(time.perf_counter() - t0)
            cpu[name] += time.process_time() - c0
    result: dict[str, Any] = {
        "requests": len(bodies),
        "spans_per_request": spans_per_request,
        "json_bytes_per_span": round(sum(map(len, bodies)) / spans, 1),
        "rounds": rounds,
        "methods": {},
    }
    for name, per_req in times.items():
        best = sum(min(ts) for ts in per_req) / spans
        med = sum(statistics.median(ts) for ts in per_req) / spans
        cpu_per_span = cpu[name] / (rounds * spans)
        result["methods"][name] = {
            "us_per_span": round(best * 1e6, 3),
            "us_per_span_median": round(med * 1e6, 3),
            "spans_per_s": round(1 / best),
            "cpu_us_per_span": round(cpu_per_span * 1e6, 3),
            "spans_per_cpu_s": round(1 / cpu_per_span),
        }
    ref = result["methods"]["otlpjson.decode"]
    for entry in result["methods"].values():
        entry["speedup_vs_decode"] = round(ref["us_per_span"] / entry["us_per_span"], 1)
        entry["cpu_speedup_vs_decode"] = round(ref["cpu_us_per_span"] / entry["cpu_us_per_span"], 1)
    return result


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--spans-per-request", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args(argv)
    res = run(args.requests, args.spans_per_request, args.rounds)
    if args.json:
        print(json.dumps(res))
        return
    print(
        f"{res['requests']} requests x {res['spans_per_request']} spans, "
        f"{res['json_bytes_per_span']} B of JSON per span, best of {res['rounds']} rounds"
    )
    for name, m in res["methods"].items():
        print(
            f"  {name:18s} best {m['us_per_span']:8.3f} us/span (median {m['us_per_span_median']:7.3f})"
            f" {m['spans_per_s']:>9,} spans/s x{m['speedup_vs_decode']:<5}"
            f" | CPU {m['cpu_us_per_span']:8.3f} us/span {m['spans_per_cpu_s']:>9,} spans/CPU-s"
            f" x{m['cpu_speedup_vs_decode']} vs otlpjson.decode"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
