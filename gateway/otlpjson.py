"""OTLP/JSON: the proto3 JSON mapping with the OTLP deviations.

OTLP/JSON differs from protobuf's stock JSON mapping where it matters: trace
and span ids are hex strings, not base64 (every `traceId`, `spanId` and
`parentSpanId`, in spans, span links, log records and metric exemplars); enums
are integers; keys are lowerCamelCase; unknown fields are ignored on input.
See https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding

Speed: protobuf's `json_format` costs ~0.1 ms per span each way, too slow for a
gateway. So the common path is a small table-driven codec: per message type we
precompute one converter per field (ids → hex, 64-bit ints → strings, ...),
encode from `ListFields()` (only set fields) and decode into keyword arguments
that the C message constructor builds in one go. When the fast decoder meets
anything it does not like, we re-decode with `json_format` (after swapping hex
ids to base64 by walking only the places ids live) purely to get a precise,
path-bearing error message. Well-known types (google.rpc.Status details) are
handed to `json_format` as well.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

__all__ = ["OtlpJsonError", "decode", "encode"]

M = TypeVar("M", bound=Message)
Conv = Callable[[Any], Any]


class OtlpJsonError(ValueError):
    """The payload is not valid OTLP/JSON for the expected message type."""


class _Reject(Exception):
    """Fast decoder gave up; the slow path will explain why (or accept)."""


# Messages whose trace_id/span_id/parent_span_id are hex in OTLP/JSON.
_ID_OWNERS = {
    "opentelemetry.proto.trace.v1.Span",
    "opentelemetry.proto.trace.v1.Span.Link",
    "opentelemetry.proto.logs.v1.LogRecord",
    "opentelemetry.proto.metrics.v1.Exemplar",
}
_ID_FIELDS = {"trace_id", "span_id", "parent_span_id"}

_INT64 = {FieldDescriptor.CPPTYPE_INT64, FieldDescriptor.CPPTYPE_UINT64}
_INT32 = {FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_UINT32}
_FLOATS = {FieldDescriptor.CPPTYPE_DOUBLE, FieldDescriptor.CPPTYPE_FLOAT}


# ---------------------------------------------------------------- scalar converters
def _float_out(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "NaN" if v != v else ("Infinity" if v > 0 else "-Infinity")


def _bytes_out(v: bytes) -> str:
    return binascii.b2a_base64(v, newline=False).decode("ascii")


def _int_in(v: Any) -> int:
    if type(v) is int:
        return v
    if isinstance(v, str):
        try:
            return int(v, 10)
        except ValueError:
            raise _Reject from None
    if type(v) is float and v.is_integer():
        return int(v)
    raise _Reject


_SPECIAL_FLOATS = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_in(v: Any) -> float:
    t = type(v)
    if t is float or t is int:
        return float(v)
    if t is str:
        special = _SPECIAL_FLOATS.get(v)
        if special is not None:
            return special
        try:
            return float(v)
        except ValueError:
            raise _Reject from None
    raise _Reject


def _bytes_in(v: Any) -> bytes:
    if type(v) is not str:
        raise _Reject
    s = v.replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return binascii.a2b_base64(s, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Reject from None


def _hex_in(v: Any) -> bytes:
    if type(v) is not str:
        raise _Reject
    try:
        return binascii.a2b_hex(v)  # strict: even length, [0-9a-fA-F], no whitespace
    except (binascii.Error, ValueError):
        raise _Reject from None


# ---------------------------------------------------------------- per-type plans
@dataclass
class _Plan:
    # field descriptor -> (json key, converter or None, repeated)
    enc: dict[FieldDescriptor, tuple[str, Conv | None, bool]]
    # json key or proto name -> (proto name, converter or None, repeated)
    dec: dict[str, tuple[str, Conv | None, bool]]


_PLANS: dict[str, _Plan] = {}


def _plan(desc: Descriptor) -> _Plan:
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    plan = _PLANS[desc.full_name] = _Plan({}, {})
    ids = desc.full_name in _ID_OWNERS
    for fd in desc.fields:
        enc, dec = _converters(fd, ids and fd.name in _ID_FIELDS)
        plan.enc[fd] = (fd.json_name, enc, fd.is_repeated)
        entry = (fd.name, dec, fd.is_repeated)
        plan.dec[fd.json_name] = entry
        plan.dec[fd.name] = entry
    return plan


def _converters(fd: FieldDescriptor, is_id: bool) -> tuple[Conv | None, Conv | None]:
    ct = fd.cpp_type
    if ct == FieldDescriptor.CPPTYPE_MESSAGE:
        sub = fd.message_type
        if sub.full_name.startswith("google.protobuf.") or sub.GetOptions().map_entry:
            return _wkt_converters(sub)
        child = _plan(sub)  # registered before its fields are filled, so recursive types work
        return (lambda m: _encode_obj(m, child)), (lambda v: _decode_obj(v, child))
    if ct in _INT64:
        return str, _int_in
    if ct in _INT32:
        return None, _int_in
    if ct in _FLOATS:
        return _float_out, _float_in
    if ct == FieldDescriptor.CPPTYPE_ENUM:
        return None, _enum_in(fd)
    if fd.type == FieldDescriptor.TYPE_BYTES:
        return (bytes.hex, _hex_in) if is_id else (_bytes_out, _bytes_in)
    return None, None  # string, bool: the constructor type-checks them


def _enum_in(fd: FieldDescriptor) -> Conv:
    by_name = {v.name: v.number for v in fd.enum_type.values}

    def conv(v: Any) -> int:
        if type(v) is int:
            return v
        if isinstance(v, str) and v in by_name:  # names are tolerated on input
            return by_name[v]
        return _int_in(v)

    return conv


def _wkt_converters(desc: Descriptor) -> tuple[Conv, Conv]:
    cls = message_factory.GetMessageClass(desc)

    def dec(v: Any) -> Message:
        try:
            return json_format.ParseDict(v, cls(), ignore_unknown_fields=True)
        except json_format.ParseError:
            raise _Reject from None

    return (lambda m: json_format.MessageToDict(m, use_integers_for_enums=True)), dec


def _encode_obj(msg: Message, plan: _Plan) -> dict[str, Any]:
    out: dict[str, Any] = {}
    enc = plan.enc
    for fd, value in msg.ListFields():
        key, conv, repeated = enc[fd]
        if conv is None:
            out[key] = list(value) if repeated else value
        elif repeated:
            out[key] = [conv(v) for v in value]
        else:
            out[key] = conv(value)
    return out


def _decode_obj(obj: Any, plan: _Plan) -> dict[str, Any]:
    """JSON object -> constructor kwargs (proto names, converted values, nested dicts)."""
    if type(obj) is not dict:
        raise _Reject
    kw: dict[str, Any] = {}
    dec = plan.dec
    for key, val in obj.items():
        f = dec.get(key)
        if f is None or val is None:  # unknown fields are ignored; null means default
            continue
        name, conv, repeated = f
        if repeated:
            if type(val) is not list:
                raise _Reject
            kw[name] = val if conv is None else [conv(v) for v in val]
        else:
            kw[name] = val if conv is None else conv(val)
    return kw


# ---------------------------------------------------------------- slow path (errors)
@dataclass(frozen=True)
class _Node:
    """One level of the request tree on the way to ids: JSON keys it may appear under, its id fields."""

    keys: tuple[str, ...]
    ids: tuple[str, ...] = ()
    children: tuple[_Node, ...] = ()


def _n(*keys: str, ids: tuple[str, ...] = (), children: tuple[_Node, ...] = ()) -> _Node:
    return _Node(keys, ids, children)


_TS = ("traceId", "trace_id", "spanId", "span_id")


def _chain(resource: tuple[str, str], scope: tuple[str, str], leaf: _Node) -> _Node:
    return _n(children=(_n(*resource, children=(_n(*scope, children=(leaf,)),)),))


_EXEMPLARS = _n("dataPoints", "data_points", children=(_n("exemplars", ids=_TS),))
_DATA = ("gauge", "sum", "histogram", "exponentialHistogram", "exponential_histogram")
_TRACES = _chain(
    ("resourceSpans", "resource_spans"),
    ("scopeSpans", "scope_spans"),
    _n("spans", ids=(*_TS, "parentSpanId", "parent_span_id"), children=(_n("links", ids=_TS),)),
)
_LOGS = _chain(
    ("resourceLogs", "resource_logs"), ("scopeLogs", "scope_logs"), _n("logRecords", "log_records", ids=_TS)
)
_METRICS = _chain(
    ("resourceMetrics", "resource_metrics"),
    ("scopeMetrics", "scope_metrics"),
    _n("metrics", children=tuple(_n(k, children=(_EXEMPLARS,)) for k in _DATA)),
)
_P = "opentelemetry.proto."
_TREES: dict[str, _Node] = {
    _P + "collector.trace.v1.ExportTraceServiceRequest": _TRACES,
    _P + "trace.v1.TracesData": _TRACES,
    _P + "collector.logs.v1.ExportLogsServiceRequest": _LOGS,
    _P + "logs.v1.LogsData": _LOGS,
    _P + "collector.metrics.v1.ExportMetricsServiceRequest": _METRICS,
    _P + "metrics.v1.MetricsData": _METRICS,
}


def _ids_to_base64(obj: dict[str, Any], node: _Node, path: str) -> None:
    """Rewrite hex ids in place for json_format; raise OtlpJsonError naming a bad one."""
    for key in node.ids:
        val = obj.get(key)
        if val is None:
            continue
        if not isinstance(val, str):
            raise OtlpJsonError(f"invalid {path}.{key}: expected a hex string, got {type(val).__name__}")
        try:
            raw = binascii.a2b_hex(val)
        except (binascii.Error, ValueError):
            raise OtlpJsonError(f"invalid {path}.{key}: not a hex string: {val!r:.80}") from None
        obj[key] = _bytes_out(raw)
    for child in node.children:
        for key in child.keys:
            val = obj.get(key)
            if isinstance(val, list):
                for i, item in enumerate(val):
                    if isinstance(item, dict):
                        _ids_to_base64(item, child, f"{path}.{key}[{i}]")
            elif isinstance(val, dict):
                _ids_to_base64(val, child, f"{path}.{key}")


def _slow_decode(data: bytes | bytearray | memoryview | str, message_cls: type[M]) -> M:
    obj = orjson.loads(data)
    name = message_cls.DESCRIPTOR.full_name
    tree = _TREES.get(name)
    if tree is not None:
        _ids_to_base64(obj, tree, message_cls.__name__)
    message = message_cls()
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(f"invalid {message_cls.__name__}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
        raise OtlpJsonError(f"invalid {message_cls.__name__}: {type(exc).__name__}: {exc}") from None
    return message


# ---------------------------------------------------------------- API
def encode(message: Message) -> bytes:
    """One compact line of OTLP/JSON for an Export request/response or a google.rpc.Status."""
    desc = message.DESCRIPTOR
    if desc.full_name.startswith("google.rpc."):
        return orjson.dumps(json_format.MessageToDict(message, use_integers_for_enums=True))
    return orjson.dumps(_encode_obj(message, _plan(desc)))


def decode(data: bytes | bytearray | memoryview | str, message_cls: type[M]) -> M:
    """Parse OTLP/JSON into `message_cls`; raise OtlpJsonError naming what is wrong.

    Ids of the wrong length are kept as decoded (receivers reject those per
    item, as partial success); ids that are not hex are an error.
    """
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise OtlpJsonError(f"invalid JSON: {exc}") from None
    if type(obj) is not dict:
        raise OtlpJsonError(
            f"expected a JSON object for {message_cls.DESCRIPTOR.full_name}, got {type(obj).__name__}"
        )
    if message_cls.DESCRIPTOR.full_name.startswith("google.rpc."):
        return _slow_decode(data, message_cls)
    try:
        return message_cls(**_decode_obj(obj, _plan(message_cls.DESCRIPTOR)))
    except (_Reject, TypeError, ValueError, KeyError, OverflowError, RecursionError, AttributeError):
        pass
    return _slow_decode(data, message_cls)  # raises a precise error, or accepts what we were strict about
