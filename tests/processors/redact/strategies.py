"""Hypothesis strategies: PII-laden strings and random OTLP requests that carry them anywhere."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from processors.redact import patterns

DIGITS = "0123456789"
B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# characters that lower-case or case-fold to ASCII, JSON escapes, CJK, accents, emoji
UNICODE = ["İ", "ı", "ſ", "\u212a", "ß", "ﬁ", "é", "联系", "Ω", "😀", "\u00a0", "\\n", "\\u00e9", "\\"]


def _luhn_digit(body: str) -> str:
    total = 0
    for k, ch in enumerate(reversed(body)):
        d = int(ch)
        if k % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


@st.composite
def cards(draw: Any) -> str:
    prefix = draw(
        st.sampled_from(["4", "51", "55", "34", "37", "36", "6011", "65", "2221", "2720", "1", "9"])
    )
    length = draw(st.integers(13, 19))
    body = prefix + draw(_d(length - 1 - len(prefix)))
    digits = body + _luhn_digit(body)
    if draw(st.booleans()):  # break the checksum
        digits = digits[:-1] + str((int(digits[-1]) + draw(st.integers(1, 9))) % 10)
    style = draw(st.sampled_from(["bare", "4444", "465", "mixed"]))
    sep = draw(st.sampled_from([" ", "-", "."]))
    if style == "4444" and len(digits) in (16, 19):
        return sep.join(digits[i : i + 4] for i in range(0, 16, 4)) + (
            sep + digits[16:] if len(digits) == 19 else ""
        )
    if style == "465" and len(digits) in (14, 15):
        return f"{digits[:4]}{sep}{digits[4:10]}{sep}{digits[10:]}"
    if style == "mixed":
        return f"{digits[:4]} {digits[4:8]}-{digits[8:12]} {digits[12:]}"
    return digits


@st.composite
def ssns(draw: Any) -> str:
    area = draw(st.sampled_from(["123", "000", "666", "912", "078", "555"]))
    group = draw(st.sampled_from(["45", "00", "12"]))
    serial = draw(st.sampled_from(["6789", "0000", "1120"]))
    return draw(
        st.sampled_from([f"{area}-{group}-{serial}", f"{area}{group}{serial}", f"{area} {group} {serial}"])
    )


def _d(n: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=DIGITS, min_size=n, max_size=n)


def _fmt(template: str, *parts: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(*parts).map(lambda xs: template.format(*xs))


def phones() -> st.SearchStrategy[str]:
    return st.one_of(
        _fmt("+1{}", _d(10)),
        _fmt("+{}", st.text(alphabet=DIGITS, min_size=7, max_size=15)),
        _fmt("+44 20 {} {}", _d(4), _d(4)),
        _fmt("+49 (0){} {}", _d(3), _d(6)),
        _fmt("0049 {} {}", _d(3), _d(7)),
        _fmt("00{}-{}-{}", _d(2), _d(3), _d(6)),
        _fmt("({}) {}-{}", _d(3), _d(3), _d(4)),
        _fmt("({}){}.{}", _d(3), _d(3), _d(4)),
        _fmt("{}-{}-{}", _d(3), _d(3), _d(4)),
        _fmt("{}.{}.{}", _d(3), _d(3), _d(4)),
        _fmt("1 {} {} {}", _d(3), _d(3), _d(4)),
        _fmt("1-{}-{}-{}", _d(3), _d(3), _d(4)),
        _fmt("0{} {} {}", _d(2), _d(4), _d(4)),
        _fmt("0{} {} {}", _d(3), _d(3), _d(3)),
        _fmt("0{}-{}-{}", _d(1), _d(4), _d(3)),
        _fmt("+{}.{}", _d(2), _d(6)),
        st.just("+1980-02-29 01:02"),
    )


def emails() -> st.SearchStrategy[str]:
    local = st.text(alphabet="abcXYZ019._%+-", min_size=1, max_size=12)
    domain = st.text(alphabet="abc019-", min_size=1, max_size=8)
    tld = st.sampled_from(["com", "io", "co", "x", "org", "1a"])
    return st.one_of(
        _fmt("{}@{}.{}", local, domain, tld),
        _fmt("{}@{}", local, domain),
        _fmt("@{}.{}", domain, tld),
        _fmt("{} @ {}", local, domain),
    )


def _w(alphabet: str, lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.text(alphabet=alphabet, min_size=lo, max_size=hi)


KV_KEYS = st.sampled_from(
    [
        "password",
        "Password",
        "PASSWD",
        "passphrase",
        "secret",
        "secret_key",
        "Secret-Key",
        "api_key",
        "apiKey",
        "API-SECRET",
        "api_token",
        "token",
        "Token",
        "authorization",
        "Authorization",
        "auth_token",
        "authToken",
        "private_key",
        "privateKey",
        "db_password",
        "tokens",
        "to\u212aen",
        "paſſword",
    ]
)
TOKEN = _w(ALNUM + "_-", 8, 48)
KV_VALUES = st.one_of(
    TOKEN,
    st.sampled_from(["None", "${DB_PASSWORD}", "123", "str", "self.secret", "****", "[REDACTED:secret]"]),
)


def secrets() -> st.SearchStrategy[str]:
    jwt_part = _w(ALNUM + "_-", 4, 20)
    userpass = _w("abc:12", 1, 12).map(lambda s: base64.b64encode(s.encode()).decode())
    kv_templates = st.sampled_from(
        ["{}={}", '"{}": "{}"', '\\"{}\\": \\"{}\\"', "{} : {}", "{}:'{}'", ":param {}: {}", "{}={}(x)"]
    )
    return st.one_of(
        _fmt("sk-{}", TOKEN),
        _fmt("sk-proj-{}", _w(ALNUM, 20, 40)),
        _fmt("AKIA{}", _w("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, 16)),
        _fmt("ASIA{}", _w("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 14, 18)),
        _fmt("AIza{}", _w(ALNUM + "_-", 33, 37)),
        _fmt("ghp_{}", _w(ALNUM, 30, 40)),
        _fmt("github_pat_{}", _w(ALNUM + "_", 20, 30)),
        _fmt("xoxb-{}", _w(ALNUM + "-", 8, 30)),
        _fmt("eyJ{}.{}.{}", jwt_part, jwt_part, _w(ALNUM + "_-", 0, 20)),
        _fmt("Bearer {}", TOKEN),
        _fmt("bearer\t{}==", _w(ALNUM + "._~+/-", 10, 20)),
        _fmt("Basic {}", userpass),
        st.tuples(kv_templates, KV_KEYS, KV_VALUES).map(lambda t: t[0].format(t[1], t[2])),
    )


NOISE = st.lists(
    st.sampled_from([*"abcdefghijkxyz ABCDEKSZ0123456789 .,;:=()+-_@\"'/\n\t", *UNICODE]), max_size=30
).map("".join)
WORDS = st.sampled_from(
    [
        "the",
        "order",
        "tokens",
        "basic",
        "bearer",
        "gh",
        "ask",
        "2024-06-10",
        "v1.2.3",
        "1532",
        "gpt-4o-mini-2024-07-18",
        "claude-3-5-sonnet-20241022",
        "123e4567-e89b-12d3-a456-426614174000",
        "Error code: 429",
        "a=b",
        "x:y",
        "{",
        "}",
        "TICKET-12",
        "tıc\u212aet-7",  # dotless i, Kelvin sign: (?i) matches them
        "ticket-",
    ]
)
# ---------------------------------------------------------------- strings shaped by the detectors
_p: Any = getattr(re, "_parser")  # noqa: B009 - the parse tree, as conditions.py reads it
_c: Any = getattr(re, "_constants")  # noqa: B009
POOL = [*"aZ09_-.:=@+() /\\\"'\n\t", "é", "\u212a"]
_CATS = {
    _c.CATEGORY_DIGIT: "0123456789",
    _c.CATEGORY_NOT_DIGIT: "a .-_",
    _c.CATEGORY_SPACE: " \t\n",
    _c.CATEGORY_NOT_SPACE: "a0_-.:",
    _c.CATEGORY_WORD: "aZ0_é",
    _c.CATEGORY_NOT_WORD: " .-:@",
}


def _class(av: Any) -> st.SearchStrategy[str]:
    chars: list[str] = []
    negate = False
    for kind, val in av:
        if kind is _c.NEGATE:
            negate = True
        elif kind is _c.LITERAL:
            chars.append(chr(val))
        elif kind is _c.RANGE:
            lo, hi = val
            chars.extend(chr(c) for c in sorted({lo, hi, lo + 1, (lo + hi) // 2, hi - 1}) if lo <= c <= hi)
        else:
            chars.extend(_CATS[val])
    if negate:
        return st.sampled_from([c for c in POOL if c not in chars])
    return st.sampled_from(chars)


def _emit(draw: Any, items: Any, groups: dict[int, str]) -> str:
    out: list[str] = []
    for op, av in items:
        if op is _c.LITERAL:
            out.append(chr(av))
        elif op is _c.NOT_LITERAL:
            out.append(draw(st.sampled_from([c for c in POOL if c != chr(av)])))
        elif op is _c.ANY:
            out.append(draw(st.sampled_from(POOL)))
        elif op is _c.IN:
            out.append(draw(_class(av)))
        elif op is _c.CATEGORY:
            out.append(draw(st.sampled_from(_CATS[av])))
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
            lo, hi, sub = av
            hi = lo + 8 if hi == _c.MAXREPEAT else hi
            n = draw(st.integers(lo, min(hi, lo + 8)))
            out.extend(_emit(draw, sub, groups) for _ in range(n))
        elif op is _c.SUBPATTERN:
            gid, _, _, sub = av
            text = _emit(draw, sub, groups)
            if gid:
                groups[gid] = text
            out.append(text)
        elif op is _c.BRANCH:
            out.append(_emit(draw, draw(st.sampled_from(av[1])), groups))
        elif op is _c.GROUPREF:
            out.append(groups.get(av, ""))
        elif op not in (_c.ASSERT, _c.ASSERT_NOT, _c.AT):
            raise NotImplementedError(op)
    return "".join(out)


def shaped_like(source: str) -> st.SearchStrategy[str]:
    """Strings built along an expression's parse tree; lookarounds are ignored, so many are near-misses."""
    tree = _p.parse(source)

    @st.composite
    def build(draw: Any) -> str:
        return _emit(draw, tree, {})

    return build()


