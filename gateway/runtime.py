"""The running gateway: start order, readiness, signals and graceful shutdown.

Start: exporters → processors → receivers → admin server, so nothing is
accepted before it can go somewhere. Shutdown reverses it: receivers stop
accepting first, processors flush (the batch buffer), then exporter queues
drain within `service.shutdown_timeout`.

As worker i of `sentinel run --workers N` (`worker=`), the gateway is the same
except that its admin server listens on a private unix socket, stateful
connectors are told which worker they are (`attach_worker`, e.g. `detect`
hands series it does not own to their owner), and only SIGTERM from the
supervisor stops it (a terminal's SIGINT reaches the supervisor, which
forwards it as SIGTERM).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

from aiohttp import web

from gateway import memory
from gateway.admin import AdminServer
from gateway.config.model import GatewayConfig
from gateway.pipeline import Graph, build_graph
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from gateway.worker_config import WorkerSpec

log = logging.getLogger("sentinel.runtime")


def alert_routes(store: Any) -> list[web.RouteDef]:
    """`GET /api/v1/anomalies`: the detection connector's alert store, or an empty answer without one."""
    if store is not None:
        return list(store.routes())

    async def no_detection(_: web.Request) -> web.Response:
        return web.json_response({"anomalies": [], "count": 0, "detection": "not configured"})

    return [web.get("/api/v1/anomalies", no_detection)]


class Gateway:
    def __init__(self, config: GatewayConfig, worker: WorkerSpec | None = None) -> None:
        self.config = config
        self.worker = worker
        self.telemetry = SelfTelemetry()
        self.admission = Admission()
        self.graph: Graph = build_graph(config, self.telemetry, self.admission)
        admin = config.service.telemetry.admin.endpoint
        if worker is not None:
            admin = f"unix:{worker.admin_socket}"
            for conn in self.graph.connectors.values():
                attach = getattr(conn, "attach_worker", None)
                if attach is not None:
                    attach(worker, config.service.shutdown_timeout / 2)
        self.admin = AdminServer(admin, self.telemetry, self.readiness)
        self.admin.add_routes(alert_routes(self.telemetry.shared.get("alert_store")))
        self._started = False
        self._stopping = False
        self._stop_event: asyncio.Event | None = None
        self._memory_task: asyncio.Task[None] | None = None

    # ---------------------------------------------------------------- lifecycle
    async def start(self) -> None:
        t0 = time.perf_counter()
        self._stop_event = asyncio.Event()
        await self.admin.start()  # liveness answers while the rest starts
        try:
            for exp in self.graph.exporters.values():
                await exp.start()
            for proc in reversed(self.graph.all_processors()):
                await proc.start()
            for conn in self.graph.connectors.values():
                await conn.start()
            for rec in self.graph.receivers.values():
                await rec.start()
        except BaseException:
            await self.shutdown()
            raise
        self._started = True
        # once ready, give back what start-up left resident (LLVM's code, free heap): gateway.memory
        self._memory_task = memory.start_releaser(lambda: self.readiness()[0], self.telemetry.registry)
        log.info(
            "gateway started",
            extra={
                "fields": {
                    "startup_ms": round((time.perf_counter() - t0) * 1000, 1),
                    "pipelines": [p.name for p in self.graph.pipelines],
                    "endpoints": self.endpoints(),
                }
            },
        )

    async def shutdown(self) -> None:
        if self._stopping:
            return
        self._stopping = True
        timeout = self.config.service.shutdown_timeout
        deadline = time.monotonic() + timeout
        log.info("shutting down", extra={"fields": {"timeout_s": timeout}})
        await memory.stop_releaser(self._memory_task)
        t0 = time.monotonic()
        for rec in self.graph.receivers.values():
            await _guard(rec.shutdown(), f"receiver {rec.id}")
        log.debug(f"receivers stopped after {time.monotonic() - t0:.3f}s")
        # Pipelines fed by receivers flush first, then connectors, then the pipelines they feed.
        for fed_by_connector in (False, True):
            if fed_by_connector:
                for conn in self.graph.connectors.values():
                    remaining = max(0.001, deadline - time.monotonic())
                    await _guard(asyncio.wait_for(conn.shutdown(), remaining), f"connector {conn.id}")
            for pl in self.graph.pipelines:
                if pl.fed_by_connector != fed_by_connector:
                    continue
                for proc in pl.processors:
                    remaining = max(0.001, deadline - time.monotonic())
                    await _guard(
                        asyncio.wait_for(proc.shutdown(), remaining), f"processor {proc.id} in {pl.name}"
                    )
        log.debug(f"processors flushed after {time.monotonic() - t0:.3f}s")
        remaining = max(0.0, deadline - time.monotonic())
        await asyncio.gather(
            *(
                _guard(asyncio.wait_for(exp.shutdown(), remaining or 0.001), f"exporter {exp.id}")
                for exp in self.graph.exporters.values()
            )
        )
        log.debug(f"exporters drained after {time.monotonic() - t0:.3f}s")
        await self.admin.stop()
        if self._stop_event is not None:
            self._stop_event.set()
        log.info("gateway stopped")

    async def run_until_stopped(self) -> None:
        """Start, then serve until SIGTERM/SIGINT (a worker: SIGTERM only) or `request_stop()`."""
        signals = (signal.SIGTERM, signal.SIGINT) if self.worker is None else (signal.SIGTERM,)
        if self.worker is not None:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        await self.start()
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in signals:
            loop.add_signal_handler(sig, stop.set)
        self._external_stop = stop
        await stop.wait()
        for sig in signals:
            loop.remove_signal_handler(sig)
        await self.shutdown()

    def request_stop(self) -> None:
        stop = getattr(self, "_external_stop", None)
        if stop is not None:
            stop.set()

    # ---------------------------------------------------------------- state
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        receivers = {str(cid): r.listening() for cid, r in self.graph.receivers.items()}
        connectors = {str(cid): c.ready() for cid, c in self.graph.connectors.items()}
        ready = self._started and not self._stopping and all(receivers.values()) and all(connectors.values())
        detail: dict[str, Any] = {"receivers": receivers, "pipelines": [p.name for p in self.graph.pipelines]}
        if self.worker is not None:
            detail["worker"] = self.worker.index
        if connectors:
            detail["connectors"] = connectors
        return ready, detail

    def endpoints(self) -> dict[str, str]:
        out = {"admin": self.admin.bound}
        for cid, rec in self.graph.receivers.items():
            for transport, addr in rec.endpoints().items():
                out[f"{cid}/{transport}"] = addr
        return out


async def _guard(coro: Any, what: str) -> None:
    try:
        await coro
    except TimeoutError:
        log.error(f"{what} did not finish within the shutdown timeout; remaining data is dropped")
    except Exception:
        log.exception(f"{what} failed during shutdown")
