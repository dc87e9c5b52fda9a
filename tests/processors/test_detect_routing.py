"""Series ownership and the hand-off of LLM calls between workers (processors/detect/routing.py).

Two routers run in one event loop over real unix sockets; what each one's
detector would be given is recorded.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import numpy as np

from gateway.telemetry import SelfTelemetry
from gateway.wire.pb import fnv1a_py
from gateway.worker_config import WorkerSpec
from processors.detect.calls import METRICS, RATES, CallRows
from processors.detect.routing import SeriesRouter, decode_rows, encode_rows, owner_of


def key_owned_by(worker: int, workers: int = 2) -> tuple[str, str, str, str]:
    for i in range(100):
        service, model = f"svc-{i}", "gpt-4o"
        if owner_of(service, model, workers) == worker:
            return (service, "openai", "chat", model)
    raise AssertionError("no key found")


def calls(keys: list[tuple[str, str, str, str]], key: list[int], t0: int = 1_000) -> CallRows:
    n = len(key)
    rng = np.random.default_rng(len(key))
    return CallRows(
        t_ns=np.arange(t0, t0 + n, dtype=np.int64),
        key=np.array(key, dtype=np.int32),
        keys=keys,
        model=np.array([0, -1] * (n // 2) + [0] * (n % 2), dtype=np.int32),
        models=["gpt-4o-2024-08-06"],
        trace_hi=rng.integers(0, 2**63, n, dtype=np.uint64),
        trace_lo=rng.integers(0, 2**63, n, dtype=np.uint64),
        values=rng.random((n, len(METRICS))),
        flags=rng.random((n, len(RATES))) < 0.3,
    )


def test_owner_is_fnv1a_of_service_and_model_and_independent_of_the_hash_seed() -> None:
    assert owner_of("chat-api", "gpt-4o", 3) == fnv1a_py(b"chat-api\0gpt-4o") % 3
    code = "from processors.detect.routing import owner_of; print(owner_of('chat-api', 'gpt-4o', 7))"
    out = subprocess.run(  # another process with another str-hash seed than this one
        [sys.executable, "-c", code],
        env={"PYTHONHASHSEED": str(hash("x") % 1000 + 1), "PATH": ""},
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(out.stdout) == owner_of("chat-api", "gpt-4o", 7)


def test_call_rows_survive_the_wire_unchanged() -> None:
    rows = calls([key_owned_by(0), key_owned_by(1)], [0, 1, 1, 0, 1])
    back = decode_rows(encode_rows(rows))
    for name in ("t_ns", "key", "model", "trace_hi", "trace_lo", "values", "flags"):
        a, b = getattr(rows, name), getattr(back, name)
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b), name
        assert b.flags.writeable and b.flags.aligned, name
    assert back.keys == rows.keys and all(isinstance(k, tuple) for k in back.keys)
    assert back.models == rows.models
    empty = decode_rows(encode_rows(rows.take(np.zeros(5, dtype=np.bool_))))
    assert len(empty) == 0 and empty.values.shape == (0, len(METRICS))


class Detector:
    """Records what a worker's detector is given."""

    def __init__(self) -> None:
        self.got: list[tuple[list[tuple[str, str, str, str]], int]] = []

    async def accept(self, rows: CallRows | None, max_t_ns: int) -> None:
        keys = [] if rows is None else [rows.keys[k] for k in rows.key.tolist()]
        self.got.append((keys, max_t_ns))


async def _pair(tmp_path: Path) -> tuple[list[SeriesRouter], list[Detector]]:
    detectors = [Detector(), Detector()]
    routers = [
        SeriesRouter(WorkerSpec(i, 2, tmp_path), "detect", detectors[i].accept, SelfTelemetry())
        for i in (0, 1)
    ]
    for r in routers:
        await r.start()
    for _ in range(500):
        if all(r.ready() for r in routers):
            break
        await asyncio.sleep(0.01)
    assert all(r.ready() for r in routers)
    return routers, detectors


def test_calls_go_to_their_owner_with_the_senders_event_time(tmp_path: Path) -> None:
    async def run() -> None:
        (r0, r1), (d0, d1) = await _pair(tmp_path)
        mine, theirs = key_owned_by(0), key_owned_by(1)
        await r0.route(calls([mine, theirs], [0, 1, 0, 1, 1], t0=100))
        # route() returns only after the owner took its calls: a sequential client sees one process
        assert d0.got == [([mine, mine], 104)]
        assert d1.got == [([theirs, theirs, theirs], 104)]
        # nothing for worker 1, but newer event time: it still advances, as one process would
        await r0.route(calls([mine], [0, 0], t0=200))
        assert d1.got[-1] == ([], 201)
        # no calls and no newer event time: nothing to say
        await r0.route(calls([mine], [0], t0=150))
        assert len(d1.got) == 2
        await r1.route(calls([mine], [0], t0=300))
        assert d0.got[-1] == ([mine], 300) and d1.got[-1] == ([], 300)
        # shutdown: each says it is done and waits for the other
        await asyncio.wait_for(asyncio.gather(r0.drain(5), r1.drain(5)), 5)
        for r in (r0, r1):
            await r.stop()
        assert not list(tmp_path.glob("*.sock"))

    asyncio.run(run())


def test_calls_for_a_worker_that_is_down_are_counted_not_waited_for(tmp_path: Path) -> None:
    async def run() -> None:
        telemetry = SelfTelemetry()
        detector = Detector()
        router = SeriesRouter(WorkerSpec(0, 2, tmp_path), "detect", detector.accept, telemetry)
        await router.start()
        assert not router.ready()  # worker 1 never connected
        mine, theirs = key_owned_by(0), key_owned_by(1)
        await asyncio.wait_for(router.route(calls([mine, theirs], [0, 1, 1])), 5)
        assert detector.got == [([mine], 1002)]
        failed = telemetry.registry.get_sample_value(
            "llm_sentinel_detect_forward_failed_calls_total", {"connector": "detect"}
        )
        assert failed == 2
        await asyncio.wait_for(router.drain(5), 1)  # no peer to wait for
        await router.stop()

    asyncio.run(run())


def test_a_restarted_owner_is_reconnected_to(tmp_path: Path) -> None:
    async def run() -> None:
        (r0, r1), _ = await _pair(tmp_path)
        theirs = key_owned_by(1)
        await r1.stop()  # worker 1 dies …
        d1b = Detector()
        r1b = SeriesRouter(WorkerSpec(1, 2, tmp_path), "detect", d1b.accept, SelfTelemetry())
        await r1b.start()  # … and its successor listens on the same socket
        for _ in range(300):
            await r0.route(calls([theirs], [0], t0=500))
            if d1b.got:
                break
            await asyncio.sleep(0.02)
        assert d1b.got and d1b.got[-1] == ([theirs], 500)
        for r in (r0, r1b):
            await r.stop()

    asyncio.run(run())
