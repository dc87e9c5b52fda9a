"""The `sentinel` command line, run for real as a subprocess (`python -m gateway`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from importlib.metadata import entry_points, version
from pathlib import Path

import pytest
import yaml

from gateway.component import Kind
from gateway.config.model import default_config_text
from gateway.registry import known_types
from tests.conftest import free_port

SENTINEL = [sys.executable, "-m", "gateway"]


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The test process's environment without any SENTINEL_* setting, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SENTINEL_")}
    env.update(extra or {})
    return env


def sentinel(
    *args: str, cwd: Path | None = None, env: Mapping[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SENTINEL, *args],
        cwd=cwd,
        env=clean_env(env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


GOOD = """\
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:4318
processors:
  batch:
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

# Three independent mistakes; the line of each is in the comment.
BAD = """\
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:4318
processors:
  batch:
    send_batch_size: lots        # line 8: wrong type
exporters:
  debug:
    verbosity: basic
    colour: true                 # line 12: unknown key
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [debug, file]   # line 18: file is not defined
"""


def expect_bad_issues(stream: str, name: str) -> None:
    lines = stream.splitlines()
    issue_lines = [ln for ln in lines if ln.startswith(f"{name}:")]
    assert len(issue_lines) == 3, stream
    assert issue_lines[0].startswith(f"{name}:8: processors.batch.send_batch_size: ")
    assert issue_lines[1] == f"{name}:12: exporters.debug.colour: unknown key"
    assert issue_lines[2] == (
        f"{name}:18: service.pipelines.traces.exporters[1]: "
        "references exporter 'file', which is not defined under exporters"
    )


# ---------------------------------------------------------------- version and help
def test_version() -> None:
    res = sentinel("--version")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == f"sentinel (llm-sentinel) {version('llm-sentinel')}"


def test_console_script_points_at_main() -> None:
    [ep] = [ep for ep in entry_points(group="console_scripts") if ep.name == "sentinel"]
    assert ep.value == "gateway.cli:main"


def test_help_teaches_commands_examples_and_environment() -> None:
    res = sentinel("--help")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert out.startswith("usage: sentinel")
    assert "OpenTelemetry gateway" in out
    for command in ("run", "validate", "config", "components"):
        assert f"\n    {command}" in out, command
    assert "examples:" in out
    assert "sentinel run --config gateway.yaml" in out
    assert "sentinel validate -c gateway.yaml" in out
    for var in (
        "SENTINEL_GRPC_ENDPOINT",
        "SENTINEL_HTTP_ENDPOINT",
        "SENTINEL_ADMIN_ENDPOINT",
        "SENTINEL_DATA_DIR",
    ):
        assert var in out, var
    assert "${env:NAME:-default}" in out
    assert "exit codes" in out


def test_subcommand_help() -> None:
    run = sentinel("run", "--help")
    assert run.returncode == 0
    assert "--config FILE" in run.stdout and "SIGTERM" in run.stdout and "exit 2" in run.stdout
    validate = sentinel("validate", "--help")
    assert validate.returncode == 0
    assert "every issue" in validate.stdout


