"""The redact processor: PII and secrets masked in spans, events, links and logs; keys dropped; config."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from pydantic import ValidationError

from gateway.batch import Batch, LogBatch, MetricBatch, Signal, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.config.model import build_config
from gateway.config.source import ConfigError, load_text
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.registry import get_factory
from gateway.telemetry import SelfTelemetry
from processors.redact import FACTORY
from processors.redact.patterns import CATEGORIES, SHORT, Scanner, card_ok, luhn_ok
from processors.redact.processor import COUNT_ATTR, TYPES_ATTR, RedactProcessor

# ---------------------------------------------------------------- samples
EMAIL = "jane.roe@example.org"
CARD = "4111 1111 1111 1111"
CARD_DASHED = "5555-5555-5555-4444"
CARD_BARE = "378282246310005"  # Amex
SSN = "123-45-6789"
PHONE_US = "(555) 123-4567"
PHONE_E164 = "+14155552671"
PHONE_INTL = "+44 20 7946 0958"
OPENAI = "sk-proj-Ab3dEf9hIjKlMnOpQrStUvWxYz0123456789"
ANTHROPIC = "sk-ant-api03-Zx9yW8vU7tS6rQ5pO4nM3lK2jI1hG0fE"
AWS = "AKIAIOSFODNN7EXAMPLE"
AWS_STS = "ASIAY34FZKBOKMUTVV7A"
GITHUB = "ghp_" + "A1b2C3d4E5f6G7h8I9j0K1l2M3n4O5p6Q7r8"
SLACK = "xoxb-123456789012-1234567890123-AbCdEfGhIjKlMnOpQrStUvWx"
GOOGLE = "AIzaSyD-1234567890abcdefghijklmnopqrstu"
JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ"
    ".SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)
BEARER_TOKEN = "tok_9f8e7d6c5b4a39281706"
BASIC = base64.b64encode(b"alice:s3cret-pass").decode()
PASSWORD = "hunter2-Secret!"

# (type in the replacement, text holding the secret, the secret itself)
SAMPLES: list[tuple[str, str, str]] = [
    ("email", f"Please mail {EMAIL} today", EMAIL),
    ("credit_card", f"my card is {CARD}, exp 12/27", CARD),
    ("credit_card", f"card {CARD_DASHED}", CARD_DASHED),
    ("credit_card", f"amex {CARD_BARE}.", CARD_BARE),
    ("ssn", f"SSN: {SSN}", SSN),
    ("phone", f"call {PHONE_US} after 5pm", PHONE_US),
    ("phone", f"whatsapp {PHONE_E164}", PHONE_E164),
    ("phone", f"office {PHONE_INTL}", PHONE_INTL),
    ("api_key", f"use key {OPENAI} for this", OPENAI),
    ("api_key", f"ANTHROPIC_KEY {ANTHROPIC}", ANTHROPIC),
    ("api_key", f"aws id {AWS} in region", AWS),
    ("api_key", f"sts {AWS_STS}", AWS_STS),
    ("api_key", f"token {GITHUB}", GITHUB),
    ("api_key", f"slack {SLACK}", SLACK),
    ("api_key", f"maps key {GOOGLE}", GOOGLE),
    ("jwt", f"session {JWT}", JWT),
    ("secret", f"curl -H 'X-Auth: Bearer {BEARER_TOKEN}'", BEARER_TOKEN),
    ("secret", f"header Basic {BASIC}", BASIC),
    ("secret", f"login with password={PASSWORD} now", PASSWORD),
    ("secret", f'config {{"api_key": "{PASSWORD}"}}', PASSWORD),
]
ALL_SECRETS = [s for _, _, s in SAMPLES]


# ---------------------------------------------------------------- harness
class Capture:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def make(
    telemetry: SelfTelemetry | None = None, name: str = "", **config: Any
) -> tuple[RedactProcessor, Capture, SelfTelemetry]:
    tel = telemetry or SelfTelemetry()
    ctx = _context(ComponentId("redact", name), Kind.PROCESSOR, tel, Admission(), "traces")
    proc = FACTORY.create(ctx, FACTORY.config.model_validate(config))
    assert isinstance(proc, RedactProcessor)
    sink = Capture()
    proc.set_next(sink)
    return proc, sink, tel


def run(proc: RedactProcessor, batch: Batch) -> None:
    asyncio.run(proc.consume(batch))


def redact(batch: Batch, **config: Any) -> tuple[Batch, bytes]:
    proc, sink, _ = make(**config)
    run(proc, batch)
    (out,) = sink.batches
    return out, out.serialize()


def sv(text: str) -> AnyValue:
    return AnyValue(string_value=text)


def kv(key: str, value: Any) -> KeyValue:
    out = KeyValue(key=key)
    if isinstance(value, AnyValue):
        out.value.CopyFrom(value)
    elif isinstance(value, bool):
        out.value.bool_value = value
    elif isinstance(value, int):
        out.value.int_value = value
    elif isinstance(value, float):
        out.value.double_value = value
    else:
        out.value.string_value = value
    return out


def kvlist(**items: Any) -> AnyValue:
    v = AnyValue()
    v.kvlist_value.values.extend(kv(k, x) for k, x in items.items())
    return v


def array(*items: Any) -> AnyValue:
    v = AnyValue()
    for x in items:
        v.array_value.values.add().CopyFrom(x if isinstance(x, AnyValue) else sv(x))
    return v


def span_request(
    attrs: dict[str, Any] | None = None,
    events: list[tuple[str, dict[str, Any]]] = (),  # type: ignore[assignment]
    links: list[dict[str, Any]] = (),  # type: ignore[assignment]
    resource: dict[str, Any] | None = None,
    name: str = "chat gpt-4o",
    status_message: str = "",
) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        kv(k, v) for k, v in {"service.name": "chatbot", **(resource or {})}.items()
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai"
    sp = ss.spans.add(name=name, trace_id=bytes(range(1, 17)), span_id=bytes(range(1, 9)))
    sp.start_time_unix_nano = 1_718_035_200_000_000_000
    sp.end_time_unix_nano = 1_718_035_201_000_000_000
    sp.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    for ev_name, ev_attrs in events:
        ev = sp.events.add(name=ev_name, time_unix_nano=1_718_035_200_500_000_000)
        ev.attributes.extend(kv(k, v) for k, v in ev_attrs.items())
    for link_attrs in links:
        ln = sp.links.add(trace_id=bytes(range(2, 18)), span_id=bytes(range(2, 10)))
        ln.attributes.extend(kv(k, v) for k, v in link_attrs.items())
    if status_message:
        sp.status.code = 2
        sp.status.message = status_message
    return req


def spans(**kw: Any) -> SpanBatch:
    return SpanBatch.from_request(span_request(**kw))


def log_request(body: AnyValue, attrs: dict[str, Any] | None = None) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    rl = req.resource_logs.add()
    rl.resource.attributes.append(kv("service.name", "chatbot"))
    lr = rl.scope_logs.add().log_records.add(time_unix_nano=1_718_035_200_000_000_000, severity_number=9)
    lr.body.CopyFrom(body)
    lr.attributes.extend(kv(k, v) for k, v in (attrs or {}).items())
    return req


def logs(body: AnyValue, attrs: dict[str, Any] | None = None) -> LogBatch:
    return LogBatch.from_request(log_request(body, attrs))


def the_span(batch: Batch) -> Any:
    return next(iter(batch.iter_items()))


def attrs_of(item: Any) -> dict[str, Any]:
    return {a.key: _py(a.value) for a in item.attributes}


def _py(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind == "kvlist_value":
        return {a.key: _py(a.value) for a in v.kvlist_value.values}
    if kind == "array_value":
        return [_py(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


def assert_clean(wire: bytes, secrets: list[str]) -> None:
    for s in secrets:
        assert s.encode() not in wire, f"{s!r} leaked"


# ---------------------------------------------------------------- every type, every place
@pytest.mark.parametrize(
    ("kind", "text", "secret"), SAMPLES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SAMPLES)]
)
def test_each_type_masked_in_span_attribute(kind: str, text: str, secret: str) -> None:
    out, wire = redact(spans(attrs={"gen_ai.prompt.0.content": text}))
    assert_clean(wire, [secret])
    value = attrs_of(the_span(out))["gen_ai.prompt.0.content"]
    assert f"[REDACTED:{kind}]" in value
    assert value.split("[REDACTED")[0] == text.split(secret)[0]  # the text around the secret stays


@pytest.mark.parametrize(
    ("kind", "text", "secret"), SAMPLES, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(SAMPLES)]
)
def test_each_type_masked_in_event_attribute_and_log_bodies(kind: str, text: str, secret: str) -> None:
    _, wire = redact(spans(events=[("gen_ai.content.prompt", {"gen_ai.prompt": text})]))
    assert_clean(wire, [secret])
    assert f"[REDACTED:{kind}]".encode() in wire

    _, wire = redact(logs(sv(text)))
    assert_clean(wire, [secret])
    assert f"[REDACTED:{kind}]".encode() in wire

    body = kvlist(role="user", content=text)
    _, wire = redact(logs(body, {"event.name": "gen_ai.user.message"}))
    assert_clean(wire, [secret])
    assert f"[REDACTED:{kind}]".encode() in wire


def test_all_places_of_a_span() -> None:
    text = " ".join(t for _, t, _ in SAMPLES)
    batch = spans(
        attrs={
            "gen_ai.prompt.0.content": text,
            "tool.args": array("first", text, kvlist(nested=text, deeper=array(text))),
            "meta": kvlist(note=text),
        },
        events=[
            ("gen_ai.content.completion", {"gen_ai.completion": text}),
            ("exception", {"exception.type": "ValueError", "exception.message": f"bad input {text}"}),
        ],
        links=[{"link.note": text}],
        status_message=f"failed for {EMAIL}",
    )
    out, wire = redact(batch)
    assert_clean(wire, ALL_SECRETS)
    sp = the_span(out)
    assert sp.status.message == "failed for [REDACTED:email]"
    assert sp.name == "chat gpt-4o"
    assert sp.events[1].attributes[0].value.string_value == "ValueError"


CONTENT_KEYS = [
    "gen_ai.prompt.0.content",
    "gen_ai.completion.0.content",
    "input.value",
    "output.value",
    "llm.input_messages.0.message.content",
    "llm.output_messages.0.message.content",
    "traceloop.entity.input",
    "traceloop.entity.output",
]


def test_genai_content_attributes_including_json_messages() -> None:
    text = f"I am Jane, {EMAIL}, card {CARD}, call {PHONE_US}"
    messages = json.dumps(
        [
            {"role": "system", "content": "You are helpful.\nNever reveal secrets."},
            {"role": "user", "content": f"联系我\n{EMAIL} 或 {PHONE_INTL}，密码: x"},
            {"role": "user", "content": text, "api_key": PASSWORD},
        ]
    )  # ensure_ascii: CJK as \\uXXXX right before the address; newlines as \\n
    attrs: dict[str, Any] = dict.fromkeys(CONTENT_KEYS, text)
    attrs["gen_ai.input.messages"] = messages
    attrs["gen_ai.output.messages"] = json.dumps([{"role": "assistant", "parts": [{"content": text}]}])
    out, wire = redact(spans(attrs=attrs))
    assert_clean(wire, [EMAIL, CARD, PHONE_US, PHONE_INTL, PASSWORD])
    got = attrs_of(the_span(out))
    for key in CONTENT_KEYS:
        assert got[key] == "I am Jane, [REDACTED:email], card [REDACTED:credit_card], call [REDACTED:phone]"
    decoded = json.loads(got["gen_ai.input.messages"])  # still valid JSON
    assert decoded[0]["content"] == "You are helpful.\nNever reveal secrets."
    assert decoded[1]["content"] == "联系我\n[REDACTED:email] 或 [REDACTED:phone]，密码: x"
    assert decoded[2]["api_key"] == "[REDACTED:secret]"
    assert json.loads(got["gen_ai.output.messages"])[0]["parts"][0]["content"] == got["input.value"]


# ---------------------------------------------------------------- what must survive
def test_luhn_invalid_lookalike_and_numbers_survive() -> None:
    text = (
        "card 4111 1111 1111 1112 is a typo; ts 1718035200123 / 1718035200000000000; "
        "order 12345678901234 shipped"
    )
    batch = spans(attrs={"input.value": text})
    out, _ = redact(batch)
    assert attrs_of(the_span(out))["input.value"] == text
    assert not luhn_ok("4111111111111112") and luhn_ok("4111111111111111")
    assert card_ok(CARD) and not card_ok("4111 1111 1111 1112")


ORDINARY = [
    "The meeting is at 10:30 on 2024-06-10, room 4B; bring 3 copies.",
    "trace_id=4bf92f3577b34da6a3ce929d0e0e4736 span_id=00f067aa0ba902b7",
    "request 123e4567-e89b-12d3-a456-426614174000 took 1234 ms",
    "Used 1532 prompt tokens and 287 completion tokens (total_tokens: 1819), max_tokens=4096.",
    "token: 512 budget; token_count=17",
    "version 1.2.3 on 192.168.1.100:8080, price $1,234,567.89, 3.14159265358979",
    "timestamps 1718035200 1718035200123 1718035200123456 1718035200123456789",
    "ISO 2024-06-10T12:34:56.789Z and epoch ns 1718035200000000000",
    "npm i lodash@4.17.21 react@18.2.0; decorators like @property and @staticmethod",
    "Basic information: the Bearer of this letter is trusted.",
    "Ask the task-management-system-frontend team about risk-assessment-framework-v2.",
    "Call sizes 128 64 2048 and zip 94107-1234; ratio 16:9; ids 1001 1002 1003 1004",
    "sk-learn is a library; the secret sauce is taste; password reset flows are tricky",
    "matrix 3x3, 1/2/3, gpt-4o-2024-08-06, claude-3-5-sonnet-20241022",
    # code and docs, as pasted into coding-assistant prompts
    "token = attach(set_value(KEY, True)); def login(password: str = None, secret=self.secret):",
    ":param password: The plaintext password. if secret == other: return password=password",
    "returns `token: redacted` for ${DB_PASSWORD}; password=****; api_key: <your key>",
    "np.array(['+1980-02-29T01:02:03']), (3.7416573867739413, 0.3534857623790153), +1.12345679",
]


@pytest.mark.parametrize("text", ORDINARY)
def test_no_false_positives_batch_untouched(text: str) -> None:
    req = span_request(attrs={"input.value": text, "gen_ai.usage.input_tokens": 1532})
    wire_in = req.SerializeToString()
    batch = SpanBatch.from_request(req, wire=wire_in)
    out, wire = redact(batch)
    assert out is batch and batch.wire is wire_in and wire == wire_in
    assert attrs_of(the_span(out))["input.value"] == text


def test_token_counts_survive_secret_keys_dropped() -> None:
    attrs = {
        "gen_ai.usage.input_tokens": 1532,
        "gen_ai.usage.output_tokens": 287,
        "llm.token_count.prompt": 1532,
        "llm.token_count.total": 1819,
        "llm.usage.total_tokens": 1819,
        "gen_ai.request.max_tokens": 4096,
        "gen_ai.request.model": "gpt-4o",
        "api_key": OPENAI,
        "openai.api_key": "whatever",
        "http.request.header.authorization": array(f"Bearer {BEARER_TOKEN}"),
        "http.request.header.x-api-key": array("abc"),
        "http.response.header.set-cookie": array("sid=1"),
        "Cookie": "sid=2",
        "db.password": "pw",
        "client_secret": "cs",
        "auth_token": "at",
        "refresh_token": "rt",
        "token": "tk",
        "private_key": "pk",
        "PASSWD": "pw2",
        "meta": kvlist(authorization="Bearer x", ok="fine"),
    }
    out, wire = redact(spans(attrs=attrs, resource={"deployment.api-key": "rk", "owner.email": EMAIL}))
    sp = the_span(out)
    got = attrs_of(sp)
    assert got["gen_ai.usage.input_tokens"] == 1532
    assert got["llm.token_count.prompt"] == 1532
    assert got["llm.usage.total_tokens"] == 1819
    assert got["gen_ai.request.max_tokens"] == 4096
    assert got["gen_ai.request.model"] == "gpt-4o"
    assert got["meta"] == {"ok": "fine"}
    for key in attrs:
        if key not in ("meta",) and not key.startswith(("gen_ai.", "llm.")):
            assert key not in got, key
    res = {a.key: a.value.string_value for a in next(iter(out.resources())).resource.attributes}
    assert res == {"service.name": "chatbot", "owner.email": EMAIL}  # resource values are not scanned
    assert_clean(wire, [OPENAI, BEARER_TOKEN, "whatever", "sid=1", "sid=2", "rk"])
    assert got[COUNT_ATTR] == 14 and got[TYPES_ATTR] == "secret_key"  # the resource drop is not the span's


def test_allow_keys_never_touched() -> None:
    attrs = {"user.email": EMAIL, "app.token": "keep-me", "debug.dump": f"x {EMAIL}", "other": EMAIL}
    out, _ = redact(spans(attrs=attrs), allow_keys=["user.email", "app.token", "debug.*"])
    got = attrs_of(the_span(out))
    assert got["user.email"] == EMAIL
    assert got["app.token"] == "keep-me"
    assert got["debug.dump"] == f"x {EMAIL}"
    assert got["other"] == "[REDACTED:email]"


def test_drop_keys_extra_and_globs() -> None:
    attrs = {"enduser.id": "u-1", "session.id": "s-1", "x.internal_note": "n", "kept": "k"}
    out, _ = redact(spans(attrs=attrs), drop_keys=["enduser.id", "SESSION-ID", "*.internal_*"])
    got = attrs_of(the_span(out))
    assert "enduser.id" not in got and "x.internal_note" not in got
    assert "session.id" in got  # `SESSION-ID` is `session_id`: neither the key nor its last segment
    assert got["kept"] == "k"
    out, _ = redact(spans(attrs=attrs), drop_keys=["session.id"])
    assert "session.id" not in attrs_of(the_span(out))


def test_custom_pattern() -> None:
    text = "ticket for EMP-123456 and emp-000001; not EMP-12"
    out, _ = redact(
        spans(attrs={"input.value": text}),
        patterns=[{"name": "employee_id", "regex": r"(?i)\bEMP-\d{6}\b"}],
    )
    got = attrs_of(the_span(out))
    assert got["input.value"] == "ticket for [REDACTED:employee_id] and [REDACTED:employee_id]; not EMP-12"
    assert got[TYPES_ATTR] == "employee_id" and got[COUNT_ATTR] == 2


def test_summary_attributes_and_counter() -> None:
    tel = SelfTelemetry()
    text = f"{EMAIL} and {EMAIL}, card {CARD}"
    proc, sink, _ = make(tel)
    run(proc, spans(attrs={"input.value": text, "password": "x"}))
    got = attrs_of(the_span(sink.batches[0]))
    assert got[COUNT_ATTR] == 4
    assert got[TYPES_ATTR] == "credit_card,email,secret_key"
    # a second instance (another pipeline) in the same runtime shares the counter
    proc2, sink2, _ = make(tel, name="two")
    run(proc2, logs(sv(f"mail {EMAIL}")))
    sample = tel.registry.get_sample_value
    assert sample("llm_sentinel_redactions_total", {"type": "email"}) == 3
    assert sample("llm_sentinel_redactions_total", {"type": "credit_card"}) == 1
    assert sample("llm_sentinel_redactions_total", {"type": "secret_key"}) == 1
    rec = next(iter(sink2.batches[0].iter_items()))
    assert attrs_of(rec) == {COUNT_ATTR: 1, TYPES_ATTR: "email"}
    # a second redact in the chain finds nothing new and leaves the summary as it is
    proc3, sink3, _ = make(tel, name="three")
    run(proc3, sink.batches[0])
    assert attrs_of(the_span(sink3.batches[0])) == got


def test_summary_off_and_counts_accumulate_over_earlier_summary() -> None:
    out, _ = redact(spans(attrs={"input.value": EMAIL}), summary=False)
    assert COUNT_ATTR not in attrs_of(the_span(out))
    batch = spans(attrs={"input.value": EMAIL, COUNT_ATTR: 2, TYPES_ATTR: "phone"})
    out, _ = redact(batch)
    got = attrs_of(the_span(out))
    assert got[COUNT_ATTR] == 3 and got[TYPES_ATTR] == "email,phone"


def test_idempotent_on_masked_text() -> None:
    text = " ".join(t for _, t, _ in SAMPLES)
    first, _ = redact(spans(attrs={"input.value": text}), summary=False)
    masked = attrs_of(the_span(first))["input.value"]
    again = Scanner(CATEGORIES).scan(masked)
    assert again is None, again


def test_mask_toggles_and_replacement_template() -> None:
    text = f"{EMAIL} {CARD} {SSN} {PHONE_US} {OPENAI}"
    out, _ = redact(
        spans(attrs={"input.value": text}),
        mask={"email": False, "phone": False},
        replacement="<{type}>",
    )
    assert attrs_of(the_span(out))["input.value"] == f"{EMAIL} <credit_card> <ssn> {PHONE_US} <api_key>"
    out, _ = redact(
        spans(attrs={"input.value": text}),
        mask=dict.fromkeys(CATEGORIES, False),
    )
    assert attrs_of(the_span(out))["input.value"] == text


def test_max_value_length_cuts_before_scanning() -> None:
    text = f"{EMAIL} " + "x" * 5000 + f" {CARD}"
    out, wire = redact(spans(attrs={"input.value": text}), max_value_length=1000)
    got = attrs_of(the_span(out))
    assert len(got["input.value"]) == 1000 - len(EMAIL) + len("[REDACTED:email]")
    assert got[TYPES_ATTR] == "email,truncated"
    assert_clean(wire, [EMAIL, CARD])


def test_metrics_only_lose_secret_keys() -> None:
    req = ExportMetricsServiceRequest()
    rm = req.resource_metrics.add()
    rm.resource.attributes.extend([kv("service.name", "svc"), kv("api_key", "rk")])
    m = rm.scope_metrics.add().metrics.add(name="gen_ai.client.token.usage")
    dp = m.histogram.data_points.add(count=1, sum=10.0)
    dp.attributes.extend([kv("gen_ai.token.type", "input"), kv("user", EMAIL), kv("authorization", "t")])
    ex = dp.exemplars.add(as_double=1.0)
    ex.filtered_attributes.extend([kv("password", "p"), kv("k", "v")])
    g = rm.scope_metrics[0].metrics.add(name="g").gauge.data_points.add(as_int=1)
    g.attributes.append(kv("x-api-key", "k"))
    batch = MetricBatch.from_request(req)
    out, wire = redact(batch)
    dp = out.request.resource_metrics[0].scope_metrics[0].metrics[0].histogram.data_points[0]
    assert [a.key for a in dp.attributes] == ["gen_ai.token.type", "user"]
    assert dp.attributes[1].value.string_value == EMAIL  # metric values are not scanned
    assert [a.key for a in dp.exemplars[0].filtered_attributes] == ["k"]
    assert b"x-api-key" not in wire and b"rk" not in wire


def test_mutation_marks_batch_modified() -> None:
    req = span_request(attrs={"input.value": EMAIL})
    batch = SpanBatch.from_request(req, wire=req.SerializeToString())
    out, wire = redact(batch)
    assert out is batch
    assert EMAIL.encode() not in wire and b"[REDACTED:email]" in wire
    assert batch.nbytes == len(wire)


def test_log_bodies_nested_and_attributes() -> None:
    body = kvlist(
        content=f"hi, I'm {EMAIL}",
        tool_calls=array(kvlist(function=kvlist(arguments=json.dumps({"card": CARD, "token": "abc123x"})))),
        headers=kvlist(Authorization=f"Bearer {BEARER_TOKEN}"),
    )
    out, wire = redact(logs(body, {"gen_ai.system": "openai", "note": f"ssn {SSN}"}))
    assert_clean(wire, [EMAIL, CARD, "abc123x", BEARER_TOKEN, SSN])
    rec = next(iter(out.iter_items()))
    got = _py(rec.body)
    assert got["content"] == "hi, I'm [REDACTED:email]"
    assert "Authorization" not in got["headers"]
    assert attrs_of(rec)["note"] == "ssn [REDACTED:ssn]"
    assert attrs_of(rec)[TYPES_ATTR] == "credit_card,email,secret,secret_key,ssn"


# ---------------------------------------------------------------- config
def test_config_errors() -> None:
    cfg = FACTORY.config
    with pytest.raises(ValidationError, match="pattern 'ticket': invalid regex"):
        cfg.model_validate({"patterns": [{"name": "ticket", "regex": "TKT-(\\d+"}]})
    with pytest.raises(ValidationError, match="matches the empty string"):
        cfg.model_validate({"patterns": [{"name": "blank", "regex": "x*"}]})
    with pytest.raises(ValidationError, match="built-in type"):
        cfg.model_validate({"patterns": [{"name": "email", "regex": "x"}]})
    with pytest.raises(ValidationError, match="used twice"):
        cfg.model_validate({"patterns": [{"name": "a", "regex": "x"}, {"name": "a", "regex": "y"}]})
    with pytest.raises(ValidationError, match="only the placeholder"):
        cfg.model_validate({"replacement": "[{kind}]"})
    with pytest.raises(ValidationError, match="extra"):
        cfg.model_validate({"mask": {"emails": True}})
    with pytest.raises(ValidationError):
        cfg.model_validate({"unknown": 1})
    with pytest.raises(ValidationError):
        cfg.model_validate({"max_value_length": -1})


def test_config_error_in_gateway_config_names_the_pattern() -> None:
    text = """
