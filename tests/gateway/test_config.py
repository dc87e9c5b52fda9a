"""Config loading and validation: every issue names its key path and `file:line`.

Line numbers are asserted exactly; each YAML snippet is written out in full so
the numbers can be checked by reading the test.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.component import ComponentId, Kind, parse_duration
from gateway.config.model import (
    DEFAULT_CONFIG_NAME,
    GatewayConfig,
    build_config,
    default_config_text,
    load_config,
)
from gateway.config.source import ConfigError, Locations, load_text, merge
from gateway.registry import known_types

FILE = "gw.yaml"


def load(text: str, env: Mapping[str, str] | None = None) -> GatewayConfig:
    raw, locs = load_text(textwrap.dedent(text), FILE, env or {})
    return build_config(raw, locs, [FILE])


def issues(text: str, env: Mapping[str, str] | None = None) -> list[str]:
    """Every issue of an invalid config, as users see them."""
    with pytest.raises(ConfigError) as info:
        load(text, env)
    assert str(info.value) == "\n".join(str(i) for i in info.value.issues)
    return [str(i) for i in info.value.issues]


def raw_of(text: str, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    raw, _ = load_text(textwrap.dedent(text), FILE, env or {})
    return raw


def component(cfg: GatewayConfig, kind: Kind, cid: str) -> Any:
    """A component's validated config (its class lives in the component's module, hence Any)."""
    return cfg.components[kind][ComponentId.parse(cid)].config


VALID = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
      http:
        endpoint: 127.0.0.1:4318
processors:
  batch:
    send_batch_size: 512
    timeout: 200ms
exporters:
  debug:
    verbosity: basic
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug]
"""


# ---------------------------------------------------------------- a valid config
def test_valid_config_builds_components_and_pipelines() -> None:
    cfg = load(VALID)
    assert [p.name for p in cfg.pipelines] == ["traces"]
    pl = cfg.pipelines[0]
    assert pl.signal.value == "traces"
    assert pl.receivers == (ComponentId("otlp"),)
    assert pl.processors == (ComponentId("batch"),)
    assert pl.exporters == (ComponentId("debug"),)
    batch = component(cfg, Kind.PROCESSOR, "batch")
    assert batch.send_batch_size == 512
    assert batch.timeout == pytest.approx(0.2)
    assert cfg.sources == [FILE]
    # service defaults apply when the section does not set them
    assert cfg.service.telemetry.logs.level == "info"
    assert cfg.service.telemetry.admin.endpoint == "127.0.0.1:8888"
    assert cfg.service.shutdown_timeout == 30.0


def test_named_components_and_pipelines() -> None:
    cfg = load(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
          debug/verbose:
            verbosity: basic
        service:
          pipelines:
            traces:
              receivers: [otlp]
              exporters: [debug]
            traces/llm:
              receivers: [otlp]
              exporters: [debug/verbose]
        """
    )
    assert [(p.name, p.signal.value) for p in cfg.pipelines] == [
        ("traces", "traces"),
        ("traces/llm", "traces"),
    ]
    assert set(cfg.components[Kind.EXPORTER]) == {ComponentId("debug"), ComponentId("debug", "verbose")}
    assert cfg.pipelines[1].exporters == (ComponentId("debug", "verbose"),)


# ---------------------------------------------------------------- unknown keys and wrong types
def test_unknown_key_in_component_reports_key_path_and_line() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            send_batch_size: 100
            timout: 5s
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
        """
    )
    assert got == ["gw.yaml:6: processors.batch.timout: unknown key"]


def test_unknown_key_in_service_section() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
          telemetry:
            logs:
              level: info
              colour: true
        """
    )
    assert got == ["gw.yaml:13: service.telemetry.logs.colour: unknown key"]


def test_unknown_top_level_key() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        extensions:
          health_check: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    assert got == [
        "gw.yaml:5: extensions: unknown top-level key; "
        "expected one of connectors, exporters, processors, receivers, service"
    ]


def test_wrong_type_reports_key_line_and_value() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            send_batch_size: lots
        exporters:
          debug: {}
        service:
          pipelines:
            metrics:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
          telemetry:
            logs:
              level: loud
        """
    )
    assert len(got) == 2
    assert got[0].startswith("gw.yaml:5: processors.batch.send_batch_size: ")
    assert "integer" in got[0] and "(got 'lots')" in got[0]
    assert got[1].startswith("gw.yaml:16: service.telemetry.logs.level: ")
    assert "'debug'" in got[1] and "(got 'loud')" in got[1]


