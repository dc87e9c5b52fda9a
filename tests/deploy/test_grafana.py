"""The Grafana dashboard only queries metrics a running gateway really exposes.

A small PromQL tokenizer pulls every metric name (and every label name) out of the dashboard's
queries and template variables. A real gateway (OTLP receiver, memory_limiter, redact, genai,
batch, the detect connector, file exporters, one with a persistent queue) is fed the recorded LLM
spans of every instrumentation family plus a few hand-made spans that raise a `model_change` alert
and trip a sanity rule; every metric name of the dashboard must then have samples on /metrics,
with the labels the queries filter and group by. When the test servers are available, the same
traffic goes to a real Prometheus by remote write and every query of the dashboard must evaluate
there without error and return data.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO_ROOT, RunningGateway, free_port, wait_until

GRAFANA = REPO_ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "llm-sentinel.json"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "genai"
# Labels Prometheus adds itself (scrape target / remote-write job and instance).
TARGET_LABELS = {"job", "instance"}
GRAFANA_BUILTINS = {"__range", "__range_s", "__range_ms", "__rate_interval", "__interval", "__interval_ms"}


# ---------------------------------------------------------------- PromQL tokenizer
@dataclass(frozen=True)
class Token:
    kind: str  # ident | number | string | var | op | matchers | range
    text: str


_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_DURATION_UNIT = r"(?:ms|[smhdwy])"
_NUMBER = re.compile(
    rf"(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)(?:{_DURATION_UNIT}(?:\d+{_DURATION_UNIT})*)?"
)
_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)|\[\[\w+\]\]")
_OPERATOR = re.compile(r"==|!=|>=|<=|=~|!~|[-+*/%^<>=(),@]")
# Words followed by a parenthesised list of label names (not a function call).
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
# Binary operators, modifiers and literals spelled as words.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "atan2", "inf", "nan"}
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)")


def _skip_string(text: str, i: int) -> int:
    quote = text[i]
    j = i + 1
    while j < len(text):
        if text[j] == "\\" and quote != "`":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    raise ValueError(f"unterminated string in {text!r}")


def _closing(text: str, i: int, open_: str, close: str) -> int:
    """Index just past the bracket that closes text[i], skipping string literals."""
    depth = 0
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            i = _skip_string(text, i)
            continue
        if c == open_:
            depth += 1
        elif c == close:
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise ValueError(f"unbalanced {open_!r} in {text!r}")


def promql_tokens(expr: str) -> list[Token]:
    out: list[Token] = []
    i = 0
    while i < len(expr):
        c = expr[i]
        if c.isspace():
            i += 1
        elif c == "#":  # comment to the end of the line
            end = expr.find("\n", i)
            i = len(expr) if end < 0 else end
        elif c in "\"'`":
            j = _skip_string(expr, i)
            out.append(Token("string", expr[i:j]))
            i = j
        elif c == "{":
            j = _closing(expr, i, "{", "}")
            out.append(Token("matchers", expr[i:j]))
            i = j
        elif (m := _VARIABLE.match(expr, i)) is not None:
            out.append(Token("var", m.group()))
            i = m.end()
        elif c == "[":
            j = _closing(expr, i, "[", "]")
            out.append(Token("range", expr[i:j]))
            i = j
        elif (c.isdigit() or (c == "." and expr[i + 1 : i + 2].isdigit())) and (m := _NUMBER.match(expr, i)):
            out.append(Token("number", m.group()))
            i = m.end()
        elif (m := _IDENT.match(expr, i)) is not None:
            out.append(Token("ident", m.group()))
            i = m.end()
        elif (m := _OPERATOR.match(expr, i)) is not None:
            out.append(Token("op", m.group()))
            i = m.end()
        else:
            raise ValueError(f"unexpected {c!r} at offset {i} of {expr!r}")
    return out


def _after_parens(toks: list[Token], j: int) -> int:
    """toks[j] is "(": the index after its matching ")"."""
    depth = 0
    for k in range(j, len(toks)):
        if toks[k].text == "(":
            depth += 1
        elif toks[k].text == ")":
            depth -= 1
            if depth == 0:
                return k + 1
    raise ValueError("unbalanced parentheses")


def _strip_strings(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        if text[i] in "\"'`":
            j = _skip_string(text, i)
            out.append('""')
            i = j
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


@dataclass
class Parsed:
    metrics: set[str]
    selectors: list[tuple[str, set[str]]]  # (metric, label names its matchers use)
    grouping: set[str]  # label names in by/without/on/ignoring/group_* lists


def parse_promql(expr: str) -> Parsed:
    toks = promql_tokens(expr)
    metrics: set[str] = set()
    selectors: list[tuple[str, set[str]]] = []
    grouping: set[str] = set()
    i = 0
    while i < len(toks):
        tok = toks[i]
        nxt = toks[i + 1] if i + 1 < len(toks) else None
        if tok.kind == "ident":
            word = tok.text.lower()
            if word in _GROUPING:
                if nxt is not None and nxt.text == "(":
                    end = _after_parens(toks, i + 1)
                    grouping |= {t.text for t in toks[i + 2 : end - 1] if t.kind == "ident"}
                    i = end
                else:
                    i += 1
                continue
            if word in _KEYWORDS or (nxt is not None and nxt.text in ("(", "by", "without")):
                i += 1  # an operator, a function, or an aggregation (`sum by (x) (...)`)
                continue
            labels: set[str] = set()
            if nxt is not None and nxt.kind == "matchers":
                labels = {m.group(1) for m in _MATCHER.finditer(_strip_strings(nxt.text))}
            metrics.add(tok.text)
            selectors.append((tok.text, labels))
        elif tok.kind == "matchers" and (i == 0 or toks[i - 1].kind != "ident"):
            # a selector without a leading name: {__name__="metric", ...}
            name = re.search(r'__name__\s*=\s*"([^"]+)"', tok.text)
            if name:
                labels = {m.group(1) for m in _MATCHER.finditer(_strip_strings(tok.text))} - {"__name__"}
                metrics.add(name.group(1))
                selectors.append((name.group(1), labels))
        i += 1
    return Parsed(metrics, selectors, grouping)


def metric_names(expr: str) -> set[str]:
    return parse_promql(expr).metrics


def variable_query(query: str) -> tuple[str | None, str | None]:
    """A Grafana Prometheus variable query as (PromQL selector or expression, label)."""
    q = query.strip()
    m = re.fullmatch(r"label_values\((.*)\)", q, re.S)
    if m:
        args = _split_args(m.group(1))
        return (args[0], args[1]) if len(args) == 2 else (None, args[0])
    m = re.fullmatch(r"query_result\((.*)\)", q, re.S)
    if m:
        return m.group(1), None
    m = re.fullmatch(r"metrics\((.*)\)", q, re.S)
    if m:
        return None, None
    raise ValueError(f"unsupported variable query {query!r}")


def _split_args(text: str) -> list[str]:
    args, depth, start, i = [], 0, 0, 0
    while i < len(text):
        c = text[i]
        if c in "\"'`":
            i = _skip_string(text, i)
            continue
        if c in "({[":
            depth += 1
        elif c in ")}]":
            depth -= 1
        elif c == "," and depth == 0:
            args.append(text[start:i].strip())
            start = i + 1
        i += 1
    args.append(text[start:].strip())
    return args


@pytest.mark.parametrize(
    ("expr", "metrics", "grouping"),
    [
        ("up", {"up"}, set()),
        ('rate(http_requests_total{job="a", le="1"}[5m])', {"http_requests_total"}, set()),
        (
            'histogram_quantile(0.99, sum by (le, model) (rate(dur_bucket{m=~"$m"}[$__rate_interval])))',
            {"dur_bucket"},
            {"le", "model"},
        ),
        ("sum(rate(a_total[1m])) by (x) / ignoring(y) group_left(z) b", {"a_total", "b"}, {"x", "y", "z"}),
        ("a - (a offset 1h30m or a * 0) > bool 1e3", {"a"}, set()),
        ('count_values("v", build_info) + on() vector(0)', {"build_info"}, set()),
        ('{__name__="named", x="}"} and without_suffix', {"named", "without_suffix"}, set()),
        ('label_replace(m offset $__range, "dst", "$1", "src", "(.*)")', {"m"}, set()),
    ],
)
def test_promql_tokenizer(expr, metrics, grouping):
    parsed = parse_promql(expr)
    assert parsed.metrics == metrics
    assert parsed.grouping == grouping


def test_tokenizer_reads_matcher_labels_and_variable_queries():
    parsed = parse_promql('sum(x{a="1", b=~"{2}", c!="", d!~"z"})')
    assert parsed.selectors == [("x", {"a", "b", "c", "d"})]
    assert variable_query('label_values(m{j=~"$j"}, svc)') == ('m{j=~"$j"}', "svc")
    assert variable_query("label_values(job)") == (None, "job")


# ---------------------------------------------------------------- the dashboard
def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def all_panels(dash: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])  # panels of collapsed rows


@dataclass
class Query:
    where: str
    expr: str
    legend: str = ""
    label: str | None = None  # a variable query's label


def dashboard_queries(dash: dict[str, Any]) -> list[Query]:
    out = []
    for p in all_panels(dash):
        for t in p.get("targets", []):
            out.append(
                Query(f"panel {p['title']!r} target {t['refId']}", t["expr"], t.get("legendFormat", ""))
            )
    for v in dash["templating"]["list"]:
        if v["type"] != "query":
            continue
        raw = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
        expr, label = variable_query(raw)
        if expr is not None:
            out.append(Query(f"variable {v['name']}", expr, label=label))
    return out


def test_dashboard_structure():
    dash = load_dashboard()
    assert dash["schemaVersion"] >= 38
    assert dash["title"] and dash["uid"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    ds = variables["datasource"]
    assert (ds["type"], ds["query"]) == ("datasource", "prometheus")
    for name in ("service_name", "gen_ai_request_model"):
        var = variables[name]
        assert var["type"] == "query"
        assert var["datasource"]["uid"] == "${datasource}"
        assert variable_query(var["query"])[1] == name, f"{name} must list the values of label {name}"

    ids: set[int] = set()
    for p in all_panels(dash):
        where = f"panel {p.get('id')} ({p.get('title')!r})"
        assert isinstance(p.get("title"), str) and p["title"].strip(), f"{where}: no title"
        assert p.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, f"{where}: datasource"
        assert isinstance(p.get("id"), int) and p["id"] not in ids, f"{where}: id missing or not unique"
        ids.add(p["id"])
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= 24, f"{where}: gridPos {pos}"
        if p["type"] == "row":
            continue
        assert p.get("description"), f"{where}: no description"
        targets = p.get("targets") or []
        assert targets, f"{where}: no query"
        ref_ids = [t["refId"] for t in targets]
        assert len(set(ref_ids)) == len(ref_ids), f"{where}: duplicate refIds"
        for t in targets:
            assert t.get("datasource") == p["datasource"], f"{where}: target {t['refId']} datasource"
            assert t.get("expr", "").strip(), f"{where}: empty query"

    cells: dict[tuple[int, int], int] = {}  # no two panels share a grid cell
    for p in all_panels(dash):
        pos = p["gridPos"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panels {cells[(x, y)]} and {p['id']} overlap at {(x, y)}"
                cells[(x, y)] = p["id"]

    used = set()
    for q in dashboard_queries(dash):
        for tok in promql_tokens(q.expr):
            if tok.kind in ("var", "range", "matchers"):
                used |= set(re.findall(r"\$\{?(\w+)", tok.text)) | set(re.findall(r"\[\[(\w+)\]\]", tok.text))
    unknown = used - set(variables) - GRAFANA_BUILTINS
    assert not unknown, f"queries use undefined variables: {sorted(unknown)}"


def test_provisioning_examples():
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards.yaml").read_text(encoding="utf-8"))
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources.yaml").read_text(encoding="utf-8"))
    assert sources["apiVersion"] == 1
    assert [d["type"] for d in sources["datasources"]] == ["prometheus"]
    assert sources["datasources"][0]["url"].startswith("http")


# ---------------------------------------------------------------- a real gateway, fed real spans
def gateway_config(ports: dict[str, int], data: Path, remote_write: dict[str, Any] | None = None) -> str:
    exporters: dict[str, Any] = {
        "file/spans": {
            "path": str(data / "spans.jsonl"),
            "sending_queue": {"storage": {"directory": str(data / "queue")}},
        },
        "file/alerts": {"path": str(data / "alerts.jsonl")},
    }
    alert_exporters = ["file/alerts"]
    if remote_write is not None:
        exporters["prometheusremotewrite"] = remote_write
        alert_exporters.append("prometheusremotewrite")
    config = {
        "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{ports['http']}"}}}},
        "processors": {
            "memory_limiter": {"check_interval": "1s", "limit_mib": 16384, "spike_limit_mib": 1024},
            "redact": {},
            "genai": {},
            "batch": {"send_batch_size": 512, "timeout": "20ms"},
        },
        # lateness 0 and one earlier call suffice for a model_change alert
        "connectors": {"detect": {"lateness": "0s", "min_calls_for_model_change": 1}},
        "exporters": exporters,
        "service": {
            "pipelines": {
                "traces": {
                    "receivers": ["otlp"],
                    "processors": ["memory_limiter", "redact", "genai", "batch"],
                    "exporters": ["file/spans", "detect"],
                },
                "anomalies": {"receivers": ["detect"], "exporters": alert_exporters},
            },
            "telemetry": {"admin": {"endpoint": f"127.0.0.1:{ports['admin']}"}},
        },
    }
    return yaml.safe_dump(config)


def _attr(key: str, value: Any) -> dict[str, Any]:
    if isinstance(value, int):
        return {"key": key, "value": {"intValue": str(value)}}
    return {"key": key, "value": {"stringValue": value}}


def handmade_spans(service: str) -> dict[str, Any]:
    """Semconv chat spans: three answered by one model, then one by another (a `model_change`
    alert), and a call lasting 700 s (beyond genai's 600 s sanity rule: an invalid value)."""
    now = time.time_ns()
    spans = []
    calls = [
        ("gpt-4o-mini-2024-07-18", 1.2),
        ("gpt-4o-mini-2024-07-18", 0.9),
        ("gpt-4o-mini-2024-07-18", 1.1),
        ("gpt-4o-2024-08-06", 1.0),
        ("gpt-4o-mini-2024-07-18", 700.0),
    ]
    for i, (response_model, seconds) in enumerate(calls):
        end = now - (len(calls) - i) * 1_000_000_000
        spans.append(
            {
                "traceId": uuid.uuid4().hex,
                "spanId": uuid.uuid4().hex[:16],
                "name": "chat gpt-4o-mini",
                "kind": 3,
                "startTimeUnixNano": str(end - int(seconds * 1e9)),
                "endTimeUnixNano": str(end),
                "attributes": [
                    _attr("gen_ai.operation.name", "chat"),
                    _attr("gen_ai.system", "openai"),
                    _attr("gen_ai.request.model", "gpt-4o-mini"),
                    _attr("gen_ai.response.model", response_model),
                    _attr("gen_ai.usage.input_tokens", 120),
                    _attr("gen_ai.usage.output_tokens", 40),
                ],
            }
        )
    return {
        "resourceSpans": [
            {
                "resource": {"attributes": [_attr("service.name", service)]},
                "scopeSpans": [{"scope": {"name": "dashboard-test"}, "spans": spans}],
            }
        ]
    }


def feed(http_port: int, service: str) -> int:
    """Every recorded traces payload over OTLP/HTTP protobuf, then the hand-made spans as OTLP/JSON."""
    url = f"http://127.0.0.1:{http_port}/v1/traces"
    sent = 0
    for path in sorted(FIXTURES.glob("*/*.traces.binpb")):
        # generous timeout: on a machine without numba's cache, the first batch waits for the compile
        r = requests.post(
            url, data=path.read_bytes(), headers={"Content-Type": "application/x-protobuf"}, timeout=60
        )
        assert r.status_code == 200, (path, r.status_code, r.text)
        sent += 1
    r = requests.post(url, json=handmade_spans(service), timeout=60)
    assert r.status_code == 200, r.text
    return sent


@dataclass
class Exposition:
    samples: dict[str, set[str]]  # sample name -> label names seen
    declared: set[str]  # names on # HELP / # TYPE lines
    text: str


def scrape(admin_port: int) -> Exposition:
    text = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=5).text
    samples: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples.setdefault(s.name, set()).update(s.labels)
    declared = {m.group(1) for m in re.finditer(r"^# (?:HELP|TYPE) (\S+)", text, re.M)}
    return Exposition(samples, declared, text)


