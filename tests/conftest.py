"""Shared test harness: free ports and a real gateway running in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.config.model import build_config
from gateway.config.source import load_text
from gateway.runtime import Gateway

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RunningGateway:
    """A Gateway on its own event loop thread; call from sync test code."""

    def __init__(self, config_text: str) -> None:
        raw, locs = load_text(config_text, "test.yaml")
        self.config = build_config(raw, locs)
        self.loop = asyncio.new_event_loop()
        self.gateway: Gateway | None = None
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> RunningGateway:
        self._thread.start()

        async def _start() -> Gateway:
            gw = Gateway(self.config)
            await gw.start()
            return gw

        try:
            self.gateway = self.call(_start())
        except BaseException:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            raise
        return self

    def call(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        """Graceful shutdown; safe to call more than once."""
        if not self._thread.is_alive():
            return
        if self.gateway is not None:
            self.call(self.gateway.shutdown())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def endpoints(self) -> dict[str, str]:
        assert self.gateway is not None
        return self.gateway.endpoints()

    def metric(self, name: str, **labels: str) -> float:
        """Current value of a self-metric sample (0 when absent)."""
        assert self.gateway is not None
        v = self.gateway.telemetry.registry.get_sample_value(name, labels or None)
        return float(v or 0.0)


@contextlib.contextmanager
def running_gateway(config: str | dict[str, Any]) -> Iterator[RunningGateway]:
    text = config if isinstance(config, str) else yaml.safe_dump(config)
    gw = RunningGateway(text).start()
    try:
        yield gw
    finally:
        gw.stop()


def wait_until(pred: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


@pytest.fixture
def ports() -> dict[str, int]:
    return {"grpc": free_port(), "http": free_port(), "admin": free_port()}


from tests.servers.fixtures import *  # noqa: E402,F403
