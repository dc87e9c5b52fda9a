"""Real time-series servers for the test-suite (Prometheus, VictoriaMetrics, InfluxDB 1.x).

Standard library only: ``tests/servers/run.sh`` calls :func:`main` (after installing the Debian
packages), and ``tests/servers/fixtures.py`` uses :class:`ServerProcess` for extra throwaway
instances. Everything lives under ``<repo>/.test-servers/`` (git-ignored):

* ``servers.json``  - URLs, data dirs and PIDs of the shared instances (see README.md)
* ``leases/<id>``   - one file per user of the shared instances; ``stop`` only stops them when the
  last live lease is released, so two ``make test`` runs in one checkout do not kill each other's
  servers
* ``run-<stamp>/<name>/`` - the throwaway data dir and ``server.log`` of each instance
* ``lock``          - flock serialising start/stop
* ``stop-requested`` - a ``stop`` deferred because of other leases; the last lease released stops
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
STATE_DIR = Path(os.environ.get("SENTINEL_TEST_SERVERS_DIR", REPO_ROOT / ".test-servers"))
SERVERS_JSON = STATE_DIR / "servers.json"
LEASES_DIR = STATE_DIR / "leases"
LOCK_FILE = STATE_DIR / "lock"
STOP_REQUESTED = STATE_DIR / "stop-requested"

NAMES = ("prometheus", "victoriametrics", "influxdb")
BINARIES = {"prometheus": "prometheus", "victoriametrics": "victoria-metrics", "influxdb": "influxd"}
HEALTH_PATHS = {"prometheus": "/-/ready", "victoriametrics": "/health", "influxdb": "/ping"}

START_TIMEOUT = float(os.environ.get("SENTINEL_TEST_SERVERS_START_TIMEOUT", "60"))
STOP_TIMEOUT = 10.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    exe = shutil.which(BINARIES[name]) or shutil.which(BINARIES[name], path="/usr/bin:/usr/sbin")
    if exe is None:
        raise RuntimeError(f"{BINARIES[name]} not installed (tests/servers/run.sh start installs it)")
    return exe


def http_status(url: str, timeout: float = 2.0) -> int:
    """HTTP status of a GET (0 when the server does not answer)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return 0


def pid_alive(pid: int, exe_hint: str | None = None) -> bool:
    """True when ``pid`` runs and (if given) its command line mentions ``exe_hint``.

    The hint guards against killing an unrelated process that recycled a stale PID.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
        if exe_hint is not None:
            return exe_hint.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return True


def terminate_pid(pid: int, exe_hint: str | None = None, timeout: float = STOP_TIMEOUT) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; waits until the process is gone."""
    if not pid_alive(pid, exe_hint):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return
        _reap(pid)
        time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.05)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


