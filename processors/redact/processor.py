r"""`redact` processor: mask personal data and secrets before anything leaves the gateway.

What it does, by signal
-----------------------
traces
    Every string value of span attributes, span event attributes (e.g. the
    `gen_ai.content.prompt` / `gen_ai.content.completion` events with
    `gen_ai.prompt` / `gen_ai.completion`, `exception.message`), span link
    attributes and the status message is scanned, including strings nested in
    array and kvlist values. That covers the LLM content attributes of the
    GenAI, OpenLLMetry/Traceloop and OpenInference conventions
    (`gen_ai.prompt.{i}.content`, `gen_ai.input.messages` JSON, `input.value`,
    `llm.input_messages.{i}.message.content`, `traceloop.entity.input`, …).
    Span and event *names* are not scanned: they are low-cardinality operation
    names by convention, and rewriting them would break grouping downstream.
    Bytes values are left as they are (binary, not text).
logs
    The body (a string, or the kvlist/array bodies of GenAI log events such as
    `gen_ai.user.message`) and the attributes, the same way.
metrics
    Values are not scanned (they are numbers; attribute values are dimensions).
    Only attributes whose key names a secret are dropped, on data points and
    exemplars.
all signals
    Resource and scope attributes: attributes whose key names a secret are
    dropped; values are not scanned.

Keys naming a secret (`api_key`, `password`, `authorization`, `token`, `cookie`,
`x-api-key`, …, plus `drop_keys`) are matched case-insensitively, `-` and `_`
alike, against the whole key or its last segment (after `.`, `/` or `:`):
`http.request.header.authorization` and `db.password` are dropped,
`gen_ai.usage.input_tokens`, `llm.token_count.prompt` and
`llm.usage.total_tokens` are not (their last segment is not `token`). Nested
kvlist entries follow the same rule. `allow_keys` (exact keys or `*` globs)
are never touched, not even dropped.

What is masked in text, and how, is in `patterns.py`. A masked value reads
`[REDACTED:email]` (the `replacement` template, with `{type}`). With
`summary: true` a span or log record that had anything masked or dropped gets
`sentinel.redact.count` (int) and `sentinel.redact.types` (sorted,
comma-separated). Every replacement, dropped attribute and truncation counts in
`llm_sentinel_redactions_total{type}`.

`max_value_length` bounds the work per value: a longer string is cut to that
many characters before it is scanned (type `truncated`), so no unscanned text
ever leaves the gateway; 0 disables the cut.

Config
------
```yaml
processors:
  redact:
    mask: {email: true, credit_card: true, ssn: true, phone: true, api_key: true}
    patterns:                       # extra patterns, masked as [REDACTED:<name>]
      - {name: employee_id, regex: '\bEMP-\d{6}\b'}
    allow_keys: [enduser.email]     # never touched (exact keys or * globs, at any nesting level)
    drop_keys: [enduser.id, "*.internal_*"]   # dropped like the built-in secret keys
    replacement: "[REDACTED:{type}]"
    summary: true
    max_value_length: 1048576       # characters; 0 = no limit
    fast_path: true                 # false: always the reference walk (see below)
```
Custom patterns run after the built-in detectors, each in its own pass, with
no prefilter; a regex that does not compile, or matches the empty string, is a
config error naming the pattern.

Placement
---------
The processor changes the OTLP request *in place* (then marks the batch
modified, so cached wire bytes are not reused). A receiver that feeds several
pipelines gives each pipeline its own copy (see `gateway.pipeline.FanOut`), so
a pipeline without `redact` (say a local archive) keeps the original while
another masks. Put `redact` first in the processor list of every pipeline that
leaves the gateway: data is then masked before any other processor or exporter
looks at it.

Fast path
---------
A batch received as protobuf keeps its wire bytes (`batch.wire`). A numba walk
over them (`wire_scan`) flags the items redaction could change, from exact key
verdicts and necessary conditions of every enabled detector (`conditions`); a
batch with nothing flagged is passed on untouched (request not even parsed),
otherwise the reference walk above runs on the flagged items only (of a span whose
hits are all in span, event or link attributes, only on those attributes: the
others provably stay as they are). The result is the same as the reference's,
byte for byte (the tests hold it to that). Custom patterns from which no
necessary literal condition can be derived (say `\d{4}`), batches without wire
bytes (changed by an earlier processor, or OTLP/JSON the receiver did not
transcode) and bytes the walk does not expect take the reference path; so does
the time until the kernels are compiled or loaded (a thread started with the
processor does it; `sentinel warm-up` fills the cache).

Work is synchronous on the event loop; on any unexpected error the batch is not
passed on (fail closed).
"""

