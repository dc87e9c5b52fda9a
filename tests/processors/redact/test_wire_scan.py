"""The redact wire prefilter: output identical to the reference path, clean batches left untouched."""

from __future__ import annotations

import asyncio
import itertools
import re
import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from prometheus_client import CollectorRegistry

from gateway.batch import Batch, LogBatch, MetricBatch, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from loadtests.llmgen import TrafficConfig, generate_chunks
from processors.redact import FACTORY, conditions, keytable, patterns, processor, wire_scan
from processors.redact.patterns import CATEGORIES, CustomPattern, Scanner
from processors.redact.processor import METRIC_NAME, RedactProcessor
from processors.redact.textcheck import text_may_change
from tests.processors.redact import strategies as gen

SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]


# ---------------------------------------------------------------- harness
class Capture:
    def __init__(self) -> None:
        self.batches: list[Batch] = []

    async def consume(self, batch: Batch) -> None:
        self.batches.append(batch)


def make(fast: bool, **config: Any) -> tuple[RedactProcessor, Capture, CollectorRegistry]:
    tel = SelfTelemetry()
    ctx = _context(ComponentId("redact"), Kind.PROCESSOR, tel, Admission(), "traces")
    proc = FACTORY.create(ctx, FACTORY.config.model_validate({**config, "fast_path": fast}))
    assert isinstance(proc, RedactProcessor)
    sink = Capture()
    proc.set_next(sink)
    return proc, sink, tel.registry


class Spy:
    """Counts what a batch is asked for: the fast path must not touch the request on clean batches."""

    def __init__(self, batch: Batch) -> None:
        self.touched: list[str] = []
        spy = self
        base = type(batch)

        class Watched(base):  # type: ignore[valid-type,misc]
            def __getattribute__(self, name: str) -> Any:
                if name in ("request", "iter_items", "resources", "item"):
                    spy.touched.append(name)
                return base.__getattribute__(self, name)

        batch.__class__ = Watched


def batch_of(kind: type[Batch], wire: bytes) -> Batch:
    req = kind.layout.request_cls()
    req.ParseFromString(wire)
    return kind.from_request(req, wire=wire)


def counts(registry: CollectorRegistry) -> dict[str, float]:
    return {
        s.labels["type"]: s.value
        for m in registry.collect()
        if m.name == METRIC_NAME.removesuffix("_total")
        for s in m.samples
        if s.name.endswith("_total")
    }


def run_both(kind: type[Batch], wire: bytes, config: dict[str, Any]) -> tuple[Batch, bool, bool]:
    """The same wire through the fast and the reference path; asserts identical results.

    Returns the fast path's batch, whether its wire was kept, whether its request was left alone.
    """
    fast, fast_sink, fast_reg = make(True, **config)
    ref, ref_sink, ref_reg = make(False, **config)
    assert fast.wire is not None, "these configs must take the fast path"
    assert ref.wire is None
    a, b = batch_of(kind, wire), batch_of(kind, wire)
    spy = Spy(a)
    asyncio.run(fast.consume(a))
    asyncio.run(ref.consume(b))
    assert fast_sink.batches == [a] and ref_sink.batches == [b]
    kept = a.wire is wire
    assert kept == (b.wire is wire)  # kept when nothing changed, dropped otherwise
    assert a.serialize() == b.serialize()
    assert a.columns.keys() == b.columns.keys()
    for name, col in a.columns.items():
        np.testing.assert_array_equal(col, b.columns[name])
    assert a.strings.values == b.strings.values and a.string_columns == b.string_columns
    assert counts(fast_reg) == counts(ref_reg)
    return a, kept, not spy.touched


def check(kind: type[Batch], wire: bytes, config: dict[str, Any]) -> None:
    """run_both inside a property test, recording which path each example took."""
    _, kept, untouched = run_both(kind, wire, config)
    event("untouched" if untouched else ("flagged, unchanged" if kept else "redacted"))


# ---------------------------------------------------------------- the invariant, on random requests
@settings(max_examples=120, deadline=None, suppress_health_check=SLOW)
@given(gen.trace_requests(), gen.configs())
def test_traces_fast_path_equals_reference(req: ExportTraceServiceRequest, config: dict[str, Any]) -> None:
    check(SpanBatch, req.SerializeToString(), config)


