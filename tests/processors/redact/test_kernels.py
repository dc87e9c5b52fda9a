"""The redact prefilter's building blocks: exact key table, clean-value cache, position-independent
string check, and the fast path with caches warm from earlier batches."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from gateway.batch import SpanBatch
from processors.redact import conditions, keytable, valuecache
from processors.redact.patterns import CATEGORIES
from processors.redact.textcheck import text_hit
from tests.processors.redact import strategies as gen
from tests.processors.redact.test_wire_scan import SLOW, batch_of, counts, make
from tests.processors.test_redact import SAMPLES

TABLES = conditions.build(CATEGORIES, [], 1 << 20)
assert TABLES is not None
ARGS = TABLES.kernel_args()


# ---------------------------------------------------------------- key table: word-wise compare
def _near(key: bytes) -> list[bytes]:
    """Keys one byte away from `key`: each byte changed, one byte more or less at either end."""
    out = [key[:i] + bytes([key[i] ^ 1]) + key[i + 1 :] for i in range(len(key))]
    return [*out, key + b"x", b"x" + key, key[1:], key[:-1]]


def test_key_table_tells_apart_keys_that_share_their_first_and_last_words() -> None:
    keys = [b"a." * n + b"key" for n in range(20)] + [
        b"gen_ai.usage.%s.input_tokens" % w for w in (b"x", b"yy")
    ]
    keys += [b"k" * n for n in range(1, 41)]
    table = keytable.KeyTable(lambda key: 2 if key.endswith("key") else 0)
    for k in keys:
        assert table.add(k)
    for k in keys:
        for probe in [k, *_near(k)]:
            want = table.classify(probe.decode()) if probe in table.known else keytable.ACT_UNKNOWN
            for pad in (b"", b"\x00" * 9):  # at the very end of the buffer (byte loads) and before others
                buf = np.frombuffer(probe + pad or b"\0", np.uint8)
                assert keytable.key_action(buf, 0, len(probe), *table.args()) == want, (probe, pad)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=0, max_size=40), min_size=1, max_size=30), st.binary(max_size=40))
def test_key_table_is_exact_for_any_bytes(keys: list[bytes], probe: bytes) -> None:
    table = keytable.KeyTable(lambda key: len(key) % 3)
    for k in keys:
        table.add(k.decode("utf-8", "replace").encode())
    for p in [probe, *keys]:
        p = p.decode("utf-8", "replace").encode()
        want = len(p.decode()) % 3 if p in table.known else keytable.ACT_UNKNOWN
        buf = np.frombuffer(b"\xff" * 3 + p + b"\xff" * 3, np.uint8)
        assert keytable.key_action(buf, 3, 3 + len(p), *table.args()) == want


# ---------------------------------------------------------------- clean-value cache
@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=valuecache.MAX_LEN), min_size=1, max_size=20))
def test_value_cache_finds_exactly_the_strings_it_holds(values: list[bytes]) -> None:
    cache = valuecache.ValueCache()
    slots, count = cache.args()
    for v in values:
        buf = np.frombuffer(v, np.uint8)  # the string ends the buffer: the byte-load path
        found, slot = valuecache.lookup(slots, buf, 0, len(v))
        if not found:
            valuecache.insert(slots, count, slot, buf, 0, len(v))
    held = set(values)
    for v in values:
        for probe in [v, *_near(v)]:
            if not 0 < len(probe) <= valuecache.MAX_LEN:
                continue
            buf = np.frombuffer(b"\x00" * 5 + probe + b"\x00" * 9, np.uint8)  # in a buffer: word loads
            found, _ = valuecache.lookup(slots, buf, 5, len(probe))
            assert found == (probe in held), probe


def test_value_cache_stops_at_half_and_clears() -> None:
    cache = valuecache.ValueCache()
    slots, count = cache.args()
    for i in range(valuecache.SLOTS):
        v = b"value-%06d" % i
        buf = np.frombuffer(v, np.uint8)
        _found, slot = valuecache.lookup(slots, buf, 0, len(v))
        valuecache.insert(slots, count, slot, buf, 0, len(v))
    assert cache.full and int(count[0]) == valuecache.SLOTS // 2
    cache.clear()
    assert not cache.full and not slots.any()


# ---------------------------------------------------------------- the string check sees only its string
SURROUNDINGS = [
    b"",
    b"\x00",
    b"0",
    b"9",
    b"@",
    b"a",
    b"x",
    b"-",
    b".",
    b"\\",
    b"k",
    b"4111",
    b"+1",
    b"@ex.co",
]


@settings(max_examples=400, deadline=None, suppress_health_check=SLOW)
@given(
    st.one_of(gen.texts(), gen.PII, gen.SHAPES),
    st.sampled_from(SURROUNDINGS),
    st.sampled_from(SURROUNDINGS),
)
def test_text_check_depends_only_on_the_string(text: str, before: bytes, after: bytes) -> None:
    """The clean-value cache keys a verdict on the string's bytes: the check must not read around it."""
    raw = text.encode()
    alone = np.frombuffer(raw or b"\0", np.uint8)
    inside = np.frombuffer(before + raw + after or b"\0", np.uint8)
    s = len(before)
    assert text_hit(alone, 0, len(raw), *ARGS) == text_hit(inside, s, s + len(raw), *ARGS)


