"""Configuration reference, generated from the typed configs so that it cannot drift from the code.

    python -m gateway.docgen > docs/configuration.md        # regenerate
    python -m gateway.docgen --check docs/configuration.md  # exit 1 when the file is stale

Every registered receiver, processor, exporter and connector `Factory` is walked: its pydantic
config model, recursively through nested models, lists, tuples, maps and optional values, gives
one table row per key with its type, default, constraints (`ge`/`gt`/`le`/`lt`, choices of a
`Literal`) and the field's `description` (or the docstring of a nested model). The `service`
section comes from `gateway.config.model.ServiceSpec` the same way.

Rules that span several keys (model validators, e.g. "set exactly one of ...") cannot be read from
the types; `sentinel validate` reports them.
"""

from __future__ import annotations

import argparse
import enum
import inspect
import math
import re
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gateway.component import Factory, Kind, parse_duration
from gateway.config.model import ServiceSpec
from gateway.registry import get_factory, known_types

REGENERATE = "python -m gateway.docgen > docs/configuration.md"

_KIND_TITLES = {
    Kind.RECEIVER: "Receivers",
    Kind.PROCESSOR: "Processors",
    Kind.EXPORTER: "Exporters",
    Kind.CONNECTOR: "Connectors",
}

# The service models carry no descriptions of their own; these fill the gaps. A key listed here
# that the model no longer has is an error (see `_service_rows`), so the list cannot go stale.
_SERVICE_NOTES = {
    "service.pipelines": "Pipelines by id `<signal>[/name]`; signal `traces`, `metrics`, `logs` "
    "or `anomalies` (fed by a connector such as `detect`).",
    "service.pipelines.<name>.receivers": "Receiver or connector ids feeding the pipeline (at least one).",
    "service.pipelines.<name>.processors": "Processor ids, run in the listed order; each pipeline "
    "gets its own instance of each.",
    "service.pipelines.<name>.exporters": "Exporter or connector ids the pipeline fans out to "
    "(at least one).",
    "service.telemetry.logs.level": "Log level of the gateway (`warn` and `warning` are the same).",
    "service.telemetry.logs.format": "`json`: one JSON object per line; `console`: human-readable.",
    "service.telemetry.admin.endpoint": "Listen address of `/healthz`, `/readyz`, `/metrics` and "
    "`/api/v1/anomalies`.",
    "service.shutdown_timeout": "Bound on draining processors and exporters at shutdown.",
}


# ---------------------------------------------------------------- type analysis
@dataclass
class TypeInfo:
    text: str
    optional: bool = False
    duration: bool = False
    choices: list[str] = field(default_factory=list)
    # nested models documented under this key: (key suffix, model), e.g. ("[]", PatternConfig)
    children: list[tuple[str, type[BaseModel]]] = field(default_factory=list)


def _is_model(tp: Any) -> bool:
    return inspect.isclass(tp) and issubclass(tp, BaseModel)


def _is_duration(metadata: Sequence[Any]) -> bool:
    return any(getattr(m, "func", None) is parse_duration for m in metadata)


def _plural(text: str) -> str:
    if text.startswith(("list of", "map of")):
        return text
    return {"boolean": "booleans", "duration": "durations", "object": "objects"}.get(text, text + "s")


def analyse(tp: Any, metadata: Sequence[Any] = ()) -> TypeInfo:
    """Human-readable type of an annotation, and the nested models to document under it."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Annotated:
        return analyse(args[0], [*metadata, *args[1:]])
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        parts = [analyse(a, metadata) for a in members]
        if len(parts) == 1:
            info = parts[0]
        else:
            info = TypeInfo(
                " or ".join(p.text for p in parts),
                duration=any(p.duration for p in parts),
                choices=[c for p in parts for c in p.choices],
                children=[c for p in parts for c in p.children],
            )
        info.optional = info.optional or len(members) < len(args)
        return info
    if origin is typing.Literal:
        return TypeInfo("string" if all(isinstance(a, str) for a in args) else "value", choices=list(args))
    if origin in (list, set, frozenset, Sequence) or (origin is tuple and len(args) == 2 and args[1] is ...):
        inner = analyse(args[0]) if args else TypeInfo("value")
        return TypeInfo(
            f"list of {_plural(inner.text)}",
            duration=inner.duration,
            choices=inner.choices,
            children=[("[]" + suffix, m) for suffix, m in inner.children]
            or ([("[]", args[0])] if args and _is_model(args[0]) else []),
        )
    if origin is tuple:
        kinds = {analyse(a).text for a in args}
        what = _plural(kinds.pop()) if len(kinds) == 1 else "values"
        return TypeInfo(f"list of {len(args)} {what}")
    if origin is dict:
        key, value = args
        inner = analyse(value)
        return TypeInfo(
            f"map of {analyse(key).text} to {_plural(inner.text)}",
            children=[(".<name>" + suffix, m) for suffix, m in inner.children]
            or ([(".<name>", value)] if _is_model(value) else []),
        )
    if _is_model(tp):
        return TypeInfo("object", children=[("", tp)])
    if tp is bool:
        return TypeInfo("boolean")
    if tp is int:
        return TypeInfo("integer")
    if tp is float:
        return TypeInfo("duration", duration=True) if _is_duration(metadata) else TypeInfo("number")
    if tp is str:
        return TypeInfo("string")
    if tp is SecretStr:
        return TypeInfo("string (secret)")
    if tp is Path:
        return TypeInfo("path")
    if inspect.isclass(tp) and issubclass(tp, enum.Enum):
        return TypeInfo("string", choices=[m.value for m in tp])
    return TypeInfo(getattr(tp, "__name__", str(tp)))


# ---------------------------------------------------------------- value rendering
def format_duration(seconds: float) -> str:
    """Go-style duration, as configs write it: 0.2 → 200ms, 90 → 1m30s."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        ms = seconds * 1000
        return f"{ms:g}ms" if ms >= 1 else f"{seconds * 1e6:g}us"
    whole = int(seconds)
    if whole != seconds:
        return f"{seconds:g}s"
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    out = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "") + (f"{secs}s" if secs else "")
    return out


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, enum.Enum):
        return _scalar(value.value)
    if isinstance(value, float):
        if math.isfinite(value) and value.is_integer():
            return str(int(value))
        return repr(value)
    if isinstance(value, str):
        return value if value and re.fullmatch(r"[\w./:*@+-]+", value) else '"' + value + '"'
    return str(value)