def start_fed_gateway(tmp: Path, remote_write: dict[str, Any] | None = None) -> tuple[RunningGateway, int]:
    ports = {"http": free_port(), "admin": free_port()}
    gw = RunningGateway(gateway_config(ports, tmp, remote_write)).start()
    try:
        assert feed(ports["http"], "dashboard-check") >= 40
        # the hand-made spans raise an alert and trip a sanity rule
        wait_until(lambda: "llm_sentinel_anomalies_total" in scrape(ports["admin"]).samples, timeout=30)
        wait_until(lambda: "llm_sentinel_invalid_values_total" in scrape(ports["admin"]).samples, timeout=10)
    except BaseException:
        gw.stop()
        raise
    return gw, ports["admin"]


@pytest.fixture(scope="module")
def exposition(tmp_path_factory) -> Iterator[Exposition]:
    gw, admin = start_fed_gateway(tmp_path_factory.mktemp("grafana"))
    try:
        yield scrape(admin)
    finally:
        gw.stop()


def test_every_dashboard_metric_is_on_the_gateways_metrics(exposition):
    queries = dashboard_queries(load_dashboard())
    used: dict[str, list[str]] = {}
    for q in queries:
        for name in metric_names(q.expr):
            used.setdefault(name, []).append(q.where)
    assert len(used) >= 30, sorted(used)
    missing = {name: where[:2] for name, where in used.items() if name not in exposition.samples}
    undeclared = {name: w for name, w in missing.items() if name not in exposition.declared}
    assert not undeclared, f"metrics the dashboard queries but the gateway does not expose: {undeclared}"
    assert not missing, f"metrics declared on /metrics but without samples after real traffic: {missing}"
    for name in used:  # histograms are queried as _bucket/_sum/_count, counters by their _total name
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert re.search(
            rf"^# TYPE ({re.escape(name)}|{re.escape(family)}) (counter|gauge|histogram)$",
            exposition.text,
            re.M,
        ), name
        if re.search(rf"^# TYPE {re.escape(name)} counter$", exposition.text, re.M):
            assert name.endswith("_total"), name


