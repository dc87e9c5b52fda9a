"""Necessary conditions of the redact detectors, as byte tables for the wire prefilter (`wire_scan`).

Every condition here is *necessary*: a string that meets none of them cannot be
changed by `Scanner.scan`, so the prefilter may let it pass without parsing
anything. They are derived from `patterns.py`, so they stay in step with it:

* secret detectors (`sk-`, AWS, GitHub, Slack, JWT, Bearer, Basic) and custom
  patterns: the regular expression's parse tree gives *byte-class sequences*
  (a class and a repeat count per element, e.g. `sk-` then 20 of
  `[A-Za-z0-9_-]`) that every match starts with (custom patterns: contains);
* `key: value` detectors (run on lower-cased text): a `:` or `=` whose key,
  read backwards over `_KV_TAIL`'s blanks and optional quote, ends with one of
  `KV_SPELLINGS`, ASCII case-insensitively;
* e-mail: an `@` between a local-part character and an alphanumeric;
* digit shapes (card, SSN, phones): the run/gap rules of `DIGIT_RULES` on the
  clusters `_clusters` searches (three digits in a row, MIN_DIGITS digits).

The last three are derived by hand from the expressions; `FINGERPRINT` pins
the sources they were derived from: if patterns.py changes them, `build`
returns None (the processor then takes the reference path) and a test fails
until the rules are re-derived. Case-insensitive matching is ASCII here; the
few non-ASCII characters that lower-case or case-fold to ASCII (`SPECIAL_CHARS`,
e.g. the Kelvin sign) make a string a candidate instead.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors.redact import patterns as pt

# The parse tree of `re` (CPython's sre); absent on another implementation, which disables the prefilter.
try:
    _parser: Any = importlib.import_module("re._parser")
    _c: Any = importlib.import_module("re._constants")
except ImportError:  # pragma: no cover - CPython 3.11+ has both
    _parser = _c = None

SPECIAL_CHARS = frozenset(
    [0xDF, 0x130, 0x131, 0x149, 0x17F, 0x1F0, *range(0x1E96, 0x1E9B), 0x1E9E, 0x212A, *range(0xFB00, 0xFB07)]
)
"""Non-ASCII code points whose lower/upper case or case fold holds ASCII, or that an ASCII character
matches under re.IGNORECASE (`K` Kelvin sign, `ſ`, `İ`, `ı`, `ß`, ligatures); checked by a test."""

MAX_ALTS = 64  # alternatives of one expression kept before its sequence is cut short
UNBOUNDED = -1

# byte flags of the prefilter's main loop (`Tables.flags`)
F_DIGIT, F_PLUS, F_SEP, F_AT, F_KVSEP, F_HIGH, F_SEQ = 1, 2, 4, 8, 16, 32, 64  # F_SEQ: starts a sequence
# auxiliary byte classes (`Tables.aux`)
A_EMAIL_PREV, A_EMAIL_NEXT, A_BLANK, A_QUOTE, A_WORD, A_HEX, A_LABEL = 1, 2, 4, 8, 16, 32, 64
# rule switches, then where the tables sit in the packed arrays (`Tables.params`)
(
    P_MAX_LEN,
    P_BUILTIN,
    P_CARD,
    P_SSN,
    P_PHONE,
    P_EMAIL,
    P_KV,
    P_CUSTOM,
    P_CI,
    P_MIN_LEN,
    P_MIN_DIGITS,
    P_KV_WORDS,  # offset in u8
    P_FIRST_ALT,  # offsets in i32
    P_ALTS,
    P_ELEMENTS,
    P_KV_INDEX,
    P_KV_COUNT,
) = range(17)
N_PARAMS = 17
# fixed offsets in the packed uint8 array (`Tables.kernel_args()[0]`)
O_FLAGS, O_AUX, O_SPECIAL, O_BIGRAM, O_CLASSES = 0, 256, 512, 512 + 0x10000, 512 + 0x20000
# alternative flags (`Tables.alts[:, 2]`)
ALT_CI, ALT_BUILTIN = 1, 2


@dataclass(frozen=True)
class Element:
    """`lo`..`hi` bytes of `chars` (hi = UNBOUNDED for no limit)."""

    chars: frozenset[int]
    lo: int
    hi: int

    @property
    def variable(self) -> bool:
        return self.lo != self.hi


Seq = tuple[Element, ...]


# ---------------------------------------------------------------- regex → byte-class sequences
def _case(chars: set[int], ci: bool) -> set[int]:
    if ci:
        chars |= {ord(chr(c).swapcase()) for c in chars if chr(c).isascii() and chr(c).isalpha()}
    return chars


def _class(op: Any, av: Any, ci: bool) -> set[int] | None:
    """ASCII bytes one character of LITERAL/IN can be; None when it can be non-ASCII."""
    if op is _c.LITERAL:
        return _case({av}, ci) if av < 128 else None
    if op is not _c.IN:
        return None
    out: set[int] = set()
    for kind, val in av:
        if kind is _c.LITERAL and val < 128:
            out.add(val)
        elif kind is _c.RANGE and val[1] < 128:
            out.update(range(val[0], val[1] + 1))
        else:  # NEGATE, CATEGORY (Unicode \d \w \s), non-ASCII members
            return None
    return _case(out, ci)


Partial = list[tuple[Seq, bool]]  # (elements so far, whether what follows may still be appended)


def _item(op: Any, av: Any, ci: bool) -> Partial | None:
    """Expansions of one parse-tree item; None when nothing can be said from here on."""
    if op in (_c.ASSERT, _c.ASSERT_NOT, _c.AT):
        return [((), True)]  # zero width
    if op is _c.LITERAL and av >= 128:
        if ci:
            return None
        return [(tuple(Element(frozenset([b]), 1, 1) for b in chr(av).encode()), True)]
    chars = _class(op, av, ci)
    if chars is not None:
        return [((Element(frozenset(chars), 1, 1),), True)]
    if op in (_c.MAX_REPEAT, _c.MIN_REPEAT, _c.POSSESSIVE_REPEAT):
        lo, hi, sub = av
        hi = UNBOUNDED if hi == _c.MAXREPEAT else hi
        if len(sub) == 1:
            op1, av1 = sub[0]
            one = _class(op1, av1, ci)
            if one is not None:
                return [((Element(frozenset(one), lo, hi),), True)] if hi != 0 else [((), True)]
        if lo == hi == 1:
            return _seq(sub, ci)
        if lo >= 1:  # the first repetition is there; what follows it is not known
            return [(els, False) for els, _ in _seq(sub, ci)]
        return None
    if op is _c.SUBPATTERN:
        _, add, drop, sub = av
        return None if add or drop else _seq(sub, ci)
    if op is _c.ATOMIC_GROUP:
        return _seq(av, ci)
    if op is _c.BRANCH:
        out: Partial = []
        for alt in av[1]:
            out.extend(_seq(alt, ci))
        return out if len(out) <= MAX_ALTS else None
    return None  # ANY, NOT_LITERAL, CATEGORY, GROUPREF, conditionals, ...


def _seq(items: Iterable[Any], ci: bool) -> Partial:
    out: Partial = [((), True)]
    for op, av in items:
        alts = _item(op, av, ci)
        new: Partial = []
        for prefix, open_ in out:
            if not open_ or alts is None:
                new.append((prefix, False))
            else:
                new.extend((prefix + els, more) for els, more in alts)
        new = list(dict.fromkeys(new))
        if len(new) > MAX_ALTS:
            return [(p, False) for p, _ in out]
        out = new
        if not any(more for _, more in out):
            break
    return out


def _greedy_safe(seq: Seq) -> Seq:
    """Cut a sequence so that matching it greedily, element by element, is exact.

    Leading and trailing optional elements say nothing and go; a variable-length
    element must be followed by bytes it cannot hold, else the sequence ends with it.
    """
    els = [e for e in seq if e.hi != 0]
    while els and els[0].lo == 0:
        els.pop(0)
    out: list[Element] = []
    for k, e in enumerate(els):
        out.append(e)
        follow: set[int] = set()
        closed = False
        for nxt in els[k + 1 :]:
            follow |= nxt.chars
            if nxt.lo > 0:
                closed = True
                break
        if not closed or (e.variable and e.chars & follow):
            break
    while out and out[-1].lo == 0:
        out.pop()
    return tuple(out)


def _bits(seq: Seq) -> float:
    return sum(e.lo * math.log2(256 / len(e.chars)) for e in seq)


def sequences(pattern: re.Pattern[str], anchored: bool) -> tuple[list[Seq], bool] | None:
    """Byte-class sequences one of which every match of `pattern` starts with (`anchored`) or holds.

    Returns the sequences and whether they hold case-insensitively, or None when no
    non-empty condition can be derived. Unanchored, the start in the top-level
    sequence whose alternatives are most selective (their weakest, in bits) wins.
    """
    if _parser is None:  # pragma: no cover
        return None
    try:
        tree = _parser.parse(pattern.pattern, pattern.flags & ~re.UNICODE)
    except Exception:  # pragma: no cover - it compiled, so it parses
        return None
    ci = bool(tree.state.flags & re.IGNORECASE)
    items = list(tree)
    best: list[Seq] | None = None
    best_bits = 0.0
    for start in range(1 if anchored else len(items)):
        seqs = [_greedy_safe(s) for s, _ in _seq(items[start:], ci)]
        if not seqs or any(not s for s in seqs):
            continue
        bits = min(_bits(s) for s in seqs)
        if bits > best_bits:
            best, best_bits = list(dict.fromkeys(seqs)), bits
    return None if best is None else (best, ci)


# ---------------------------------------------------------------- hand-derived rules
DIGIT_RULES = {
    # A digit run is a maximal run of 0-9; a gap is what separates two runs inside a cluster.
    # Each rule holds for the runs and gaps under any match of the detector, whatever its
    # boundaries: lookarounds and the validators only ever reject more.
    # "From a token start": the position passes the `_B` boundary (see wire_scan._boundary).
    "card": "13-19 digits from a token start to the end of a run, issuer prefix, Luhn; or runs "
    "4,4,4,4 / 4,6,4-5 (the first 4 from a token start, issuer prefix) with one ' '/'-' between",
    "ssn": "runs 3,2,4 (the 3 from a token start) with '-' between, area/group/serial as ssn_ok",
    "phone_plus": "'+' (a token start, '+' counting as a word character) then 1-9 starting a chain "
    "of >= 8 digits; a chain: digits at most two of ' .()-' apart",
    "phone_00": "'00' + 1-9 from a token start, starting a chain of >= 10 digits with a separator "
    "between two of them",
    "phone_paren": "runs 3,4 with one ' '/'.'/'-' between",
    "phone_us": "runs 3,4 with one ' '/'.'/'-' between",
    "phone_trunk": "runs '0[1-9]...' (2-5 digits from a token start), 3-4, 3-4 with one ' '/'-' "
    "between each, 10-12 digits in all",
}
"""The digit-shape rules `wire_scan.cluster_hit` implements, by detector."""


def fingerprint() -> str:
    """Hash of everything the hand-derived rules were derived from."""
    h = hashlib.sha256()
    parts: list[str] = [
        pt.EMAIL_DETECTOR.source,
        pt._B,
        pt._WORD,
        pt._KV_TAIL,
        repr(sorted(pt._KV_KEYS.items())),
        repr(sorted(pt.KV_SPELLINGS.items())),
        repr([(d.name, d.category, d.lower) for d in pt.SECRET_DETECTORS]),
        repr([(d.name, d.category, d.source, first) for d, first in pt.DIGIT_DETECTORS]),
        pt._CLUSTER_MAP.hex(),
        str(pt.MIN_DIGITS),
        str(pt.MIN_BUILTIN_LEN),
    ]
    for p in parts:
        h.update(p.encode())
        h.update(b"\0")
    return h.hexdigest()


FINGERPRINT = "d65386a05fc11de057646871daf4093ad012c1c7ada203e22d1c25b7ad0cbf9d"
"""`fingerprint()` of the patterns.py the hand-derived rules were checked against."""


# ---------------------------------------------------------------- tables
@dataclass(frozen=True)
class Tables:
    """Everything the string check of `wire_scan` needs, as arrays (see the F_/A_/P_ constants)."""

    flags: np.ndarray  # uint8[256]
    aux: np.ndarray  # uint8[256]
    special: np.ndarray  # uint8[0x10000], SPECIAL_CHARS (all in the BMP)
    bigram: np.ndarray  # uint8[65536]: first two bytes of some sequence
    first_ptr: np.ndarray  # int32[257]: alternatives by first byte (CSR into first_alt)
    first_alt: np.ndarray  # int32[k]
    alts: np.ndarray  # int32[A, 3]: element start, element count, ALT_ flags
    elements: np.ndarray  # int32[E, 3]: class row, lo, hi
    classes: np.ndarray  # uint8[C, 256]
    kv_words: np.ndarray  # uint8[...]: KV spellings, concatenated
    kv_index: np.ndarray  # int32[W, 2]: offset, length
    params: np.ndarray  # int64[N_PARAMS]; offsets filled in by kernel_args

    def kernel_args(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(u8, i32, params): the tables packed into three arrays, so kernels pass few arguments."""
        u8 = np.concatenate(
            [self.flags, self.aux, self.special, self.bigram, self.classes.reshape(-1), self.kv_words]
        )
        parts = [self.first_ptr, self.first_alt, self.alts.reshape(-1), self.elements.reshape(-1)]
        i32 = np.concatenate([*parts, self.kv_index.reshape(-1)]).astype(np.int32)
        params = self.params.copy()
        params[P_KV_WORDS] = O_CLASSES + self.classes.size
        offsets = np.cumsum([0] + [x.size for x in parts])
        params[P_FIRST_ALT], params[P_ALTS], params[P_ELEMENTS], params[P_KV_INDEX] = offsets[1:]
        params[P_KV_COUNT] = self.kv_index.shape[0]
        return u8, i32, params


