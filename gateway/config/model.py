"""Validating a whole gateway config: components, pipelines, service telemetry.

Every problem becomes a `ConfigIssue` naming the key path and `file:line`; all
of them are collected before raising so `sentinel validate` can print them at
once.
"""

from __future__ import annotations

import importlib.resources
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gateway.batch import Signal
from gateway.component import ComponentConfig, ComponentId, Duration, Factory, Kind
from gateway.config.source import (
    ConfigError,
    ConfigIssue,
    KeyPath,
    Locations,
    load_file,
    load_text,
    merge,
)
from gateway.registry import get_factory, known_types

DEFAULT_CONFIG_NAME = "<embedded default>"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_endpoint(value: str) -> str:
    _host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid endpoint {value!r}: expected host:port, e.g. 127.0.0.1:8888")
    return value


class LogsTelemetry(_Strict):
    level: Literal["debug", "info", "warn", "warning", "error"] = "info"
    format: Literal["json", "console"] = "console"


class AdminTelemetry(_Strict):
    endpoint: str = "127.0.0.1:8888"

    _v = field_validator("endpoint")(lambda cls, v: _check_endpoint(v))


class Telemetry(_Strict):
    logs: LogsTelemetry = LogsTelemetry()
    admin: AdminTelemetry = AdminTelemetry()


class PipelineSpec(_Strict):
    receivers: list[str] = Field(default_factory=list)
    processors: list[str] = Field(default_factory=list)
    exporters: list[str] = Field(default_factory=list)


MAX_WORKERS = 256


class ServiceSpec(_Strict):
    pipelines: dict[str, PipelineSpec] = Field(default_factory=dict)
    telemetry: Telemetry = Telemetry()
    shutdown_timeout: Duration = Field(default=30.0, ge=0)
    workers: int = Field(
        default=1,
        description="Worker processes sharing the OTLP ports (SO_REUSEPORT), 1 to 256. 1 runs the gateway "
        "in a single process; N > 1 runs a supervisor (admin endpoints, restarts) and N workers, each "
        "owning the detection series that hash to it. `sentinel run --workers` overrides it. See "
        "[operations](operations.md#multi-core-workers).",
    )

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int) -> int:
        return check_workers(v)


def check_workers(n: int) -> int:
    """The one rule for a worker count, shared by the config and `--workers`."""
    if not 1 <= n <= MAX_WORKERS:
        raise ValueError(
            f"workers must be between 1 and {MAX_WORKERS} (got {n}): 1 runs one process, "
            "N > 1 runs a supervisor and N worker processes"
        )
    return n


@dataclass(frozen=True)
class ComponentSpec:
    id: ComponentId
    kind: Kind
    factory: Factory
    config: ComponentConfig


@dataclass(frozen=True)
class Pipeline:
    name: str  # e.g. "traces" or "traces/llm"
    signal: Signal
    receivers: tuple[ComponentId, ...]
    processors: tuple[ComponentId, ...]
    exporters: tuple[ComponentId, ...]


@dataclass
class GatewayConfig:
    components: dict[Kind, dict[ComponentId, ComponentSpec]]
    pipelines: list[Pipeline]
    service: ServiceSpec
    sources: list[str] = field(default_factory=list)


_TOP_LEVEL = {"receivers", "processors", "exporters", "connectors", "service"}


def pydantic_issues(exc: ValidationError, base: KeyPath, locs: Locations) -> list[ConfigIssue]:
    """Turn pydantic errors into issues at the right key and line."""
    out = []
    for err in exc.errors(include_url=False):
        path = (*base, *err["loc"])
        kind = err["type"]
        if kind == "extra_forbidden":
            msg = "unknown key"
        elif kind == "missing":
            msg = "required key is missing"
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            if "input" in err and kind not in ("model_type", "dict_type"):
                msg += f" (got {err['input']!r})"
        out.append(locs.issue(path, msg))
    return out


