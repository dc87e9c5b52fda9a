"""Calls → spans → ExportTraceServiceRequests, in event-time order.

Each call is a trace of two or three spans: an HTTP server span (the root), an
optional DB client span, and the LLM client span, all children of the root.
Spans are ordered by their start time (the event time); a configured fraction is
delivered up to `max_lateness_s` late, i.e. sorted by start + delay, so every
span's start is at most that much below the latest start delivered before it.
The ordering is global: slices hand spans that start past their end to the next
slice. Spans are then cut into requests of `spans_per_request` (and, when set, of
at most `max_request_event_s` of event time), one ResourceSpans per service and
one ScopeSpans per span kind inside each, keeping the delivery order within each.

LLM spans carry OTel GenAI semantic-convention attributes (gen_ai.provider.name,
gen_ai.operation.name, gen_ai.request.model, gen_ai.response.model, usage, finish
reasons, time to first chunk, error.type); HTTP and DB spans carry only http.* /
db.* attributes, so the gateway must tell them apart.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from loadtests.llmgen.model import Calls, Simulator, TrafficConfig

KIND_HTTP, KIND_DB, KIND_LLM = 0, 1, 2
SPAN_KIND_SERVER, SPAN_KIND_CLIENT = 2, 3
STATUS_ERROR = 2
SCOPES = {
    KIND_HTTP: ("llmgen.http", "0.1.0"),
    KIND_DB: ("llmgen.db", "0.1.0"),
    KIND_LLM: ("llmgen.genai", "0.1.0"),
}
# HTTP status the service answers its own client with, by provider outcome.
_CLIENT_STATUS = {200: 200, 429: 429, 500: 502, 0: 504}
_ERROR_MESSAGES = {
    "RateLimitError": "Error code: 429 - Rate limit reached for requests",
    "InternalServerError": "Error code: 500 - The server had an error while processing your request",
    "APITimeoutError": "Request timed out.",
}


@dataclass
class SpanFrame:
    """Span rows (any order) with the columns of their call."""

    kind: np.ndarray  # int8
    start_ns: np.ndarray  # int64
    end_ns: np.ndarray
    key_ns: np.ndarray  # delivery order key: end + lateness (SDKs export a span when it ends)
    span_id: np.ndarray  # uint64
    parent_id: np.ndarray  # uint64 (0: root)
    call: Calls  # row-aligned

    def __len__(self) -> int:
        return int(self.kind.shape[0])

    def take(self, idx: np.ndarray | slice) -> SpanFrame:
        if isinstance(idx, slice):
            idx = np.arange(len(self))[idx]
        return SpanFrame(
            **{f.name: getattr(self, f.name)[idx] for f in fields(self) if f.name != "call"},
            call=self.call.take(idx),
        )

    @classmethod
    def concat(cls, parts: list[SpanFrame]) -> SpanFrame:
        if len(parts) == 1:
            return parts[0]
        return cls(
            **{
                f.name: np.concatenate([getattr(p, f.name) for p in parts])
                for f in fields(cls)
                if f.name != "call"
            },
            call=Calls.concat([p.call for p in parts]),
        )


def _ns(start_ns: int, offsets_s: np.ndarray) -> np.ndarray:
    return start_ns + np.rint(offsets_s * 1e9).astype(np.int64)


def spans_of(calls: Calls, start_ns: int) -> SpanFrame:
    """The spans of `calls` (HTTP roots, DB spans, LLM spans), unordered."""
    n = len(calls)
    db = np.flatnonzero(calls.has_db)
    rows = np.concatenate([np.arange(n), db, np.arange(n)])
    kind = np.concatenate(
        [
            np.full(n, KIND_HTTP, np.int8),
            np.full(db.shape[0], KIND_DB, np.int8),
            np.full(n, KIND_LLM, np.int8),
        ]
    )
    llm_start = _ns(start_ns, calls.llm_start)
    start = np.concatenate([_ns(start_ns, calls.t), _ns(start_ns, calls.db_start[db]), llm_start])
    end = np.concatenate(
        [
            _ns(start_ns, calls.http_end),
            _ns(start_ns, calls.db_end[db]),
            llm_start + np.rint(calls.latency * 1e9).astype(np.int64),
        ]
    )
    late = np.concatenate([calls.late_http, calls.late_db[db], calls.late_llm])
    return SpanFrame(
        kind=kind,
        start_ns=start,
        end_ns=end,
        key_ns=end + np.rint(late * 1e9).astype(np.int64),
        span_id=np.concatenate([calls.http_id, calls.db_id[db], calls.llm_id]),
        parent_id=np.concatenate([np.zeros(n, np.uint64), calls.http_id[db], calls.http_id]),
        call=calls.take(rows),
    )


def span_stream(config: TrafficConfig, sim: Simulator | None = None) -> Iterator[SpanFrame]:
    """Spans in delivery order, one frame per slice (spans starting past a slice wait for the next)."""
    sim = sim or Simulator(config)
    start_ns = config.start_ns
    carry: SpanFrame | None = None
    last = sim.n_slices - 1
    for k, calls in sim.slices():
        frame = spans_of(calls, start_ns)
        if carry is not None and len(carry):
            frame = SpanFrame.concat([carry, frame])
        frame = frame.take(np.argsort(frame.key_ns, kind="stable"))
        if k == last:
            yield frame
            return
        boundary = start_ns + round(sim.slice_bounds(k)[1] * 1e9)
        cut = int(np.searchsorted(frame.key_ns, boundary, side="left"))
        carry = frame.take(slice(cut, None))
        yield frame.take(slice(0, cut))


@dataclass
class Chunk:
    """One request (as protobuf wire bytes) and what is in it."""

    wire: bytes
    spans: int
    llm_calls: int
    errors: int
    rate_limited: int
    first_key_ns: int
    last_key_ns: int
    max_end_ns: int

    @property
    def request(self) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self.wire)


# ---------------------------------------------------------------- wire encoding
# The requests are written in protobuf wire format directly: static parts (names, kinds,
# per-series attributes, resources, scopes) are encoded once; per span only ids, times
# and the varying attributes are. Fields go in field-number order, so the bytes are the
# canonical serialisation of the message they parse into.
_TIMES = struct.Struct("<BQBQ")  # start_time_unix_nano (7) and end_time_unix_nano (8), fixed64
_DOUBLE = struct.Struct("<d")


def _varint_slow(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


_SMALL_VARINTS = tuple(_varint_slow(i) for i in range(1 << 14))


def _varint(n: int) -> bytes:
    return _SMALL_VARINTS[n] if n < 16384 else _varint_slow(n)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _anyvalue(value: str | bool | int | float | list[str]) -> bytes:
    if isinstance(value, bool):
        return b"\x10" + _varint(int(value))
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE.pack(value)
    if isinstance(value, list):
        return _field(5, b"".join(_field(1, _anyvalue(v)) for v in value))
    return _field(1, value.encode())


def _kv(key: str, value: str | bool | int | float | list[str], number: int = 9) -> bytes:
    """An attribute (Span.attributes is field 9, Resource.attributes field 1)."""
    return _field(number, _field(1, key.encode()) + _field(2, _anyvalue(value)))


class _IntAttr(dict[int, bytes]):
    """Encoded integer attributes of one key, by value (memoised: token counts repeat)."""

    def __init__(self, key: str) -> None:
        super().__init__()
        self.key = _field(1, key.encode())

    def __missing__(self, v: int) -> bytes:
        av = b"\x18" + _varint(v)
        kv = self.key + b"\x12" + _varint(len(av)) + av
        out = self[v] = b"\x4a" + _varint(len(kv)) + kv
        return out


class _Cached(dict[Any, bytes]):
    """Memoised encoding of a value-keyed fragment."""

    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def __missing__(self, key: Any) -> bytes:
        value = self[key] = self.make(key)
        return value


_MAX_TOKENS = _IntAttr("gen_ai.request.max_tokens")
_INPUT = _IntAttr("gen_ai.usage.input_tokens")
_OUTPUT = _IntAttr("gen_ai.usage.output_tokens")
_CACHED = _IntAttr("gen_ai.usage.cache_read.input_tokens")
_STATUS_CODE = _IntAttr("http.response.status_code")
_TTFT_KEY = _field(1, b"gen_ai.response.time_to_first_chunk")
_ERROR_CODE = b"\x18" + _varint(STATUS_ERROR)  # Status.code (3)
_STREAM = {flag: _kv("gen_ai.request.stream", flag) for flag in (False, True)}
_RESPONSE_MODEL = _Cached(lambda m: _kv("gen_ai.response.model", m))
_FINISH = _Cached(lambda r: _kv("gen_ai.response.finish_reasons", [r]))
_LLM_ERROR = _Cached(lambda e: _kv("error.type", e))
_ERROR_STATUS = _Cached(
    lambda e: _field(15, _field(2, _ERROR_MESSAGES.get(e, str(e)).encode()) + _ERROR_CODE)
)


def _ttft(x: float) -> bytes:
    av = b"\x21" + _DOUBLE.pack(x)
    kv = _TTFT_KEY + b"\x12" + _varint(len(av)) + av
    return b"\x4a" + _varint(len(kv)) + kv


class Encoder:
    """Builds ExportTraceServiceRequests (as wire bytes) from span rows."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        services = sim.config.services
        self._resource = [
            _field(
                1,
                b"".join(
                    _kv(k, v, number=1)
                    for k, v in (
                        ("service.name", svc.name),
                        ("service.version", svc.version),
                        ("deployment.environment.name", "loadtest"),
                        ("telemetry.sdk.name", "llmgen"),
                    )
                ),
            )
            for svc in services
        ]
        self._scope = {
            k: _field(1, _field(1, name.encode()) + _field(2, version.encode()))
            for k, (name, version) in SCOPES.items()
        }
        # name (5) and kind (6) go before the times; the static attributes after them
        self._http_head = [
            _field(5, f"POST {svc.route}".encode()) + b"\x30" + _varint(SPAN_KIND_SERVER) for svc in services
        ]
        self._http_attrs = [
            _kv("http.request.method", "POST") + _kv("http.route", svc.route) for svc in services
        ]
        self._db_head = _field(5, b"SELECT documents") + b"\x30" + _varint(SPAN_KIND_CLIENT)
        self._db_attrs = b"".join(
            _kv(k, v)
            for k, v in (
                ("db.system.name", "postgresql"),
                ("db.operation.name", "SELECT"),
                ("db.collection.name", "documents"),
                ("server.address", "pg.internal"),
            )
        )
        self._llm_head = []
        self._llm_attrs = []
        self._chat = []
        for s in sim.series:
            m = s.model
            self._llm_head.append(
                _field(5, f"{m.operation} {m.request_model}".encode()) + b"\x30" + _varint(SPAN_KIND_CLIENT)
            )
            self._llm_attrs.append(
                _kv("gen_ai.provider.name", m.provider)
                + _kv("gen_ai.operation.name", m.operation)
                + _kv("gen_ai.request.model", m.request_model)
                + _kv("server.address", m.server_address)
            )
            self._chat.append(m.is_chat)
        self._http_status = _Cached(self._http_status_attrs)

    @staticmethod
    def _http_status_attrs(provider_status: int) -> bytes:
        status = _CLIENT_STATUS[provider_status]
        out = _STATUS_CODE[status]
        if status >= 500:
            out += _kv("error.type", str(status)) + _field(15, _ERROR_CODE)
        return out

    def wire(self, f: SpanFrame) -> bytes:
        """The serialised ExportTraceServiceRequest of the rows of `f`."""
        n = len(f)
        if not n:
            return b""
        c = f.call
        # group by service, then kind, keeping delivery order inside each group
        order = np.lexsort((np.arange(n), f.kind, c.service))
        svc_list = c.service[order].tolist()
        kind_list = f.kind[order].tolist()
        trace_blob = np.stack([c.trace_hi[order], c.trace_lo[order]], axis=1).astype(">u8").tobytes()
        span_blob = f.span_id[order].astype(">u8").tobytes()
        parent_blob = f.parent_id[order].astype(">u8").tobytes()
        series = c.series[order].tolist()
        start = f.start_ns[order].tolist()
        end = f.end_ns[order].tolist()
        status = c.http_status[order].tolist()
        error_type = c.error_type[order].tolist()
        inp = c.input_tokens[order].tolist()
        out = c.output_tokens[order].tolist()
        cached = c.cached_tokens[order].tolist()
        max_tokens = c.max_tokens[order].tolist()
        stream = c.stream[order].tolist()
        ttft = c.ttft[order].tolist()
        finish = c.finish_reason[order].tolist()
        response = c.response_model[order].tolist()

        resource_spans: list[bytes] = []
        scopes: list[bytes] = []
        spans: list[bytes] = []
        cur_svc = cur_kind = -1

        def close_scope() -> None:
            if spans:
                scopes.append(_field(2, self._scope[cur_kind] + b"".join(spans)))
                spans.clear()

        def close_resource() -> None:
            close_scope()
            if scopes:
                resource_spans.append(_field(1, self._resource[cur_svc] + b"".join(scopes)))
                scopes.clear()

        times = _TIMES.pack
        for i in range(n):
            s, k = svc_list[i], kind_list[i]
            if s != cur_svc:
                close_resource()
                cur_svc, cur_kind = s, k
            elif k != cur_kind:
                close_scope()
                cur_kind = k
            parts = [b"\x0a\x10", trace_blob[16 * i : 16 * i + 16], b"\x12\x08", span_blob[8 * i : 8 * i + 8]]
            if k == KIND_HTTP:
                parts += (
                    self._http_head[s],
                    times(0x39, start[i], 0x41, end[i]),
                    self._http_attrs[s],
                    self._http_status[status[i]],
                )
            elif k == KIND_DB:
                parts += (
                    b"\x22\x08",
                    parent_blob[8 * i : 8 * i + 8],
                    self._db_head,
                    times(0x39, start[i], 0x41, end[i]),
                    self._db_attrs,
                )
            else:
                j = series[i]
                chat = self._chat[j]
                parts += (
                    b"\x22\x08",
                    parent_blob[8 * i : 8 * i + 8],
                    self._llm_head[j],
                    times(0x39, start[i], 0x41, end[i]),
                    self._llm_attrs[j],
                )
                if chat:
                    parts += (_MAX_TOKENS[max_tokens[i]], _STREAM[stream[i]])
                err = error_type[i]
                if err:
                    parts.append(_LLM_ERROR[err])
                    if status[i]:
                        parts.append(_STATUS_CODE[status[i]])
                    parts.append(_ERROR_STATUS[err])
                else:
                    parts += (_RESPONSE_MODEL[response[i]], _INPUT[inp[i]])
                    if chat:
                        parts += (_OUTPUT[out[i]], _CACHED[cached[i]], _FINISH[finish[i]])
                        if stream[i]:
                            parts.append(_ttft(ttft[i]))
            span = b"".join(parts)
            spans.append(b"\x12" + _varint(len(span)) + span)
        close_resource()
        return b"".join(resource_spans)

    def request(self, f: SpanFrame) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self.wire(f))