@settings(max_examples=80, deadline=None, suppress_health_check=SLOW)
@given(gen.log_requests(), gen.configs())
def test_logs_fast_path_equals_reference(req: Any, config: dict[str, Any]) -> None:
    check(LogBatch, req.SerializeToString(), config)


@settings(max_examples=60, deadline=None, suppress_health_check=SLOW)
@given(gen.metric_requests(), gen.configs())
def test_metrics_fast_path_equals_reference(req: Any, config: dict[str, Any]) -> None:
    check(MetricBatch, req.SerializeToString(), config)


@settings(max_examples=60, deadline=None, suppress_health_check=SLOW)
@given(gen.trace_requests(), st.data())
def test_odd_wire_still_equals_reference(req: ExportTraceServiceRequest, data: st.DataObject) -> None:
    """Mutated bytes: when protobuf still parses them (unknown fields, merged messages), same output;
    otherwise the walk gives up or passes, but never crashes."""
    wire = bytearray(req.SerializeToString())
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "dup", "junk"]))
        if op == "flip" and wire:
            i = data.draw(st.integers(0, len(wire) - 1))
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut" and wire:
            del wire[data.draw(st.integers(0, len(wire) - 1)) :]
        elif op == "dup":
            wire += wire[: data.draw(st.integers(0, len(wire)))]
        else:
            wire += data.draw(st.binary(max_size=12))
    raw = bytes(wire)
    try:
        ExportTraceServiceRequest.FromString(raw)
    except Exception:
        tables = conditions.build(CATEGORIES, [], 1 << 20)
        assert tables is not None
        scanner = wire_scan.WireScanner(tables, lambda key: 0)
        flags = np.zeros(64, np.uint8)
        unknown = np.zeros((8, 2), np.int64)
        status, *_ = wire_scan.scan_wire(
            wire_scan.as_array(raw),
            0,
            flags,
            np.zeros((4, 2), np.int64),
            unknown,
            scanner.keys.args(),
            tables.kernel_args(),
            np.zeros(wire_scan.SCRATCH, np.int64),
            scanner.cache.args(),
        )
        assert status in (wire_scan.OK, wire_scan.UNSURE)
        return
    check(SpanBatch, raw, {})


# ---------------------------------------------------------------- the string check alone
_SCANNERS: dict[str, tuple[Scanner, conditions.Tables, int]] = {}


def _scanner(config: dict[str, Any]) -> tuple[Scanner, conditions.Tables, int]:
    key = repr(sorted(config.items()))
    if key not in _SCANNERS:
        cats = [c for c in CATEGORIES if config["mask"][c]]
        custom = [CustomPattern(p["name"], re.compile(p["regex"])) for p in config["patterns"]]
        tables = conditions.build(cats, [c.regex for c in custom], config["max_value_length"])
        assert tables is not None
        scanner = Scanner(cats, config.get("replacement", "[REDACTED:{type}]"), custom)
        _SCANNERS[key] = scanner, tables, config["max_value_length"]
    return _SCANNERS[key]


@settings(max_examples=1000, deadline=None, suppress_health_check=SLOW)
@given(
    st.one_of(
        gen.texts(),
        st.tuples(gen.SEPARATORS, gen.PII, gen.SEPARATORS).map("".join),
        st.tuples(gen.SEPARATORS, gen.SHAPES, gen.SEPARATORS).map("".join),
        st.text(alphabet=" .()-+0123456789", max_size=40),
    ),
    gen.configs(),
)
def test_a_string_that_passes_is_never_changed(text: str, config: dict[str, Any]) -> None:
    """The core property: text_hit False ⇒ Scanner.scan changes nothing (and no cut)."""
    scanner, tables, max_len = _scanner(config)
    if not text_may_change(tables, text):
        assert not 0 < max_len < len(text)
        assert scanner.scan(text[:max_len] if max_len else text) is None, text