def test_component_body_must_be_a_mapping() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: [verbose]
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    assert got == ["gw.yaml:4: exporters.debug: must be a mapping (use {} for defaults)"]


def test_empty_component_body_means_defaults() -> None:
    cfg = load(
        """\
        receivers:
          otlp:
            protocols:
              grpc:
        processors:
          batch:
        exporters:
          debug:
        service:
          pipelines:
            logs:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
        """
    )
    assert component(cfg, Kind.PROCESSOR, "batch").send_batch_size == 8192
    assert component(cfg, Kind.EXPORTER, "debug").verbosity == "basic"


def test_invalid_admin_endpoint() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
          telemetry:
            admin:
              endpoint: localhost
        """
    )
    assert len(got) == 1
    assert got[0].startswith("gw.yaml:12: service.telemetry.admin.endpoint: invalid endpoint 'localhost'")


# ---------------------------------------------------------------- component types and ids
def test_unknown_component_type_lists_known_types() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
          kafka:
            brokers: [localhost:9092]
        exporters:
          debug: {}
          prometheus: {}
        service:
          pipelines:
            metrics:
              receivers: [otlp, kafka]
              exporters: [debug, prometheus]
        """
    )
    # The pipeline references are not reported again: the components already were.
    assert got == [
        "gw.yaml:3: receivers.kafka: unknown receiver type 'kafka'; known types: "
        + ", ".join(known_types(Kind.RECEIVER)),
        "gw.yaml:7: exporters.prometheus: unknown exporter type 'prometheus'; known types: "
        + ", ".join(known_types(Kind.EXPORTER)),
    ]
    assert "otlp" in got[0]
    assert all(t in got[1] for t in ("debug", "file", "otlp"))


def test_invalid_component_id() -> None:
    got = issues(
        """\
        receivers:
          OTLP: {}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [OTLP]
              exporters: [debug]
        """
    )
    assert len(got) == 1
    assert got[0].startswith("gw.yaml:2: receivers.OTLP: invalid component id 'OTLP'")


def test_section_must_be_a_mapping() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors: [batch]
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    assert got == ["gw.yaml:3: processors: must be a mapping of component id → config"]


# ---------------------------------------------------------------- pipelines
def test_dangling_reference_points_at_the_list_item() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            traces:
              receivers: [otlp]
              exporters:
                - debug
                - file/missing
        """
    )
    assert got == [
        "gw.yaml:11: service.pipelines.traces.exporters[1]: "
        "references exporter 'file/missing', which is not defined under exporters"
    ]


def test_reference_to_a_component_of_another_kind() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            traces:
              receivers: [otlp]
              processors: [debug]
              exporters: [debug]
        """
    )
    assert got == [
        "gw.yaml:9: service.pipelines.traces.processors[0]: "
        "references processor 'debug', which is not defined under processors"
    ]


def test_component_listed_twice_in_a_pipeline() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug, debug]
        """
    )
    assert got == ["gw.yaml:9: service.pipelines.logs.exporters[1]: exporter 'debug' is listed twice"]


def test_unused_component_is_reported_at_its_definition() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch: {}
        exporters:
          debug: {}
          file/unused:
            path: /tmp/never.jsonl
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    assert got == [
        "gw.yaml:4: processors.batch: processor 'batch' is defined but not used in any pipeline "
        "(remove it or add it to a pipeline under service.pipelines)",
        "gw.yaml:7: exporters.file/unused: exporter 'file/unused' is defined but not used in any pipeline "
        "(remove it or add it to a pipeline under service.pipelines)",
    ]


def test_pipeline_without_exporters() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            traces:
              receivers: [otlp]
            metrics:
              receivers: [otlp]
              exporters: []
            logs:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    assert got == [
        # key absent: the pipeline's own line; key empty: the key's line
        "gw.yaml:7: service.pipelines.traces.exporters: a pipeline needs at least one exporter",
        "gw.yaml:11: service.pipelines.metrics.exporters: a pipeline needs at least one exporter",
    ]


def test_pipeline_without_receivers() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
            traces:
              exporters: [debug]
        """
    )
    assert got == ["gw.yaml:10: service.pipelines.traces.receivers: a pipeline needs at least one receiver"]


