"""CallRows and the lateness buffer: splitting and joining keep every call with its own key,
model and values, and release order is event time with arrival order breaking ties."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from processors.detect.calls import METRICS, RATES, CallRows, LatenessBuffer

KEYS = [("svc", "openai", "chat", m) for m in ("gpt-4o", "gpt-4o-mini", "o3")]
MODELS = ["gpt-4o-2024-08-06", "gpt-4o-mini-2024-07-18", "o3-2025"]


def rows_from(spec: list[tuple[int, int, int]], tag: int) -> CallRows:
    """spec: (t, key, model) per call; keys and models given in a chunk-specific order."""
    perm = [(k + tag) % 3 for k in range(3)]
    keys = [KEYS[p] for p in perm]
    models = [MODELS[p] for p in perm]
    n = len(spec)
    t = np.array([s[0] for s in spec], dtype=np.int64)
    return CallRows(
        t_ns=t,
        key=np.array([perm.index(s[1]) for s in spec], dtype=np.int32),
        keys=keys,
        model=np.array([perm.index(s[2]) if s[2] >= 0 else -1 for s in spec], dtype=np.int32),
        models=models,
        trace_hi=np.arange(n, dtype=np.uint64) + np.uint64(tag * 1000),
        trace_lo=t.astype(np.uint64),
        values=np.arange(n * len(METRICS), dtype=np.float64).reshape(n, len(METRICS)) + tag,
        flags=np.zeros((n, len(RATES)), dtype=np.bool_),
    )


def facts(rows: CallRows) -> list[tuple]:
    return [
        (
            int(rows.t_ns[i]),
            rows.keys[int(rows.key[i])],
            rows.models[int(rows.model[i])] if rows.model[i] >= 0 else None,
            rows.trace_id(i),
            tuple(rows.values[i].tolist()),
        )
        for i in range(len(rows))
    ]


call = st.tuples(st.integers(0, 50), st.integers(0, 2), st.integers(-1, 2))


@settings(max_examples=60, deadline=None)
@given(
    chunks=st.lists(st.lists(call, min_size=1, max_size=12), min_size=1, max_size=6), cut=st.integers(0, 50)
)
def test_release_is_event_time_order_with_arrival_ties_and_loses_nothing(chunks, cut):
    parts = [rows_from(c, tag) for tag, c in enumerate(chunks)]
    expected = sorted(
        (f for p in parts for f in facts(p)), key=lambda f: f[0]
    )  # sorted() is stable: arrival order among equal times
    buf = LatenessBuffer()
    for p in parts:
        buf.add(p)
    first = buf.release(cut)
    rest = buf.release(None)
    got = (facts(first) if first is not None else []) + (facts(rest) if rest is not None else [])
    assert got == [f for f in expected if f[0] <= cut] + [f for f in expected if f[0] > cut]
    assert len(buf) == 0


def test_concat_remaps_keys_and_models_and_take_keeps_them():
    a = rows_from([(1, 0, 0), (2, 1, -1)], tag=0)
    b = rows_from([(3, 2, 1), (4, 0, 2)], tag=1)
    joined = CallRows.concat([a, b])
    assert facts(joined) == facts(a) + facts(b)
    assert len(joined.keys) == 3 and len(joined.models) == 3  # shared names stored once
    picked = joined.take(np.array([3, 0]))
    assert facts(picked) == [facts(joined)[3], facts(joined)[0]]