@pytest.mark.parametrize(
    "text",
    [
        "hello world",
        "gpt-4o-mini-2024-07-18",
        "claude-3-5-sonnet-20241022",
        "Error code: 429 - Rate limit reached for requests",
        '{"role": "user", "content": "what is the refund window?"}',
        "2024-06-10T12:00:00+00:00 took 1532 ms",
        "123e4567-e89b-12d3-a456-426614174000",
        "chatcmpl-0068496079445df35546c464",  # hex ids with long digit runs
        "chatcmpl-bfdfb94c1191473167560f0d",
        "1718035200000000000",  # epoch nanoseconds: no card issuer
        "https://api.openai.com/v1/chat/completions",
        "user@ mention and a dangling @",
    ],
)
def test_ordinary_values_pass(text: str) -> None:
    tables = conditions.build(CATEGORIES, [], 1 << 20)
    assert tables is not None
    assert not text_may_change(tables, text)


TICKET = {"name": "ticket", "regex": r"(?i)\bticket-\d+"}


@pytest.mark.parametrize(
    ("text", "patterns"),
    [
        ("a@b.co", []),  # the shortest address: MIN_BUILTIN_LEN
        ("+12345678", []),  # 8 digits and a '+': MIN_DIGITS
        ("call 001 2345678", []),  # '00' international, 10 digits
        ("call 0201 234 567", []),  # national trunk, 3-3 ending
        ("amex 3782 822463 10005", []),  # card 4-6-5
        ("\\u00414111111111111111", []),  # a JSON escape before the card starts a token
        ("\\n123-45-6789", []),
        ("to\u212aen: hunter2-Secret", []),  # Kelvin sign lower-cases to 'k'
        ("İ password: hunter2-Secret", []),  # lower() changes the length: case-insensitive expressions
        ("tıc\u212aet-7", [TICKET]),  # (?i) matches dotless i and the Kelvin sign
    ],
)
def test_edge_cases_are_flagged(text: str, patterns: list[dict[str, str]]) -> None:
    config = {"mask": dict.fromkeys(CATEGORIES, True), "patterns": patterns, "max_value_length": 1 << 20}
    scanner, tables, _ = _scanner(config)
    assert scanner.scan(text) is not None
    assert text_may_change(tables, text)


def test_the_tests_pii_samples_are_all_candidates() -> None:
    from tests.processors.test_redact import SAMPLES

    tables = conditions.build(CATEGORIES, [], 1 << 20)
    assert tables is not None
    for _, text, _ in SAMPLES:
        assert text_may_change(tables, text), text


# ---------------------------------------------------------------- staying in step with patterns.py
def test_fingerprint_pins_the_hand_derived_rules() -> None:
    """Fails when patterns.py changes what DIGIT_RULES, the e-mail and the key=value rules assume:
    re-derive them in conditions.py / wire_scan.cluster_hit, then update FINGERPRINT."""
    assert conditions.fingerprint() == conditions.FINGERPRINT
    assert {d.name for d, _ in patterns.DIGIT_DETECTORS} == set(conditions.DIGIT_RULES)


def _language(items: Any) -> set[str]:
    """Every string a finite expression (literals, classes, branches, bounded repeats) matches."""
    c = conditions._c
    out = {""}
    for op, av in items:
        if op is c.LITERAL:
            alts = {chr(av)}
        elif op is c.IN:
            alts = {chr(x) for kind, v in av for x in ([v] if kind is c.LITERAL else range(v[0], v[1] + 1))}
        elif op is c.BRANCH:
            alts = set().union(*(_language(a) for a in av[1]))
        elif op is c.SUBPATTERN:
            alts = _language(av[3])
        else:
            assert op is c.MAX_REPEAT and av[1] <= 3, op
            one = _language(av[2])
            alts = {"".join(p) for n in range(av[0], av[1] + 1) for p in itertools.product(one, repeat=n)}
        out = {a + b for a in out for b in alts}
    return out


