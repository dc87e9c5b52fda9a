"""Short string values the wire prefilter has found clean, so a repeated one is not checked again.

Telemetry repeats its values (model names, routes, server addresses, operation names) in every
span; checking one byte by byte (`text_hit`) costs several times a table lookup. The cache holds
strings of at most MAX_LEN bytes exactly (their length and bytes as four zero-padded words, so
a hit is the same string), only with the verdict "cannot change", which depends on nothing but
the bytes and the scanner's tables (one cache per `WireScanner`). It stops taking new values at
half its slots; the owner then clears it (`full`, `clear`).
"""

from __future__ import annotations

import numpy as np

from processors.redact.kernel import inline, word

MAX_LEN = 32  # bytes: four words
SLOTS = 4096  # a power of two
PROBES = 8
_MIX = np.uint64(0x9E3779B97F4A7C15)


class ValueCache:
    """The arrays the kernel reads and fills: slots of (length, w0, w1, w2, w3), and a count."""

    def __init__(self) -> None:
        self.slots = np.zeros((SLOTS, 5), np.uint64)
        self.count = np.zeros(1, np.int64)

    def args(self) -> tuple[np.ndarray, np.ndarray]:
        return self.slots, self.count

    @property
    def full(self) -> bool:
        return int(self.count[0]) >= SLOTS // 2

    def clear(self) -> None:
        self.slots[:] = 0
        self.count[0] = 0


@inline
def _words(buf, a, n):  # pragma: no cover - compiled
    """buf[a:a+n] (n <= MAX_LEN) as four little-endian words, zero past n."""
    w0 = word(buf, a, min(n, 8))
    w1 = word(buf, a + 8, min(n - 8, 8)) if n > 8 else np.uint64(0)
    w2 = word(buf, a + 16, min(n - 16, 8)) if n > 16 else np.uint64(0)
    w3 = word(buf, a + 24, n - 24) if n > 24 else np.uint64(0)
    return w0, w1, w2, w3


@inline
def lookup(slots, buf, a, n):  # pragma: no cover - compiled
    """(found, free slot or -1) for the string buf[a:a+n], 0 < n <= MAX_LEN."""
    w0, w1, w2, w3 = _words(buf, a, n)
    h = (np.uint64(n) * _MIX) ^ w0
    h = (h * _MIX) ^ w1
    h = (h * _MIX) ^ w2
    h = (h * _MIX) ^ w3
    h = h * _MIX
    h ^= h >> np.uint64(31)
    mask = slots.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    for _ in range(PROBES):
        ln = np.int64(slots[slot, 0])
        if ln == 0:
            return False, slot
        same = slots[slot, 1] == w0 and slots[slot, 2] == w1
        if ln == n and same and slots[slot, 3] == w2 and slots[slot, 4] == w3:
            return True, slot
        slot = (slot + 1) & mask
    return False, np.int64(-1)


@inline
def insert(slots, count, slot, buf, a, n):  # pragma: no cover - compiled
    """Keep buf[a:a+n] at `slot` (a free one from `lookup`), unless the cache is half full."""
    if slot < 0 or count[0] >= slots.shape[0] // 2:
        return
    w0, w1, w2, w3 = _words(buf, a, n)
    slots[slot, 0] = np.uint64(n)
    slots[slot, 1] = w0
    slots[slot, 2] = w1
    slots[slot, 3] = w2
    slots[slot, 4] = w3
    count[0] += 1
