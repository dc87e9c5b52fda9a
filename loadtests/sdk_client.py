"""One OTLP client process built on the real OpenTelemetry SDK exporters, for overload tests.

    .venv/bin/python -m loadtests.sdk_client --transport http|grpc --endpoint HOST:PORT
        [--spans 2000] [--batch 256] [--threads 2] [--rate 0] [--payload sdk|prebuilt]
        [--timeout 30] [--deadline 120] [--seed 1] [--ids-out FILE]

Why a process of its own: several of them offer load in parallel without sharing a
GIL with the gateway or with each other, like separate applications would.

Spans come from one of two sources:
  sdk       real SDK spans (TracerProvider, GenAI attributes), handed in batches to
            `OTLPSpanExporter.export()`, which encodes them and retries on its own
            (HTTP 429/502/503/504 honouring Retry-After, gRPC UNAVAILABLE honouring
            RetryInfo, at most 6 attempts within `--timeout`).
  prebuilt  loadtests.llmgen requests serialised once, sent through the same SDK retry
            loop without re-encoding (HTTP: the exporter's `_client.export(bytes)`;
            gRPC: `_export()` with `_translate_data` returning the prebuilt request), so
            one process can offer far more spans per second than SDK encoding allows.

The SDK gives a batch up after its own retries (counted as `sdk_give_ups`); this client
then exports the same batch again, as an application that must not lose data would,
until `--deadline`. Batches still unsent at the deadline are `undelivered`.

`--rate` > 0 is open-loop: batches are created at that many spans per second (into the
client's own backlog) whatever the gateway answers; 0 is closed-loop: a few batches are
kept ready for the export threads, which send as fast as the gateway answers.

Every response is recorded on the client side: HTTP status with its Retry-After (a
`requests` response hook on the session the exporter uses), gRPC status with the
RetryInfo of its trailers (an interceptor on the channel the exporter creates).
Prints one JSON object (see `ClientReport`).
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from google.rpc import error_details_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

RETRYINFO_KEY = "google.rpc.retryinfo-bin"


# ----------------------------------------------------------------- what the client saw
@dataclass
class ClientReport:
    created: int = 0  # spans this client made
    delivered: int = 0  # spans in batches an export call reported as successful
    undelivered: int = 0  # spans still unsent at the deadline
    export_calls: int = 0
    sdk_give_ups: int = 0  # export() calls that returned FAILURE after the SDK's own retries
    responses: dict[str, int] = field(default_factory=dict)  # "200", "429", "503", "OK", "UNAVAILABLE"
    refusals_with_hint: int = 0  # 429/503 with Retry-After, UNAVAILABLE with RetryInfo
    refusals_without_hint: int = 0
    hint_min_s: float | None = None
    hint_max_s: float | None = None
    first_refusal_s: float | None = None  # since the client started offering
    created_done_s: float = 0.0  # when creation finished
    drained_s: float = 0.0  # when the last batch was delivered (or given up at the deadline)


class Recorder:
    """Thread-safe tally of the responses the exporter received."""

    def __init__(self, report: ClientReport, t0: float) -> None:
        self.report = report
        self.t0 = t0
        self.lock = threading.Lock()

    def response(self, code: str, refused: bool, hint: float | None) -> None:
        r = self.report
        with self.lock:
            r.responses[code] = r.responses.get(code, 0) + 1
            if not refused:
                return
            if r.first_refusal_s is None:
                r.first_refusal_s = round(time.monotonic() - self.t0, 3)
            if hint is None:
                r.refusals_without_hint += 1
                return
            r.refusals_with_hint += 1
            r.hint_min_s = hint if r.hint_min_s is None else min(r.hint_min_s, hint)
            r.hint_max_s = hint if r.hint_max_s is None else max(r.hint_max_s, hint)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def http_session(rec: Recorder) -> Any:
    """A requests.Session whose response hook records status and Retry-After."""
    import requests

    def hook(resp: Any, *_: Any, **__: Any) -> None:
        refused = resp.status_code in (429, 503)
        rec.response(str(resp.status_code), refused, _retry_after(resp.headers.get("Retry-After")))

    session = requests.Session()
    session.hooks["response"].append(hook)
    return session


class _RecordingInterceptor(grpc.UnaryUnaryClientInterceptor):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = continuation(details, request)
        code = call.code()
        hint = None
        for key, value in call.trailing_metadata() or ():
            if key == RETRYINFO_KEY:
                info = error_details_pb2.RetryInfo()
                info.ParseFromString(value)
                hint = info.retry_delay.seconds + info.retry_delay.nanos / 1e9
        self.rec.response(code.name, code == grpc.StatusCode.UNAVAILABLE, hint)
        return call


def install_grpc_recorder(rec: Recorder) -> None:
    """Make the SDK's gRPC exporter build its channels with a recording interceptor."""
    from opentelemetry.exporter.otlp.proto.grpc import exporter as grpc_exporter

    plain = grpc.insecure_channel

    def channel(target: str, *args: Any, **kwargs: Any) -> grpc.Channel:
        return grpc.intercept_channel(plain(target, *args, **kwargs), _RecordingInterceptor(rec))

    grpc_exporter.insecure_channel = channel


