"""The LLM calls detection works on, as columns, and the lateness buffer that orders them.

`CallRows` is what the detector keeps of a span batch: event time, series key,
response model, trace id, the five values and the three flags of each LLM call,
with series keys and model names held once per chunk rather than once per row.
It is also the unit a worker hands to the worker that owns a series, so it can
be split (`take`) and joined (`concat`) cheaply.

`LatenessBuffer` holds chunks until the watermark passes them. Releasing touches
only the chunks the watermark reaches; a chunk is split only when it straddles
the watermark, so at high rates the buffer costs O(rows released), not
O(rows held) per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gateway.batch import SpanBatch

SeriesKey = tuple[str, str, str, str]  # service, provider, operation, request model

METRICS = ("latency_s", "ttft_s", "input_tokens", "output_tokens", "cost_usd")
RATES = ("error", "rate_limited", "truncated")
_KEY_COLUMNS = ("service", "provider", "operation", "request_model")


@dataclass
class CallRows:
    t_ns: np.ndarray  # int64, span end time
    key: np.ndarray  # int32 index into `keys`
    keys: list[SeriesKey]
    model: np.ndarray  # int32 index into `models`, -1 when the response model is unknown
    models: list[str]
    trace_hi: np.ndarray  # uint64
    trace_lo: np.ndarray  # uint64
    values: np.ndarray  # float64 [n, len(METRICS)]
    flags: np.ndarray  # bool [n, len(RATES)]

    def __len__(self) -> int:
        return int(self.t_ns.shape[0])

    @classmethod
    def from_batch(cls, batch: SpanBatch) -> CallRows | None:
        """The LLM calls of an annotated batch (None when it has none)."""
        c = batch.columns
        rows = np.flatnonzero(c["llm"])
        if not rows.shape[0]:
            return None
        values = batch.strings.values
        cols = [c[name][rows].astype(np.int64) + 1 for name in _KEY_COLUMNS]  # codes ≥ 0
        radix = len(values) + 1
        if radix**4 < 2**62:  # one int64 per key: a 1-D unique is much cheaper than rows of 4
            packed = ((cols[0] * radix + cols[1]) * radix + cols[2]) * radix + cols[3]
            uniq_packed, inverse = np.unique(packed, return_inverse=True)
            uniq = np.stack([(uniq_packed // radix**p) % radix for p in (3, 2, 1, 0)], axis=1) - 1
        else:
            uniq, inverse = np.unique(np.stack(cols, axis=1) - 1, axis=0, return_inverse=True)
        keys: list[SeriesKey] = [
            (_s(values, a), _s(values, b), _s(values, o), _s(values, m)) for a, b, o, m in uniq.tolist()
        ]
        model_codes = c["response_model"][rows]
        mu, minv = np.unique(model_codes, return_inverse=True)
        names = [_s(values, x) for x in mu.tolist()]
        # "" (missing) becomes -1 so models only lists real names
        local = np.full(len(names), -1, dtype=np.int32)
        models: list[str] = []
        for i, name in enumerate(names):
            if name:
                local[i] = len(models)
                models.append(name)
        return cls(
            t_ns=c["end_ns"][rows].astype(np.int64),
            key=inverse.reshape(-1).astype(np.int32),
            keys=keys,
            model=local[minv.reshape(-1)],
            models=models,
            trace_hi=c["trace_id_hi"][rows].astype(np.uint64),
            trace_lo=c["trace_id_lo"][rows].astype(np.uint64),
            values=np.stack([c[m][rows].astype(np.float64) for m in METRICS], axis=1),
            flags=np.stack([c[f][rows].astype(np.bool_) for f in RATES], axis=1),
        )

    def take(self, idx: np.ndarray) -> CallRows:
        """Rows `idx` (indices or a mask), in that order; key and model lists are shared."""
        return CallRows(
            t_ns=self.t_ns[idx],
            key=self.key[idx],
            keys=self.keys,
            model=self.model[idx],
            models=self.models,
            trace_hi=self.trace_hi[idx],
            trace_lo=self.trace_lo[idx],
            values=self.values[idx],
            flags=self.flags[idx],
        )

    @staticmethod
    def concat(parts: Sequence[CallRows]) -> CallRows:
        """All rows of `parts` in order, with key and model lists merged."""
        if len(parts) == 1:
            return parts[0]
        keys: list[SeriesKey] = []
        key_ids: dict[SeriesKey, int] = {}
        models: list[str] = []
        model_ids: dict[str, int] = {}
        key_cols, model_cols = [], []
        for p in parts:
            kmap = np.empty(len(p.keys), dtype=np.int32)
            for i, k in enumerate(p.keys):
                kid = key_ids.get(k)
                if kid is None:
                    kid = key_ids[k] = len(keys)
                    keys.append(k)
                kmap[i] = kid
            key_cols.append(kmap[p.key])
            mmap = np.empty(len(p.models) + 1, dtype=np.int32)
            mmap[-1] = -1  # a row's -1 (no model) picks this
            for i, m in enumerate(p.models):
                mid = model_ids.get(m)
                if mid is None:
                    mid = model_ids[m] = len(models)
                    models.append(m)
                mmap[i] = mid
            model_cols.append(mmap[p.model])
        return CallRows(
            t_ns=np.concatenate([p.t_ns for p in parts]),
            key=np.concatenate(key_cols),
            keys=keys,
            model=np.concatenate(model_cols),
            models=models,
            trace_hi=np.concatenate([p.trace_hi for p in parts]),
            trace_lo=np.concatenate([p.trace_lo for p in parts]),
            values=np.concatenate([p.values for p in parts]),
            flags=np.concatenate([p.flags for p in parts]),
        )

    def trace_id(self, row: int) -> str:
        return trace_hex(int(self.trace_hi[row]), int(self.trace_lo[row]))


def trace_hex(hi: int, lo: int) -> str:
    return f"{hi:016x}{lo:016x}"


def _s(values: list[str], code: int) -> str:
    return values[code] if code >= 0 else ""


class LatenessBuffer:
    """Chunks of calls waiting for the watermark; released in event-time order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[int, int, CallRows]] = []  # (min t, max t, rows)

    def __len__(self) -> int:
        return sum(len(c) for _, _, c in self.chunks)

    def add(self, rows: CallRows) -> None:
        if len(rows):
            self.chunks.append((int(rows.t_ns.min()), int(rows.t_ns.max()), rows))

    def release(self, upto_ns: int | None) -> CallRows | None:
        """Every call with t ≤ `upto_ns` (all when None), sorted by time; arrival order breaks ties."""
        ready: list[CallRows] = []
        keep: list[tuple[int, int, CallRows]] = []
        for lo, hi, rows in self.chunks:
            if upto_ns is None or hi <= upto_ns:
                ready.append(rows)
            elif lo > upto_ns:
                keep.append((lo, hi, rows))
            else:
                mask = rows.t_ns <= upto_ns
                ready.append(rows.take(mask))
                rest = rows.take(~mask)
                keep.append((int(rest.t_ns.min()), hi, rest))
        self.chunks = keep
        if not ready:
            return None
        merged = CallRows.concat(ready)
        t = merged.t_ns
        if t.shape[0] < 2 or bool((t[1:] >= t[:-1]).all()):
            return merged  # in order already (in-order senders, one chunk): the stable sort is the identity
        return merged.take(np.argsort(t, kind="stable"))