def _mixed_case(text: str) -> st.SearchStrategy[str]:
    return st.lists(st.booleans(), min_size=len(text), max_size=len(text)).map(
        lambda ups: "".join(c.upper() if u else c for c, u in zip(text, ups, strict=True))
    )


SHAPES = st.tuples(
    st.sampled_from(["", "B", "b", " "]),  # Bearer and Basic look behind for their first letter
    st.one_of(
        *(shaped_like(patterns.standalone_source(d)) for d in patterns.all_detectors() if not d.lower),
        *(shaped_like(d.source).flatmap(_mixed_case) for d in patterns.all_detectors() if d.lower),
    ),
).map("".join)
"""Strings shaped like every built-in detector's expression (key=value ones in mixed case)."""

PII = st.one_of(cards(), ssns(), phones(), emails(), secrets(), SHAPES)
SEPARATORS = st.sampled_from(
    [
        "",
        " ",
        "\n",
        ", ",
        "\\n",
        "\\u00e9",
        "\\u0041",
        "é",
        "(",
        ":",
        "=",
        '"',
        "_",
        "x",
        "0",
        "+",
        "1.",
        "-",
        "B",
    ]
)


@st.composite
def texts(draw: Any) -> str:
    """A string of PII, look-alikes, words, noise and unicode, glued with separators, maybe as JSON."""
    parts = draw(st.lists(st.one_of(PII, NOISE, WORDS), max_size=6))
    out = ""
    for p in parts:
        out += draw(SEPARATORS) + p
    if draw(st.integers(0, 5)) == 0:
        out = json.dumps({"role": "user", "content": out}, ensure_ascii=draw(st.booleans()))
    return out


