"""The configuration reference in docs/ is generated from the component configs and must stay so."""

from __future__ import annotations

import difflib
import subprocess
import sys
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field, SecretStr

from gateway.component import ComponentConfig, Duration, Kind
from gateway.config.model import ServiceSpec
from gateway.docgen import REGENERATE, analyse, format_duration, generate, main, model_rows
from gateway.registry import get_factory, known_types
from tests.conftest import REPO_ROOT

DOC = REPO_ROOT / "docs" / "configuration.md"


@pytest.fixture(scope="module")
def generated() -> str:
    return generate()


def test_committed_reference_matches_the_code(generated):
    assert DOC.is_file(), f"docs/configuration.md is missing; create it with: {REGENERATE}"
    committed = DOC.read_text(encoding="utf-8")
    if committed != generated:
        diff = "".join(
            list(
                difflib.unified_diff(
                    committed.splitlines(keepends=True),
                    generated.splitlines(keepends=True),
                    "docs/configuration.md (committed)",
                    "generated from the code",
                    n=1,
                )
            )[:40]
        )
        pytest.fail(
            "docs/configuration.md is out of date with the component configs; regenerate it with\n"
            f"    {REGENERATE}\nand commit the result. First differences:\n{diff}"
        )


def test_generation_is_deterministic(generated):
    assert generate() == generated
    proc = subprocess.run(
        [sys.executable, "-m", "gateway.docgen"], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == generated


def test_every_component_type_and_every_top_level_key_appears(generated):
    types_seen = 0
    for kind in (Kind.RECEIVER, Kind.PROCESSOR, Kind.EXPORTER, Kind.CONNECTOR):
        for type_name in known_types(kind):
            factory = get_factory(kind, type_name)
            assert factory is not None
            heading = f"### `{type_name}` ({kind.singular})"
            assert heading in generated, f"{kind.value} type {type_name!r} has no section"
            section = generated.split(heading, 1)[1].split("\n### ", 1)[0]
            for name in factory.config.model_fields:
                assert f"| `{name}` |" in section, f"{kind.value} {type_name}: key {name!r} missing"
            types_seen += 1
    assert types_seen >= 13
    for name in ServiceSpec.model_fields:
        assert f"| `service.{name}` |" in generated


def test_nested_keys_defaults_and_constraints_are_rendered(generated):
    # a nested optional object, a list of objects, a map of objects, durations, literals, bounds
    assert "| `protocols.grpc.tls.cert_file` | string | *required* |" in generated
    assert "| `patterns[].regex` | string | *required* |" in generated
    assert "| `prices.<name>.input_per_million` | number | *required* | ≥ 0; finite |" in generated
    assert "| `timeout` | duration | `200ms` | ≥ 0 s |" in generated
    assert "| `verbosity` | string | `basic` | one of `basic`, `normal`, `detailed` |" in generated
    assert "| `service.shutdown_timeout` | duration | `30s` | ≥ 0 s |" in generated


def test_check_option_reports_a_stale_file(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    stale.write_text("# old\n", encoding="utf-8")
    assert main(["--check", str(stale)]) == 1
    assert REGENERATE in capsys.readouterr().err
    stale.write_text(generate(), encoding="utf-8")
    assert main(["--check", str(stale)]) == 0


class _Inner(ComponentConfig):
    """Inner settings."""

    size: int = Field(default=3, gt=0, le=10)


class _Sample(BaseModel):
    wait: Duration = Field(default=90.0, ge=0)
    maybe_wait: Annotated[Duration | None, Field(description="Optional duration.")] = None
    mode: Literal["a", "b"] = "a"
    inner: _Inner = _Inner()
    items: list[_Inner] = Field(default_factory=list)
    by_name: dict[str, _Inner] = Field(default_factory=dict)
    secret: SecretStr | None = None
    pair: tuple[float, float] = (0.5, 1.0)


def test_walker_on_a_sample_model():
    rows = {r.key: r for r in model_rows(_Sample)}
    assert list(rows) == [
        "wait",
        "maybe_wait",
        "mode",
        "inner",
        "inner.size",
        "items",
        "items[].size",
        "by_name",
        "by_name.<name>.size",
        "secret",
        "pair",
    ]
    assert (rows["wait"].type, rows["wait"].default, rows["wait"].allowed) == ("duration", "`1m30s`", "≥ 0 s")
    assert rows["maybe_wait"].type == "duration, optional"
    assert rows["maybe_wait"].default == "unset"
    assert rows["mode"].allowed == "one of `a`, `b`"
    assert rows["inner"].description == "Inner settings."
    assert rows["inner.size"].allowed == "> 0; ≤ 10"
    assert rows["items"].type == "list of objects"
    assert rows["by_name"].type == "map of string to objects"
    assert rows["secret"].type == "string (secret), optional"
    assert (rows["pair"].type, rows["pair"].default) == ("list of 2 numbers", "`[0.5, 1]`")
    assert analyse(bool).text == "boolean"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.2, "200ms"),
        (0.0005, "500us"),
        (1.5, "1.5s"),
        (90, "1m30s"),
        (3600, "1h"),
        (3661, "1h1m1s"),
    ],
)
def test_durations_are_written_go_style(seconds, text):
    assert format_duration(seconds) == text