# ----------------------------------------------------------------- spans
MODELS = (("openai", "gpt-4o-mini"), ("openai", "gpt-4o"), ("anthropic", "claude-3-5-haiku"))


class _Collect(SpanProcessor):
    """Keeps every ended span (the SDK's own ReadableSpan objects)."""

    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.spans.append(span)


class SdkSpans:
    """GenAI calls as the SDK records them: an HTTP server span with an LLM client span inside."""

    def __init__(self, service: str, seed: int) -> None:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider

        self.collect = _Collect()
        self.provider = TracerProvider(resource=Resource.create({"service.name": service}))
        self.provider.add_span_processor(self.collect)
        self.tracer = self.provider.get_tracer("loadtests.sdk_client")
        self.rng = random.Random(seed)

    def make(self, n: int) -> list[Any]:
        from opentelemetry.trace import SpanKind

        self.collect.spans = []
        rng = self.rng
        while len(self.collect.spans) < n:
            provider, model = rng.choice(MODELS)
            with self.tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as root:
                root.set_attribute("http.route", "/chat")
                if len(self.collect.spans) + 1 < n:
                    with self.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as llm:
                        llm.set_attributes(
                            {
                                "gen_ai.system": provider,
                                "gen_ai.operation.name": "chat",
                                "gen_ai.request.model": model,
                                "gen_ai.response.model": model,
                                "gen_ai.usage.input_tokens": rng.randint(50, 2000),
                                "gen_ai.usage.output_tokens": rng.randint(10, 500),
                                "gen_ai.response.finish_reasons": ["stop"],
                            }
                        )
        return self.collect.spans


def prebuilt_requests(n_requests: int, spans_per_request: int, seed: int) -> list[ExportTraceServiceRequest]:
    from loadtests.llmgen import TrafficConfig, generate

    traffic = TrafficConfig(seed=seed, duration_s=30 * 86400.0, spans_per_request=spans_per_request)
    return list(itertools.islice(generate(traffic), n_requests))


def request_spans(req: ExportTraceServiceRequest) -> int:
    return sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)


# ----------------------------------------------------------------- exporters
Sender = Callable[[Any], bool]  # one SDK export call (with the SDK's retries); True on success


def sdk_sender(transport: str, endpoint: str, timeout: float, rec: Recorder, payload: str) -> Sender:
    """A function sending one batch through a fresh real SDK exporter's export path."""
    if transport == "http":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
        from opentelemetry.sdk.trace.export import SpanExportResult

        http = HttpExporter(
            endpoint=f"http://{endpoint}/v1/traces", timeout=timeout, session=http_session(rec)
        )
        if payload == "prebuilt":
            return lambda body: bool(http._client.export(body).success)
        return lambda spans: http.export(spans) is SpanExportResult.SUCCESS

    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
    from opentelemetry.sdk.trace.export import SpanExportResult

    class PrebuiltGrpcExporter(GrpcExporter):
        """The SDK's gRPC export loop, fed an already built request."""

        def _translate_data(self, data: Any) -> Any:
            return data

        def _count_data(self, data: Any) -> int:
            return request_spans(data)

    cls = PrebuiltGrpcExporter if payload == "prebuilt" else GrpcExporter
    exp = cls(endpoint=f"http://{endpoint}", insecure=True, timeout=timeout)
    if payload == "prebuilt":
        return lambda req: exp._export(req) is SpanExportResult.SUCCESS
    return lambda spans: exp.export(spans) is SpanExportResult.SUCCESS


# ----------------------------------------------------------------- the run
@dataclass
class Batch:
    data: Any  # list of ReadableSpan, bytes (HTTP prebuilt) or ExportTraceServiceRequest (gRPC prebuilt)
    spans: int