# ---------------------------------------------------------------- requests
SECRET_KEYS = [
    "password",
    "db.password",
    "http.request.header.authorization",
    "X-Api-Key",
    "token",
    "Cookie",
    " secret ",
    "api-key",
    "to\u212aen",
    "AUTHORIZATION",
]
PLAIN_KEYS = [
    "gen_ai.prompt",
    "input.value",
    "llm.token_count.prompt",
    "gen_ai.usage.input_tokens",
    "user.note",
    "enduser.email",
    "internal.note",
    "msg",
    "",
    "service.name",
    "llm.input_messages.0.message.content",
]
KEYS = st.one_of(st.sampled_from(SECRET_KEYS + PLAIN_KEYS), st.text(alphabet="abcTOKEN._-:/", max_size=12))


def any_values(depth: int = 2) -> st.SearchStrategy[AnyValue]:
    scalar = st.one_of(
        texts().map(lambda s: AnyValue(string_value=s)),
        st.integers(-(2**40), 2**40).map(lambda i: AnyValue(int_value=i)),
        st.booleans().map(lambda b: AnyValue(bool_value=b)),
        st.floats(allow_nan=False).map(lambda f: AnyValue(double_value=f)),
        texts().map(lambda s: AnyValue(bytes_value=s.encode())),
        st.just(AnyValue()),
    )
    if depth == 0:
        return scalar

    def array(items: list[AnyValue]) -> AnyValue:
        v = AnyValue()
        v.array_value.values.extend(items)
        return v

    def kvlist(items: list[KeyValue]) -> AnyValue:
        v = AnyValue()
        v.kvlist_value.values.extend(items)
        return v

    inner = any_values(depth - 1)
    return st.one_of(
        scalar,
        scalar,
        st.lists(inner, max_size=3).map(array),
        st.lists(key_values(inner), max_size=3).map(kvlist),
    )


