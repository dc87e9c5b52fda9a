"""Refused gRPC requests are answered UNAVAILABLE + RetryInfo and leave nothing behind: their
bytes are freed at once, not when a full garbage collection finally breaks the cycle grpc keeps
around the aborting handler (under overload that was megabytes per refusal)."""

from __future__ import annotations

import asyncio
import gc
import logging
import tracemalloc

import grpc
from google.rpc import error_details_pb2

from gateway.pressure import Admission
from receivers.otlp.config import GrpcSettings
from receivers.otlp.grpc_server import GrpcServer

EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
MIB = 1024 * 1024


class NeverCalled:
    async def handle(self, *args: object, **kwargs: object) -> None:
        raise AssertionError("a refused request must not be decoded")


async def refuse_many(n: int, size: int) -> tuple[int, list[float]]:
    """Send `n` requests of `size` bytes to a refusing server; traced bytes still held, retry hints."""
    adm = Admission(refusing=True, reason="memory limiter: test", retry_after=2.0)
    server = GrpcServer(GrpcSettings(endpoint="127.0.0.1:0"), NeverCalled(), adm, logging.getLogger("t"))  # type: ignore[arg-type]
    await server.start()
    hints: list[float] = []
    try:
        async with grpc.aio.insecure_channel(
            server.bound, options=[("grpc.max_send_message_length", 16 * MIB)]
        ) as channel:
            call = channel.unary_unary(EXPORT)
            await asyncio.sleep(0)
            before = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                try:
                    await call(bytes([i % 256]) * size, timeout=10)
                except grpc.aio.AioRpcError as err:
                    assert err.code() == grpc.StatusCode.UNAVAILABLE
                    info = error_details_pb2.RetryInfo()
                    info.ParseFromString(dict(err.trailing_metadata())["google.rpc.retryinfo-bin"])
                    hints.append(info.retry_delay.seconds + info.retry_delay.nanos / 1e9)
            held = tracemalloc.get_traced_memory()[0] - before
    finally:
        await server.stop(0)
    return held, hints


def test_refused_requests_are_freed_without_waiting_for_the_gc() -> None:
    tracemalloc.start()
    gc.collect()
    gc.disable()  # what a long stretch without a full collection looks like
    try:
        held, hints = asyncio.run(refuse_many(20, MIB))
    finally:
        gc.enable()
        tracemalloc.stop()
    assert hints == [2.0] * 20
    assert held < 5 * MIB, f"{held / MIB:.1f} MiB of 20 MiB refused still held"