class Client:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.report = ClientReport()
        self.t0 = time.monotonic()
        self.rec = Recorder(self.report, self.t0)
        if args.transport == "grpc":
            install_grpc_recorder(self.rec)
        self.backlog: collections.deque[Batch] = collections.deque()
        self.creating = True
        self.deadline = self.t0 + args.deadline
        self.lock = threading.Lock()
        self.ids: list[str] = []

    def batches(self) -> Iterator[Batch]:
        """Batches until `--spans` spans were made."""
        a = self.args
        left = a.spans
        if a.payload == "prebuilt":
            reqs = prebuilt_requests(a.requests, a.batch, a.seed)
            wire = [r.SerializeToString() for r in reqs]
            for i in itertools.count():
                if left <= 0:
                    return
                req = reqs[i % len(reqs)]
                n = request_spans(req)
                left -= n
                yield Batch(wire[i % len(reqs)] if a.transport == "http" else req, n)
        gen = SdkSpans(a.service or f"overload-client-{a.seed}", a.seed)
        while left > 0:
            spans = gen.make(min(a.batch, left))
            left -= len(spans)
            if a.ids_out:
                self.ids.extend(f"{s.context.span_id:016x}" for s in spans)
            yield Batch(spans, len(spans))

    def create(self) -> None:
        """Fill the backlog at `--rate` spans per second, or (rate 0) keep a few batches ahead."""
        rate = self.args.rate
        ahead = max(4, 2 * self.args.threads)
        start = time.monotonic()
        made = 0
        for batch in self.batches():
            if rate > 0:
                if (wait := start + made / rate - time.monotonic()) > 0:
                    time.sleep(wait)
            else:
                while len(self.backlog) >= ahead and time.monotonic() < self.deadline:
                    time.sleep(0.002)
            if time.monotonic() >= self.deadline:
                break
            made += batch.spans
            with self.lock:
                self.report.created += batch.spans
                self.backlog.append(batch)
        self.report.created_done_s = round(time.monotonic() - self.t0, 3)
        self.creating = False

    def export_loop(self, send: Sender) -> None:
        r = self.report
        while True:
            with self.lock:
                batch = self.backlog.popleft() if self.backlog else None
            if batch is None:
                if not self.creating:
                    return
                time.sleep(0.005)
                continue
            while True:
                if time.monotonic() > self.deadline:
                    with self.lock:
                        r.undelivered += batch.spans
                    break
                with self.lock:
                    r.export_calls += 1
                if send(batch.data):
                    with self.lock:
                        r.delivered += batch.spans
                        r.drained_s = round(time.monotonic() - self.t0, 3)
                    break
                with self.lock:
                    r.sdk_give_ups += 1

    def run(self) -> ClientReport:
        a = self.args
        senders = [
            sdk_sender(a.transport, a.endpoint, a.timeout, self.rec, a.payload) for _ in range(a.threads)
        ]
        self.t0 = self.rec.t0 = time.monotonic()
        self.deadline = self.t0 + a.deadline
        threads = [threading.Thread(target=self.export_loop, args=(s,)) for s in senders]
        threads.append(threading.Thread(target=self.create))
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        with self.lock:
            self.report.undelivered += sum(b.spans for b in self.backlog)
            self.backlog.clear()
        if a.ids_out:
            Path(a.ids_out).write_text("\n".join(self.ids))
        return self.report


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transport", choices=["http", "grpc"], required=True)
    ap.add_argument("--endpoint", required=True, help="host:port of the gateway's OTLP receiver")
    ap.add_argument("--spans", type=int, default=2000, help="spans to create and deliver")
    ap.add_argument("--batch", type=int, default=256, help="spans per export call")
    ap.add_argument("--threads", type=int, default=2, help="export calls in flight")
    ap.add_argument("--rate", type=float, default=0.0, help="spans/s created (0: all up front)")
    ap.add_argument("--payload", choices=["sdk", "prebuilt"], default="sdk")
    ap.add_argument("--requests", type=int, default=16, help="prebuilt: distinct requests, round-robin")
    ap.add_argument("--timeout", type=float, default=30.0, help="the SDK exporter's timeout (retry budget)")
    ap.add_argument("--deadline", type=float, default=120.0, help="stop exporting after this many seconds")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--service", default="", help="service.name of sdk spans")
    ap.add_argument("--ids-out", default="", help="sdk: write the created span ids (hex) here")
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    # the SDK logs every transient error; the report counts them instead
    logging.getLogger("opentelemetry").setLevel(logging.CRITICAL)
    report = Client(args).run()
    json.dump(asdict(report), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
