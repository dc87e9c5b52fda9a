"""Admission: the request budget, throttles per signal, idleness, and how receivers answer them."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
import requests
from google.rpc import error_details_pb2

from gateway.batch import Signal
from gateway.component import RefusedError, ThrottledError
from gateway.pressure import MIB, Admission
from tests.conftest import running_gateway, wait_until
from tests.receivers.otlp_helpers import gateway_config, make_trace_request

PB = {"Content-Type": "application/x-protobuf"}


def test_request_budget_admits_one_request_always_and_refuses_beyond_the_budget() -> None:
    adm = Admission(request_limit=100)
    with adm.admit(500) as big:  # larger than the budget, but alone: admitted
        assert adm.inflight_requests == 1 and adm.inflight_bytes == 500
        with pytest.raises(ThrottledError) as err, adm.admit(1):
            pass
        assert err.value.retry_after == 1.0 and "request budget" in str(err.value)
        big.resize(50)  # decompressed smaller than announced
    assert adm.inflight_requests == 0 and adm.inflight_bytes == 0
    with adm.admit(60), adm.admit(40):
        assert adm.inflight_bytes == 100
        with pytest.raises(ThrottledError), adm.admit(1):
            pass
    assert adm.idle()


def test_no_budget_admits_everything_and_errors_release_the_reservation() -> None:
    adm = Admission()
    with pytest.raises(ValueError), adm.admit(10 * MIB), adm.admit(10 * MIB):
        raise ValueError("decode failed")
    assert adm.inflight_requests == 0 and adm.inflight_bytes == 0


def test_throttles_refuse_their_signal_only_and_memory_refuses_all() -> None:
    adm = Admission()
    adm.throttle("batch:traces", Signal.TRACES, "buffer full", retry_after=2.0)
    with pytest.raises(ThrottledError) as err:
        adm.check(Signal.TRACES)
    assert err.value.retry_after == 2.0
    adm.check(Signal.LOGS)
    with pytest.raises(ThrottledError):
        adm.check()  # no signal given: any throttle applies
    adm.unthrottle("batch:traces")
    adm.check(Signal.TRACES)
    adm.refusing, adm.reason, adm.retry_after = True, "memory", 3.0
    with pytest.raises(RefusedError) as refused, adm.admit(1, Signal.LOGS):
        pass
    assert not isinstance(refused.value, ThrottledError) and refused.value.retry_after == 3.0
    assert adm.inflight_requests == 0


def test_idle_means_nothing_held_and_nothing_in_flight() -> None:
    adm = Admission()
    assert adm.idle()
    adm.set_held("exporter:x", 1)
    assert not adm.idle()
    adm.set_held("exporter:x", 0)
    with adm.admit(0):
        assert not adm.idle()
    assert adm.idle()


# ---------------------------------------------------------------- what clients see
def _hold_one_request(gw: Any) -> tuple[asyncio.Event, Any]:
    """Put a 1 MiB request in flight on the gateway's loop until the returned event is set."""
    assert gw.gateway is not None
    admission = gw.gateway.admission
    release = asyncio.Event()

    async def hold() -> None:
        with admission.admit(MIB):
            await release.wait()

    future = asyncio.run_coroutine_threadsafe(hold(), gw.loop)
    wait_until(lambda: admission.inflight_requests == 1)
    return release, future


def test_http_and_grpc_answer_an_exhausted_budget_with_retry_hints(ports, tmp_path) -> None:
    cfg = gateway_config(ports, tmp_path / "out.jsonl", signals=("traces",), processors=["memory_limiter"])
    cfg["processors"] = {"memory_limiter": {"limit_mib": 100_000, "request_limit_mib": 0.001}}
    body = make_trace_request(3).SerializeToString()
    url = f"http://127.0.0.1:{ports['http']}/v1/traces"
    with running_gateway(cfg) as gw:
        assert gw.gateway is not None
        assert gw.gateway.admission.request_limit == int(0.001 * MIB)
        release, held = _hold_one_request(gw)
        try:
            r = requests.post(
                f"http://127.0.0.1:{ports['http']}/v1/traces", data=body, headers=PB, timeout=10
            )
            assert r.status_code == 429 and r.headers["Retry-After"] == "1"
            with grpc.insecure_channel(f"127.0.0.1:{ports['grpc']}") as ch:
                call = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")
                with pytest.raises(grpc.RpcError) as err:
                    call(body, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            info = error_details_pb2.RetryInfo()
            info.ParseFromString(dict(err.value.trailing_metadata())["google.rpc.retryinfo-bin"])
            assert info.retry_delay.seconds == 1
        finally:
            gw.loop.call_soon_threadsafe(release.set)
            held.result(5)
        # nothing in flight any more: accepted
        r = requests.post(url, data=body, headers=PB, timeout=10)
        assert r.status_code == 200
        assert gw.gateway.admission.inflight_requests == 0