@pytest.mark.parametrize("name", ["spans", "spans/llm", "profiles"])
def test_bad_pipeline_signal(name: str) -> None:
    got = issues(
        f"""\
        receivers:
          otlp: {{protocols: {{grpc: {{}}}}}}
        exporters:
          debug: {{}}
        service:
          pipelines:
            {name}:
              receivers: [otlp]
              exporters: [debug]
        """
    )
    signal = name.partition("/")[0]
    # Only the pipeline id is wrong: its components must not also be called unused.
    assert len(got) == 1, got
    assert got[0].startswith(f"gw.yaml:7: service.pipelines.{name}: unknown pipeline signal '{signal}'")
    assert got[0].endswith("traces, metrics, logs, anomalies")


def test_no_pipelines_and_no_service() -> None:
    assert issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines: {}
        """
    ) == [
        "gw.yaml:6: service.pipelines: at least one pipeline is required",
        "gw.yaml:2: receivers.otlp: receiver 'otlp' is defined but not used in any pipeline "
        "(remove it or add it to a pipeline under service.pipelines)",
        "gw.yaml:4: exporters.debug: exporter 'debug' is defined but not used in any pipeline "
        "(remove it or add it to a pipeline under service.pipelines)",
    ]
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        """
    )
    assert got[0] == "gw.yaml:1: missing the service section (service.pipelines wires components together)"


def test_every_issue_is_reported_at_once() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            send_batch_size: -1
        exporters:
          debug: {}
          file/unused:
            path: /tmp/x.jsonl
        service:
          pipelines:
            traces:
              receivers: [otlp, zipkin]
              processors: [batch]
              exporters: [debug]
            events:
              receivers: [otlp]
              exporters: [debug]
          shutdown_timeout: soon
        """
    )
    lines = [g.split(":")[1] for g in got]
    assert lines == ["5", "19", "13", "16", "8"], got
    assert got[0].startswith("gw.yaml:5: processors.batch.send_batch_size: ")
    # a wrong service key does not hide the pipelines' problems
    assert got[1].startswith("gw.yaml:19: service.shutdown_timeout: invalid duration 'soon'")
    assert got[2].startswith(
        "gw.yaml:13: service.pipelines.traces.receivers[1]: references receiver 'zipkin'"
    )
    assert got[3].startswith("gw.yaml:16: service.pipelines.events: unknown pipeline signal 'events'")
    assert got[4].startswith(
        "gw.yaml:8: exporters.file/unused: exporter 'file/unused' is defined but not used"
    )


# ---------------------------------------------------------------- YAML-level problems
def test_duplicate_keys_are_errors() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            timeout: 1s
            timeout: 2s
        exporters:
          debug: {}
          debug:
            verbosity: basic
        service:
          pipelines:
            logs:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
        """
    )
    assert got == [
        "gw.yaml:6: processors.batch.timeout: duplicate key",
        "gw.yaml:9: exporters.debug: duplicate key",
    ]


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("receivers:\n  otlp: {protocols: {grpc: {}}}\n processors:\n", 3, "expected <block end>"),
        ("receivers:\n  otlp:\n    protocols: [grpc\nservice: {}\n", 4, "expected ',' or ']'"),
        ("exporters:\n  debug: {}\n\tfile: {}\n", 3, "cannot start any token"),
        ("service:\n  pipelines:\n    logs:\n      - receivers: [otlp]\n      exporters: [debug]\n", 5, ""),
    ],
)
def test_invalid_yaml_reports_the_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(text, FILE, {})
    [issue] = info.value.issues
    assert str(issue).startswith(f"gw.yaml:{line}: invalid YAML: ")
    assert problem in str(issue)


def test_top_level_must_be_a_mapping() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("- receivers\n- exporters\n", FILE, {})
    assert [str(i) for i in info.value.issues] == ["gw.yaml:1: the top level of a config must be a mapping"]


def test_empty_document_is_an_empty_config() -> None:
    raw, _ = load_text("# nothing yet\n", FILE, {})
    assert raw == {}
    with pytest.raises(ConfigError, match="missing the service section"):
        build_config(raw, Locations())


def test_yaml_merge_keys_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("base: &b {timeout: 1s}\nbatch:\n  <<: *b\n", FILE, {})
    assert [str(i) for i in info.value.issues] == ["gw.yaml:3: batch: YAML merge keys (<<) are not supported"]