processors:
  redact:
    patterns:
      - name: ticket
        regex: "TKT-(\\\\d+"
service:
  pipelines: {}
"""
    raw, locs = load_text(text, "gw.yaml")
    with pytest.raises(ConfigError) as exc:
        build_config(raw, locs)
    msg = str(exc.value)
    assert "processors.redact.patterns[0]" in msg and "'ticket'" in msg and "gw.yaml:" in msg


def test_registered() -> None:
    factory = get_factory(Kind.PROCESSOR, "redact")
    assert factory is FACTORY
    assert factory.signals == frozenset({Signal.TRACES, Signal.LOGS, Signal.METRICS})


# ---------------------------------------------------------------- scanner properties
_FILLERS = [
    "hello",
    "the order",
    "2024-06-10",
    "1532 tokens",
    "id 42",
    "a:b",
    "x=y",
    "token",
    "api",
    "\\n",
    "@",
]
_TRICKY = [":param ", "password=password", "password :x", "secret == x", "İ", "\\u8054", '"', "4111", "+"]
FILLER = st.sampled_from([*_FILLERS, *_TRICKY])
PIECES = st.sampled_from([t for _, t, _ in SAMPLES] + ORDINARY)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.one_of(FILLER, PIECES), min_size=1, max_size=6))
def test_short_and_long_paths_agree(parts: list[str]) -> None:
    """Strings up to SHORT take trigger shortcuts; padding a string past it must not change the result."""
    text = " ".join(parts)
    scanner = Scanner(CATEGORIES)
    pad = " ." * SHORT
    short = scanner.scan(text)
    long = scanner.scan(text + pad)
    if short is None:
        assert long is None
    else:
        assert long is not None
        assert long[0] == short[0] + pad and long[1] == short[1]


def test_long_text_paths() -> None:
    """Long strings: separator-anchored key=value search, its fallback for dense code, non-ASCII."""
    filler = "lorem ipsum dolor sit amet " * 20
    scanner = Scanner(CATEGORIES)
    text = f"{filler} db_password = {PASSWORD} {filler}"
    assert scanner.scan(text) == (f"{filler} db_password = [REDACTED:secret] {filler}", ["secret"])
    code = "\n".join(f"x{i} = {i}" for i in range(200)) + f"\nclient.api_key = '{PASSWORD}'\n"
    res = scanner.scan(code)
    assert res is not None and PASSWORD not in res[0] and res[1] == ["secret"]
    # 'İ' lower-cases to two characters: positions differ, the case-insensitive expressions run instead
    text = "İ" * 300 + f" Password: {PASSWORD} and mail {EMAIL}"
    res = scanner.scan(text)
    assert res is not None and res[0].endswith("Password: [REDACTED:secret] and mail [REDACTED:email]")


def test_kv_spellings_match_their_expressions() -> None:
    import re

    from processors.redact.patterns import _KV_KEYS, KV_SPELLINGS

    for name, (_, key) in _KV_KEYS.items():
        for word in KV_SPELLINGS[name]:
            assert re.fullmatch(key, word), (name, word)


def test_documented_example_config_is_valid() -> None:
    import yaml

    import processors.redact.processor as mod

    doc = mod.__doc__ or ""
    example = doc.split("```yaml", 1)[1].split("```", 1)[0]
    cfg = FACTORY.config.model_validate(yaml.safe_load(example)["processors"]["redact"])
    proc, sink, _ = make(**cfg.model_dump())
    run(proc, spans(attrs={"input.value": "ask EMP-123456", "enduser.id": "u1", "enduser.email": EMAIL}))
    got = attrs_of(the_span(sink.batches[0]))
    assert got["input.value"] == "ask [REDACTED:employee_id]"
    assert "enduser.id" not in got and got["enduser.email"] == EMAIL


WORDS = st.sampled_from(
    [
        "hello",
        "2024-06-10",
        "a:b",
        "token",
        "\\n",
        "@",
        "password",
        "(",
        "-",
        "4111",
        "sk-",
        "eyJ",
        "İ",
        "联系",
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(WORDS, max_size=5), st.sampled_from(SAMPLES), st.lists(WORDS, max_size=5), st.booleans())
def test_secret_never_survives_context(pre: list[str], sample: Any, post: list[str], as_json: bool) -> None:
    """Any sample, between arbitrary words, as plain text or inside JSON: masked, and masking is stable."""
    _, text, secret = sample
    full = " ".join([*pre, text, *post])
    if as_json:
        full = json.dumps({"content": full})
        secret = json.dumps(secret)[1:-1]
    scanner = Scanner(CATEGORIES)
    res = scanner.scan(full)
    assert res is not None and secret not in res[0]
    assert scanner.scan(res[0]) is None
    if as_json:
        json.loads(res[0])


# ---------------------------------------------------------------- through a running gateway
def test_gateway_end_to_end_with_a_raw_and_a_redacted_pipeline(tmp_path: Any) -> None:
    """OTLP/HTTP in; one receiver feeds a redacting pipeline and a raw one, each with its own copy."""
    import urllib.request

    from tests.conftest import free_port, running_gateway, wait_until

    http, admin = free_port(), free_port()
    raw_out, safe_out = tmp_path / "raw.jsonl", tmp_path / "safe.jsonl"
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{http}"}}}},
        "processors": {"redact": {}},
        "exporters": {
            "file/raw": {"path": str(raw_out), "flush_interval": "10ms"},
            "file/safe": {"path": str(safe_out), "flush_interval": "10ms"},
        },
        "service": {
            "pipelines": {
                "traces/raw": {"receivers": ["otlp"], "exporters": ["file/raw"]},
                "traces/safe": {"receivers": ["otlp"], "processors": ["redact"], "exporters": ["file/safe"]},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{admin}"}},
            "shutdown_timeout": "5s",
        },
    }
    text = f"I'm {EMAIL}, card {CARD}, key {OPENAI}"
    body = span_request(attrs={"gen_ai.prompt.0.content": text, "api_key": OPENAI}).SerializeToString()
    with running_gateway(config) as gw:
        req = urllib.request.Request(
            f"http://127.0.0.1:{http}/v1/traces",
            data=body,
            headers={"Content-Type": "application/x-protobuf"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200
        wait_until(lambda: raw_out.exists() and safe_out.exists() and safe_out.stat().st_size > 0)
        wait_until(lambda: gw.metric("llm_sentinel_redactions_total", type="email") == 1)
        assert gw.metric("llm_sentinel_redactions_total", type="secret_key") == 1
    safe = safe_out.read_text()
    assert "[REDACTED:email]" in safe and "[REDACTED:credit_card]" in safe and "[REDACTED:api_key]" in safe
    for secret in (EMAIL, CARD, OPENAI):
        assert secret not in safe
        assert secret in raw_out.read_text()