def key_values(values: st.SearchStrategy[AnyValue] | None = None) -> st.SearchStrategy[KeyValue]:
    def make(key: str, value: AnyValue | None) -> KeyValue:
        kv = KeyValue(key=key)
        if value is not None:
            kv.value.CopyFrom(value)
        return kv

    return st.builds(make, KEYS, st.one_of(st.none(), values if values is not None else any_values()))


ATTRS = st.lists(key_values(), max_size=4)


def _fill(attrs: Any, kvs: list[KeyValue]) -> None:
    attrs.extend(kvs)


@st.composite
def trace_requests(draw: Any) -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rs = req.resource_spans.add()
        _fill(rs.resource.attributes, draw(ATTRS))
        for _ in range(draw(st.integers(0, 2))):
            ss = rs.scope_spans.add()
            ss.scope.name = draw(texts())
            _fill(ss.scope.attributes, draw(ATTRS))
            for i in range(draw(st.integers(0, 3))):
                sp = ss.spans.add(name=draw(texts()), trace_id=bytes(range(16)), span_id=bytes([1 + i] * 8))
                _fill(sp.attributes, draw(ATTRS))
                for _ in range(draw(st.integers(0, 2))):
                    ev = sp.events.add(name=draw(texts()))
                    _fill(ev.attributes, draw(ATTRS))
                for _ in range(draw(st.integers(0, 1))):
                    ln = sp.links.add(trace_id=bytes(16), span_id=bytes(8), trace_state=draw(texts()))
                    _fill(ln.attributes, draw(ATTRS))
                if draw(st.booleans()):
                    sp.status.code = 2
                    sp.status.message = draw(texts())
    return req