# ---------------------------------------------------------------- environment variables
def test_env_reference_is_expanded() -> None:
    raw = raw_of(
        'endpoint: "${env:GRPC}"\npath: "${env:DIR}/otlp.jsonl"\n', {"GRPC": "0.0.0.0:4317", "DIR": "/d"}
    )
    assert raw == {"endpoint": "0.0.0.0:4317", "path": "/d/otlp.jsonl"}


def test_env_default_applies_only_when_unset() -> None:
    text = 'endpoint: "${env:GRPC:-127.0.0.1:4317}"\nempty: "${env:NOPE:-}"\n'
    assert raw_of(text, {}) == {"endpoint": "127.0.0.1:4317", "empty": ""}
    assert raw_of(text, {"GRPC": "[::]:4317", "NOPE": "x"}) == {"endpoint": "[::]:4317", "empty": "x"}
    # set but empty is not unset: the empty value wins over the default
    assert raw_of(text, {"GRPC": ""})["endpoint"] == ""


def test_double_dollar_is_a_literal_dollar() -> None:
    raw = raw_of('a: "price: $$5"\nb: "$${env:HOME}"\nc: "$$$${env:X}"\n', {"X": "1", "HOME": "/root"})
    assert raw == {"a": "price: $5", "b": "${env:HOME}", "c": "$${env:X}"}


def test_unset_env_var_is_an_error_at_its_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_text('a: 1\nb:\n  token: "${env:API_TOKEN}"\n  other: ${env:ALSO_MISSING}\n', FILE, {})
    assert [str(i) for i in info.value.issues] == [
        "gw.yaml:3: b.token: environment variable API_TOKEN is not set "
        "(write ${env:API_TOKEN:-} to allow an empty value)",
        "gw.yaml:4: b.other: environment variable ALSO_MISSING is not set "
        "(write ${env:ALSO_MISSING:-} to allow an empty value)",
    ]


def test_other_references_are_rejected() -> None:
    with pytest.raises(ConfigError) as info:
        load_text("a: 1\nb: ${HOME}\n", FILE, {"HOME": "/root"})
    [issue] = info.value.issues
    assert str(issue).startswith("gw.yaml:2: b: unsupported reference '${HOME}'")


def test_unquoted_env_reference_types_like_its_value() -> None:
    env = {"PORT": "4317", "ON": "true", "RATIO": "0.5", "NAME": "llm", "EMPTY": "", "ODD": "[not yaml"}
    raw = raw_of(
        """\
        port: ${env:PORT}
        quoted: "${env:PORT}"
        single: '${env:PORT}'
        on: ${env:ON}
        ratio: ${env:RATIO}
        name: ${env:NAME}
        empty: ${env:EMPTY}
        odd: ${env:ODD}
        joined: host:${env:PORT}
        """,
        env,
    )
    assert raw == {
        "port": 4317,
        "quoted": "4317",
        "single": "4317",
        "on": True,
        "ratio": 0.5,
        "name": "llm",
        "empty": "",
        "odd": "[not yaml",
        "joined": "host:4317",
    }
    assert type(raw["port"]) is int


def test_env_expansion_in_a_full_config() -> None:
    cfg = load(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            send_batch_size: ${env:BATCH_SIZE}
            timeout: ${env:BATCH_TIMEOUT:-1m30s}
        exporters:
          debug: {}
        service:
          pipelines:
            traces:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
          telemetry:
            admin:
              endpoint: "${env:ADMIN:-127.0.0.1:8888}"
        """,
        {"BATCH_SIZE": "64", "ADMIN": "0.0.0.0:9999"},
    )
    batch = component(cfg, Kind.PROCESSOR, "batch")
    assert batch.send_batch_size == 64
    assert batch.timeout == 90.0
    assert cfg.service.telemetry.admin.endpoint == "0.0.0.0:9999"


def test_value_from_env_is_validated_at_the_referencing_line() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        processors:
          batch:
            send_batch_size: ${env:BATCH_SIZE}
        exporters:
          debug: {}
        service:
          pipelines:
            traces:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
        """,
        {"BATCH_SIZE": "many"},
    )
    assert len(got) == 1
    assert got[0].startswith("gw.yaml:5: processors.batch.send_batch_size: ")
    assert "(got 'many')" in got[0]