def _validate_components(
    raw: Mapping[str, Any], locs: Locations, issues: list[ConfigIssue]
) -> dict[Kind, dict[ComponentId, ComponentSpec]]:
    comps: dict[Kind, dict[ComponentId, ComponentSpec]] = {k: {} for k in Kind}
    for kind in Kind:
        section = raw.get(kind.value)
        if section is None:
            continue
        if not isinstance(section, dict):
            issues.append(locs.issue((kind.value,), "must be a mapping of component id → config"))
            continue
        for key, body in section.items():
            path: KeyPath = (kind.value, key)
            try:
                cid = ComponentId.parse(key)
            except ValueError as exc:
                issues.append(locs.issue(path, str(exc)))
                continue
            factory = get_factory(kind, cid.type)
            if factory is None:
                issues.append(
                    locs.issue(
                        path,
                        f"unknown {kind.singular} type {cid.type!r}; known types: "
                        + ", ".join(known_types(kind)),
                    )
                )
                continue
            if body is None:
                body = {}
            if not isinstance(body, dict):
                issues.append(locs.issue(path, "must be a mapping (use {} for defaults)"))
                continue
            try:
                cfg = factory.config.model_validate(body)
            except ValidationError as exc:
                issues.extend(pydantic_issues(exc, path, locs))
                continue
            comps[kind][cid] = ComponentSpec(cid, kind, factory, cfg)
    return comps


# pipeline role -> component kinds a reference in it may name
_ROLES: tuple[tuple[str, tuple[Kind, ...]], ...] = (
    ("receivers", (Kind.RECEIVER, Kind.CONNECTOR)),
    ("processors", (Kind.PROCESSOR,)),
    ("exporters", (Kind.EXPORTER, Kind.CONNECTOR)),
)


def _validate_pipelines(
    service: ServiceSpec,
    comps: dict[Kind, dict[ComponentId, ComponentSpec]],
    declared: dict[Kind, set[str]],
    locs: Locations,
    issues: list[ConfigIssue],
) -> list[Pipeline]:
    pipelines: list[Pipeline] = []
    used: dict[Kind, set[str]] = {k: set() for k in Kind}
    connector_roles: dict[str, set[str]] = {}  # connector id -> roles it is used in
    if not service.pipelines:
        issues.append(locs.issue(("service", "pipelines"), "at least one pipeline is required"))
    for name in sorted(declared[Kind.CONNECTOR] & (declared[Kind.RECEIVER] | declared[Kind.EXPORTER])):
        issues.append(
            locs.issue(
                (Kind.CONNECTOR.value, name), f"id {name!r} is used by a connector and another component"
            )
        )
    for pname, spec in service.pipelines.items():
        ppath: KeyPath = ("service", "pipelines", pname)
        sig_name, _, _ = pname.partition("/")
        try:
            signal = Signal(sig_name)
        except ValueError:
            issues.append(
                locs.issue(
                    ppath,
                    f"unknown pipeline signal {sig_name!r}; a pipeline id is <signal>[/name], "
                    "signal one of " + ", ".join(s.value for s in Signal),
                )
            )
            for role, kinds in _ROLES:  # its components are still referenced: don't also call them unused
                for kind in kinds:
                    for ref in getattr(spec, role):
                        if ref in declared[kind]:
                            used[kind].add(ref)
                            if kind is Kind.CONNECTOR:
                                connector_roles.setdefault(ref, set()).add(role)
            continue
        ok = True
        refs: dict[str, list[ComponentId]] = {role: [] for role, _ in _ROLES}
        for role, kinds in _ROLES:
            names: Sequence[str] = getattr(spec, role)
            seen: set[str] = set()
            singular = role[:-1]
            for i, ref in enumerate(names):
                rpath = (*ppath, role, i)
                if ref in seen:
                    issues.append(locs.issue(rpath, f"{singular} {ref!r} is listed twice"))
                    ok = False
                    continue
                seen.add(ref)
                found = next((k for k in kinds if ref in declared[k]), None)
                if found is None:
                    where = kinds[0].value  # connectors are the rarer case; the hint names the usual section
                    issues.append(
                        locs.issue(
                            rpath, f"references {singular} {ref!r}, which is not defined under {where}"
                        )
                    )
                    ok = False
                    continue
                kind = found
                used[kind].add(ref)
                if kind is Kind.CONNECTOR:
                    connector_roles.setdefault(ref, set()).add(role)
                try:
                    cid = ComponentId.parse(ref)
                except ValueError:  # an invalid id: already reported where it is defined
                    ok = False
                    continue
                cspec = comps[kind].get(cid)
                if cspec is None:  # declared but invalid: already reported
                    ok = False
                    continue
                supported = (
                    cspec.factory.output_signals
                    if kind is Kind.CONNECTOR and role == "receivers"
                    else cspec.factory.signals
                )
                if signal not in supported:
                    what = (
                        f"connector type {cid.type!r} as a {singular}"
                        if kind is Kind.CONNECTOR
                        else (f"{kind.singular} type {cid.type!r}")
                    )
                    issues.append(
                        locs.issue(
                            rpath,
                            f"{what} does not support {signal.value}; it supports "
                            + ", ".join(sorted(s.value for s in supported)),
                        )
                    )
                    ok = False
                refs[role].append(cid)
        if not spec.receivers:
            issues.append(locs.issue((*ppath, "receivers"), "a pipeline needs at least one receiver"))
            ok = False
        if not spec.exporters:
            issues.append(locs.issue((*ppath, "exporters"), "a pipeline needs at least one exporter"))
            ok = False
        if ok:
            pipelines.append(
                Pipeline(
                    pname,
                    signal,
                    tuple(refs["receivers"]),
                    tuple(refs["processors"]),
                    tuple(refs["exporters"]),
                )
            )
    for kind in Kind:
        for name in sorted(declared[kind] - used[kind]):
            issues.append(
                locs.issue(
                    (kind.value, name),
                    f"{kind.singular} {name!r} is defined but not used in any pipeline "
                    "(remove it or add it to a pipeline under service.pipelines)",
                )
            )
    for name, roles in sorted(connector_roles.items()):
        if roles != {"receivers", "exporters"}:
            missing = "receiver" if "receivers" not in roles else "exporter"
            issues.append(
                locs.issue(
                    (Kind.CONNECTOR.value, name),
                    f"connector {name!r} must be an exporter of one pipeline and a receiver of another; "
                    f"it is not used as a {missing}",
                )
            )
    return pipelines