from __future__ import annotations

import fnmatch
import re
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import Counter
from pydantic import Field, field_validator, model_validator

from gateway.batch import Batch, LogBatch, MetricBatch, Signal, SpanBatch
from gateway.component import ComponentConfig, ComponentContext, Processor
from gateway.telemetry import SelfTelemetry
from processors.redact import conditions, wire_scan
from processors.redact.patterns import (
    BUILTIN_TYPES,
    CATEGORIES,
    SECRET_KEY,
    TRUNCATED,
    CustomPattern,
    Scanner,
)

COUNT_ATTR = "sentinel.redact.count"
TYPES_ATTR = "sentinel.redact.types"
METRIC_NAME = "llm_sentinel_redactions_total"

DEFAULT_SECRET_KEYS = (
    "api_key",
    "apikey",
    "password",
    "passwd",
    "passphrase",
    "secret",
    "secret_key",
    "client_secret",
    "private_key",
    "authorization",
    "proxy_authorization",
    "auth_token",
    "access_token",
    "refresh_token",
    "id_token",
    "session_token",
    "token",
    "cookie",
    "set_cookie",
    "x_api_key",
    "x_auth_token",
    "aws_secret_access_key",
)
"""Normalized (lower case, `-` → `_`) keys, or last key segments, whose attributes are dropped."""


# ---------------------------------------------------------------- config
class MaskConfig(ComponentConfig):
    """Which built-in detectors run. `api_key` covers provider keys, JWTs and credentials in text."""

    email: bool = True
    credit_card: bool = True
    ssn: bool = True
    phone: bool = True
    api_key: bool = True


_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")