def test_kv_detectors_are_a_spelling_then_the_tail() -> None:
    """The key=value rule assumes each such detector is `key` + `_KV_TAIL`, `key` spelt as KV_SPELLINGS."""
    for det in patterns.SECRET_DETECTORS:
        if det.lower:
            trig, key = patterns._KV_KEYS[det.name]
            assert det.source == key + patterns._KV_TAIL and det.trigger == (trig,)
            assert _language(conditions._parser.parse(key)) == set(patterns.KV_SPELLINGS[det.name])
    assert patterns._KV_TAIL.startswith(r"""(?:\\?["'])?[ \t]*[:=]""")


def test_secret_sequences_start_with_the_detector_trigger() -> None:
    for det in patterns.SECRET_DETECTORS:
        if det.lower:
            continue
        got = conditions.sequences(re.compile(det.source), anchored=True)
        assert got is not None and not got[1], det.name
        for seq in got[0]:
            head = "".join(chr(next(iter(e.chars))) for e in seq[: len(min(det.trigger, key=len))])
            assert any(t.startswith(head) or head.startswith(t) for t in det.trigger), (det.name, head)


def test_special_chars_are_every_non_ascii_char_that_can_act_as_ascii() -> None:
    """Lower-casing (the key=value scan) and re.IGNORECASE (its fallback, custom patterns)."""
    rx = re.compile(r"[\x00-\x7f]", re.IGNORECASE)
    found = set()
    for cp in range(0x80, sys.maxunicode + 1):
        c = chr(cp)
        low = c.lower()
        if (low != c and any(ord(x) < 128 for x in low)) or rx.match(c):
            found.add(cp)
    assert found <= conditions.SPECIAL_CHARS
    assert max(conditions.SPECIAL_CHARS) < 0x10000


def test_key_actions_are_the_processors() -> None:
    assert (processor._SCAN, processor._ALLOW, processor._DROP) == (
        keytable.ACT_SCAN,
        keytable.ACT_ALLOW,
        keytable.ACT_DROP,
    )


def test_field_numbers_match_the_protos() -> None:
    modules = [trace_pb2, logs_pb2, metrics_pb2, common_pb2, resource_pb2]
    for (message, field), number in wire_scan.FIELDS.items():
        outer, _, inner = message.partition(".")
        cls = next(getattr(m, outer) for m in modules if hasattr(m, outer))
        desc = getattr(cls, inner).DESCRIPTOR if inner else cls.DESCRIPTOR
        assert desc.fields_by_name[field].number == number, (message, field)
    for req in (
        ExportTraceServiceRequest,
        logs_service_pb2.ExportLogsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceRequest,
    ):
        (only,) = req.DESCRIPTOR.fields
        assert only.number == 1


# ---------------------------------------------------------------- what takes which path
def test_llmgen_traffic_takes_the_clean_path_untouched() -> None:
    config = TrafficConfig(
        seed=7, duration_s=600, error_rate=0.05, rate_limit_rate=0.05, spans_per_request=256
    )
    proc, sink, _ = make(True)
    n = 0
    for chunk in itertools.islice(generate_chunks(config), 6):
        batch = batch_of(SpanBatch, chunk.wire)
        spy = Spy(batch)
        asyncio.run(proc.consume(batch))
        assert spy.touched == [] and sink.batches[-1] is batch and batch.wire is chunk.wire
        n += len(batch)
    assert n > 1000


def test_only_flagged_items_are_visited() -> None:
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(50):
        sp = spans.add(name="chat", trace_id=bytes(range(16)), span_id=bytes([i + 1] * 8))
        sp.attributes.add(key="gen_ai.prompt").value.string_value = f"question {i} about the order"
    spans[7].events.add(name="e").attributes.add(key="msg").value.string_value = "mail me: jane@example.org"
    spans[31].status.message = "card 4111 1111 1111 1111 declined"
    wire = req.SerializeToString()
    proc, _, _ = make(True)
    plan = proc.wire.plan(batch_of(SpanBatch, wire)) if proc.wire else None
    assert plan is not None and not plan.resources and plan.rows.tolist() == [7, 31]
    assert [wire_scan.where(loc) for loc in plan.parts[7]] == [(1, 0, 0)]  # event 0, attribute 0
    assert 31 not in plan.parts  # a status message: the whole span
    a, kept, untouched = run_both(SpanBatch, wire, {})
    assert not untouched and not kept
    assert b"jane@example.org" not in a.serialize() and b"4111" not in a.serialize()