def test_dashboard_labels_exist_on_the_metrics(exposition):
    problems = []
    for q in dashboard_queries(load_dashboard()):
        parsed = parse_promql(q.expr)
        available = set(TARGET_LABELS)
        for metric, labels in parsed.selectors:
            have = exposition.samples.get(metric, set()) | TARGET_LABELS
            available |= have
            if labels - have:
                problems.append(f"{q.where}: {metric} has no label(s) {sorted(labels - have)}")
        if parsed.grouping - available:
            problems.append(f"{q.where}: groups by unknown label(s) {sorted(parsed.grouping - available)}")
        if q.label is not None and q.label not in available:
            problems.append(f"{q.where}: lists values of unknown label {q.label!r}")
        legend = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", q.legend))
        result_labels = parsed.grouping if re.search(r"\bby\s*\(", q.expr) else available
        if "histogram_quantile" in q.expr:
            result_labels = result_labels - {"le"}
        if legend - result_labels:
            problems.append(f"{q.where}: legend uses {sorted(legend - result_labels)} the result lacks")
    assert not problems, "\n".join(problems)


# ---------------------------------------------------------------- the queries in a real Prometheus
def _substitute(expr: str, job: str) -> str:
    values = {
        "job": job,
        "service_name": ".*",
        "gen_ai_request_model": ".*",
        "__range": "1h",
        "__rate_interval": "1m",
        "__interval": "15s",
    }
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values[m.group(1)], expr)