def _bytes(chars: str) -> list[int]:
    return [ord(c) for c in chars]


def build(
    categories: Iterable[str], custom: Sequence[re.Pattern[str]], max_value_length: int
) -> Tables | None:
    """The tables for a redact config, or None when a condition cannot be derived (→ reference path)."""
    if _parser is None or fingerprint() != FINGERPRINT:
        return None
    cats = set(categories)
    alts: list[tuple[Seq, int]] = []
    for det in pt.SECRET_DETECTORS:
        if det.category in cats and not det.lower:
            got = sequences(re.compile(det.source), anchored=False)
            if got is None or got[1]:
                return None
            alts.extend((s, ALT_BUILTIN) for s in got[0])
    any_ci = False
    for rx in custom:
        got = sequences(rx, anchored=False)
        if got is None:
            return None
        any_ci |= got[1]
        alts.extend((s, ALT_CI if got[1] else 0) for s in got[0])

    flags = np.zeros(256, np.uint8)
    flags[_bytes("0123456789")] |= F_DIGIT
    flags[ord("+")] |= F_PLUS
    for b in range(256):  # digit-cluster characters, as `_clusters` sees them
        if pt._CLUSTER_MAP[b] == ord(".") and b < 128:
            flags[b] |= F_SEP
    flags[ord("@")] |= F_AT
    flags[_bytes(":=")] |= F_KVSEP
    for cp in SPECIAL_CHARS:  # UTF-8 lead bytes of the special characters
        flags[chr(cp).encode()[0]] |= F_HIGH
    aux = np.zeros(256, np.uint8)
    aux[_bytes("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._%+-")] |= A_EMAIL_PREV
    aux[_bytes("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")] |= A_EMAIL_NEXT
    aux[_bytes(" \t")] |= A_BLANK
    aux[_bytes("\"'")] |= A_QUOTE
    aux[_bytes("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")] |= A_WORD  # _WORD
    aux[_bytes("0123456789abcdefABCDEF")] |= A_HEX
    aux[_bytes("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")] |= A_LABEL
    special = np.zeros(0x10000, np.uint8)
    special[sorted(SPECIAL_CHARS)] = 1

    class_rows: dict[frozenset[int], int] = {}
    elements: list[tuple[int, int, int]] = []
    alt_rows: list[tuple[int, int, int]] = []
    bigram = np.zeros((256, 256), np.uint8)
    by_first: list[list[int]] = [[] for _ in range(256)]
    for a, (seq, aflags) in enumerate(alts):
        alt_rows.append((len(elements), len(seq), aflags))
        for e in seq:
            row = class_rows.setdefault(e.chars, len(class_rows))
            elements.append((row, e.lo, e.hi))
        first = sorted(seq[0].chars)
        for b in first:
            by_first[b].append(a)
        bigram[np.ix_(first, sorted(_second_bytes(seq)))] = 1
    flags[np.flatnonzero(bigram.any(axis=1))] |= F_SEQ  # the bigram table is read only after these
    classes = np.zeros((max(1, len(class_rows)), 256), np.uint8)
    for chars, row in class_rows.items():
        classes[row, sorted(chars)] = 1
    first_ptr = np.zeros(257, np.int32)
    first_ptr[1:] = np.cumsum([len(x) for x in by_first])
    first_alt = np.array([a for x in by_first for a in x] or [0], np.int32)

    kv_on = any(d.lower and d.category in cats for d in pt.SECRET_DETECTORS)
    words = sorted(
        {w for d in pt.SECRET_DETECTORS if d.lower and d.category in cats for w in pt.KV_SPELLINGS[d.name]}
    )
    blob = "".join(words).encode()
    offs = np.cumsum([0] + [len(w) for w in words])
    kv_index = np.array([[offs[i], len(w)] for i, w in enumerate(words)] or [[0, 0]], np.int32)

    params = np.zeros(N_PARAMS, np.int64)
    params[P_MAX_LEN] = max_value_length
    params[P_BUILTIN] = bool(cats)
    params[P_CARD] = pt.CREDIT_CARD in cats
    params[P_SSN] = pt.SSN in cats
    params[P_PHONE] = pt.PHONE in cats
    params[P_EMAIL] = pt.EMAIL in cats
    params[P_KV] = kv_on and bool(words)
    params[P_CUSTOM] = bool(custom)
    params[P_CI] = any_ci
    params[P_MIN_LEN] = pt.MIN_BUILTIN_LEN
    params[P_MIN_DIGITS] = pt.MIN_DIGITS
    return Tables(
        flags=flags,
        aux=aux,
        special=special,
        bigram=bigram.reshape(-1),
        first_ptr=first_ptr,
        first_alt=first_alt,
        alts=np.array(alt_rows or [(0, 0, 0)], np.int32).reshape(-1, 3),
        elements=np.array(elements or [(0, 0, 0)], np.int32).reshape(-1, 3),
        classes=classes,
        kv_words=np.frombuffer(blob or b"\0", np.uint8).copy(),
        kv_index=kv_index,
        params=params,
    )


def _second_bytes(seq: Seq) -> set[int]:
    """Bytes that can follow the first byte of a match of `seq` (all 256 when it may end there)."""
    head = seq[0]
    if head.lo >= 2:
        return set(head.chars)
    out = set(head.chars) if head.hi != 1 else set()
    for e in seq[1:]:
        out |= e.chars
        if e.lo > 0:
            return out
    return set(range(256))
