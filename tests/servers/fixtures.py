"""pytest fixtures for the real servers started by ``tests/servers/run.sh``.

Registered for the whole suite by the last line of ``tests/conftest.py``.

* ``servers`` (session): the shared instances as a :class:`Servers` (URLs from
  ``.test-servers/servers.json``), with a lease held for the session so that another run's
  ``run.sh stop`` leaves them up. If that file is missing or its servers are down (e.g. someone ran
  pytest directly, without ``make test``), it runs ``run.sh start`` itself and ``run.sh stop`` at
  session end. Skips the test when the servers cannot be started (e.g. no root for apt-get) unless
  ``SENTINEL_REQUIRE_TEST_SERVERS=1`` (CI), where it fails instead.
* ``server_factory`` (function): starts extra throwaway instances, stopped and deleted at teardown::

      vm = server_factory("victoriametrics", extra_args=["-storage.minFreeDiskSpaceBytes=1000000000000000"])
      prom = server_factory("prometheus"); prom.stop(); ...; prom.start()  # same port, same data

* helpers: :func:`prom_query` / :func:`vm_query` (instant query -> {labels: value}; the latter
  force-flushes VictoriaMetrics first, see :func:`vm_flush`), :func:`influx_query`,
  :func:`wait_for_value`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest

from tests.servers import (
    HEALTH_PATHS,
    REPO_ROOT,
    STATE_DIR,
    ServerProcess,
    http_status,
    join_shared,
    read_servers,
    release_lease,
    throwaway_dir,
)

__all__ = [
    "Servers",
    "influx_query",
    "prom_query",
    "server_factory",
    "servers",
    "vm_flush",
    "vm_query",
    "wait_for_value",
]

RUN_SH = REPO_ROOT / "tests" / "servers" / "run.sh"


@dataclass(frozen=True)
class Servers:
    prometheus: str
    victoriametrics: str
    influxdb: str
    dirs: dict[str, str]
    pids: dict[str, int]


def _healthy(info: dict[str, Any]) -> bool:
    return all(
        isinstance(info.get(n), str) and http_status(info[n] + HEALTH_PATHS[n]) in (200, 204)
        for n in HEALTH_PATHS
    )


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    lease = os.getpid()
    env = {**os.environ, "SENTINEL_TEST_SERVERS_LEASE": str(lease)}
    # Running already (make test, or another session): hold a lease so their `stop` leaves them up.
    info = join_shared(lease)
    started_here = info is None
    if info is None:
        proc = subprocess.run([str(RUN_SH), "start"], env=env, capture_output=True, text=True, timeout=600)
        info = read_servers()
        if proc.returncode != 0 or info is None or not _healthy(info):
            msg = f"tests/servers/run.sh start failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
            if os.environ.get("SENTINEL_REQUIRE_TEST_SERVERS") == "1":
                pytest.fail(msg)
            pytest.skip(msg)
    try:
        yield Servers(
            prometheus=info["prometheus"],
            victoriametrics=info["victoriametrics"],
            influxdb=info["influxdb"],
            dirs=dict(info.get("dirs", {})),
            pids=dict(info.get("pids", {})),
        )
    finally:
        if started_here:  # stops them unless another run holds a lease meanwhile
            subprocess.run([str(RUN_SH), "stop"], env=env, capture_output=True, timeout=120)
        else:
            release_lease(lease)


@pytest.fixture
def server_factory(servers: Servers) -> Iterator[Callable[..., ServerProcess]]:
    """Start extra instances: ``server_factory(name, extra_args=(), start=True)``.

    Depends on ``servers`` so the binaries are installed. Every instance gets its own port and a
    throwaway dir under ``.test-servers/extra/``; all are stopped and deleted at teardown.
    """
    made: list[ServerProcess] = []

    def make(name: str, extra_args: Sequence[str] = (), start: bool = True) -> ServerProcess:
        if name not in HEALTH_PATHS:
            raise ValueError(f"unknown server {name!r}; one of {sorted(HEALTH_PATHS)}")
        proc = ServerProcess(name, throwaway_dir(name, STATE_DIR / "extra"), extra_args=tuple(extra_args))
        made.append(proc)
        if start:
            proc.start()
        return proc

    yield make
    for proc in made:
        proc.close()


# ------------------------------------------------------------------------------------- queries


def _get_json(url: str, timeout: float = 10.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def prom_query(base_url: str, query: str, at: float | None = None) -> dict[frozenset[tuple[str, str]], float]:
    """Instant query against the Prometheus HTTP API (also VictoriaMetrics).

    Returns ``{frozenset(labels.items()): value}`` for vector results.
    """
    params = {"query": query}
    if at is not None:
        params["time"] = f"{at:.3f}"
    body = _get_json(f"{base_url}/api/v1/query?{urllib.parse.urlencode(params)}")
    if body.get("status") != "success":
        raise AssertionError(f"query {query!r} failed: {body}")
    data = body["data"]
    if data["resultType"] == "scalar":
        return {frozenset(): float(data["result"][1])}
    return {frozenset(r["metric"].items()): float(r["value"][1]) for r in data["result"]}


def vm_flush(base_url: str) -> None:
    """Make VictoriaMetrics' recent writes searchable now (otherwise new series show up after ~10 s)."""
    with urllib.request.urlopen(f"{base_url}/internal/force_flush", timeout=10) as resp:
        resp.read()


def vm_query(
    base_url: str, query: str, at: float | None = None, flush: bool = True
) -> dict[frozenset[tuple[str, str]], float]:
    """:func:`prom_query` against VictoriaMetrics, after a force flush."""
    if flush:
        vm_flush(base_url)
    return prom_query(base_url, query, at)


def influx_query(base_url: str, q: str, db: str | None = None) -> Any:
    params = {"q": q, **({"db": db} if db else {})}
    return _get_json(f"{base_url}/query?{urllib.parse.urlencode(params)}")


def wait_for_value(
    fn: Callable[[], Any], pred: Callable[[Any], bool] = bool, timeout: float = 15.0, interval: float = 0.1
) -> Any:
    """Poll ``fn`` until ``pred(result)``; returns the result or raises with the last value seen."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = fn()
            if pred(last):
                return last
        except Exception as exc:  # a server that is still coming up
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last: {last!r}")
        time.sleep(interval)
