"""`sentinel run --workers N`: a supervisor and N gateway worker processes sharing the OTLP ports.

One Python process uses about one core. With N workers:

* **Workers** are ordinary gateways (`gateway.runtime.Gateway`) started as
  `python -m gateway.workers worker --index i …`. Their OTLP receivers bind the
  configured ports with SO_REUSEPORT, so the kernel spreads client connections
  over them (per connection: one gRPC channel or HTTP keep-alive connection
  stays on one worker). Per-process resources get a `worker-<i>` variant
  (`gateway.worker_config`: file exporter paths, persistent queue directories).
  Each worker's admin server listens on a unix socket in a private run
  directory. A worker stops on SIGTERM only, and also when the supervisor
  disappears.
* **Detection** is per series, and each series is owned by one worker, which
  receives the other workers' calls of that series (`processors/detect/routing.py`).
* **The supervisor** (this module) is the `sentinel run` process: once the
  config is valid it snapshots the config files (a restarted worker runs what
  the others run), starts the workers, and re-executes itself as a lean
  `python -m gateway.workers supervise …` that adopts them (same pid, none of
  the component modules validation loaded, ~60 MiB less). It reaps and
  restarts workers and serves the configured admin endpoint: `/healthz` (the supervisor is
  alive), `/readyz` (200 when every worker is ready), `/metrics` and
  `/api/v1/anomalies` merged from the workers (`gateway.admin_merge`), plus
  `llm_sentinel_worker_up{worker}` and `llm_sentinel_worker_restarts_total{worker}`.
  SIGTERM or SIGINT is forwarded to every worker as SIGTERM, so each drains as
  a single gateway does; the supervisor exits 0 when all of them did. A worker
  that exits before the gateway first became ready aborts the start (exit 1);
  one that dies later is restarted with exponential backoff (0.5 s doubling
  to 30 s; reset once it has run for a minute), and the port keeps being
  served by the others meanwhile.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from gateway import memory
from gateway.admin import AdminServer
from gateway.admin_merge import Exposition, MetricsMerger, merge_anomalies
from gateway.config.model import GatewayConfig
from gateway.worker_config import WorkerSpec, admin_socket

log = logging.getLogger("sentinel.supervisor")

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
STABLE_AFTER_S = 60.0  # a worker that ran this long starts its backoff afresh
ADMIN_TIMEOUT_S = 2.0
KILL_GRACE_S = 5.0  # beyond shutdown_timeout, before a worker is killed


@dataclass(frozen=True)
class Settings:
    """What the supervisor needs of the (already validated) config."""

    workers: int
    admin_endpoint: str
    shutdown_timeout: float
    run_dir: Path
    configs: list[str]  # snapshots in run_dir, passed to every worker (empty: the embedded default)
    log_level: str = "info"
    log_format: str = "console"
    adopt: tuple[int, ...] = ()  # pids of workers already started (by `sentinel run` before the exec)

    def argv(self) -> list[str]:
        out = ["supervise", "--workers", str(self.workers), "--admin", self.admin_endpoint]
        out += ["--shutdown-timeout", repr(self.shutdown_timeout), "--run-dir", str(self.run_dir)]
        out += ["--log-level", self.log_level, "--log-format", self.log_format]
        for c in self.configs:
            out += ["--config", c]
        if self.adopt:
            out += ["--adopt", ",".join(map(str, self.adopt))]
        return out

    def spawn(self, index: int) -> int:
        """Start worker `index` (its own process group: a terminal's Ctrl-C reaches the supervisor
        only, which stops the workers in order); its pid."""
        cmd = [sys.executable, "-P", "-m", "gateway.workers", "worker", "--index", str(index)]
        cmd += ["--count", str(self.workers), "--run-dir", str(self.run_dir)]
        for c in self.configs:
            cmd += ["--config", c]
        # -P: not a `gateway` in the working directory, if there is one, but the supervisor's code
        return os.posix_spawn(sys.executable, cmd, _worker_env(), setpgroup=0)


@dataclass
class Worker:
    index: int
    pid: int | None = None  # while running
    started_at: float = 0.0
    restarts: int = 0
    quick_exits: int = 0
    returncode: int | None = None
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers = [Worker(i) for i in range(settings.workers)]
        self.run_dir = settings.run_dir
        self.merger = MetricsMerger()
        self.registry = CollectorRegistry(auto_describe=True)
        self._proc = psutil.Process(os.getpid())
        self._t0 = time.monotonic()
        self._own_metrics()
        self._stop = asyncio.Event()
        self._stopping = False
        self._started = False  # every worker was ready once
        self._failed = False
        self._sessions: dict[int, aiohttp.ClientSession] = {}

    def _own_metrics(self) -> None:
        r = self.registry
        self.m_up = Gauge(
            "llm_sentinel_worker_up", "1 while the worker process runs.", ["worker"], registry=r
        )
        self.m_restarts = Counter(
            "llm_sentinel_worker_restarts", "Times the supervisor restarted a worker.", ["worker"], registry=r
        )
        for w in self.workers:
            self.m_up.labels(str(w.index)).set_function(_up(w))
            self.m_restarts.labels(str(w.index))
        rss = Gauge(
            "otelcol_process_memory_rss", "Total physical memory (resident set size) in bytes.", registry=r
        )
        rss.set_function(lambda: float(self._proc.memory_info().rss))
        cpu = Gauge("otelcol_process_cpu_seconds", "Total CPU user and system time in seconds.", registry=r)
        cpu.set_function(lambda: float(sum(self._proc.cpu_times()[:2])))
        up = Gauge("otelcol_process_uptime", "Uptime of the process in seconds.", registry=r)
        up.set_function(lambda: time.monotonic() - self._t0)

    # ---------------------------------------------------------------- lifecycle
    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 0 when every worker drained and exited cleanly."""
        try:
            return await self._run()
        finally:
            for s in self._sessions.values():
                await s.close()
            shutil.rmtree(self.run_dir, ignore_errors=True)

    async def _run(self) -> int:
        admin = AdminServer(
            self.settings.admin_endpoint,
            None,
            self.readiness,
            metrics=self.metrics,
            health=self.health,
        )
        admin.add_routes([web.get("/api/v1/anomalies", self._anomalies)])
        try:
            await admin.start()
        except OSError as exc:
            log.error("admin endpoint %s: %s", self.settings.admin_endpoint, exc)
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            for w in self.workers:
                adopted = self.settings.adopt[w.index] if w.index < len(self.settings.adopt) else None
                self._spawn(w, adopted)
            watchers = [
                asyncio.create_task(self._watch(w), name=f"watch-worker-{w.index}") for w in self.workers
            ]
            starting = asyncio.create_task(self._await_started())
            releasing = memory.start_releaser(lambda: self._started)  # start-up code pages, free heap
            await self._stop.wait()
            starting.cancel()
            await memory.stop_releaser(releasing)
            self._stopping = True
            log.info("shutting down: stopping %d workers", len(self.workers))
            clean = await self._stop_workers()
            for t in watchers:
                t.cancel()
            await asyncio.gather(*watchers, starting, return_exceptions=True)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await admin.stop()
        if self._failed:
            return 1
        log.info("gateway stopped")
        return 0 if clean else 1

    def _spawn(self, w: Worker, pid: int | None = None) -> None:
        """Start `w`, or take over the process `sentinel run` started for it before the exec."""
        w.pid = pid if pid is not None else self.settings.spawn(w.index)
        w.returncode, w.exited, w.started_at = None, asyncio.Event(), time.monotonic()
        if pid is None:
            log.info("worker %d started", w.index, extra={"fields": {"pid": w.pid}})

    async def _await_started(self) -> None:
        while True:
            states = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
            if all(ready for ready, _ in states):
                self._started = True
                log.info(
                    "gateway started",
                    extra={
                        "fields": {
                            "workers": len(self.workers),
                            "startup_ms": round((time.time() - self._proc.create_time()) * 1000, 1),
                            "admin": self.settings.admin_endpoint,
                            "pids": [w.pid for w in self.workers],
                        }
                    },
                )
                return
            await asyncio.sleep(0.05)

    async def _watch(self, w: Worker) -> None:
        """Reap `w` whenever it exits and restart it, until the supervisor stops."""
        while True:
            assert w.pid is not None
            code = await _reap(w.pid)
            w.pid, w.returncode = None, code
            w.exited.set()
            if self._stopping:
                return
            lived = time.monotonic() - w.started_at
            if not self._started:
                log.error(
                    "worker %d exited with %s during start-up; stopping the gateway", w.index, _status(code)
                )
                self._failed = True
                self._stop.set()
                return
            w.quick_exits = 1 if lived >= STABLE_AFTER_S else w.quick_exits + 1
            delay = min(BACKOFF_FIRST_S * 2 ** (w.quick_exits - 1), BACKOFF_MAX_S)
            log.error(
                "worker %d exited with %s after %.1f s; restarting it in %.1f s",
                w.index,
                _status(code),
                lived,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stopping or self._stop.is_set():
                return
            w.restarts += 1
            self.m_restarts.labels(str(w.index)).inc()
            self._spawn(w)

    async def _stop_workers(self) -> bool:
        """SIGTERM every worker, wait for their drain, kill what overstays. True if all exited cleanly."""
        running = [w for w in self.workers if w.pid is not None]
        for w in running:
            _signal(w, signal.SIGTERM)
        timeout = self.settings.shutdown_timeout + KILL_GRACE_S
        if running:
            waits = [asyncio.create_task(w.exited.wait()) for w in running]
            await asyncio.wait(waits, timeout=timeout)
            for t in waits:
                t.cancel()
        clean = True
        for w in running:
            if not w.exited.is_set():
                log.error("worker %d did not stop within %.0f s; killing it", w.index, timeout)
                _signal(w, signal.SIGKILL)
                await w.exited.wait()
                clean = False
            elif w.returncode not in (0, -signal.SIGTERM):  # -SIGTERM: stopped before it could drain
                log.error("worker %d exited with %s while stopping", w.index, _status(w.returncode or 0))
                clean = False
        return clean

    # ---------------------------------------------------------------- admin
    def _session(self, index: int) -> aiohttp.ClientSession:
        s = self._sessions.get(index)
        if s is None:
            connector = aiohttp.UnixConnector(path=str(admin_socket(self.run_dir, index)), force_close=True)
            s = self._sessions[index] = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=ADMIN_TIMEOUT_S)
            )
        return s

    async def _get(self, w: Worker, path: str) -> tuple[int, bytes] | None:
        """A worker's admin answer; None when it is not running or does not answer."""
        if w.pid is None:
            return None
        try:
            async with self._session(w.index).get(f"http://worker{path}") as r:
                return r.status, await r.read()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    async def _worker_ready(self, w: Worker) -> tuple[bool, Any]:
        answer = await self._get(w, "/readyz")
        if answer is None:
            return False, "not running" if w.pid is None else "not answering"
        status, body = answer
        try:
            return status == 200, _json(body)
        except ValueError:
            return False, body.decode(errors="replace")[:200]

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        states = await asyncio.gather(*(self._worker_ready(w) for w in self.workers))
        workers = [
            {
                "worker": w.index,
                "pid": w.pid,
                "ready": ready,
                "restarts": w.restarts,
                "admin": f"unix:{admin_socket(self.run_dir, w.index)}",
                "detail": detail,
            }
            for w, (ready, detail) in zip(self.workers, states, strict=True)
        ]
        ready = not self._stopping and all(ready for ready, _ in states)
        return ready, {"workers": workers}

    def health(self) -> dict[str, Any]:
        running = sum(1 for w in self.workers if w.pid is not None)
        return {"workers": {"configured": len(self.workers), "running": running}}

    async def metrics(self) -> bytes:
        answers = await asyncio.gather(*(self._get(w, "/metrics") for w in self.workers))
        scrapes: dict[int, tuple[int, str | None]] = {}
        for w, answer in zip(self.workers, answers, strict=True):
            text = answer[1].decode() if answer is not None and answer[0] == 200 else None
            scrapes[w.index] = (w.pid or 0, text)
        merged = self.merger.merge(scrapes, self.registry.collect())
        return generate_latest(Exposition(merged))

    async def _anomalies(self, request: web.Request) -> web.Response:
        path = "/api/v1/anomalies" + (f"?{request.query_string}" if request.query_string else "")
        answers = await asyncio.gather(*(self._get(w, path) for w in self.workers))
        bodies: list[dict[str, Any]] = []
        missing = []
        for w, answer in zip(self.workers, answers, strict=True):
            if answer is None:
                missing.append(w.index)
                continue
            status, data = answer
            if status != 200:  # a bad query: every worker says the same
                return web.Response(body=data, status=status, content_type="application/json")
            bodies.append(_json(data))
        merged = merge_anomalies(bodies, int(request.query.get("limit", "100")))
        if missing:
            merged["workers_unavailable"] = missing
        return web.json_response(merged)


