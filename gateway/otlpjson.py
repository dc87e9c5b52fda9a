"""OTLP/JSON: the proto3 JSON mapping with the OTLP deviations.

OTLP/JSON differs from protobuf's stock JSON mapping in one way that matters:
trace and span ids are hex strings, not base64 (every `traceId`, `spanId` and
`parentSpanId`, in spans, span links, log records and metric exemplars). Enums
are integers, keys are lowerCamelCase and unknown fields are ignored on input.

We use protobuf's `json_format` for the bulk of the mapping and fix ids up by
walking only the places where they live, so the cost over stock JSON is one
hex/base64 swap per id. See https://opentelemetry.io/docs/specs/otlp/#json-protobuf-encoding
"""

from __future__ import annotations

import binascii
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from google.protobuf import json_format
from google.protobuf.message import Message

__all__ = ["OtlpJsonError", "decode", "encode"]

M = TypeVar("M", bound=Message)


class OtlpJsonError(ValueError):
    """The payload is not valid OTLP/JSON for the expected message type."""


@dataclass(frozen=True)
class _Node:
    """One level of the message tree on the way to ids.

    `keys` are the JSON names this level may appear under (lowerCamelCase first,
    then the proto name, which lenient senders use); `ids` are the id fields of
    this level as (camel, proto name) pairs.
    """

    keys: tuple[str, ...]
    ids: tuple[tuple[str, str], ...] = ()
    children: tuple[_Node, ...] = ()


def _n(camel: str, snake: str | None = None, *children: _Node, ids: tuple[tuple[str, str], ...] = ()) -> _Node:
    return _Node((camel, snake) if snake else (camel,), ids, children)


_TRACE_SPAN = (("traceId", "trace_id"), ("spanId", "span_id"))
_SPAN_IDS = (*_TRACE_SPAN, ("parentSpanId", "parent_span_id"))

_TRACES = _n(
    "",
    None,
    _n(
        "resourceSpans",
        "resource_spans",
        _n("scopeSpans", "scope_spans", _n("spans", None, _n("links", None, ids=_TRACE_SPAN), ids=_SPAN_IDS)),
    ),
)
_LOGS = _n(
    "",
    None,
    _n(
        "resourceLogs",
        "resource_logs",
        _n("scopeLogs", "scope_logs", _n("logRecords", "log_records", ids=_TRACE_SPAN)),
    ),
)
_EXEMPLARS = _n("dataPoints", "data_points", _n("exemplars", None, ids=_TRACE_SPAN))
_METRICS = _n(
    "",
    None,
    _n(
        "resourceMetrics",
        "resource_metrics",
        _n(
            "scopeMetrics",
            "scope_metrics",
            _n(
                "metrics",
                None,
                _n("gauge", None, _EXEMPLARS),
                _n("sum", None, _EXEMPLARS),
                _n("histogram", None, _EXEMPLARS),
                _n("exponentialHistogram", "exponential_histogram", _EXEMPLARS),
            ),
        ),
    ),
)

# Messages that carry ids, by full proto name. Everything else (responses,
# google.rpc.Status) is plain proto3 JSON.
_TREES: dict[str, _Node] = {
    "opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest": _TRACES,
    "opentelemetry.proto.trace.v1.TracesData": _TRACES,
    "opentelemetry.proto.collector.logs.v1.ExportLogsServiceRequest": _LOGS,
    "opentelemetry.proto.logs.v1.LogsData": _LOGS,
    "opentelemetry.proto.collector.metrics.v1.ExportMetricsServiceRequest": _METRICS,
    "opentelemetry.proto.metrics.v1.MetricsData": _METRICS,
}


class _BadId(Exception):
    def __init__(self, key: str, value: Any, why: str) -> None:
        self.key, self.value, self.why = key, value, why


Path = list[tuple[str, int | None]]


def _walk(obj: dict[str, Any], node: _Node, fix: Callable[[dict[str, Any], str, str], None], path: Path) -> None:
    """Apply `fix(obj, camel, snake)` to every id field below `obj`, recording the path for errors."""
    for camel, snake in node.ids:
        try:
            fix(obj, camel, snake)
        except _BadId as exc:
            where = "".join(f".{k}" + (f"[{i}]" if i is not None else "") for k, i in path)
            raise OtlpJsonError(
                f"invalid {exc.key} at {where[1:]}.{exc.key}: {exc.why} (got {exc.value!r:.60})"
            ) from None
    for child in node.children:
        for key in child.keys:
            val = obj.get(key)
            if isinstance(val, list):
                for i, item in enumerate(val):
                    if isinstance(item, dict):
                        path.append((key, i))
                        _walk(item, child, fix, path)
                        path.pop()
            elif isinstance(val, dict):
                path.append((key, None))
                _walk(val, child, fix, path)
                path.pop()


def _b64_to_hex(obj: dict[str, Any], camel: str, _snake: str) -> None:
    val = obj.get(camel)
    if val:
        obj[camel] = binascii.a2b_base64(val).hex()


def _hex_to_b64(obj: dict[str, Any], camel: str, snake: str) -> None:
    for key in (camel, snake):
        val = obj.get(key)
        if val is None:
            continue
        if not isinstance(val, str):
            raise _BadId(key, val, "expected a hex string")
        try:
            raw = binascii.a2b_hex(val)  # strict: no whitespace, even length, [0-9a-fA-F]
        except (binascii.Error, ValueError):
            raise _BadId(key, val, "not a hex string") from None
        # Length is deliberately not checked: receivers reject bad ids per item (partial success).
        obj[key] = binascii.b2a_base64(raw, newline=False).decode("ascii")


def encode(message: Message) -> bytes:
    """One compact line of OTLP/JSON for an Export request/response or a google.rpc.Status."""
    obj = json_format.MessageToDict(message, use_integers_for_enums=True)
    tree = _TREES.get(message.DESCRIPTOR.full_name)
    if tree is not None:
        _walk(obj, tree, _b64_to_hex, [])
    return orjson.dumps(obj)


def decode(data: bytes | bytearray | memoryview | str, message_cls: type[M]) -> M:
    """Parse OTLP/JSON into `message_cls`; raise OtlpJsonError naming what is wrong."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise OtlpJsonError(f"invalid JSON: {exc}") from None
    name = message_cls.DESCRIPTOR.full_name
    if not isinstance(obj, dict):
        raise OtlpJsonError(f"expected a JSON object for {name}, got {type(obj).__name__}")
    tree = _TREES.get(name)
    if tree is not None:
        _walk(obj, tree, _hex_to_b64, [])
    message = message_cls()
    try:
        json_format.ParseDict(obj, message, ignore_unknown_fields=True)
    except json_format.ParseError as exc:
        raise OtlpJsonError(f"invalid {name}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError, RecursionError) as exc:
        raise OtlpJsonError(f"invalid {name}: {type(exc).__name__}: {exc}") from None
    return message