@pytest.mark.parametrize("args", [[], ["launch"], ["run", "--bogus"], ["config"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    res = sentinel(*args)
    assert res.returncode == 2
    assert "usage: sentinel" in res.stderr
    assert "Traceback" not in res.stderr


# ---------------------------------------------------------------- validate
def test_validate_good_config(tmp_path: Path) -> None:
    write(tmp_path / "good.yaml", GOOD)
    res = sentinel("validate", "--config", "good.yaml", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("config OK: 1 pipeline (traces); 1 receiver, 1 processor, 1 exporter")
    assert "good.yaml" in res.stdout
    assert res.stderr == ""


def test_validate_without_config_checks_the_embedded_default(tmp_path: Path) -> None:
    res = sentinel("validate", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("config OK: 4 pipelines (traces, metrics, logs, anomalies)")
    assert "<embedded default>" in res.stdout


def test_validate_bad_config_prints_every_issue_with_file_and_line(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", BAD)
    res = sentinel("validate", "-c", "bad.yaml", cwd=tmp_path)
    assert res.returncode == 1
    assert res.stdout == ""
    assert res.stderr.splitlines()[0] == "config invalid (3 issues):"
    expect_bad_issues(res.stderr, "bad.yaml")
    assert "Traceback" not in res.stderr


def test_validate_merges_files_in_order(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", BAD)
    write(
        tmp_path / "fix.yaml",
        """\
        processors:
          batch:
            send_batch_size: 100
        exporters:
          debug:
            verbosity: normal
        service:
          pipelines:
            traces:
              exporters: [debug, debug/extra]
        """,
    )
    # fix.yaml repairs two of bad.yaml's issues but its own reference is dangling
    res = sentinel("validate", "-c", "bad.yaml", "-c", "fix.yaml", cwd=tmp_path)
    assert res.returncode == 1
    issues = [ln for ln in res.stderr.splitlines() if ln.endswith("not defined under exporters")]
    assert issues == [
        "fix.yaml:10: service.pipelines.traces.exporters[1]: "
        "references exporter 'debug/extra', which is not defined under exporters"
    ]
    assert "bad.yaml:12: exporters.debug.colour: unknown key" in res.stderr  # merged maps keep it
    assert "send_batch_size" not in res.stderr


def test_validate_reports_unreadable_files_and_env_errors(tmp_path: Path) -> None:
    write(tmp_path / "env.yaml", GOOD.replace("127.0.0.1:4318", '"${env:LLM_SENTINEL_TEST_UNSET}"'))
    res = sentinel("validate", "-c", "env.yaml", "-c", "missing.yaml", cwd=tmp_path)
    assert res.returncode == 1
    lines = res.stderr.splitlines()
    assert lines[0] == "config invalid (2 issues):"
    assert lines[1].startswith("env.yaml:5: receivers.otlp.protocols.http.endpoint: environment variable ")
    assert "LLM_SENTINEL_TEST_UNSET is not set" in lines[1]
    assert lines[2].startswith("missing.yaml:") and "cannot read config file" in lines[2]


# ---------------------------------------------------------------- config default, components
def test_config_default_prints_the_embedded_yaml(tmp_path: Path) -> None:
    res = sentinel("config", "default")
    assert res.returncode == 0, res.stderr
    assert res.stdout == default_config_text()
    assert set(yaml.safe_load(res.stdout)) == {
        "receivers",
        "processors",
        "connectors",
        "exporters",
        "service",
    }
    # what it prints is a valid config to start from
    (tmp_path / "mine.yaml").write_text(res.stdout, encoding="utf-8")
    check = sentinel("validate", "-c", "mine.yaml", cwd=tmp_path)
    assert check.returncode == 0, check.stderr


def test_components_lists_every_registered_type() -> None:
    res = sentinel("components")
    assert res.returncode == 0, res.stdout + res.stderr
    out = res.stdout
    for kind in Kind:
        assert f"{kind.value}:\n" in out
        section = out.split(f"{kind.value}:\n", 1)[1]
        for type_name in known_types(kind):
            assert f"\n  {type_name} " in "\n" + section, (kind, type_name)
    assert "(cannot be loaded" not in out and "(no description)" not in out
    for line in out.splitlines():
        if line.startswith("  "):
            assert line.endswith("]"), line  # the signals each type supports


# ---------------------------------------------------------------- run
def test_run_refuses_an_invalid_config(tmp_path: Path) -> None:
    write(tmp_path / "bad.yaml", BAD)
    t0 = time.monotonic()
    res = sentinel("run", "--config", "bad.yaml", cwd=tmp_path, timeout=30)
    assert res.returncode == 2
    assert time.monotonic() - t0 < 30
    assert res.stderr.splitlines()[0] == "sentinel: refusing to start, the config is invalid (3 issues):"
    expect_bad_issues(res.stderr, "bad.yaml")
    assert "gateway started" not in res.stderr
    assert "Traceback" not in res.stderr


class Proc:
    """A `sentinel run` subprocess whose output goes to a file (no pipe to fill up)."""

    def __init__(self, args: list[str], cwd: Path, env: Mapping[str, str]) -> None:
        self.log_path = cwd / "sentinel.log"
        self._log = self.log_path.open("w", encoding="utf-8")
        self.popen = subprocess.Popen(
            [*SENTINEL, *args], cwd=cwd, env=clean_env(env), stdout=self._log, stderr=subprocess.STDOUT
        )

    @property
    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(encoding="utf-8")

    def wait_ready(self, admin_port: int, timeout: float = 60) -> None:
        url = f"http://127.0.0.1:{admin_port}/readyz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"sentinel exited with {self.popen.returncode} before ready:\n{self.log}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"not ready within {timeout}s:\n{self.log}")

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 40) -> int:
        self.popen.send_signal(sig)
        return self.popen.wait(timeout)

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)
        self._log.close()


Start = Callable[[list[str], Mapping[str, str]], Proc]


@pytest.fixture
def start_sentinel(tmp_path: Path) -> Iterator[Start]:
    procs: list[Proc] = []

    def start(args: list[str], env: Mapping[str, str]) -> Proc:
        p = Proc(args, tmp_path, env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.close()


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def assert_clean_log(log: str) -> None:
    assert "gateway started" in log, log
    assert "shutting down" in log, log
    assert log.rstrip().endswith("gateway stopped"), log
    for bad in ("Traceback", " ERROR ", " WARNING ", " CRITICAL "):
        assert bad not in log, log


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_run_default_config_serves_until_signal_then_exits_0(
    tmp_path: Path, start_sentinel: Start, sig: signal.Signals
) -> None:
    grpc, http, admin = free_port(), free_port(), free_port()
    env = {
        "SENTINEL_GRPC_ENDPOINT": f"127.0.0.1:{grpc}",
        "SENTINEL_HTTP_ENDPOINT": f"127.0.0.1:{http}",
        "SENTINEL_ADMIN_ENDPOINT": f"127.0.0.1:{admin}",
        "SENTINEL_DATA_DIR": str(tmp_path / "data"),
    }
    proc = start_sentinel(["run"], env)
    proc.wait_ready(admin)

    status, body = get(f"http://127.0.0.1:{admin}/readyz")
    assert status == 200 and json.loads(body)["status"] == "ready"
    assert get(f"http://127.0.0.1:{admin}/healthz")[0] == 200
    status, metrics = get(f"http://127.0.0.1:{admin}/metrics")
    assert status == 200
    for name in ("otelcol_process_uptime", "otelcol_receiver_accepted_spans", "otelcol_exporter_sent_spans"):
        assert name.encode() in metrics, name
    # the OTLP ports the environment asked for are the ones listening
    for port in (grpc, http):
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass

    assert proc.stop(sig) == 0, proc.log
    log = proc.log
    assert_clean_log(log)
    assert f"127.0.0.1:{grpc}" in log and f"127.0.0.1:{http}" in log


def test_run_with_config_file_flushes_accepted_data_on_sigterm(tmp_path: Path, start_sentinel: Start) -> None:
    http, admin = free_port(), free_port()
    out = tmp_path / "out" / "spans.jsonl"
    write(
        tmp_path / "gw.yaml",
        f"""\
        receivers:
          otlp:
            protocols:
              http:
                endpoint: 127.0.0.1:{http}
        processors:
          batch:
            timeout: 1m   # only shutdown can send this batch
        exporters:
          file:
            path: {out}
        service:
          pipelines:
            traces:
              receivers: [otlp]
              processors: [batch]
              exporters: [file]
          telemetry:
            logs:
              level: info
              format: json
            admin:
              endpoint: 127.0.0.1:{admin}
        """,
    )
    proc = start_sentinel(["run", "--config", "gw.yaml"], {})
    proc.wait_ready(admin)

    trace_id = "5b8efff798038103d269b633813fc60c"
    request = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "cli-test"}}]},
                "scopeSpans": [
                    {
                        "scope": {"name": "test"},
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b174",
                                "name": "chat gpt-4o",
                                "kind": 3,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000001000000000",
                            }
                        ],
                    }
                ],
            }
        ]
    }
    req = urllib.request.Request(
        f"http://127.0.0.1:{http}/v1/traces",
        data=json.dumps(request).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.status == 200

    assert proc.stop(signal.SIGTERM) == 0, proc.log
    records = [json.loads(line) for line in proc.log.splitlines()]  # every line is a JSON log record
    assert [r["msg"] for r in records if r["logger"] == "sentinel.runtime"][-1] == "gateway stopped"
    assert not [r for r in records if r["level"] in ("warning", "error", "critical")], records
    assert trace_id in out.read_text(encoding="utf-8")


def test_run_exits_1_when_a_port_is_taken(tmp_path: Path, start_sentinel: Start) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {
            "SENTINEL_GRPC_ENDPOINT": f"127.0.0.1:{free_port()}",
            "SENTINEL_HTTP_ENDPOINT": f"127.0.0.1:{free_port()}",
            "SENTINEL_ADMIN_ENDPOINT": f"127.0.0.1:{port}",
            "SENTINEL_DATA_DIR": str(tmp_path / "data"),
        }
        proc = start_sentinel(["run"], env)
        assert proc.popen.wait(60) == 1, proc.log
    log = proc.log
    assert "address already in use" in log.lower(), log
    assert "Traceback" not in log