def _signal(w: Worker, sig: signal.Signals) -> None:
    if w.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(w.pid, sig)


async def _reap(pid: int) -> int:
    """Wait for child `pid` to exit without blocking the loop; its exit code (-N: signal N)."""
    if hasattr(os, "pidfd_open"):
        fd = os.pidfd_open(pid)  # readable once the process exited (a zombie still has its pidfd)
        try:
            loop = asyncio.get_running_loop()
            exited: asyncio.Future[None] = loop.create_future()

            def readable() -> None:
                if not exited.done():
                    exited.set_result(None)

            loop.add_reader(fd, readable)
            try:
                await exited
            finally:
                loop.remove_reader(fd)
        finally:
            os.close(fd)
    else:  # pragma: no cover - not Linux
        while os.waitpid(pid, os.WNOHANG) == (0, 0):
            await asyncio.sleep(0.1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def _worker_env() -> dict[str, str]:
    """The environment of a worker: the supervisor's, and its code rather than any other copy."""
    import gateway

    env = dict(os.environ)
    root = str(Path(gateway.__file__).resolve().parent.parent)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    # found via the working directory or an editable install (not a site directory): say where
    if root not in paths and root not in sys.path[1:]:
        env["PYTHONPATH"] = os.pathsep.join([root, *paths])
    return env


def _up(w: Worker) -> Any:
    return lambda: 1.0 if w.pid is not None else 0.0


def _json(data: bytes) -> Any:
    import orjson

    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(str(exc)) from exc


def _status(code: int) -> str:
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def run_supervisor(config: GatewayConfig, config_paths: Sequence[str], workers: int) -> int:
    """Start the workers, then become the supervisor (does not return). The process re-executes
    itself as a lean `python -m gateway.workers supervise …`, which adopts the workers: validating
    the config imported every component (numba, the price table, …), ~60 MiB the supervisor has no
    use for, and the workers start meanwhile."""
    run_dir = Path(tempfile.mkdtemp(prefix="sentinel-"))
    snapshots = []
    for k, path in enumerate(config_paths):  # a worker restarted later runs what the others run
        dest = run_dir / f"config-{k}-{Path(path).name}"
        shutil.copyfile(path, dest)
        snapshots.append(str(dest))
    logs = config.service.telemetry.logs
    settings = Settings(
        workers,
        config.service.telemetry.admin.endpoint,
        config.service.shutdown_timeout,
        run_dir,
        snapshots,
        logs.level,
        logs.format,
    )
    pids = []
    for i in range(workers):
        pids.append(settings.spawn(i))
        log.info("worker %d started", i, extra={"fields": {"pid": pids[-1]}})
    settings = dataclasses.replace(settings, adopt=tuple(pids))
    for handler in logging.getLogger().handlers:
        handler.flush()
    argv = [sys.executable, "-P", "-m", "gateway.workers", *settings.argv()]
    os.execve(sys.executable, argv, _worker_env())


def supervise(settings: Settings) -> int:
    with asyncio.Runner() as runner:
        try:
            return runner.run(Supervisor(settings).run())
        except KeyboardInterrupt:  # before the signal handlers were installed
            shutil.rmtree(settings.run_dir, ignore_errors=True)
            return 130


# ---------------------------------------------------------------- worker process
class _WorkerField(logging.Filter):
    """Adds `worker=<i>` to every log record, so interleaved worker logs stay readable."""

    def __init__(self, index: int) -> None:
        super().__init__()
        self.index = index

    def filter(self, record: logging.LogRecord) -> bool:
        record.fields = {**(getattr(record, "fields", None) or {}), "worker": self.index}
        return True


async def _serve(gateway: Any, supervisor_pid: int) -> None:
    """Run the gateway; stop it if the supervisor goes away (the worker would be orphaned)."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(1.0)
            if os.getppid() != supervisor_pid:
                logging.getLogger("sentinel.worker").error("the supervisor is gone; stopping")
                gateway.request_stop()

    watcher = asyncio.create_task(watch())
    try:
        await gateway.run_until_stopped()
    finally:
        watcher.cancel()


def worker_main(args: argparse.Namespace) -> int:
    from gateway.cli import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, _run_event_loop
    from gateway.config.model import load_config
    from gateway.config.source import ConfigError
    from gateway.telemetry import setup_logging
    from gateway.worker_config import for_worker

    supervisor_pid = os.getppid()
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for issue in exc.issues:
            print(str(issue), file=sys.stderr)
        return EXIT_USAGE
    logs = config.service.telemetry.logs
    setup_logging(logs.level, logs.format)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_WorkerField(args.index))
    spec = WorkerSpec(args.index, args.count, Path(args.run_dir))
    try:
        from gateway.runtime import Gateway

        gateway = Gateway(for_worker(config, spec.index), worker=spec)
    except Exception:
        log.exception("could not build the pipelines from the config")
        return EXIT_FAILURE
    try:
        _run_event_loop(lambda: _serve(gateway, supervisor_pid))
    except Exception as exc:
        log.error("worker failed: %s", exc, exc_info=not isinstance(exc, OSError))
        return EXIT_FAILURE
    finally:
        if os.getppid() != supervisor_pid:  # nobody else will remove the sockets
            shutil.rmtree(spec.run_dir, ignore_errors=True)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m gateway.workers supervise|worker …`: started by `sentinel run --workers N` only."""
    ap = argparse.ArgumentParser(prog="python -m gateway.workers", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="role", required=True)
    sv = sub.add_parser("supervise")
    sv.add_argument("--workers", type=int, required=True)
    sv.add_argument("--admin", required=True)
    sv.add_argument("--shutdown-timeout", type=float, required=True)
    sv.add_argument("--log-level", default="info")
    sv.add_argument("--log-format", default="console")
    sv.add_argument("--adopt", default="", help="pids of the workers, already started")
    wk = sub.add_parser("worker")
    wk.add_argument("--index", type=int, required=True)
    wk.add_argument("--count", type=int, required=True)
    for p in (sv, wk):
        p.add_argument("--run-dir", required=True)
        p.add_argument("--config", action="append", default=[])
    args = ap.parse_args(argv)
    if args.role == "worker":
        return worker_main(args)
    from gateway.telemetry import setup_logging

    setup_logging(args.log_level, args.log_format)
    settings = Settings(
        args.workers,
        args.admin,
        args.shutdown_timeout,
        Path(args.run_dir),
        args.config,
        args.log_level,
        args.log_format,
        tuple(int(p) for p in args.adopt.split(",") if p),
    )
    return supervise(settings)


if __name__ == "__main__":
    raise SystemExit(main())
