"""A lean OTLP/HTTP client for load tests: pre-formatted request heads, one keep-alive connection
per request in flight, no per-request object machinery.

Why: on a 2-core machine the load generator competes with the gateway for the same cores. aiohttp's
client costs roughly half a millisecond of CPU per request, which at ~500 requests/s is a third of a
core taken from a two-worker gateway; this client needs a fraction of that, so a worker-scaling run
measures the gateway rather than the client. It speaks only what the benchmark needs: POST with a
Content-Length body, a response with Content-Length (the gateway's aiohttp server always sends one
for OTLP responses), HTTP/1.1 keep-alive.
"""

from __future__ import annotations

import asyncio

_HEAD_END = b"\r\n\r\n"


class RawHttpSender:
    """`send(body)` → (ok, response body, error text); up to `concurrency` connections, reused."""

    def __init__(self, host: str, port: int, path: str, concurrency: int, gzipped: bool) -> None:
        self.host, self.port = host, port
        encoding = "Content-Encoding: gzip\r\n" if gzipped else ""
        self._head = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            f"Content-Type: application/x-protobuf\r\n{encoding}Content-Length: "
        ).encode("ascii")
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self._all: list[asyncio.StreamWriter] = []
        self._limit = asyncio.Semaphore(concurrency)

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._idle:
            return self._idle.pop()
        reader, writer = await asyncio.open_connection(self.host, self.port, limit=1 << 20)
        self._all.append(writer)
        return reader, writer

    async def send(self, body: bytes) -> tuple[bool, bytes, str]:
        async with self._limit:
            reader, writer = await self._connection()
            try:
                writer.write(self._head + str(len(body)).encode("ascii") + _HEAD_END + body)
                head = await reader.readuntil(_HEAD_END)
                status, length, close = _parse_head(head)
                data = await reader.readexactly(length) if length else b""
            except BaseException:
                writer.close()  # a half-read connection cannot be reused
                raise
            if close:
                writer.close()
            else:
                self._idle.append((reader, writer))
            return 200 <= status < 300, data, f"HTTP {status}: {data[:200]!r}"

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()


def _parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, server closes) from a response head."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0][:80]!r}")
    status, length, close = int(parts[1]), 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection" and value.strip().lower() == b"close":
            close = True
        elif key == b"transfer-encoding":
            raise ValueError("chunked responses are not supported by this load-test client")
    return status, length, close