# ---------------------------------------------------------------- several files
BASE_FILE = """\
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:4317
processors:
  batch:
    send_batch_size: 100
    timeout: 1s
exporters:
  debug:
    verbosity: basic
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug]
"""


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text), encoding="utf-8")
    return str(p)


def test_files_merge_in_order_later_wins(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE_FILE)
    over = write(
        tmp_path,
        "over.yaml",
        """\
        processors:
          batch:
            timeout: 5s
        exporters:
          file/spans:
            path: /tmp/spans.jsonl
        service:
          pipelines:
            traces:
              exporters: [debug, file/spans]
        """,
    )
    cfg = load_config([base, over], env={})
    batch = component(cfg, Kind.PROCESSOR, "batch")
    assert batch.timeout == 5.0  # replaced by the later file
    assert batch.send_batch_size == 100  # kept from the earlier file (maps merge key by key)
    assert cfg.pipelines[0].exporters == (ComponentId("debug"), ComponentId("file", "spans"))
    assert cfg.pipelines[0].receivers == (ComponentId("otlp"),)
    assert cfg.sources == [base, over]

    # and the other way round the base file wins
    tweak = write(tmp_path, "tweak.yaml", "processors:\n  batch:\n    timeout: 5s\n")
    cfg = load_config([tweak, base], env={})
    assert component(cfg, Kind.PROCESSOR, "batch").timeout == 1.0


def test_issues_point_to_the_file_that_set_the_value(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", BASE_FILE.replace("send_batch_size: 100", "send_batch_size: -5"))
    over = write(
        tmp_path,
        "over.yaml",
        """\
        # production overrides
        processors:
          batch:
            timeout: later
        service:
          pipelines:
            traces:
              exporters:
                - debug
                - otlp/upstream
        """,
    )
    with pytest.raises(ConfigError) as info:
        load_config([base, over], env={})
    got = [str(i) for i in info.value.issues]
    assert len(got) == 3, got
    assert got[0].startswith(f"{base}:8: processors.batch.send_batch_size: ")
    assert got[1].startswith(f"{over}:4: processors.batch.timeout: invalid duration 'later'")
    assert got[2] == (
        f"{over}:10: service.pipelines.traces.exporters[1]: "
        "references exporter 'otlp/upstream', which is not defined under exporters"
    )


def test_replaced_values_drop_stale_locations() -> None:
    a, la = load_text("x:\n  list:\n    - 1\n    - 2\n    - 3\n", "a.yaml", {})
    b, lb = load_text("\n\nx:\n  list: [9]\n", "b.yaml", {})
    merged, locs = merge(a, la, b, lb)
    assert merged == {"x": {"list": [9]}}
    assert str(locs.find(("x", "list"))) == "b.yaml:4"
    assert str(locs.find(("x", "list", 0))) == "b.yaml:4"
    # [2] came from a.yaml but no longer exists: fall back to the list itself, in b.yaml
    assert str(locs.find(("x", "list", 2))) == "b.yaml:4"
    assert str(locs.find(("x",))) == "b.yaml:3"


def test_errors_in_several_files_are_all_reported(tmp_path: Path) -> None:
    one = write(
        tmp_path, "one.yaml", "receivers:\n  otlp: {protocols: {grpc: {}}}\n  otlp: {protocols: {grpc: {}}}\n"
    )
    two = write(tmp_path, "two.yaml", "exporters:\n  debug: [\n")
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError) as info:
        load_config([one, two, missing], env={})
    got = [str(i) for i in info.value.issues]
    assert len(got) == 3, got
    assert got[0] == f"{one}:3: receivers.otlp: duplicate key"
    assert got[1].startswith(f"{two}:3: invalid YAML: ")
    assert got[2].startswith(f"{missing}:") and "cannot read config file" in got[2]


# ---------------------------------------------------------------- durations
@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("200ms", 0.2),
        ("1m30s", 90.0),
        ("5s", 5.0),
        ("1h", 3600.0),
        ("250us", 0.00025),
        ("1.5s", 1.5),
        ("2", 2.0),
        ("0.5", 0.5),
        (3, 3.0),
        (0.25, 0.25),
        (0, 0.0),
    ],
)
def test_durations(value: Any, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)
    cfg = load(
        f"""\
        receivers:
          otlp: {{protocols: {{grpc: {{}}}}}}
        processors:
          batch:
            timeout: {value}
        exporters:
          debug: {{}}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              processors: [batch]
              exporters: [debug]
          shutdown_timeout: {value}
        """
    )
    assert cfg.service.shutdown_timeout == pytest.approx(seconds)
    assert component(cfg, Kind.PROCESSOR, "batch").timeout == pytest.approx(seconds)