def _inline(value: Any) -> str:
    """A YAML flow rendering of a default value."""
    if isinstance(value, list | tuple | set | frozenset):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_inline(k)}: {_inline(v)}" for k, v in value.items()) + "}"
    return _scalar(value)


def _default(info: FieldInfo, tinfo: TypeInfo) -> str:
    if info.is_required():
        return "*required*"
    value = info.get_default(call_default_factory=True, validated_data={})
    if value is None or value is PydanticUndefined:
        return "unset"
    if isinstance(value, BaseModel):
        return "see below"
    if tinfo.duration and isinstance(value, int | float) and not isinstance(value, bool):
        return f"`{format_duration(float(value))}`"
    if isinstance(value, str) and value == "":
        return '`""`'
    return f"`{_inline(value)}`"


def _constraints(metadata: Sequence[Any], tinfo: TypeInfo) -> str:
    parts: list[str] = []
    for m in metadata:
        if isinstance(m, annotated_types.Gt):
            parts.append(f"> {_scalar(m.gt)}")
        elif isinstance(m, annotated_types.Ge):
            parts.append(f"≥ {_scalar(m.ge)}")
        elif isinstance(m, annotated_types.Lt):
            parts.append(f"< {_scalar(m.lt)}")
        elif isinstance(m, annotated_types.Le):
            parts.append(f"≤ {_scalar(m.le)}")
        elif isinstance(m, annotated_types.MinLen):
            parts.append(f"length ≥ {m.min_length}")
        elif isinstance(m, annotated_types.MaxLen):
            parts.append(f"length ≤ {m.max_length}")
        elif isinstance(m, annotated_types.MultipleOf):
            parts.append(f"multiple of {_scalar(m.multiple_of)}")
        elif getattr(m, "allow_inf_nan", None) is False:
            parts.append("finite")
    if tinfo.duration and parts:
        parts = [p + " s" if p[0] in "<>≤≥" else p for p in parts]
    if tinfo.choices:
        parts.append("one of " + ", ".join(f"`{_scalar(c)}`" for c in tinfo.choices))
    return "; ".join(parts)


def _doc_of(model: type[BaseModel]) -> str:
    """A model's own docstring (not one inherited from a base class), first paragraph."""
    doc = model.__dict__.get("__doc__")
    if not doc:
        return ""
    return inspect.cleandoc(doc).split("\n\n")[0]


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


# ---------------------------------------------------------------- walking models
@dataclass
class Row:
    key: str
    type: str
    default: str
    allowed: str
    description: str


def _key_name(name: str, info: FieldInfo) -> str:
    alias = info.validation_alias if isinstance(info.validation_alias, str) else info.alias
    return alias or name


def model_rows(model: type[BaseModel], prefix: str = "", _seen: tuple[type, ...] = ()) -> Iterator[Row]:
    """One row per key of `model` and, after each nested model's own row, its keys."""
    if model in _seen:  # a recursive model: documented once
        return
    for name, info in model.model_fields.items():
        key = prefix + _key_name(name, info)
        tinfo = analyse(info.annotation, info.metadata)
        type_text = tinfo.text + (", optional" if tinfo.optional and not info.is_required() else "")
        description = info.description or ""
        if not description:
            description = " ".join(_doc_of(m) for _, m in tinfo.children if _doc_of(m))
        yield Row(
            key,
            type_text,
            _default(info, tinfo),
            _constraints(info.metadata, tinfo),
            description,
        )
        for suffix, child in tinfo.children:
            yield from model_rows(child, f"{key}{suffix}.", (*_seen, model))


def _table(rows: Sequence[Row]) -> list[str]:
    out = ["| Key | Type | Default | Allowed | Description |", "|---|---|---|---|---|"]
    for r in rows:
        cells = (f"`{r.key}`", r.type, r.default, r.allowed, r.description)
        out.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return out