def test_every_sample_is_flagged_wherever_it_sits() -> None:
    """Each PII sample of the processor tests, cut to any suffix that still changes, at the start or
    end of a string and of the buffer (the one-table-load loop and its bigram look-ahead)."""
    from processors.redact.patterns import Scanner

    scanner = Scanner(CATEGORIES)
    for _, text, _ in SAMPLES:
        for variant in (text, f"x {text}", f"{text} x", f'{{"v": "{text}"}}'):
            raw = variant.encode()
            if scanner.scan(variant) is None:
                continue
            for before, after in ((b"", b""), (b"ab", b""), (b"", b"yz")):
                buf = np.frombuffer(before + raw + after, np.uint8)
                assert text_hit(buf, len(before), len(before) + len(raw), *ARGS), variant


# ---------------------------------------------------------------- warm caches, many batches
_WARM: dict[str, Any] = {}


def _warm_processor() -> Any:
    """One fast-path processor for all examples: its key table and value cache carry over."""
    if "proc" not in _WARM:
        _WARM["proc"] = make(True)
    return _WARM["proc"]


@settings(max_examples=150, deadline=None, suppress_health_check=SLOW)
@given(gen.trace_requests())
def test_fast_path_with_warm_caches_equals_reference(req: ExportTraceServiceRequest) -> None:
    fast, _sink, fast_reg = _warm_processor()
    ref, _ref_sink, ref_reg = make(False)
    wire = req.SerializeToString()
    before = counts(fast_reg)
    for _ in range(2):  # the second time every value and key is known
        a, b = batch_of(SpanBatch, wire), batch_of(SpanBatch, wire)
        asyncio.run(fast.consume(a))
        ref_reg_before = counts(ref_reg)
        asyncio.run(ref.consume(b))
        assert a.serialize() == b.serialize()
        assert (a.wire is wire) == (b.wire is wire)
        after = counts(fast_reg)
        ref_after = counts(ref_reg)
        delta = {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}
        ref_delta = {
            k: v - ref_reg_before.get(k, 0) for k, v in ref_after.items() if v != ref_reg_before.get(k, 0)
        }
        assert delta == ref_delta
        before = after


def test_repeated_clean_values_are_served_from_the_cache() -> None:
    rng = random.Random(3)
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for i in range(200):
        sp = spans.add(name="chat", trace_id=rng.randbytes(16), span_id=rng.randbytes(8))
        sp.attributes.add(key="gen_ai.request.model").value.string_value = "gpt-4o-mini-2024-07-18"
        sp.attributes.add(key="server.address").value.string_value = "api.openai.com"
        sp.attributes.add(key="user.note").value.string_value = "call +1 415 555 2671" if i == 150 else "ok"
    proc, _, _ = make(True)
    assert proc.wire is not None
    plan = proc.wire.plan(batch_of(SpanBatch, req.SerializeToString()))
    assert plan is not None and plan.rows.tolist() == [150]
    assert int(proc.wire.cache.count[0]) == 2  # the two repeated values, once each
