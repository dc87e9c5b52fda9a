"""The naive OTLP baseline receiver: what a straightforward Python implementation does.

    .venv/bin/python -m loadtests.naive_receiver --http 127.0.0.1:4318 --grpc 127.0.0.1:4317

OTLP/HTTP (aiohttp, protobuf, optional gzip) and OTLP/gRPC (grpc.aio, raw unary
handler) for traces. Each request is parsed into opentelemetry-proto objects and
turned into numpy columns by a plain Python loop over the spans: start/end times,
trace and span ids, status code, the resource's service.name and the GenAI model
and token-usage attributes. Nothing else happens to the columns (no pipeline, no
export), so this is a floor on the per-span cost of the object decode path that
the gateway's own receiver (`SpanBatch.from_request`) also uses today.

Runs on uvloop when installed, as `sentinel run` does (`--asyncio` to opt out).
`GET /stats` on the HTTP port answers {"requests": n, "spans": n, "errors": n}.
Used by `loadtests/otlp_load.py --target naive` as the same-run baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import signal
from typing import Any

import grpc
import numpy as np
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

TRACE_EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_OK = ExportTraceServiceResponse().SerializeToString()
_MODEL = "gen_ai.request.model"
_IN = "gen_ai.usage.input_tokens"
_OUT = "gen_ai.usage.output_tokens"


class Stats:
    def __init__(self) -> None:
        self.requests = 0
        self.spans = 0
        self.errors = 0

    def as_dict(self) -> dict[str, int]:
        return {"requests": self.requests, "spans": self.spans, "errors": self.errors}


def build_columns(payload: bytes) -> dict[str, Any]:
    """Protobuf objects → numpy columns, one Python iteration per span (the naive way)."""
    req = ExportTraceServiceRequest()
    req.ParseFromString(payload)
    start: list[int] = []
    end: list[int] = []
    trace_id: list[bytes] = []
    span_id: list[bytes] = []
    status: list[int] = []
    service: list[str | None] = []
    model: list[str | None] = []
    tok_in: list[int] = []
    tok_out: list[int] = []
    for rs in req.resource_spans:
        svc = None
        for kv in rs.resource.attributes:
            if kv.key == "service.name":
                svc = kv.value.string_value
                break
        for ss in rs.scope_spans:
            for span in ss.spans:
                start.append(span.start_time_unix_nano)
                end.append(span.end_time_unix_nano)
                trace_id.append(span.trace_id)
                span_id.append(span.span_id)
                status.append(span.status.code)
                service.append(svc)
                m, ti, to = None, -1, -1
                for kv in span.attributes:
                    k = kv.key
                    if k == _MODEL:
                        m = kv.value.string_value
                    elif k == _IN:
                        ti = kv.value.int_value
                    elif k == _OUT:
                        to = kv.value.int_value
                model.append(m)
                tok_in.append(ti)
                tok_out.append(to)
    return {
        "start_ns": np.array(start, dtype=np.uint64),
        "end_ns": np.array(end, dtype=np.uint64),
        "trace_id": np.array(trace_id, dtype="S16"),
        "span_id": np.array(span_id, dtype="S8"),
        "status": np.array(status, dtype=np.int8),
        "service": np.array(service, dtype=object),
        "model": np.array(model, dtype=object),
        "input_tokens": np.array(tok_in, dtype=np.int64),
        "output_tokens": np.array(tok_out, dtype=np.int64),
    }


def consume(stats: Stats, payload: bytes) -> None:
    cols = build_columns(payload)
    stats.requests += 1
    stats.spans += int(cols["start_ns"].shape[0])


def make_app(stats: Stats) -> web.Application:
    async def traces(request: web.Request) -> web.Response:
        body = await request.read()
        try:
            if request.headers.get("Content-Encoding", "").lower() == "gzip":
                body = gzip.decompress(body)
            consume(stats, body)
        except Exception as exc:  # a baseline: any failure is a 400 and counted
            stats.errors += 1
            return web.Response(status=400, text=str(exc))
        return web.Response(body=_OK, content_type="application/x-protobuf")

    async def get_stats(_: web.Request) -> web.Response:
        return web.json_response(stats.as_dict())

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/stats", get_stats)
    return app


def make_grpc_server(stats: Stats, endpoint: str) -> grpc.aio.Server:
    async def export(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            consume(stats, request)
        except Exception as exc:
            stats.errors += 1
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        return _OK

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},  # raw bytes in and out
    )
    server = grpc.aio.server(options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)])
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(endpoint)
    return server


async def serve(http: str, grpc_endpoint: str | None) -> None:
    stats = Stats()
    host, port = http.rsplit(":", 1)
    runner = web.AppRunner(make_app(stats), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, int(port)).start()
    server = None
    if grpc_endpoint:
        server = make_grpc_server(stats, grpc_endpoint)
        await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"naive receiver: http {http}, grpc {grpc_endpoint or '-'}", flush=True)
    await stop.wait()
    if server is not None:
        await server.stop(1)
    await runner.cleanup()
    print(json.dumps(stats.as_dict()), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--http", default="127.0.0.1:4318", help="OTLP/HTTP endpoint (loopback)")
    ap.add_argument("--grpc", default="127.0.0.1:4317", help="OTLP/gRPC endpoint; '' disables it")
    ap.add_argument("--asyncio", action="store_true", help="plain asyncio loop even when uvloop is installed")
    args = ap.parse_args()
    factory = None
    if not args.asyncio:
        try:  # the gateway runs on uvloop when installed; so does the baseline, for a like-for-like loop
            import uvloop

            factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(serve(args.http, args.grpc or None))


if __name__ == "__main__":
    main()