def build_config(raw: dict[str, Any], locs: Locations, sources: list[str] | None = None) -> GatewayConfig:
    """Validate merged raw values; raise ConfigError listing every issue."""
    issues: list[ConfigIssue] = []
    for key in raw:
        if key not in _TOP_LEVEL:
            issues.append(
                locs.issue((key,), "unknown top-level key; expected one of " + ", ".join(sorted(_TOP_LEVEL)))
            )
    declared = {k: set(raw[k]) if isinstance(raw.get(k), dict) else set() for k in Kind}
    comps = _validate_components(raw, locs, issues)
    service_raw = raw.get("service")
    service = ServiceSpec()
    if service_raw is None:
        issues.append(
            locs.issue((), "missing the service section (service.pipelines wires components together)")
        )
    else:
        try:
            service = ServiceSpec.model_validate(service_raw)
        except ValidationError as exc:
            issues.extend(pydantic_issues(exc, ("service",), locs))
            service = None  # type: ignore[assignment]
            wiring_ok = not any(e["loc"][:1] == ("pipelines",) for e in exc.errors())
            if isinstance(service_raw, dict) and wiring_ok:
                # only other service keys are wrong: still check the pipelines' wiring
                service = ServiceSpec.model_validate({"pipelines": service_raw.get("pipelines", {})})
    pipelines = _validate_pipelines(service, comps, declared, locs, issues) if service is not None else []
    if issues:
        raise ConfigError(issues)
    return GatewayConfig(comps, pipelines, service, sources or [])


def default_config_text() -> str:
    return importlib.resources.files("gateway").joinpath("default_config.yaml").read_text(encoding="utf-8")


def load_config(paths: Sequence[str | Path] = (), env: Mapping[str, str] | None = None) -> GatewayConfig:
    """Load and merge `paths` in order (the embedded default when empty) and validate."""
    if not paths:
        raw, locs = load_text(default_config_text(), DEFAULT_CONFIG_NAME, env)
        return build_config(raw, locs, [DEFAULT_CONFIG_NAME])
    raw, locs = {}, Locations()
    issues: list[ConfigIssue] = []
    for p in paths:
        try:
            r, lc = load_file(p, env)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        raw, locs = merge(raw, locs, r, lc)
    if issues:
        raise ConfigError(issues)
    return build_config(raw, locs, [str(p) for p in paths])
