"""Turn spans into LLM-call columns, following the precedence table in `families`.

`span_facts` is the reference logic for one span: one pass over its attributes
(keeping only the keys we need), then the precedence rules. `extract` runs it
on every span of a batch, unless the batch still has its protobuf bytes: then
`wire_extract` reads the same facts straight from the bytes and calls
`span_facts` only for the rare spans it leaves to the reference. Missing stays
missing: unknown token counts are NaN, unknown stream flag is -1, never 0.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from gateway.batch import SpanBatch, StringTable
from processors.genai.families import (
    LLM_MARKERS,
    LLM_OPERATIONS,
    OPENINFERENCE_KINDS,
    PRECEDENCE,
    REQUEST_TYPES,
    TRUNCATION_REASONS,
    WANTED_KEYS,
)

STATUS_ERROR = 2
_STREAM_KEYS = tuple(k for k, _ in PRECEDENCE["stream"] if k != "llm.invocation_parameters")
_INDEXED_FINISH = re.compile(
    r"^(?:gen_ai\.completion|llm\.output_messages)\.(\d+)\.(?:message\.)?finish_reason$"
)
_RATE_LIMIT_RE = re.compile(r"rate.?limit|too.?many.?requests|\b429\b", re.IGNORECASE)
_FIRST_CHUNK_EVENTS = (
    "llm.content.completion.chunk",
    "First Token Stream Event",
    "gen_ai.content.completion.chunk",
)

FLOAT_COLUMNS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "latency_s",
    "ttft_s",
    "span_cost_usd",
)
STRING_COLUMNS = ("provider", "operation", "request_model", "response_model", "error_type", "finish_reason")
# The order a call's strings enter the batch's string table; both paths keep it, so codes agree.
INTERN_ORDER = ("operation", "provider", "request_model", "response_model", "finish_reason", "error_type")


def _any_value(v: Any) -> Any:
    """Python value of an OTLP AnyValue (arrays become lists)."""
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "double_value":
        return v.double_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "array_value":
        return [_any_value(x) for x in v.array_value.values]
    if kind == "bytes_value":
        return v.bytes_value
    return None


def _number(v: Any) -> float:
    if isinstance(v, bool) or v is None:
        return math.nan
    if isinstance(v, int | float):
        return float(v)
    if isinstance(v, str):
        try:
            return float(v)
        except ValueError:
            return math.nan
    return math.nan


def _json_field(text: Any, name: str) -> Any:
    """`name` from a JSON object string, parsed only when it can be there."""
    if not isinstance(text, str) or f'"{name}"' not in text:
        return None
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return obj.get(name) if isinstance(obj, dict) else None


def _first(attrs: dict[str, Any], field: str) -> Any:
    for key, _family in PRECEDENCE[field]:
        if key in attrs:
            if key == "llm.invocation_parameters":
                value = _json_field(attrs[key], "model")
                if value:
                    return value
                continue
            if key == "gen_ai.output.messages":
                continue  # handled by _finish_reasons
            return attrs[key]
    return None


def _first_number(attrs: dict[str, Any], field: str) -> float:
    for key, _family in PRECEDENCE[field]:
        if key in attrs:
            n = _number(attrs[key])
            if not math.isnan(n):
                return n
    return math.nan


def _finish_reasons(attrs: dict[str, Any], indexed: dict[int, str]) -> list[str]:
    v = attrs.get("gen_ai.response.finish_reasons")
    if isinstance(v, list) and v:
        return [str(x) for x in v]
    if isinstance(v, str) and v:
        if v.startswith("["):
            try:
                parsed = orjson.loads(v)
                if isinstance(parsed, list):
                    return [str(x) for x in parsed]
            except orjson.JSONDecodeError:
                pass
        return [v]
    if indexed:
        return [indexed[i] for i in sorted(indexed)]
    v = attrs.get("llm.finish_reason")
    if v:
        return [str(v)]
    out = attrs.get("gen_ai.output.messages")
    if isinstance(out, str) and '"finish_reason"' in out:
        try:
            messages = orjson.loads(out)
        except orjson.JSONDecodeError:
            return []
        if isinstance(messages, list):
            return [
                str(m["finish_reason"]) for m in messages if isinstance(m, dict) and m.get("finish_reason")
            ]
    return []


def _stream_flag(attrs: dict[str, Any]) -> int:
    for key in _STREAM_KEYS:
        v = attrs.get(key)
        if isinstance(v, bool):
            return int(v)
        if isinstance(v, str) and v.lower() in ("true", "false"):
            return int(v.lower() == "true")
    params = attrs.get("llm.invocation_parameters")
    stream = _json_field(params, "stream")
    if isinstance(stream, bool):
        return int(stream)
    # OpenInference records every request parameter: no "stream" means the API default, not streaming.
    return 0 if isinstance(params, str) and params.startswith("{") else -1


def classify(attrs: dict[str, Any]) -> str | None:
    """The normalised operation of an LLM span, or None for spans that are not model calls."""
    kind = attrs.get("openinference.span.kind")
    if isinstance(kind, str):
        return OPENINFERENCE_KINDS.get(kind.upper())
    op = attrs.get("gen_ai.operation.name")
    if isinstance(op, str):
        return LLM_OPERATIONS.get(op.lower())
    rtype = attrs.get("llm.request.type")
    if isinstance(rtype, str):
        return REQUEST_TYPES.get(rtype.lower(), rtype.lower())
    if any(k in attrs for k in LLM_MARKERS):
        return "chat"
    return None


@dataclass(slots=True)
class SpanFacts:
    """What one LLM span says, before interning; string fields in the order `extract` interns them."""

    operation: str
    provider: str | None
    request_model: str | None
    response_model: str | None
    input_tokens: float
    output_tokens: float
    cached_input_tokens: float
    reasoning_tokens: float
    span_cost_usd: float
    ttft_s: float
    stream: int
    reasons: list[str]
    error: bool
    error_type: str | None
    rate_limited: bool


def span_facts(span: Any, status_code: int) -> SpanFacts | None:
    """The LLM facts of one protobuf Span, or None when it is not a model call.

    `status_code` is the batch's column, so both paths judge errors by the same value.
    """
    attrs: dict[str, Any] = {}
    indexed_finish: dict[int, str] = {}
    for kv in span.attributes:
        key = kv.key
        if key in WANTED_KEYS:
            attrs[key] = _any_value(kv.value)
        elif key.endswith("finish_reason"):
            m = _INDEXED_FINISH.match(key)
            if m:
                indexed_finish[int(m.group(1))] = str(_any_value(kv.value))
    operation = classify(attrs)
    if operation is None:
        return None
    provider = _first(attrs, "provider")
    req_model = _first(attrs, "request_model")
    resp_model = _first(attrs, "response_model")
    tokens = {
        name: _first_number(attrs, name)
        for name in ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens")
    }
    if math.isnan(tokens["input_tokens"]) and operation == "embeddings":
        tokens["input_tokens"] = _first_number(attrs, "total_tokens")
    embedding_without_output = operation == "embeddings" and math.isnan(tokens["output_tokens"])
    if embedding_without_output and not math.isnan(tokens["input_tokens"]):
        tokens["output_tokens"] = 0.0  # embeddings produce no output tokens

    ttft = _first_number(attrs, "ttft_s")
    exc_type = exc_msg = None
    for ev in span.events:
        if ev.name == "exception":
            for kv in ev.attributes:
                if kv.key == "exception.type":
                    exc_type = kv.value.string_value
                elif kv.key == "exception.message":
                    exc_msg = kv.value.string_value
        elif math.isnan(ttft) and ev.name in _FIRST_CHUNK_EVENTS and ev.time_unix_nano:
            ttft = (ev.time_unix_nano - span.start_time_unix_nano) / 1e9
    flag = _stream_flag(attrs)
    if flag < 0 and not math.isnan(ttft):
        flag = 1

    err_type = attrs.get("error.type")
    is_error = status_code == STATUS_ERROR or bool(err_type)
    etype = str(err_type or exc_type or "_OTHER") if is_error else None
    rate_limited = False
    if etype is not None:
        http_status = attrs.get("http.response.status_code", attrs.get("http.status_code"))
        rate_limited = (
            _number(http_status) == 429
            or bool(_RATE_LIMIT_RE.search(etype))
            or bool(exc_type and _RATE_LIMIT_RE.search(exc_type))
            or bool(exc_msg and _RATE_LIMIT_RE.search(exc_msg))
            or bool(span.status.message and _RATE_LIMIT_RE.search(span.status.message))
        )
    return SpanFacts(
        operation=operation,
        provider=provider.lower() if isinstance(provider, str) and provider else None,
        request_model=req_model if isinstance(req_model, str) and req_model else None,
        response_model=resp_model if isinstance(resp_model, str) and resp_model else None,
        span_cost_usd=_first_number(attrs, "cost_usd"),
        ttft_s=ttft,
        stream=flag,
        reasons=_finish_reasons(attrs, indexed_finish),
        error=is_error,
        error_type=etype,
        rate_limited=rate_limited,
        **tokens,
    )


@dataclass
class Extracted:
    """Columns for one batch; rows of non-LLM spans keep their defaults.

    Finish reasons are pairs: `finish_rows[i]` (ascending; a row's reasons in their
    order) said `finish_codes[i]` (a code of the batch's string table).
    """

    llm: np.ndarray
    floats: dict[str, np.ndarray]
    strings: dict[str, np.ndarray]
    stream: np.ndarray
    error: np.ndarray
    rate_limited: np.ndarray
    truncated: np.ndarray
    finish_rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    finish_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int32))

    @classmethod
    def empty(cls, n: int) -> Extracted:
        """All rows not LLM calls: the defaults both paths start from."""
        return cls(
            llm=np.zeros(n, dtype=np.bool_),
            floats={name: np.full(n, np.nan) for name in FLOAT_COLUMNS},
            strings={name: np.full(n, -1, dtype=np.int32) for name in STRING_COLUMNS},
            stream=np.full(n, -1, dtype=np.int8),
            error=np.zeros(n, dtype=np.bool_),
            rate_limited=np.zeros(n, dtype=np.bool_),
            truncated=np.zeros(n, dtype=np.bool_),
        )


# When False, `extract` and the processor always take the reference path (tests, debugging).
WIRE_FAST_PATH = True


def wire_enabled() -> bool:
    """WIRE_FAST_PATH as it is now (for modules that imported this one's names before a switch)."""
    return WIRE_FAST_PATH


def latency_of(batch: SpanBatch) -> np.ndarray:
    return (batch.columns["end_ns"] - batch.columns["start_ns"]) / 1e9


def extract(batch: SpanBatch, *, reference: bool = False) -> Extracted:
    """LLM columns of `batch`: from its protobuf bytes when it still has them, else from the request."""
    if WIRE_FAST_PATH and not reference and batch.wire is not None:
        from processors.genai.wire_extract import extract_wire  # imports this module: import late

        fast = extract_wire(batch)
        if fast is not None:
            return fast
    return extract_reference(batch)


def extract_reference(batch: SpanBatch) -> Extracted:
    """`span_facts` over the parsed request, row by row (interning in row order, then every reason)."""
    n = len(batch)
    table: StringTable = batch.strings
    ex = Extracted.empty(n)
    status = batch.columns["status_code"]
    latency = latency_of(batch)
    reason_rows: list[int] = []
    reasons: list[str] = []
    for row, span in enumerate(batch.iter_items()):
        facts = span_facts(span, int(status[row]))
        if facts is None:
            continue
        ex.llm[row] = True
        ex.floats["latency_s"][row] = latency[row]
        for name in FLOAT_COLUMNS:
            if name != "latency_s":
                ex.floats[name][row] = getattr(facts, name)
        ex.stream[row] = facts.stream
        ex.error[row] = facts.error
        ex.rate_limited[row] = facts.rate_limited
        ex.truncated[row] = any(r in TRUNCATION_REASONS for r in facts.reasons)
        for name, value in zip(INTERN_ORDER, row_strings(facts), strict=True):
            if value is not None:
                ex.strings[name][row] = table.intern(value)
        reason_rows.extend([row] * len(facts.reasons))
        reasons.extend(facts.reasons)
    ex.finish_rows = np.array(reason_rows, dtype=np.int64)
    ex.finish_codes = np.array([table.intern(r) for r in reasons], dtype=np.int32)
    return ex


def row_strings(facts: SpanFacts) -> tuple[str | None, ...]:
    """The string columns of one call, in INTERN_ORDER."""
    first_reason = facts.reasons[0] if facts.reasons else None
    return (
        facts.operation,
        facts.provider,
        facts.request_model,
        facts.response_model,
        first_reason,
        facts.error_type,
    )
