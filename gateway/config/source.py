"""Reading YAML config files while remembering where every key came from.

Values are plain Python (dict/list/scalars) so that typed models can validate
them; beside them a `Locations` map takes a key path to `file:line`, so every
error can point at the line a user has to fix. Several files merge in order
(maps deep-merge, everything else is replaced), and `${env:VAR}`,
`${env:VAR:-default}` and the `$$` escape are expanded in string scalars.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Location:
    file: str
    line: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config, with the key path and where it was written."""

    path: KeyPath
    message: str
    location: Location | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        key = format_path(self.path)
        return f"{where}{key}: {self.message}" if key else f"{where}{self.message}"


class ConfigError(Exception):
    """Raised with every issue found, so users fix them all in one go."""

    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(i) for i in issues))


def format_path(path: KeyPath) -> str:
    out = ""
    for p in path:
        if isinstance(p, int):
            out += f"[{p}]"
        else:
            out += f".{p}" if out else str(p)
    return out


@dataclass
class Locations:
    """Key path → where it was set. Lookups fall back to the nearest parent."""

    by_path: dict[KeyPath, Location] = field(default_factory=dict)

    def find(self, path: KeyPath) -> Location | None:
        p = tuple(path)
        while True:
            loc = self.by_path.get(p)
            if loc is not None or not p:
                return loc
            p = p[:-1]

    def issue(self, path: KeyPath, message: str) -> ConfigIssue:
        return ConfigIssue(tuple(path), message, self.find(path))


_ENV_RE = re.compile(r"\$\$|\$\{env:([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}|\$\{([^}]*)\}")


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand `${env:VAR}` and `${env:VAR:-default}`; `$$` is a literal `$`.

    An unset variable without a default is an error rather than a silent empty
    string: a missing token or endpoint should stop the gateway, not surprise it.
    """

    def repl(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        if m.group(3) is not None:
            raise ValueError(
                f"unsupported reference '${{{m.group(3)}}}': use ${{env:NAME}} or ${{env:NAME:-default}}"
            )
        name, default = m.group(1), m.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        raise ValueError(
            f"environment variable {name} is not set (write ${{env:{name}:-}} to allow an empty value)"
        )

    return _ENV_RE.sub(repl, text)


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate keys (a common silent mistake)."""


def _construct(
    node: yaml.Node,
    path: KeyPath,
    file: str,
    locs: Locations,
    issues: list[ConfigIssue],
    env: Mapping[str, str],
) -> Any:
    locs.by_path[path] = Location(file, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                issues.append(
                    ConfigIssue(
                        path,
                        "YAML merge keys (<<) are not supported",
                        Location(file, knode.start_mark.line + 1),
                    )
                )
                continue
            key = (
                str(_LineLoader(" ").construct_object(knode))
                if not isinstance(knode, yaml.ScalarNode)
                else knode.value
            )
            kpath = (*path, key)
            if key in out:
                issues.append(ConfigIssue(kpath, "duplicate key", Location(file, knode.start_mark.line + 1)))
            locs.by_path[kpath] = Location(file, knode.start_mark.line + 1)
            out[key] = _construct(vnode, kpath, file, locs, issues, env)
            locs.by_path[kpath] = Location(file, knode.start_mark.line + 1)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, (*path, i), file, locs, issues, env) for i, item in enumerate(node.value)]
    assert isinstance(node, yaml.ScalarNode)
    if node.tag == "tag:yaml.org,2002:str" and "$" in node.value:
        try:
            expanded = expand_env(node.value, env)
        except ValueError as exc:
            issues.append(ConfigIssue(path, str(exc), Location(file, node.start_mark.line + 1)))
            return None
        if node.style is None and expanded != node.value:
            # An unquoted ${env:PORT} should type like the value it stands for;
            # a value that is not valid YAML on its own (e.g. "[x") stays a string.
            if not expanded.strip():
                return ""
            try:
                return yaml.safe_load(expanded)
            except yaml.YAMLError:
                return expanded
        return expanded
    return _LineLoader(" ").construct_object(node)


def load_text(text: str, file: str, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], Locations]:
    """Parse one YAML document into plain values plus their locations."""
    env = os.environ if env is None else env
    locs = Locations()
    issues: list[ConfigIssue] = []
    try:
        node = yaml.compose(text, Loader=_LineLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        loc = Location(file, mark.line + 1) if mark is not None else Location(file, 1)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigIssue((), f"invalid YAML: {problem}", loc)]) from None
    if node is None:
        return {}, locs
    value = _construct(node, (), file, locs, issues, env)
    if issues:
        raise ConfigError(issues)
    if not isinstance(value, dict):
        raise ConfigError([ConfigIssue((), "the top level of a config must be a mapping", Location(file, 1))])
    return value, locs


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> tuple[dict[str, Any], Locations]:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigIssue((), f"cannot read config file: {exc.strerror}", Location(str(p), 0))]
        ) from None
    return load_text(text, str(p), env)


def merge(
    base: dict[str, Any], base_locs: Locations, over: dict[str, Any], over_locs: Locations
) -> tuple[dict[str, Any], Locations]:
    """Deep-merge `over` onto `base`: maps merge key by key, anything else is replaced."""
    out_locs = Locations(dict(base_locs.by_path))

    def rec(a: Any, b: Any, path: KeyPath) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            res = dict(a)
            for k, v in b.items():
                kp = (*path, k)
                if k in res:
                    res[k] = rec(res[k], v, kp)
                else:
                    res[k] = v
                    _copy_locs(kp)
                if kp in over_locs.by_path:
                    out_locs.by_path[kp] = over_locs.by_path[kp]
            return res
        # replaced wholesale: drop stale locations under this path
        for p in [p for p in out_locs.by_path if p[: len(path)] == path and len(p) > len(path)]:
            del out_locs.by_path[p]
        _copy_locs(path)
        return b

    def _copy_locs(prefix: KeyPath) -> None:
        for p, loc in over_locs.by_path.items():
            if p[: len(prefix)] == prefix:
                out_locs.by_path[p] = loc

    merged = rec(base, over, ())
    return merged, out_locs
