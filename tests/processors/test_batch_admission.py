"""A full batch buffer refuses new requests of its signal at admission, and a request that got
past admission waits for room only for a bounded time, then is refused (never silently held
until the client times out and sends it again)."""

from __future__ import annotations

import asyncio

import pytest

import processors.batch as batch_mod
from gateway.batch import Signal
from gateway.component import ThrottledError
from tests.processors.test_batch import Harness, run, settle, spans


def test_full_buffer_throttles_its_signal_until_the_sender_makes_room() -> None:
    async def main() -> None:
        h = Harness(send_batch_size=10, max_buffered_items=20, timeout="10s")
        h.sink.gate = asyncio.Event()
        await h.proc.start()
        await h.proc.consume(spans(12))  # sent, stuck downstream
        await settle(lambda: h.proc._items == 0)
        await h.proc.consume(spans(15))
        h.admission.check(Signal.TRACES)  # 15 < 20: still admitting
        await h.proc.consume(spans(10))  # 25 ≥ 20: full
        with pytest.raises(ThrottledError) as err:
            h.admission.check(Signal.TRACES)
        assert err.value.retry_after is not None and err.value.retry_after >= 1.0
        assert "batch buffer of batch in pipeline traces is full" in str(err.value)
        h.admission.check(Signal.LOGS)  # other signals are not affected
        h.sink.gate.set()
        await settle(lambda: h.proc._items < 20)
        h.admission.check(Signal.TRACES)
        await h.proc.shutdown()
        assert not h.admission.throttles and sum(h.sink.sizes()) == 37

    run(main())


def test_waiting_for_room_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(batch_mod, "MAX_WAIT_FOR_SPACE_S", 0.05)

    async def main() -> None:
        h = Harness(send_batch_size=10, max_buffered_items=10, timeout="10s")
        h.sink.gate = asyncio.Event()
        await h.proc.start()
        await h.proc.consume(spans(10))
        await settle(lambda: h.proc._items == 0)
        await h.proc.consume(spans(10))  # full, the sender is stuck
        with pytest.raises(ThrottledError) as err:
            await asyncio.wait_for(h.proc.consume(spans(1)), 2.0)
        assert "stayed full" in str(err.value) and err.value.retry_after == 1.0
        h.sink.gate.set()
        await h.proc.shutdown()
        assert sum(h.sink.sizes()) == 20  # the refused request was not kept

    run(main())