class PatternConfig(ComponentConfig):
    """An extra pattern: every match is replaced, reported as type `name`."""

    name: str
    regex: str

    @field_validator("name")
    @classmethod
    def _name_ok(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(
                f"pattern name {v!r} must be lowercase letters, digits and _, starting with a letter"
            )
        if v in BUILTIN_TYPES:
            raise ValueError(f"pattern name {v!r} is a built-in type; choose another name")
        return v

    @model_validator(mode="after")
    def _regex_ok(self) -> PatternConfig:
        try:
            rx = re.compile(self.regex)
        except re.error as e:
            raise ValueError(f"pattern {self.name!r}: invalid regex {self.regex!r}: {e}") from None
        if rx.fullmatch("") is not None:
            raise ValueError(f"pattern {self.name!r}: regex {self.regex!r} matches the empty string")
        return self


class RedactConfig(ComponentConfig):
    mask: MaskConfig = MaskConfig()
    patterns: list[PatternConfig] = Field(default_factory=list)
    allow_keys: list[str] = Field(default_factory=list)
    drop_keys: list[str] = Field(default_factory=list)
    replacement: str = "[REDACTED:{type}]"
    summary: bool = True
    max_value_length: int = Field(default=1 << 20, ge=0)
    fast_path: bool = Field(
        default=True,
        description="Prefilter protobuf input on its wire bytes and skip items nothing can match; "
        "false forces the reference walk over every item (same output, more CPU).",
    )

    @field_validator("replacement")
    @classmethod
    def _replacement_ok(cls, v: str) -> str:
        try:
            v.format(type="x")
        except (KeyError, IndexError, ValueError) as e:
            raise ValueError(
                f"invalid replacement {v!r}: only the placeholder {{type}} is allowed ({e!s})"
            ) from None
        return v

    @field_validator("allow_keys", "drop_keys")
    @classmethod
    def _keys_ok(cls, v: list[str]) -> list[str]:
        for k in v:
            if not k.strip():
                raise ValueError("keys must not be empty")
        return v

    @model_validator(mode="after")
    def _unique_patterns(self) -> RedactConfig:
        seen: set[str] = set()
        for p in self.patterns:
            if p.name in seen:
                raise ValueError(f"pattern name {p.name!r} is used twice")
            seen.add(p.name)
        return self


# ---------------------------------------------------------------- self-metric
def redactions_counter(telemetry: SelfTelemetry) -> Counter:
    """The runtime's `llm_sentinel_redactions_total{type}`, shared by every redact instance."""
    return telemetry.singleton(
        "redactions",
        lambda: Counter(
            METRIC_NAME,
            "Values masked, attributes dropped and values truncated by the redact processor, by type.",
            ["type"],
            registry=telemetry.registry,
        ),
    )


# ---------------------------------------------------------------- key rules
_SCAN, _ALLOW, _DROP = 0, 1, 2
_SEGMENT_RE = re.compile(r"[./:]")


def normalize_key(key: str) -> str:
    return key.strip().lower().replace("-", "_")


class KeyRules:
    """Decides, per attribute key, whether to scan its value, leave it alone or drop it."""

    _MAX_CACHE = 16384

    def __init__(self, allow: Iterable[str] = (), drop: Iterable[str] = ()) -> None:
        allow = list(allow)
        self._allow_exact = {k for k in allow if not _is_glob(k)}
        self._allow_globs = [k for k in allow if _is_glob(k)]
        drop_n = [normalize_key(k) for k in drop]
        self._secret = frozenset(DEFAULT_SECRET_KEYS) | {k for k in drop_n if not _is_glob(k)}
        self._drop_globs = [k for k in drop_n if _is_glob(k)]
        self._cache: dict[str, int] = {}

    def action(self, key: str) -> int:
        act = self._cache.get(key)
        if act is None:
            if len(self._cache) >= self._MAX_CACHE:
                self._cache.clear()
            act = self._cache[key] = self._classify(key)
        return act

    def is_secret(self, key: str) -> bool:
        return self.action(key) == _DROP

    def _classify(self, key: str) -> int:
        if key in self._allow_exact or any(fnmatch.fnmatchcase(key, g) for g in self._allow_globs):
            return _ALLOW
        norm = normalize_key(key)
        last = _SEGMENT_RE.split(norm)[-1]
        if norm in self._secret or last in self._secret:
            return _DROP
        if any(fnmatch.fnmatchcase(norm, g) for g in self._drop_globs):
            return _DROP
        return _SCAN


def _is_glob(key: str) -> bool:
    return any(ch in key for ch in "*?[")


# ---------------------------------------------------------------- processor
Tally = dict[str, int]


class RedactProcessor(Processor):
    def __init__(self, ctx: ComponentContext, config: RedactConfig) -> None:
        super().__init__(ctx, config)
        cats = [c for c in CATEGORIES if getattr(config.mask, c)]
        custom = [CustomPattern(p.name, re.compile(p.regex)) for p in config.patterns]
        self.scanner = Scanner(cats, config.replacement, custom)
        self.keys = KeyRules(config.allow_keys, config.drop_keys)
        self.max_len = config.max_value_length
        self.summary = config.summary
        self._counter = redactions_counter(ctx.telemetry)
        self._children: dict[str, Any] = {}
        self.wire: wire_scan.WireScanner | None = None
        if config.fast_path:
            tables = conditions.build(cats, [p.regex for p in custom], config.max_value_length)
            if tables is not None:
                self.wire = wire_scan.WireScanner(tables, self.keys.action)
            else:
                self.logger.warning(
                    "redact fast path off: no necessary condition can be derived for a custom pattern "
                    "(or patterns.py changed since conditions.py was derived); every batch takes the "
                    "reference walk"
                )
        self._warm: threading.Event | None = None  # set once the kernels are compiled or loaded

    async def start(self) -> None:
        if self.wire is not None and self._warm is None:
            self._warm = threading.Event()
            threading.Thread(target=self._warm_up, name="redact-warm-up", daemon=True).start()

    def _warm_up(self) -> None:
        assert self._warm is not None
        try:
            wire_scan.warm_up()
        finally:
            self._warm.set()

    async def consume(self, batch: Batch) -> None:
        totals: Tally = {}
        plan = self._plan(batch)
        if plan is not None and plan.clean:
            changed = False
        elif isinstance(batch, SpanBatch):
            changed = self._spans(batch, totals, plan)
        elif isinstance(batch, LogBatch):
            changed = self._logs(batch, totals, plan)
        elif isinstance(batch, MetricBatch):
            changed = self._metrics(batch, totals, plan)
        else:  # pragma: no cover - the three batch types are all there is
            changed = False
        if changed:
            batch.mark_modified()
            self._count(totals)
        await self.next_consumer.consume(batch)

    def _plan(self, batch: Batch) -> wire_scan.Plan | None:
        """What the wire prefilter leaves to the reference; None: all of it."""
        if self.wire is None or batch.wire is None:
            return None
        if self._warm is None:  # never started (used directly): load the kernels now
            wire_scan.warm_up()
        elif not self._warm.is_set():
            return None  # still compiling: the reference path meanwhile
        return self.wire.plan(batch)

    # ------------------------------------------------------------ per signal
    def _items(self, batch: Batch, plan: wire_scan.Plan | None) -> Iterator[Any]:
        """Every item, or only those the prefilter flagged."""
        if plan is None:
            yield from batch.iter_items()
            return
        c, lay, rows = batch.columns, batch.layout, plan.rows
        resources = batch.resources()
        res_idx, scope_idx, item_idx = (c[k][rows].tolist() for k in ("res_idx", "scope_idx", "item_idx"))
        for r, s, i in zip(res_idx, scope_idx, item_idx, strict=True):
            yield getattr(getattr(resources[r], lay.scope_field)[s], lay.item_field)[i]

    def _spans(self, batch: SpanBatch, totals: Tally, plan: wire_scan.Plan | None = None) -> bool:
        changed = self._resources(batch, totals) if plan is None or plan.resources else False
        parts = plan.parts if plan is not None else {}
        rows = plan.rows.tolist() if parts and plan is not None else []
        for k, span in enumerate(self._items(batch, plan)):
            t: Tally = {}
            locs = parts.get(rows[k]) if parts else None
            if locs is None or not self._span_parts(span, locs, t):
                self._attrs(span.attributes, t)
                for ev in span.events:
                    self._attrs(ev.attributes, t)
                for link in span.links:
                    self._attrs(link.attributes, t)
                if span.HasField("status") and span.status.message:
                    new = self._text(span.status.message, t)
                    if new is not None:
                        span.status.message = new
            if t:
                changed = True
                self._finish_item(span.attributes, t, totals)
        return changed

    def _span_parts(self, span: Any, locs: list[int], t: Tally) -> bool:
        """The reference on the attributes the prefilter listed (the others provably stay as they
        are); False, before changing anything, when a listed place is not in the span."""
        places: dict[tuple[int, int], list[int]] = {}
        for loc in locs:
            kind, k, idx = wire_scan.where(loc)
            places.setdefault((kind, k), []).append(idx)
        todo = []
        for (kind, k), idxs in places.items():
            if kind == 0:
                attrs = span.attributes
            else:
                owners = span.events if kind == 1 else span.links
                if k >= len(owners):
                    return False
                attrs = owners[k].attributes
            if max(idxs) >= len(attrs):
                return False
            todo.append((attrs, sorted(set(idxs))))
        for attrs, idxs in todo:
            self._attrs(attrs, t, idxs)
        return True

    def _logs(self, batch: LogBatch, totals: Tally, plan: wire_scan.Plan | None = None) -> bool:
        changed = self._resources(batch, totals) if plan is None or plan.resources else False
        for rec in self._items(batch, plan):
            t: Tally = {}
            if rec.HasField("body"):
                self._value(rec.body, t)
            self._attrs(rec.attributes, t)
            if t:
                changed = True
                self._finish_item(rec.attributes, t, totals)
        return changed

    def _metrics(self, batch: MetricBatch, totals: Tally, plan: wire_scan.Plan | None = None) -> bool:
        t: Tally = {}
        if plan is None or plan.resources:
            self._resources(batch, t)
        for metric in self._items(batch, plan):
            kind = metric.WhichOneof("data")
            if kind is None:
                continue
            for dp in getattr(metric, kind).data_points:
                self._drop_secret_keys(dp.attributes, t)
                if kind != "summary":
                    for ex in dp.exemplars:
                        self._drop_secret_keys(ex.filtered_attributes, t)
        _merge(totals, t)
        return bool(t)

    def _resources(self, batch: Batch, totals: Tally) -> bool:
        """Drop secret-keyed resource and scope attributes (values there are not scanned)."""
        t: Tally = {}
        lay = batch.layout
        for res in batch.resources():
            self._drop_secret_keys(res.resource.attributes, t)
            for scope in getattr(res, lay.scope_field):
                self._drop_secret_keys(scope.scope.attributes, t)
        _merge(totals, t)
        return bool(t)

    # ------------------------------------------------------------ values
    def _attrs(self, attrs: Any, t: Tally, only: list[int] | None = None) -> None:
        """Scan the values, drop the secret-keyed entries; all of them, or the indexes `only`."""
        drop: list[int] | None = None
        action = self.keys.action
        for i, kv in enumerate(attrs) if only is None else ((i, attrs[i]) for i in only):
            act = action(kv.key)
            if act == _SCAN:
                self._value(kv.value, t)
            elif act == _DROP:
                if drop is None:
                    drop = []
                drop.append(i)
        if drop:
            for i in reversed(drop):
                del attrs[i]
            t[SECRET_KEY] = t.get(SECRET_KEY, 0) + len(drop)

    def _value(self, v: Any, t: Tally) -> None:
        kind = v.WhichOneof("value")
        if kind == "string_value":
            new = self._text(v.string_value, t)
            if new is not None:
                v.string_value = new
        elif kind == "kvlist_value":
            self._attrs(v.kvlist_value.values, t)
        elif kind == "array_value":
            for item in v.array_value.values:
                self._value(item, t)

    def _text(self, s: str, t: Tally) -> str | None:
        """The masked text, or None when `s` stays as it is."""
        cut = 0 < self.max_len < len(s)
        if cut:
            s = s[: self.max_len]
            t[TRUNCATED] = t.get(TRUNCATED, 0) + 1
        res = self.scanner.scan(s)
        if res is None:
            return s if cut else None
        new, kinds = res
        for k in kinds:
            t[k] = t.get(k, 0) + 1
        return new

    def _drop_secret_keys(self, attrs: Any, t: Tally) -> None:
        """Key rules only: drop secret-keyed entries, recurse into kvlists, never scan text."""
        drop: list[int] | None = None
        action = self.keys.action
        for i, kv in enumerate(attrs):
            act = action(kv.key)
            if act == _DROP:
                if drop is None:
                    drop = []
                drop.append(i)
            elif act == _SCAN and kv.value.WhichOneof("value") == "kvlist_value":
                self._drop_secret_keys(kv.value.kvlist_value.values, t)
        if drop:
            for i in reversed(drop):
                del attrs[i]
            t[SECRET_KEY] = t.get(SECRET_KEY, 0) + len(drop)

    # ------------------------------------------------------------ bookkeeping
    def _finish_item(self, attrs: Any, t: Tally, totals: Tally) -> None:
        _merge(totals, t)
        if self.summary:
            _summarize(attrs, t)

    def _count(self, totals: Tally) -> None:
        for kind, n in totals.items():
            child = self._children.get(kind)
            if child is None:
                child = self._children[kind] = self._counter.labels(type=kind)
            child.inc(n)


def _merge(into: Tally, t: Tally) -> None:
    for k, n in t.items():
        into[k] = into.get(k, 0) + n


def _summarize(attrs: Any, t: Tally) -> None:
    """Set (or, after an earlier redact, add to) the summary attributes of one item."""
    count = sum(t.values())
    types = set(t)
    count_kv = types_kv = None
    for kv in attrs:
        if kv.key == COUNT_ATTR:
            count_kv = kv
        elif kv.key == TYPES_ATTR:
            types_kv = kv
    if count_kv is None:
        count_kv = attrs.add(key=COUNT_ATTR)
    elif count_kv.value.WhichOneof("value") == "int_value":
        count += count_kv.value.int_value
    if types_kv is None:
        types_kv = attrs.add(key=TYPES_ATTR)
    elif types_kv.value.WhichOneof("value") == "string_value":
        types.update(x for x in types_kv.value.string_value.split(",") if x)
    count_kv.value.int_value = count
    types_kv.value.string_value = ",".join(sorted(types))


SIGNALS = frozenset({Signal.TRACES, Signal.LOGS, Signal.METRICS})