def _service_rows() -> list[Row]:
    rows = list(model_rows(ServiceSpec, "service."))
    keys = {r.key for r in rows}
    stale = sorted(set(_SERVICE_NOTES) - keys)
    if stale:
        raise RuntimeError(f"gateway/docgen.py: _SERVICE_NOTES names keys the service model lacks: {stale}")
    for r in rows:
        if not r.description:
            r.description = _SERVICE_NOTES.get(r.key, "")
    return rows


# ---------------------------------------------------------------- the document
def factories() -> Iterator[tuple[Kind, Factory]]:
    """Every registered component factory, by kind and then type name."""
    for kind in _KIND_TITLES:
        for type_name in known_types(kind):
            factory = get_factory(kind, type_name)
            if factory is None:
                raise RuntimeError(f"{kind.value} registry lists {type_name!r}, but it has no FACTORY")
            yield kind, factory


def _signals(values: frozenset[Any]) -> str:
    order = ["traces", "metrics", "logs", "anomalies"]
    names = sorted((s.value for s in values), key=lambda v: (order.index(v) if v in order else 99, v))
    return ", ".join(f"`{n}`" for n in names)


def _anchor(kind: Kind, type_name: str) -> str:
    return f"{kind.singular}-{type_name}".replace("_", "-")


def generate() -> str:
    """The whole reference as Markdown (deterministic: same code, same text)."""
    comps = list(factories())
    lines = [
        "<!-- Generated by `python -m gateway.docgen` from the typed component configs. Do not edit:",
        f"     change the config classes (Field descriptions) and run `{REGENERATE}`. -->",
        "",
        "# Configuration reference",
        "",
        "A config file has the OpenTelemetry Collector's layout: components are declared under",
        "`receivers`, `processors`, `exporters` and `connectors` by an id `type[/name]`, and wired",
        "into pipelines under `service.pipelines`. This page lists every key of every component type",
        "and of the `service` section, generated from the code.",
        "",
        "How to read the tables:",
        "",
        "- **Key** is the path below the component id: `protocols.grpc.endpoint` is",
        "  `receivers: {otlp: {protocols: {grpc: {endpoint: ...}}}}`. `[]` marks the items of a list,",
        "  `<name>` a key of your choice in a map.",
        "- **Type** `duration` takes Go-style strings (`200ms`, `5s`, `1m30s`, `1h`) or a number of",
        "  seconds. `optional` keys may be left out (or set to `null`); an optional object is off",
        "  until it is set, and then its own keys apply.",
        "- **Default** is what an absent key means; *required* keys have none; `see below` is an",
        "  object whose keys have their own defaults.",
        "- **Allowed** lists the bounds and choices that validation enforces.",
        "",
        "Unknown keys are errors. String values may use `${env:NAME}` and `${env:NAME:-default}`.",
        "Rules that involve several keys (for example `memory_limiter` needing `limit_mib` or",
        "`limit_percentage`) are not shown here: `sentinel validate --config FILE` checks them and",
        "prints every problem with its `file:line`.",
        "",
        "## Contents",
        "",
    ]
    for kind, title in _KIND_TITLES.items():
        links = [f"[`{f.type}`](#{_anchor(kind, f.type)})" for k, f in comps if k is kind]
        lines.append(f"- {title}: " + (", ".join(links) if links else "none"))
    lines += ["- [Service](#service)", ""]

    for kind, title in _KIND_TITLES.items():
        lines += [f"## {title}", ""]
        for k, factory in comps:
            if k is not kind:
                continue
            cfg = factory.config
            lines += [
                f'<a id="{_anchor(kind, factory.type)}"></a>',
                "",
                f"### `{factory.type}` ({kind.singular})",
                "",
            ]
            if factory.description:
                lines += [" ".join(factory.description.split()), ""]
            if kind is Kind.CONNECTOR:
                signals = (
                    f"Consumes {_signals(factory.signals)} (as an exporter); "
                    f"emits {_signals(factory.output_signals)} (as a receiver)."
                )
            else:
                signals = f"Signals: {_signals(factory.signals)}."
            lines += [f"{signals} Config class: `{cfg.__module__}.{cfg.__qualname__}`.", ""]
            own_doc = _doc_of(cfg)
            if own_doc:
                lines += [" ".join(own_doc.split()), ""]
            rows = list(model_rows(cfg))
            lines += [*_table(rows), ""] if rows else ["No settings: declare it as `{}`.", ""]

    lines += [
        '<a id="service"></a>',
        "",
        "## Service",
        "",
        "The `service` section wires components into pipelines and configures the gateway itself.",
        "Every id a pipeline names must be declared in its section, and every declared component",
        "must be used by a pipeline.",
        "",
        *_table(_service_rows()),
        "",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gateway.docgen",
        description="Print the configuration reference (Markdown) generated from the component configs.",
    )
    parser.add_argument("--check", metavar="FILE", help="exit 1 if FILE differs from the generated text")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        try:
            current = Path(args.check).read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            print(f"{args.check} is out of date; regenerate it with: {REGENERATE}", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