def _cuts(key_ns: np.ndarray, size: int, max_event_ns: int | None) -> list[int]:
    """Chunk end positions over delivery-ordered keys: at most `size` rows, at most `max_event_ns` wide."""
    n = key_ns.shape[0]
    out, pos = [], 0
    while pos < n:
        end = min(pos + size, n)
        if max_event_ns is not None:
            end = min(end, int(np.searchsorted(key_ns, key_ns[pos] + max_event_ns, side="right")))
        out.append(end)
        pos = end
    return out


def _chunk(enc: Encoder, f: SpanFrame) -> Chunk:
    llm = f.kind == KIND_LLM
    return Chunk(
        wire=enc.wire(f),
        spans=len(f),
        llm_calls=int(llm.sum()),
        errors=int((llm & f.call.error).sum()),
        rate_limited=int((llm & f.call.rate_limited).sum()),
        first_key_ns=int(f.key_ns[0]),
        last_key_ns=int(f.key_ns[-1]),
        max_end_ns=int(f.end_ns.max()),
    )


def generate_chunks(config: TrafficConfig, sim: Simulator | None = None) -> Iterator[Chunk]:
    """The run as requests with their counts, in delivery order."""
    sim = sim or Simulator(config)
    enc = Encoder(sim)
    size = config.spans_per_request
    max_ev = None if config.max_request_event_s is None else round(config.max_request_event_s * 1e9)
    pending: SpanFrame | None = None
    for frame in span_stream(config, sim):
        if pending is not None and len(pending):
            frame = SpanFrame.concat([pending, frame])
        if not len(frame):
            continue
        cuts = _cuts(frame.key_ns, size, max_ev)
        pos = 0
        for end in cuts[:-1]:
            yield _chunk(enc, frame.take(slice(pos, end)))
            pos = end
        pending = frame.take(slice(pos, None))  # the last, possibly short, chunk waits for more spans
    if pending is not None and len(pending):
        pos = 0
        for end in _cuts(pending.key_ns, size, max_ev):
            yield _chunk(enc, pending.take(slice(pos, end)))
            pos = end


def generate(config: TrafficConfig) -> Iterator[ExportTraceServiceRequest]:
    """The run as ExportTraceServiceRequests of `spans_per_request` spans, in event-time order."""
    for chunk in generate_chunks(config):
        yield chunk.request