@pytest.mark.parametrize("value", ["10 parsecs", "fast", "5 s", "1m30", "true", "-1s", "''"])
def test_invalid_durations(value: str) -> None:
    got = issues(
        f"""\
        receivers:
          otlp: {{protocols: {{grpc: {{}}}}}}
        exporters:
          debug: {{}}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
          shutdown_timeout: {value}
        """
    )
    assert len(got) == 1
    assert got[0].startswith("gw.yaml:10: service.shutdown_timeout: ")
    assert "duration" in got[0]


def test_negative_duration_is_rejected() -> None:
    got = issues(
        """\
        receivers:
          otlp: {protocols: {grpc: {}}}
        exporters:
          debug: {}
        service:
          pipelines:
            logs:
              receivers: [otlp]
              exporters: [debug]
          shutdown_timeout: -1
        """
    )
    assert len(got) == 1 and got[0].startswith("gw.yaml:10: service.shutdown_timeout: ")


# ---------------------------------------------------------------- the embedded default
def test_embedded_default_config_validates() -> None:
    cfg = load_config(env={})
    assert cfg.sources == [DEFAULT_CONFIG_NAME]
    assert [p.name for p in cfg.pipelines] == ["traces", "metrics", "logs", "anomalies"]
    procs = {p.name: [str(c) for c in p.processors] for p in cfg.pipelines}
    assert procs == {
        "traces": ["memory_limiter", "redact", "genai", "batch"],
        "metrics": ["memory_limiter", "redact", "batch"],
        "logs": ["memory_limiter", "redact", "batch"],
        "anomalies": [],
    }
    wiring = {p.name: ([str(c) for c in p.receivers], [str(c) for c in p.exporters]) for p in cfg.pipelines}
    assert wiring == {
        "traces": (["otlp"], ["debug", "file/local", "detect"]),
        "metrics": (["otlp"], ["debug", "file/local"]),
        "logs": (["otlp"], ["debug", "file/local"]),
        "anomalies": (["detect"], ["debug", "file/alerts"]),
    }
    assert cfg.service.telemetry.admin.endpoint == "127.0.0.1:8888"
    assert cfg.service.telemetry.logs.level == "info"


def test_embedded_default_binds_loopback_and_honours_sentinel_env() -> None:
    text = default_config_text()
    raw, _ = load_text(text, DEFAULT_CONFIG_NAME, {})
    protocols = raw["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "127.0.0.1:4317"
    assert protocols["http"]["endpoint"] == "127.0.0.1:4318"
    assert raw["exporters"]["file/local"]["path"] == "./sentinel-data/otlp.jsonl"

    env = {
        "SENTINEL_GRPC_ENDPOINT": "0.0.0.0:14317",
        "SENTINEL_HTTP_ENDPOINT": "0.0.0.0:14318",
        "SENTINEL_ADMIN_ENDPOINT": "0.0.0.0:18888",
        "SENTINEL_DATA_DIR": "/var/lib/sentinel",
    }
    raw, _ = load_text(text, DEFAULT_CONFIG_NAME, env)
    protocols = raw["receivers"]["otlp"]["protocols"]
    assert protocols["grpc"]["endpoint"] == "0.0.0.0:14317"
    assert protocols["http"]["endpoint"] == "0.0.0.0:14318"
    assert raw["exporters"]["file/local"]["path"] == "/var/lib/sentinel/otlp.jsonl"
    cfg = load_config(env=env)
    assert cfg.service.telemetry.admin.endpoint == "0.0.0.0:18888"


def test_a_file_can_override_the_embedded_default(tmp_path: Path) -> None:
    default = write(tmp_path, "default.yaml", default_config_text())
    over = write(
        tmp_path,
        "over.yaml",
        """\
        service:
          telemetry:
            logs:
              level: debug
              format: json
        """,
    )
    cfg = load_config([default, over], env={})
    assert cfg.service.telemetry.logs.level == "debug"
    assert cfg.service.telemetry.logs.format == "json"
    assert len(cfg.pipelines) == 4