@st.composite
def log_requests(draw: Any) -> ExportLogsServiceRequest:
    req = ExportLogsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rl = req.resource_logs.add()
        _fill(rl.resource.attributes, draw(ATTRS))
        for _ in range(draw(st.integers(0, 2))):
            sl = rl.scope_logs.add()
            _fill(sl.scope.attributes, draw(ATTRS))
            for _ in range(draw(st.integers(0, 3))):
                lr = sl.log_records.add(severity_text=draw(texts()), event_name=draw(texts()))
                if draw(st.booleans()):
                    lr.body.CopyFrom(draw(any_values()))
                _fill(lr.attributes, draw(ATTRS))
    return req


@st.composite
def metric_requests(draw: Any) -> ExportMetricsServiceRequest:
    req = ExportMetricsServiceRequest()
    for _ in range(draw(st.integers(0, 2))):
        rm = req.resource_metrics.add()
        _fill(rm.resource.attributes, draw(ATTRS))
        sm = rm.scope_metrics.add()
        _fill(sm.scope.attributes, draw(ATTRS))
        for _ in range(draw(st.integers(0, 3))):
            m = sm.metrics.add(name=draw(texts()), description=draw(texts()))
            _fill(m.metadata, draw(ATTRS))
            kind = draw(
                st.sampled_from(["gauge", "sum", "histogram", "exponential_histogram", "summary", None])
            )
            if kind is None:
                continue
            for _ in range(draw(st.integers(1, 2))):
                dp = getattr(m, kind).data_points.add()
                _fill(dp.attributes, draw(ATTRS))
                if kind != "summary" and draw(st.booleans()):
                    _fill(dp.exemplars.add().filtered_attributes, draw(ATTRS))
    return req


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    """Redact configs whose custom patterns the prefilter can reason about.

    Half are the defaults plus at most one (?i) pattern: broad settings (a short max_value_length,
    a pattern like [0-9]{4}) flag most strings and would leave the detectors' rules little to prove.
    """
    if draw(st.booleans()):
        return {
            "mask": dict.fromkeys(("email", "credit_card", "ssn", "phone", "api_key"), True),
            "patterns": draw(st.sampled_from([[], [{"name": "ticket", "regex": r"(?i)\bticket-\d+"}]])),
            "max_value_length": 1 << 20,
        }
    mask = {c: draw(st.booleans()) for c in ("email", "credit_card", "ssn", "phone", "api_key")}
    patterns = draw(
        st.lists(
            st.sampled_from(
                [
                    {"name": "employee_id", "regex": r"\bEMP-\d{6}\b"},
                    {"name": "acme", "regex": r"(?i)acme-[0-9]+"},
                    {"name": "ticket", "regex": r"(?i)\bticket-\d+"},
                    {"name": "order", "regex": r"order|ticket"},
                    {"name": "digits", "regex": r"[0-9]{4}"},
                    {"name": "accent", "regex": "é+"},
                    {"name": "at", "regex": r"[a-z]+@"},
                ]
            ),
            max_size=2,
            unique_by=lambda p: p["name"],
        )
    )
    return {
        "mask": mask,
        "patterns": patterns,
        "allow_keys": draw(st.sampled_from([[], ["enduser.email"], ["user.*", "msg"], ["password"]])),
        "drop_keys": draw(st.sampled_from([[], ["internal.note"], ["*.note", "msg"], ["*"]])),
        "max_value_length": draw(st.sampled_from([0, 12, 40, 1 << 20])),
        "summary": draw(st.booleans()),
        "replacement": draw(st.sampled_from(["[REDACTED:{type}]", "***", "<{type}>"])),
    }