@dataclass
class ServerProcess:
    """One server instance on 127.0.0.1 with its own data dir.

    ``stop()`` keeps the data dir so ``start()`` can bring the same instance back on the same
    port (an outage); ``close()`` stops it and deletes the data dir.
    """

    name: str
    data_dir: Path
    port: int = 0
    extra_args: Sequence[str] = ()
    pid: int | None = None
    aux_ports: dict[str, int] = field(default_factory=dict)
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def health_url(self) -> str:
        return self.url + HEALTH_PATHS[self.name]

    @property
    def log_path(self) -> Path:
        return self.data_dir / "server.log"

    def _command(self) -> list[str]:
        d = self.data_dir
        if self.name == "prometheus":
            cfg = d / "prometheus.yml"
            cfg.write_text(
                "global:\n  scrape_interval: 15s\n  evaluation_interval: 15s\nscrape_configs: []\n"
            )
            return [
                binary("prometheus"),
                f"--config.file={cfg}",
                f"--storage.tsdb.path={d / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-remote-write-receiver",
                "--web.enable-admin-api",
                "--log.level=warn",
                *self.extra_args,
            ]
        if self.name == "victoriametrics":
            return [
                binary("victoriametrics"),
                f"-httpListenAddr=127.0.0.1:{self.port}",
                f"-storageDataPath={d / 'data'}",
                "-search.latencyOffset=0s",
                "-search.disableCache",
                "-loggerLevel=WARN",
                *self.extra_args,
            ]
        if self.name == "influxdb":
            rpc = self.aux_ports.setdefault("rpc", free_port())
            cfg = d / "influxdb.conf"
            cfg.write_text(
                f'reporting-disabled = true\nbind-address = "127.0.0.1:{rpc}"\n'
                f'[meta]\n  dir = "{d / "meta"}"\n'
                f'[data]\n  dir = "{d / "data"}"\n  wal-dir = "{d / "wal"}"\n  query-log-enabled = false\n'
                f'[http]\n  enabled = true\n  bind-address = "127.0.0.1:{self.port}"\n'
                "  log-enabled = false\n  flux-enabled = false\n"
                "[monitor]\n  store-enabled = false\n"
                '[logging]\n  level = "warn"\n'
            )
            return [binary("influxdb"), "-config", str(cfg), *self.extra_args]
        raise ValueError(f"unknown server {self.name!r}")

    def start(self, timeout: float = START_TIMEOUT, attempts: int = 3) -> ServerProcess:
        """Start (or restart after ``stop()``) and wait until the health endpoint answers."""
        if self.pid is not None and pid_alive(self.pid):
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        keep_port = self.port != 0
        last_error = ""
        for _ in range(attempts):
            if not keep_port:
                self.port = free_port()
                self.aux_ports.clear()
            with open(self.log_path, "ab") as log:
                proc = subprocess.Popen(
                    self._command(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.data_dir,
                    start_new_session=True,  # survives the shell that started it; no stray signals
                )
            self._proc, self.pid = proc, proc.pid
            if self._wait_healthy(timeout):
                return self
            last_error = self.log_tail()
            self.stop()
            if keep_port:  # a restart on a fixed port: retry only if the port was stolen
                time.sleep(0.5)
        raise RuntimeError(f"{self.name} did not become healthy on {self.url}; log tail:\n{last_error}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                return False
            if http_status(self.health_url, timeout=1.0) in (200, 204):
                return True
            time.sleep(0.05)
        return False

    def alive(self) -> bool:
        return self.pid is not None and pid_alive(self.pid, BINARIES[self.name])

    def healthy(self) -> bool:
        return self.alive() and http_status(self.health_url) in (200, 204)

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the process (TERM, KILL after ``timeout``); keeps the data dir and port."""
        if self.pid is not None:
            terminate_pid(self.pid, BINARIES[self.name], timeout)
            if self._proc is not None:
                with contextlib.suppress(Exception):
                    self._proc.wait(timeout=1)
        self.pid, self._proc = None, None

    def kill(self) -> None:
        """SIGKILL (a crash rather than a clean shutdown)."""
        if self.pid is not None and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)
        self.stop(timeout=5)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def restart(self, extra_args: Sequence[str] | None = None, timeout: float = START_TIMEOUT) -> None:
        """Stop and start again on the same port and data dir, optionally with new flags."""
        self.stop()
        if extra_args is not None:
            self.extra_args = tuple(extra_args)
        self.start(timeout=timeout)

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"


def throwaway_dir(name: str, root: Path | None = None) -> Path:
    base = root or STATE_DIR
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))


# --------------------------------------------------------------------- shared instances (run.sh)


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_servers() -> dict[str, Any] | None:
    try:
        data = json.loads(SERVERS_JSON.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _running(info: dict[str, object]) -> bool:
    pids = info.get("pids")
    if not isinstance(pids, dict):
        return False
    for name in NAMES:
        pid, url = pids.get(name), info.get(name)
        if not isinstance(pid, int) or not isinstance(url, str):
            return False
        if not pid_alive(pid, BINARIES[name]) or http_status(url + HEALTH_PATHS[name]) not in (200, 204):
            return False
    return True


def _live_leases() -> list[Path]:
    live = []
    for lease in LEASES_DIR.glob("*") if LEASES_DIR.is_dir() else []:
        try:
            pid = int(lease.name)
        except ValueError:
            lease.unlink(missing_ok=True)
            continue
        if pid_alive(pid):
            live.append(lease)
        else:
            lease.unlink(missing_ok=True)
    return live


def _stop_recorded(info: dict[str, object] | None) -> None:
    if info:
        pids = info.get("pids")
        if isinstance(pids, dict):
            for name in NAMES:
                pid = pids.get(name)
                if isinstance(pid, int):
                    terminate_pid(pid, BINARIES[name])
        dirs = info.get("dirs")
        if isinstance(dirs, dict):
            for d in dirs.values():
                if isinstance(d, str) and Path(d).is_relative_to(STATE_DIR):
                    shutil.rmtree(d, ignore_errors=True)
        run_dir = info.get("run_dir")
        if isinstance(run_dir, str) and Path(run_dir).is_relative_to(STATE_DIR):
            shutil.rmtree(run_dir, ignore_errors=True)
    SERVERS_JSON.unlink(missing_ok=True)


def start_shared(lease: int) -> dict[str, object]:
    with _locked():
        LEASES_DIR.mkdir(parents=True, exist_ok=True)
        (LEASES_DIR / str(lease)).touch()
        STOP_REQUESTED.unlink(missing_ok=True)
        info = read_servers()
        if info is not None and _running(info):
            print(f"test servers already running ({SERVERS_JSON})", file=sys.stderr)
            return info
        _stop_recorded(info)  # a half-dead previous run: clean it up and start fresh
        t0 = time.monotonic()
        run_dir = Path(tempfile.mkdtemp(prefix=time.strftime("run-%Y%m%d-%H%M%S-"), dir=STATE_DIR))
        servers = [ServerProcess(name, run_dir / name) for name in NAMES]
        try:
            for s in servers:  # start all, then wait: the three boot in parallel
                s.data_dir.mkdir(parents=True)
            _start_parallel(servers)
        except BaseException:
            for s in servers:
                s.stop()
            shutil.rmtree(run_dir, ignore_errors=True)
            raise
        info = {s.name: s.url for s in servers}
        info["dirs"] = {s.name: str(s.data_dir) for s in servers}
        info["pids"] = {s.name: s.pid for s in servers}
        info["run_dir"] = str(run_dir)
        info["started_at"] = time.time()
        tmp = SERVERS_JSON.with_suffix(".tmp")
        tmp.write_text(json.dumps(info, indent=2) + "\n")
        tmp.replace(SERVERS_JSON)
        print(f"test servers started in {time.monotonic() - t0:.1f}s -> {SERVERS_JSON}", file=sys.stderr)
        return info


def _start_parallel(servers: list[ServerProcess]) -> None:
    import threading

    errors: list[BaseException] = []

    def run(s: ServerProcess) -> None:
        try:
            s.start()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def join_shared(lease: int) -> dict[str, Any] | None:
    """Hold a lease on the running servers (so another run's `stop` leaves them up); None if down."""
    with _locked():
        info = read_servers()
        if info is None or not _running(info):
            return None
        LEASES_DIR.mkdir(parents=True, exist_ok=True)
        (LEASES_DIR / str(lease)).touch()
        return info


def release_lease(lease: int) -> None:
    """Give a lease back; the last one out stops the servers if a `stop` was deferred meanwhile."""
    with _locked():
        (LEASES_DIR / str(lease)).unlink(missing_ok=True)
        if STOP_REQUESTED.exists() and not _live_leases():
            _stop_recorded(read_servers())
            STOP_REQUESTED.unlink(missing_ok=True)


def stop_shared(lease: int | None, force: bool = False) -> bool:
    """Release ``lease``; stop the servers when no live lease remains (or ``force``). True if stopped."""
    with _locked():
        if lease is not None:
            (LEASES_DIR / str(lease)).unlink(missing_ok=True)
        others = _live_leases()
        if others and not force:
            STOP_REQUESTED.touch()  # the last lease released stops them
            print(
                f"test servers still in use by {len(others)} other run(s); they stop when the last "
                "one ends (run.sh stop --force stops them now)",
                file=sys.stderr,
            )
            return False
        _stop_recorded(read_servers())
        STOP_REQUESTED.unlink(missing_ok=True)
        for lease_file in others:
            lease_file.unlink(missing_ok=True)
        # leftover extra instances (fixtures.py) of a crashed session: nothing references them now
        print("test servers stopped", file=sys.stderr)
        return True


def status_shared() -> int:
    info = read_servers()
    if info is None:
        print("test servers: not started")
        return 3
    pids = info.get("pids") if isinstance(info.get("pids"), dict) else {}
    assert isinstance(pids, dict)
    ok = True
    for name in NAMES:
        url = info.get(name)
        pid = pids.get(name)
        alive = isinstance(pid, int) and pid_alive(pid, BINARIES[name])
        code = http_status(f"{url}{HEALTH_PATHS[name]}") if alive else 0
        healthy = code in (200, 204)
        ok = ok and healthy
        print(f"{name:16} {url}  pid={pid}  {'healthy' if healthy else f'DOWN (http {code})'}")
    print(f"leases: {len(_live_leases())}")
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in ("start", "stop", "status", "restart"):
        print("usage: run.sh start|stop [--force]|status|restart", file=sys.stderr)
        return 2
    lease_env = os.environ.get("SENTINEL_TEST_SERVERS_LEASE")
    lease = int(lease_env) if lease_env else os.getppid()
    cmd = args[0]
    if cmd == "start":
        start_shared(lease)
        return 0
    if cmd == "stop":
        stop_shared(lease, force="--force" in args)
        return 0
    if cmd == "restart":
        stop_shared(lease, force=True)
        start_shared(lease)
        return 0
    return status_shared()


if __name__ == "__main__":
    raise SystemExit(main())
