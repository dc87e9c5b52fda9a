"""Exact attribute-key verdicts for the wire walk: key bytes → `KeyRules` action, in numba-readable arrays."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from processors.redact.kernel import inline, load8, word

ACT_SCAN, ACT_ALLOW, ACT_DROP = 0, 1, 2  # the values of processor._SCAN/_ALLOW/_DROP
ACT_UNKNOWN = -1


_MIX = 0x9E3779B97F4A7C15  # 2**64 / golden ratio


@inline
def _mix(n, first, last):  # pragma: no cover - compiled
    """Hash of a key from its length and first and last 8 bytes (the words `key_action` loads)."""
    h = (np.uint64(n) + first) * np.uint64(_MIX)
    if n > 8:
        h = (h ^ last) * np.uint64(_MIX)
    return h ^ (h >> np.uint64(29))


def key_hash_py(key: bytes) -> int:
    """`_mix` in Python, to fill the table."""
    mask = (1 << 64) - 1
    n = len(key)
    h = ((n + int.from_bytes(key[:8], "little")) * _MIX) & mask
    if n > 8:
        h = ((h ^ int.from_bytes(key[-8:], "little")) * _MIX) & mask
    return h ^ (h >> 29)


@inline
def key_action(buf, a, b, k_hash, k_meta, k_buf):  # pragma: no cover - compiled
    """KeyRules' action for the key buf[a:b], or ACT_UNKNOWN when the table does not hold it.

    Keys are compared a word at a time: the first and last 8 bytes (kept in the table next to the
    hash) cover keys up to 16 bytes; longer ones compare their middle words with `k_buf`.
    """
    n = b - a
    first = word(buf, a, n)
    last = load8(buf, b - 8) if n > 8 else first
    h = _mix(n, first, last)
    mask = k_hash.shape[0] - 1
    slot = np.int64(h & np.uint64(mask))
    while True:
        ln = k_meta[slot, 1]
        if ln < 0:
            return ACT_UNKNOWN
        if k_hash[slot, 0] == h and ln == n and k_hash[slot, 1] == first and k_hash[slot, 2] == last:
            off = k_meta[slot, 0]
            k = 8
            while k < n - 8 and load8(k_buf, off + k) == load8(buf, a + k):
                k += 8
            if k >= n - 8:
                return k_meta[slot, 2]
        slot = (slot + 1) & mask


class KeyTable:
    """Exact key → action table for the kernel: open addressing on `_mix`, the key compared on a hit.

    Filled from `classify` (KeyRules.action) as keys appear; cleared when it holds
    MAX_KEYS keys (high-cardinality keys then cost a re-walk, never a wrong answer).
    """

    MAX_KEYS = 16384
    MAX_KEY_LEN = 1024  # longer keys are not kept: they stay unknown, so their items take the reference

    def __init__(self, classify: Callable[[str], int]) -> None:
        self.classify = classify
        self._reset(1024)

    def _reset(self, cap: int) -> None:
        self.hashes = np.zeros((cap, 3), np.uint64)
        self.meta = np.full((cap, 3), -1, np.int64)
        self.buf = np.zeros(1 << 12, np.uint8)
        self.used = 0
        self.count = 0
        self.known: set[bytes] = set()

    def args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.hashes, self.meta, self.buf

    def add(self, key: bytes) -> bool:
        """Classify and insert one key; False when it is not UTF-8 (the protobuf parse will say so)."""
        if key in self.known or len(key) > self.MAX_KEY_LEN:
            return True
        try:
            text = key.decode("utf-8")
        except UnicodeDecodeError:
            return False
        act = self.classify(text)
        if self.count >= self.MAX_KEYS:
            self._reset(1024)
        if 2 * (self.count + 1) > self.hashes.shape[0]:
            self._grow()
        if self.used + len(key) > self.buf.shape[0]:
            self.buf = np.concatenate([self.buf, np.zeros(max(len(key), self.buf.shape[0]), np.uint8)])
        off = self.used
        self.buf[off : off + len(key)] = np.frombuffer(key, np.uint8)
        self.used += len(key)
        self._place(key, off, act)
        self.known.add(key)
        self.count += 1
        return True

    def _place(self, key: bytes, off: int, act: int) -> None:
        h = key_hash_py(key)
        mask = self.hashes.shape[0] - 1
        slot = h & mask
        while self.meta[slot, 1] >= 0:
            slot = (slot + 1) & mask
        first = int.from_bytes(key[:8], "little")
        self.hashes[slot] = (h, first, int.from_bytes(key[-8:], "little") if len(key) > 8 else first)
        self.meta[slot] = (off, len(key), act)

    def _grow(self) -> None:
        old_h, old_m = self.hashes, self.meta
        self.hashes = np.zeros((2 * old_h.shape[0], 3), np.uint64)
        self.meta = np.full((2 * old_h.shape[0], 3), -1, np.int64)
        for slot in np.flatnonzero(old_m[:, 1] >= 0).tolist():
            off, n, act = old_m[slot].tolist()
            self._place(self.buf[off : off + n].tobytes(), off, act)