def test_flagged_spans_list_the_attributes_that_hit() -> None:
    """Drops, nested kvlists and arrays, events and links: the places listed, same output."""
    req = ExportTraceServiceRequest()
    sp = req.resource_spans.add().scope_spans.add().spans.add(name="a", trace_id=bytes(16), span_id=bytes(8))
    sp.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini-2024-07-18"
    sp.attributes.add(key="db.password").value.string_value = "hunter2"
    sp.attributes.add(key="note").value.string_value = "nothing to see"
    nested = sp.attributes.add(key="ctx").value.kvlist_value.values
    nested.add(key="who").value.string_value = "ok"
    nested.add(key="inner").value.kvlist_value.values.add(key="mail").value.string_value = "a@b.co"
    arr = sp.attributes.add(key="list").value.array_value.values
    arr.add(string_value="plain")
    arr.add(string_value="+1 415 555 2671 and +1 415 555 2672")
    sp.events.add(name="e0").attributes.add(key="x").value.string_value = "clean"
    ev = sp.events.add(name="e1").attributes
    for k in ("a", "b"):
        ev.add(key=k).value.string_value = "clean text"
    ev.add(key="c").value.string_value = "ssn 123-45-6789"
    sp.links.add(trace_id=bytes(16), span_id=bytes(8)).attributes.add(key="Cookie").value.string_value = "1"
    wire = req.SerializeToString()
    proc, _, _ = make(True)
    assert proc.wire is not None
    plan = proc.wire.plan(batch_of(SpanBatch, wire))
    assert plan is not None and plan.rows.tolist() == [0]
    got = sorted(wire_scan.where(loc) for loc in plan.parts[0])
    assert got == [(0, 0, 1), (0, 0, 3), (0, 0, 4), (1, 1, 2), (2, 0, 0)]
    a, kept, _ = run_both(SpanBatch, wire, {})
    assert not kept
    out = a.serialize()
    assert b"hunter2" not in out and b"a@b.co" not in out and b"555" not in out and b"6789" not in out
    assert b"Cookie" not in out and b"gpt-4o-mini-2024-07-18" in out


def test_secret_resource_key_flags_the_resources_only() -> None:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="deployment.api_key").value.string_value = "x"
    rs.scope_spans.add().spans.add(name="a", trace_id=bytes(range(16)), span_id=bytes(8))
    proc, _, _ = make(True)
    assert proc.wire is not None
    plan = proc.wire.plan(batch_of(SpanBatch, req.SerializeToString()))
    assert plan is not None and plan.resources and plan.rows.tolist() == []
    a, _, _ = run_both(SpanBatch, req.SerializeToString(), {})
    assert b"api_key" not in a.serialize()


def test_reference_path_when_fast_path_cannot_apply() -> None:
    assert make(False)[0].wire is None  # forced by config
    assert make(True, patterns=[{"name": "num", "regex": r"\d{4}"}])[0].wire is None  # nothing derivable
    proc, _sink, _ = make(True)
    batch = SpanBatch.from_request(ExportTraceServiceRequest())
    assert batch.wire is None and proc._plan(batch) is None  # no wire bytes (OTLP/JSON)
    bad = batch_of(SpanBatch, b"")
    bad.wire = b"\x0a\x05\x12\x03\x0a"  # truncated inside a span
    assert proc._plan(bad) is None


def test_new_keys_are_learnt_and_the_walk_repeated() -> None:
    proc, _, _ = make(True, drop_keys=["*.hidden"])
    assert proc.wire is not None
    req = ExportTraceServiceRequest()
    sp = req.resource_spans.add().scope_spans.add().spans.add(name="a", trace_id=bytes(16), span_id=bytes(8))
    sp.attributes.add(key="x.hidden").value.int_value = 1
    sp.attributes.add(key="x.shown").value.int_value = 1
    plan = proc.wire.plan(batch_of(SpanBatch, req.SerializeToString()))
    assert plan is not None and plan.rows.tolist() == [0]
    assert proc.wire.keys.known == {b"x.hidden", b"x.shown"}
    del sp.attributes[0]
    plan = proc.wire.plan(batch_of(SpanBatch, req.SerializeToString()))
    assert plan is not None and plan.clean


