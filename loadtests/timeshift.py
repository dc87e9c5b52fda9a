"""Move every timestamp of a serialised ExportTraceServiceRequest by a fixed delta.

The load generator sends a small set of pre-serialised requests over and over.
Sent unchanged, event time would jump back at every cycle and the gateway's
event-time detection would treat most traffic as late — cheaper than real
traffic and not what a benchmark should measure. Shifting span, event and
link-free timestamps in the wire bytes (fixed64 fields, same length) keeps each
cycle later than the one before at ~0.1 µs per span on the client side.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from gateway.wire.pb import I64, LEN, read_len, read_tag, skip_field

_SPAN_TIME_FIELDS = (7, 8)  # start_time_unix_nano, end_time_unix_nano
_EVENT_TIME_FIELD = 1


@njit(cache=True, nogil=True)
def _add_fixed64(buf: np.ndarray, pos: int, delta: np.int64) -> None:
    v = np.uint64(0)
    for k in range(7, -1, -1):
        v = (v << np.uint64(8)) | np.uint64(buf[pos + k])
    if v == np.uint64(0):
        return  # unset stays unset
    v = np.uint64(np.int64(v) + delta)
    for k in range(8):
        buf[pos + k] = np.uint8(v & np.uint64(0xFF))
        v >>= np.uint64(8)


@njit(cache=True, nogil=True)
def _shift_span(buf: np.ndarray, pos: int, end: int, delta: np.int64) -> bool:
    while pos < end:
        field, wtype, pos = read_tag(buf, pos, end)
        if pos < 0:
            return False
        if wtype == I64 and (field == 7 or field == 8):
            _add_fixed64(buf, pos, delta)
            pos += 8
        elif wtype == LEN and field == 11:  # events
            a, b = read_len(buf, pos, end)
            if a < 0:
                return False
            p = a
            while p < b:
                f, w, p = read_tag(buf, p, b)
                if p < 0:
                    return False
                if w == I64 and f == 1:
                    _add_fixed64(buf, p, delta)
                    p += 8
                else:
                    p = skip_field(buf, p, b, w)
                    if p < 0:
                        return False
            pos = b
        else:
            pos = skip_field(buf, pos, end, wtype)
            if pos < 0:
                return False
    return True


@njit(cache=True, nogil=True)
def _shift(buf: np.ndarray, delta: np.int64) -> bool:
    end = buf.shape[0]
    pos = 0
    while pos < end:
        f1, w1, pos = read_tag(buf, pos, end)
        if pos < 0:
            return False
        if not (f1 == 1 and w1 == LEN):  # resource_spans
            pos = skip_field(buf, pos, end, w1)
            if pos < 0:
                return False
            continue
        ra, rb = read_len(buf, pos, end)
        if ra < 0:
            return False
        p = ra
        while p < rb:
            f2, w2, p = read_tag(buf, p, rb)
            if p < 0:
                return False
            if not (f2 == 2 and w2 == LEN):  # scope_spans
                p = skip_field(buf, p, rb, w2)
                if p < 0:
                    return False
                continue
            sa, sb = read_len(buf, p, rb)
            if sa < 0:
                return False
            q = sa
            while q < sb:
                f3, w3, q = read_tag(buf, q, sb)
                if q < 0:
                    return False
                if f3 == 2 and w3 == LEN:  # spans
                    a, b = read_len(buf, q, sb)
                    if a < 0 or not _shift_span(buf, a, b, delta):
                        return False
                    q = b
                else:
                    q = skip_field(buf, q, sb, w3)
                    if q < 0:
                        return False
            p = sb
        pos = rb
    return True


def shift_times(wire: bytes, delta_ns: int) -> bytes:
    """A copy of `wire` with span start/end and span event times moved by `delta_ns`."""
    buf = np.frombuffer(bytearray(wire), dtype=np.uint8)
    if not _shift(buf, np.int64(delta_ns)):
        raise ValueError("not a valid serialised ExportTraceServiceRequest")
    return buf.tobytes()