def _prom(base: str, path: str, params: dict[str, Any]) -> Any:
    r = requests.get(f"{base}{path}", params=params, timeout=10)
    body = r.json()
    if r.status_code != 200 or body.get("status") != "success":
        raise AssertionError(f"{path} {params}: HTTP {r.status_code}: {body.get('error', body)}")
    return body["data"]


def test_every_query_evaluates_in_prometheus(servers, tmp_path):
    job = f"grafana-{uuid.uuid4().hex[:8]}"
    remote_write = {
        "endpoint": f"{servers.prometheus}/api/v1/write",
        "interval": "1s",
        "job": job,
        "include": ["gen_ai_*", "llm_sentinel_*", "otelcol_*"],
    }
    gw, _admin = start_fed_gateway(tmp_path, remote_write)
    base = servers.prometheus
    try:
        # a few snapshots, so that rate() over 5m has at least two samples of every series
        wait_for = f'count_over_time(llm_sentinel_anomalies_total{{job="{job}"}}[5m])'
        wait_until(
            lambda: any(
                float(r["value"][1]) >= 3 for r in _prom(base, "/api/v1/query", {"query": wait_for})["result"]
            ),
            timeout=30,
            interval=0.5,
        )
    finally:
        gw.stop()
    empty, errors = [], []
    for q in dashboard_queries(load_dashboard()):
        if q.label is not None:  # a variable: Grafana asks the label values API
            try:
                values = _prom(base, f"/api/v1/label/{q.label}/values", {"match[]": _substitute(q.expr, job)})
            except AssertionError as exc:
                errors.append(f"{q.where}: {exc}")
                continue
            if not values:
                empty.append(q.where)
            continue
        try:
            data = _prom(base, "/api/v1/query", {"query": _substitute(q.expr, job)})
        except AssertionError as exc:
            errors.append(f"{q.where}: {exc}")
            continue
        if not data["result"]:
            empty.append(f"{q.where}: {q.expr}")
    assert not errors, "\n".join(errors)
    assert not empty, "queries that return nothing:\n" + "\n".join(empty)
    services = _prom(
        base, "/api/v1/label/service_name/values", {"match[]": f'llm_sentinel_requests_total{{job="{job}"}}'}
    )
    assert "dashboard-check" in services