def test_key_table_is_exact_and_bounded() -> None:
    table = keytable.KeyTable(lambda key: len(key) % 3)
    keys = [f"k{i}".encode() for i in range(3000)] + [b"", "ключ".encode()]
    for k in keys:
        assert table.add(k)
    blob = b"".join(keys)
    offs = np.cumsum([0] + [len(k) for k in keys])
    buf = np.frombuffer(blob + b"\0", np.uint8)
    for k, a in zip(keys, offs.tolist(), strict=False):
        want = len(k.decode()) % 3
        assert keytable.key_action(buf, a, a + len(k), *table.args()) == want
    probe = np.frombuffer(b"never-seen", np.uint8)
    assert keytable.key_action(probe, 0, 10, *table.args()) == keytable.ACT_UNKNOWN
    assert not table.add(b"\xff\xfe")
    long_key = b"k" * (table.MAX_KEY_LEN + 1)
    assert table.add(long_key) and long_key not in table.known
    table.MAX_KEYS = 10
    table.add(b"one-more")
    assert table.count == 1


def test_reference_until_the_kernels_are_warm() -> None:
    import threading

    proc, _, _ = make(True)
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name="a", trace_id=bytes(16), span_id=bytes(8))
    batch = batch_of(SpanBatch, req.SerializeToString())
    proc._warm = threading.Event()
    assert proc._plan(batch) is None
    proc._warm.set()
    plan = proc._plan(batch)
    assert plan is not None and plan.clean


# ---------------------------------------------------------------- through a running gateway
def test_real_sdk_spans_through_a_gateway_take_the_fast_path(ports: dict[str, int], tmp_path: Any) -> None:
    """OTel SDK → OTLP/HTTP protobuf → receiver (wire bytes kept) → redact fast path → file exporter."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from tests.conftest import running_gateway, wait_until
    from tests.receivers.otlp_helpers import gateway_config, spans_in_file

    out = tmp_path / "out.jsonl"
    config = gateway_config(
        ports, out, processors=["redact"], processor_defs={"redact": {}}, signals=("traces",)
    )
    plans: list[wire_scan.Plan | None] = []
    real_plan = wire_scan.WireScanner.plan

    def spy(self: wire_scan.WireScanner, batch: Batch) -> wire_scan.Plan | None:
        plans.append(real_plan(self, batch))
        return plans[-1]

    wire_scan.warm_up()  # compiled (or loaded) already: the processor's warm-up thread is instant
    with pytest.MonkeyPatch.context() as mp, running_gateway(config) as gw:
        mp.setattr(wire_scan.WireScanner, "plan", spy)
        assert gw.gateway is not None
        (proc,) = gw.gateway.graph.all_processors()
        assert isinstance(proc, RedactProcessor) and proc._warm is not None
        wait_until(proc._warm.is_set)
        tp = TracerProvider(resource=Resource.create({"service.name": "e2e"}))
        tp.add_span_processor(
            SimpleSpanProcessor(OTLPSpanExporter(endpoint=f"http://127.0.0.1:{ports['http']}/v1/traces"))
        )
        tracer = tp.get_tracer("e2e")
        with tracer.start_as_current_span("chat gpt-4o", attributes={"gen_ai.request.model": "gpt-4o"}):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o", attributes={"gen_ai.prompt": "mail jane@example.org"}
        ):
            pass
        tp.shutdown()
        spans = wait_until(lambda: len(got := spans_in_file(out)) == 2 and got)
    assert len(plans) == 2 and all(p is not None for p in plans)
    assert [p.clean for p in plans if p is not None] == [True, False]
    attrs = [{kv.key: kv.value.string_value for kv in sp.attributes} for sp in spans]
    assert attrs[0] == {"gen_ai.request.model": "gpt-4o"}
    assert attrs[1]["gen_ai.prompt"] == "mail [REDACTED:email]"
