"""Admin HTTP server: liveness, readiness and Prometheus metrics.

`/healthz` answers as long as the event loop runs; `/readyz` is 200 only when
every receiver listens and every pipeline started (and 503 while starting or
draining), which is what Kubernetes probes and load balancers need.

The endpoint is `host:port`, or `unix:/path` for a worker's private admin
socket (the supervisor of `--workers N` serves the public endpoint and gives
readiness and metrics of its own, merged from the workers').
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from gateway.telemetry import SelfTelemetry

Readiness = Callable[[], tuple[bool, dict[str, Any]] | Awaitable[tuple[bool, dict[str, Any]]]]
UNIX_PREFIX = "unix:"


class AdminServer:
    def __init__(
        self,
        endpoint: str,
        telemetry: SelfTelemetry | None,
        readiness: Readiness,
        metrics: Callable[[], Awaitable[bytes]] | None = None,
        health: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.telemetry = telemetry
        self.readiness = readiness
        self._metrics_source = metrics
        self._health = health
        self.app = web.Application()
        self.app.router.add_get("/healthz", self._healthz)
        self.app.router.add_get("/readyz", self._readyz)
        self.app.router.add_get("/metrics", self._metrics)
        self._runner: web.AppRunner | None = None
        self.bound: str = endpoint

    def add_routes(self, routes: list[web.RouteDef]) -> None:
        """Let later subsystems (e.g. the anomaly store) serve their own API here."""
        self.app.router.add_routes(routes)

    async def start(self) -> None:
        self._runner = web.AppRunner(self.app, access_log=None, handle_signals=False)
        await self._runner.setup()
        if self.endpoint.startswith(UNIX_PREFIX):
            unix = web.UnixSite(self._runner, self.endpoint[len(UNIX_PREFIX) :])
            await unix.start()
            return
        host, _, port = self.endpoint.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port), reuse_address=True)
        await site.start()
        server = site._server
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            sock = server.sockets[0].getsockname()  # type: ignore[attr-defined]
            self.bound = f"{host}:{sock[1]}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok", **(self._health() if self._health else {})})

    async def _readyz(self, _: web.Request) -> web.Response:
        answer = self.readiness()
        ready, detail = await answer if inspect.isawaitable(answer) else answer
        body = orjson.dumps({"status": "ready" if ready else "not ready", **detail})
        return web.Response(body=body, status=200 if ready else 503, content_type="application/json")

    async def _metrics(self, _: web.Request) -> web.Response:
        if self._metrics_source is not None:
            data = await self._metrics_source()
        else:
            assert self.telemetry is not None
            data = generate_latest(self.telemetry.registry)
        return web.Response(body=data, headers={"Content-Type": CONTENT_TYPE_LATEST})
