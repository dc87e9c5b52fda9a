"""Transport-independent handling of one OTLP Export request.

Both transports call `ExportHandler.handle`: decode (protobuf or JSON), drop
structurally invalid items into `partial_success`, push the rest into the
pipeline and count what was accepted or refused. Errors come back as typed
exceptions that each transport maps to its own status codes.

Protobuf traces take the fast path by default (gateway.wire.traces: columns straight
from the wire bytes, the request parsed only if a later stage needs it); whatever it
declines goes through the protobuf library, so malformed input gets the library's error.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Literal

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

from gateway import otlpjson
from gateway.batch import BATCH_TYPES, OTLP_SIGNALS, Batch, Signal, SpanBatch
from gateway.component import ComponentContext, Consumer
from gateway.wire import json_traces
from gateway.wire import traces as wire_traces

REQUEST_TYPES: dict[Signal, type[Any]] = {
    Signal.TRACES: trace_pb.ExportTraceServiceRequest,
    Signal.METRICS: metrics_pb.ExportMetricsServiceRequest,
    Signal.LOGS: logs_pb.ExportLogsServiceRequest,
}
RESPONSE_TYPES: dict[Signal, type[Any]] = {
    Signal.TRACES: trace_pb.ExportTraceServiceResponse,
    Signal.METRICS: metrics_pb.ExportMetricsServiceResponse,
    Signal.LOGS: logs_pb.ExportLogsServiceResponse,
}
_REJECTED_FIELD = {
    Signal.TRACES: "rejected_spans",
    Signal.METRICS: "rejected_data_points",
    Signal.LOGS: "rejected_log_records",
}


class InvalidRequestError(ValueError):
    """The body could not be decoded as an OTLP Export request."""


class SignalNotEnabledError(LookupError):
    """No pipeline takes this signal from this receiver."""


@dataclass(frozen=True)
class ExportResult:
    accepted: int
    rejected: int
    message: str

    def response(self, signal: Signal) -> Any:
        resp = RESPONSE_TYPES[signal]()
        if self.rejected or self.message:
            setattr(resp.partial_success, _REJECTED_FIELD[signal], self.rejected)
            resp.partial_success.error_message = self.message
        return resp

    def body(self, signal: Signal, json: bool = False) -> bytes:
        """The serialized response; a full success (the usual case) is the same bytes every time."""
        if self.rejected or self.message:
            msg = self.response(signal)
            return otlpjson.encode(msg) if json else bytes(msg.SerializeToString())
        return _FULL_SUCCESS[(signal, json)]


_FULL_SUCCESS = {
    (s, j): otlpjson.encode(t()) if j else bytes(t().SerializeToString())
    for s, t in RESPONSE_TYPES.items()
    for j in (False, True)
}


def decode_request(signal: Signal, payload: bytes, json: bool) -> Any:
    cls = REQUEST_TYPES[signal]
    if json:
        try:
            return otlpjson.decode(payload, cls)
        except ValueError as exc:
            raise InvalidRequestError(f"invalid OTLP/JSON {cls.__name__}: {exc}") from None
    msg = cls()
    try:
        msg.ParseFromString(payload)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidRequestError(f"invalid protobuf {cls.__name__}: {exc}") from None
    return msg


class ExportHandler:
    """Shared by the gRPC and HTTP servers of one receiver."""

    def __init__(
        self,
        ctx: ComponentContext,
        consumers: dict[Signal, Consumer],
        wire_decoder: Literal["fast", "reference"] = "fast",
    ) -> None:
        self.ctx = ctx
        self.consumers = consumers
        self.fast = wire_decoder == "fast"
        self._warm_done = threading.Event()
        tel = ctx.telemetry
        self._accepted = {
            (s, t): tel.receiver_accepted[s].labels(receiver=str(ctx.id), transport=t)
            for s in OTLP_SIGNALS
            for t in ("grpc", "http")
        }
        self._refused = {
            (s, t): tel.receiver_refused[s].labels(receiver=str(ctx.id), transport=t)
            for s in OTLP_SIGNALS
            for t in ("grpc", "http")
        }

    def start_warm_up(self) -> None:
        """Compile (or load cached) the decoder off the event loop; `ready()` turns True when done."""
        if self.fast:
            json_traces.start_warm_up()  # JSON traces use otlpjson until the transcoder is loaded
        threading.Thread(target=self._warm, name="wire-decoder-warm-up", daemon=True).start()

    def ready(self) -> bool:
        """False until the decoder is compiled: a cold first request would block for seconds."""
        return self._warm_done.is_set() and (not self.fast or json_traces.ready())

    def _warm(self) -> None:
        if not self.fast:  # the reference decoder needs only the span checks compiled
            try:
                SpanBatch.from_request(trace_pb.ExportTraceServiceRequest()).invalid_reasons()
            except Exception:  # pragma: no cover - the first request then compiles them
                self.ctx.logger.exception("span check warm-up failed")
            finally:
                self._warm_done.set()
            return
        try:
            seconds = wire_traces.warm_up()
            self.ctx.logger.info("wire decoder ready", extra={"fields": {"warm_up_s": round(seconds, 3)}})
        except Exception:  # pragma: no cover - every request then takes the reference path
            self.ctx.logger.exception("wire decoder warm-up failed; using the protobuf library")
            self.fast = False
        finally:
            self._warm_done.set()

    def decode(self, signal: Signal, payload: bytes, json: bool) -> Batch:
        """The batch of one request body; raises InvalidRequestError when it does not decode."""
        if json and self.fast and signal is Signal.TRACES and json_traces.usable():
            wire = json_traces.transcode_traces(payload)  # exact protobuf bytes, or None: otlpjson
            if wire is not None:
                payload, json = wire, False
        if self.fast and signal is Signal.TRACES and not json:
            batch = wire_traces.decode_spans(payload)
            if batch is not None:
                return batch
        request = decode_request(signal, payload, json)
        return BATCH_TYPES[signal].from_request(request, wire=None if json else payload)

    def refuse_count(self, signal: Signal, transport: str, n: int) -> None:
        if n:
            self._refused[(signal, transport)].inc(n)

    async def handle(self, signal: Signal, payload: bytes, *, json: bool, transport: str) -> ExportResult:
        """Raises InvalidRequestError, SignalNotEnabledError or ConsumeError (from the pipeline)."""
        consumer = self.consumers.get(signal)
        if consumer is None:
            raise SignalNotEnabledError(f"this receiver has no pipeline for {signal.value}")
        batch = self.decode(signal, payload, json)
        rejected, message = 0, ""
        if isinstance(batch, SpanBatch):
            bad, reasons = batch.invalid_reasons()
            if reasons:
                rejected = int(bad.sum())
                message = "; ".join(reasons)
                batch = batch.take(~bad)
                self.refuse_count(signal, transport, rejected)
        items = batch.item_count
        if len(batch) == 0:
            return ExportResult(0, rejected, message)
        try:
            await consumer.consume(batch)
        except Exception:
            self.refuse_count(signal, transport, items)
            raise
        self._accepted[(signal, transport)].inc(items)
        return ExportResult(items, rejected, message)
