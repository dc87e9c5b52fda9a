"""Locust load on the OTLP/HTTP receiver with realistic GenAI traces.

    .venv/bin/sentinel run &        # or any OTLP/HTTP receiver on :4318
    .venv/bin/locust -f loadtests/locustfile.py --host http://127.0.0.1:4318 \
        --headless -u 4 -r 4 -t 30s

Bodies are ExportTraceServiceRequests from loadtests.llmgen, serialised once
before the users start and posted round-robin as application/x-protobuf.
Environment: OTLP_SPANS_PER_REQUEST (default 512), OTLP_REQUESTS (distinct bodies,
default 64), OTLP_GZIP=1 (gzip the bodies). Each pass over the bodies moves their
timestamps on by the event time one pass covers, as real traffic would. Locust's "requests/s"
times the spans per request is the span rate; a response with a partial_success
rejection is reported as a failure.

For measurements use loadtests/otlp_load.py (it also measures the target's CPU
and memory); locust's own per-request overhead limits it to a few hundred
requests/s per core.
"""

from __future__ import annotations

import itertools
import os

from locust import FastHttpUser, task
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from loadtests.otlp_load import build_payloads

SPANS_PER_REQUEST = int(os.environ.get("OTLP_SPANS_PER_REQUEST", "512"))
N_REQUESTS = int(os.environ.get("OTLP_REQUESTS", "64"))
GZIP = os.environ.get("OTLP_GZIP", "") not in ("", "0", "false")

PAYLOADS = build_payloads(N_REQUESTS, SPANS_PER_REQUEST, gzipped=GZIP)
_NEXT = itertools.count()
HEADERS = {"Content-Type": "application/x-protobuf"} | ({"Content-Encoding": "gzip"} if GZIP else {})


class OtlpTracesUser(FastHttpUser):
    """One OTLP exporter sending batches back to back (no think time, like an SDK under load)."""

    @task
    def export_traces(self) -> None:
        cycle, i = divmod(next(_NEXT), len(PAYLOADS.wires))
        body = PAYLOADS.body(i, cycle)
        with self.client.post(
            "/v1/traces",
            data=body,  # type: ignore[arg-type]  # bytes are sent as-is; the annotation omits them
            headers=HEADERS,
            name="/v1/traces",
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            out = ExportTraceServiceResponse()
            out.ParseFromString(resp.content or b"")
            if out.partial_success.rejected_spans:
                resp.failure(f"rejected {out.partial_success.rejected_spans} spans")
            else:
                resp.success()
