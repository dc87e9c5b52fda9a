"""Random OTLP spans for the extraction paths: the keys the extractor reads, grouped by what they mean
(so several keys of one precedence chain meet on a span), with mostly plausible and sometimes any
AnyValue; plus events, statuses and a request builder."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.genai.families import LLM_MARKERS, PRECEDENCE

T0 = 1_700_000_000_000_000_000
Value = tuple[
    Any, ...
]  # ("s", str) | ("i", int) | ("d", float) | ("b", bool) | ("y", bytes) | ("a", [Value]) | ...


def _keys(*fields: str) -> list[str]:
    return [k for f in fields for k, _ in PRECEDENCE[f] if "{i}" not in k and not k.startswith("event:")]


WORDS = [
    "",
    "openai",
    "OpenAI",
    "Anthropic",
    "chat",
    "CHAT",
    "completion",
    "embeddings",
    "embedding",
    "rerank",
    "invoke_agent",
    "LLM",
    "EMBEDDING",
    "TOOL",
    "gpt-4o-mini",
    "gpt-4o-mini-2024-07-18",
    "RateLimitError",
    "Too Many Requests",
    "APITimeoutError",
    "true",
    "False",
    "TRUE",
    "429",
    "stop",
    "length",
    "MAX_TOKENS",
    "\u00fcn\u00efcode \u00df",
]
NUMBER_TEXTS = ["12", " 7 ", "1e3", "nan", "-inf", "1_000", "429", "429.0", "x1", "\u0661\u0662"]
JSON_TEXTS = [
    '["stop", "length"]',
    "[1, true, null]",
    "[]",
    "[not json",
    '{"model": "gpt-4o", "stream": true}',
    '{"model": 5, "stream": "yes"}',
    '{"model": "", "stream": false}',
    "{}",
    '[{"finish_reason": "length"}, {"finish_reason": ""}, 3]',
    '{"finish_reason": "stop"}',
]

word = st.sampled_from(WORDS) | st.text(max_size=5)
strings = st.tuples(st.just("s"), word)
numbers = st.one_of(
    st.tuples(
        st.just("i"), st.sampled_from([0, 5, 429, -3, 2**63 - 1, -(2**63)]) | st.integers(-(2**63), 2**63 - 1)
    ),
    st.tuples(st.just("d"), st.floats(allow_nan=True, allow_infinity=True)),
    st.tuples(st.just("s"), st.sampled_from(NUMBER_TEXTS)),
)
scalar = st.one_of(
    strings,
    numbers,
    st.tuples(st.just("b"), st.booleans()),
    st.tuples(st.just("y"), st.binary(max_size=3)),
    st.tuples(st.just("kv"), st.booleans()),
    st.just(("empty",)),  # an AnyValue with nothing set
    st.just(("novalue",)),  # a KeyValue without its value field
)
anything = scalar | st.tuples(st.just("a"), st.lists(scalar, max_size=3))
string_arrays = st.tuples(st.just("a"), st.lists(strings, max_size=3))
json_texts = st.tuples(st.just("s"), st.sampled_from(JSON_TEXTS))

INDEXED = [
    "gen_ai.completion.0.finish_reason",
    "gen_ai.completion.1.finish_reason",
    "gen_ai.completion.01.finish_reason",
    "gen_ai.completion.10.message.finish_reason",
    "llm.output_messages.0.message.finish_reason",
    "llm.output_messages.2.finish_reason",
    "gen_ai.completion.x.finish_reason",
    "llm.finish_reason.extra",
    "gen_ai.completion.\u0663.finish_reason",  # an Arabic-Indic digit matches the reference's \d
]
# (keys, typical values): the groups whose keys meet in one precedence chain
GROUPS: list[tuple[list[str], Any]] = [
    (["openinference.span.kind", "gen_ai.operation.name", "llm.request.type", *sorted(LLM_MARKERS)], strings),
    (_keys("provider"), strings),
    (_keys("request_model", "response_model"), strings | json_texts),
    (_keys("input_tokens", "total_tokens"), numbers),
    (_keys("output_tokens", "cached_input_tokens", "reasoning_tokens"), numbers),
    (_keys("cost_usd", "ttft_s"), numbers),
    (["http.response.status_code", "http.status_code", "error.type"], numbers | strings),
    (_keys("stream"), st.tuples(st.just("b"), st.booleans()) | strings | json_texts),
    (
        ["gen_ai.response.finish_reasons", "llm.finish_reason", "gen_ai.output.messages"],
        string_arrays | strings | json_texts,
    ),
    (INDEXED, strings),
    (["service.name", "input.value"], strings),
]


def _group(keys: list[str], typical: Any) -> Any:
    value = st.integers(0, 5).flatmap(lambda i: anything if i == 0 else typical)  # one in six: any type
    return st.lists(st.tuples(st.sampled_from(keys), value), min_size=1, max_size=3)


attributes = (
    st.lists(st.one_of([_group(k, v) for k, v in GROUPS]), max_size=6)
    .map(lambda groups: [a for g in groups for a in g])
    .flatmap(st.permutations)
)
event = st.tuples(
    st.sampled_from(
        [
            "exception",
            "llm.content.completion.chunk",
            "First Token Stream Event",
            "gen_ai.content.completion.chunk",
            "x",
        ]
    ),
    st.sampled_from([0, 1, 250_000_000, 2_000_000_000]),
    st.lists(
        st.tuples(st.sampled_from(["exception.type", "exception.message", "other"]), strings | anything),
        max_size=3,
    ),
)
span_spec = st.fixed_dictionaries(
    {
        "attrs": attributes,
        "events": st.lists(event, max_size=3),
        "status": st.tuples(st.sampled_from([0, 1, 2, 2]), word),
        "latency_ns": st.sampled_from([0, 1, 1_500_000_000]),
    }
)
requests = st.lists(st.lists(span_spec, min_size=1, max_size=3), min_size=1, max_size=2)


def set_value(av: Any, v: Value) -> None:
    tag = v[0]
    if tag == "s":
        av.string_value = v[1]
    elif tag == "i":
        av.int_value = v[1]
    elif tag == "d":
        av.double_value = v[1]
    elif tag == "b":
        av.bool_value = v[1]
    elif tag == "y":
        av.bytes_value = v[1]
    elif tag == "kv":
        av.kvlist_value.SetInParent()
        if v[1]:
            kv = av.kvlist_value.values.add()
            kv.key, kv.value.string_value = "k", "v"
    elif tag == "a":
        av.array_value.SetInParent()
        for x in v[1]:
            set_value(av.array_value.values.add(), x)
    elif tag == "empty":
        av.SetInParent()


def add_attr(attrs: Any, key: str, v: Value) -> None:
    kv = attrs.add()
    kv.key = key
    if v[0] != "novalue":
        set_value(kv.value, v)


def span(
    attrs: list[tuple[str, Value]], events: Sequence[Any] = (), status: tuple[int, str] = (0, "")
) -> dict[str, Any]:
    """A span spec as `request_of` takes it."""
    return {"attrs": attrs, "events": list(events), "status": status, "latency_ns": 10**9}


def request_of(specs: list[list[dict[str, Any]]]) -> bytes:
    """Serialized request: one resource per inner list, scopes of up to two spans each."""
    req = ExportTraceServiceRequest()
    n = 0
    for res_specs in specs:
        rs = req.resource_spans.add()
        add_attr(rs.resource.attributes, "service.name", ("s", f"svc-{len(req.resource_spans)}"))
        for k, spec in enumerate(res_specs):
            ss = rs.scope_spans.add() if k % 2 == 0 else rs.scope_spans[-1]
            sp = ss.spans.add()
            n += 1
            sp.trace_id = bytes(15) + bytes([n])
            sp.span_id = bytes(7) + bytes([n])
            sp.name = "llm"
            sp.start_time_unix_nano = T0 + n
            sp.end_time_unix_nano = T0 + n + spec["latency_ns"]
            sp.status.code, sp.status.message = spec["status"]
            for key, v in spec["attrs"]:
                add_attr(sp.attributes, key, v)
            for name, offset, ev_attrs in spec["events"]:
                ev = sp.events.add()
                ev.name = name
                ev.time_unix_nano = T0 + n + offset if offset else 0
                for key, v in ev_attrs:
                    add_attr(ev.attributes, key, v)
    return req.SerializeToString()
