"""Whether scanning a string could change it: the necessary conditions of `conditions`, compiled.

`text_hit(buf, s, e, *tables.kernel_args())` is False only when no enabled
detector or custom pattern can match in the UTF-8 string buf[s:e] and it is not
longer than `max_value_length`, so `Scanner.scan` (and the cut) would leave it as
it is. True means "maybe": the reference decides.
"""

from __future__ import annotations

import numpy as np

from processors.redact import conditions as cd
from processors.redact.kernel import at, inline, kernel


@kernel
def _seq_at(buf, p, e, first, count, u8, i32, params):  # pragma: no cover - compiled
    """Whether the byte-class sequence of elements first..first+count matches greedily at p."""
    q = p
    for k in range(first, first + count):
        el = params[cd.P_ELEMENTS] + 3 * k
        row, lo, hi = i32[el], i32[el + 1], i32[el + 2]
        cls = cd.O_CLASSES + 256 * np.int64(row)
        cnt = 0
        while q < e and u8[cls + buf[q]] and (hi < 0 or cnt < hi):
            q += 1
            cnt += 1
        if cnt < lo:
            return False
    return True


@kernel
def _single(g, chars):  # pragma: no cover - compiled
    """A gap of exactly one of `chars` (g = the gap's byte, or -1)."""
    return g in chars


@inline
def _boundary(buf, s, t, u8, plus):  # pragma: no cover - compiled
    """Whether a token starts at t, as `patterns._boundary` decides (`plus`: '+' does not start one).

    Not after [A-Za-z0-9_\\] (nor '+'), or right after a JSON escape (\\n, \\u00e9).
    """
    if t <= s:
        return True
    p = buf[t - 1]
    if not u8[cd.O_AUX + p] & cd.A_WORD and p != 92 and not (plus and p == 43):
        return True
    if t - 2 >= s and buf[t - 2] == 92 and (p == 110 or p == 114 or p == 116 or p == 98 or p == 102):
        return True
    if t - 6 >= s and buf[t - 6] == 92 and buf[t - 5] == 117:
        hex4 = u8[cd.O_AUX + buf[t - 4]] & u8[cd.O_AUX + buf[t - 3]] & u8[cd.O_AUX + buf[t - 2]]
        return (hex4 & u8[cd.O_AUX + buf[t - 1]] & cd.A_HEX) != 0
    return False


@kernel
def _issuer(buf, t):  # pragma: no cover - compiled
    """patterns.issuer_ok on the digits at t (at least four of them)."""
    first = buf[t] - 48
    if first == 4 or first == 5 or first == 6:
        return True
    if first == 3:
        second = buf[t + 1] - 48
        return second == 0 or second == 4 or second == 5 or second == 7 or second == 8 or second == 9
    if first == 2:
        v = 0
        for k in range(t, t + 4):
            v = v * 10 + (buf[k] - 48)
        return 2221 <= v <= 2720
    return False


@kernel
def _luhn(buf, a, b):  # pragma: no cover - compiled
    """patterns.luhn_ok on the digits buf[a:b]."""
    total = np.int64(0)
    for k in range(b - a):
        d = np.int64(buf[b - 1 - k]) - 48
        if k & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


@kernel
def _ssn(buf, area, group, serial):  # pragma: no cover - compiled
    """patterns.ssn_ok on the three groups of `ddd-dd-dddd`."""
    a0, a1, a2 = buf[area], buf[area + 1], buf[area + 2]
    if a0 == 57 or (a0 == 48 and a1 == 48 and a2 == 48) or (a0 == 54 and a1 == 54 and a2 == 54):
        return False
    if buf[group] == 48 and buf[group + 1] == 48:
        return False
    return not (
        buf[serial] == 48 and buf[serial + 1] == 48 and buf[serial + 2] == 48 and buf[serial + 3] == 48
    )


@kernel
def _chain_hit(plus, n, zero, zero_sep):  # pragma: no cover - compiled
    """A chain read: phone_plus ('+' then >= 8 digits), phone_00 (from '00[1-9]', >= 10 digits, a
    separator between two of them: _phone_00_ok wants one)."""
    return (plus and n >= 8) or (zero >= 0 and zero_sep and n - zero >= 10)


@kernel
def cluster_hit(buf, s, i, e, u8, params):  # pragma: no cover - compiled
    """(end of the digit cluster starting at i, whether a digit-shape rule holds in it).

    The cluster is the maximal run of digits, '+' and ' .()-' from i; as in
    `patterns._clusters`, only one with three digits ('+' counts) in a row and
    MIN_DIGITS of them is searched. The rules (`conditions.DIGIT_RULES`) look at
    its digit runs and the gaps between them, and at chains of digits.
    """
    card, ssn, phone = params[cd.P_CARD] != 0, params[cd.P_SSN] != 0, params[cd.P_PHONE] != 0
    n_dig = 0  # digits and '+', as _clusters counts them
    row = 0  # of those in a row
    triple = False
    hit = False
    # the three runs before the current one (start, length; 2 newest) and the one-character gaps
    # before each (g3: before the current run; -1: none, longer, or with a '+')
    s0 = l0 = s1 = l1 = s2 = l2 = 0
    g1 = g2 = g3 = -1
    cs = cl = 0  # the current run
    gap = -1  # byte of the gap being read, -2 once it is longer than one character
    # chains: digits at most two separators apart ('+' breaks them)
    ch_n = 0
    ch_sep = 0
    ch_plus = False
    ch_zero = -1  # digits of the chain before a '00[1-9]' that starts a token
    ch_zero_sep = False  # a separator between two digits after it
    plus_pending = False
    j = i
    while j <= e:
        b = buf[j] if j < e else 0
        f = u8[cd.O_FLAGS + b] if j < e else 0
        if f & (cd.F_DIGIT | cd.F_PLUS):
            n_dig += 1
            row += 1
            triple = triple or row >= 3
        else:
            row = 0
        is_digit = (f & cd.F_DIGIT) != 0
        # ---- runs and gaps
        if is_digit:
            if cl == 0:  # a run starts after its gap
                g1, g2 = g2, g3
                g3 = gap if gap >= 0 else -1
                cs = j
            cl += 1
        else:
            if cl > 0:  # a run ends at j: the rules that end with it
                ce = j
                if card and cl >= 13:  # bare card
                    for t in range(cs, min(cs + 5, ce - 12)):
                        if ce - t <= 19 and _boundary(buf, s, t, u8, False) and _issuer(buf, t):
                            hit = hit or _luhn(buf, t, ce)
                if phone and cl == 4 and l2 == 3 and _single(g3, (32, 46, 45)):
                    hit = True  # phone_us, phone_paren: ddd[ .-]dddd
                sep3 = _single(g3, (32, 45)) and _single(g2, (32, 45))
                if card and cl == 4 and l2 == 4 and l1 == 4 and l0 >= 4 and sep3 and _single(g1, (32, 45)):
                    t = s0 + l0 - 4  # card 4-4-4-4
                    hit = hit or (_boundary(buf, s, t, u8, False) and _issuer(buf, t))
                if (
                    card
                    and 4 <= cl <= 5
                    and l2 == 6
                    and l1 >= 4
                    and _single(g3, (32, 45))
                    and _single(g2, (32, 45))
                ):
                    t = s1 + l1 - 4  # card 4-6-5
                    hit = hit or (_boundary(buf, s, t, u8, False) and _issuer(buf, t))
                if ssn and cl == 4 and g3 == 45 and l2 == 2 and g2 == 45 and l1 >= 3:
                    t = s1 + l1 - 3
                    hit = hit or (_boundary(buf, s, t, u8, False) and _ssn(buf, t, s2, cs))
                if phone and 3 <= cl <= 4 and 3 <= l2 <= 4 and l1 >= 2 and sep3:
                    for d in range(2, min(5, l1) + 1):  # phone_trunk: 0[1-9]\d{0,3} ddd(d) ddd(d)
                        t = s1 + l1 - d
                        if buf[t] == 48 and 49 <= buf[t + 1] <= 57 and 10 <= d + l2 + cl <= 12:
                            hit = hit or _boundary(buf, s, t, u8, False)
                s0, l0, s1, l1, s2, l2 = s1, l1, s2, l2, cs, cl  # the runs move down
                cl = 0
                gap = -1
            if j < e and f & cd.F_SEP:
                gap = b if gap == -1 else -2
            elif j < e and f & cd.F_PLUS:
                gap = -2
        # ---- chains (phone_plus, phone_00)
        if is_digit:
            if ch_n > 0 and ch_sep > 2:
                hit = hit or (phone and _chain_hit(ch_plus, ch_n, ch_zero, ch_zero_sep))
                ch_n = 0
                ch_plus = False
                ch_zero = -1
                ch_zero_sep = False
            if ch_n > 0 and ch_sep > 0 and ch_zero >= 0:
                ch_zero_sep = True
            if ch_n == 0:
                ch_plus = plus_pending and b != 48
            zz = b == 48 and j + 2 < e and buf[j + 1] == 48 and 49 <= buf[j + 2] <= 57
            if ch_zero < 0 and zz and _boundary(buf, s, j, u8, False):
                ch_zero = ch_n
            ch_n += 1
            ch_sep = 0
            plus_pending = False
        elif j < e and f & cd.F_SEP:
            ch_sep += 1
            plus_pending = False
        else:  # '+' or the end of the cluster
            hit = hit or (phone and _chain_hit(ch_plus, ch_n, ch_zero, ch_zero_sep))
            ch_n = 0
            ch_sep = 0
            ch_plus = False
            ch_zero = -1
            ch_zero_sep = False
            plus_pending = j < e and (f & cd.F_PLUS) != 0 and _boundary(buf, s, j, u8, True)
        if j >= e or not f & (cd.F_DIGIT | cd.F_PLUS | cd.F_SEP):
            break
        j += 1
    return j, hit and triple and n_dig >= params[cd.P_MIN_DIGITS]


@kernel
def _email_at(buf, s, i, e, u8):  # pragma: no cover - compiled
    """An '@' at i between a local-part character and a domain label (1-63 of [A-Za-z0-9-]) + '.' + alnum."""
    if i == s or not u8[cd.O_AUX + buf[i - 1]] & cd.A_EMAIL_PREV:
        return False
    j = i + 1
    while j < e and j - i <= 64 and u8[cd.O_AUX + buf[j]] & cd.A_LABEL:
        j += 1
    n = j - i - 1
    return 1 <= n <= 63 and j + 1 < e and buf[j] == 46 and (u8[cd.O_AUX + buf[j + 1]] & cd.A_EMAIL_NEXT) != 0


@kernel
def _kv_hit(buf, s, p, u8, i32, params):  # pragma: no cover - compiled
    """Whether the key before the separator at p ends with a key spelling (ASCII, any case)."""
    j = p
    while j > s and u8[cd.O_AUX + buf[j - 1]] & cd.A_BLANK:
        j -= 1
    if j > s and u8[cd.O_AUX + buf[j - 1]] & cd.A_QUOTE:
        j -= 1
        if j > s and buf[j - 1] == 92:
            j -= 1
    words = params[cd.P_KV_WORDS]
    for w in range(params[cd.P_KV_COUNT]):
        ix = params[cd.P_KV_INDEX] + 2 * w
        off, n = words + i32[ix], np.int64(i32[ix + 1])
        if n == 0 or j - s < n:
            continue
        ok = True
        for k in range(n):
            c = np.int64(buf[j - n + k])
            if 65 <= c <= 90:
                c += 32
            if c != u8[off + k]:
                ok = False
                break
        if ok:
            return True
    return False


@kernel
def text_hit(buf, s, e, u8, i32, params):  # pragma: no cover - compiled
    """Whether scanning buf[s:e] (a UTF-8 string) could change it: a necessary condition holds."""
    n = e - s
    max_len = params[cd.P_MAX_LEN]
    if max_len > 0 and n > max_len:
        return True  # it may be cut (characters <= bytes)
    builtin = params[cd.P_BUILTIN] != 0 and n >= params[cd.P_MIN_LEN]
    custom = params[cd.P_CUSTOM] != 0
    if not builtin and not custom:
        return False
    digits = builtin and (params[cd.P_CARD] != 0 or params[cd.P_SSN] != 0 or params[cd.P_PHONE] != 0)
    email = builtin and params[cd.P_EMAIL] != 0
    kv = builtin and params[cd.P_KV] != 0
    ci = params[cd.P_CI] != 0
    # bytes that start a check; sparse, so the loop mostly runs without mispredicted branches
    mask = (cd.F_DIGIT | cd.F_PLUS if digits else 0) | (cd.F_AT if email else 0) | (cd.F_KVSEP if kv else 0)
    if kv or ci:
        mask |= cd.F_HIGH
    mask |= cd.F_SEQ
    has_sep = False
    has_special = False
    cluster_end = s
    i = s
    while i < e:
        b = at(buf, i)
        f = at(u8, cd.O_FLAGS + b) & mask  # one table load per byte; the bigram only after F_SEQ
        if f == 0:
            i += 1
            continue
        seq = 0
        if f & cd.F_SEQ:
            nxt = at(buf, i + 1) if i + 1 < e else 0
            seq = u8[cd.O_BIGRAM + ((np.int64(b) << 8) | nxt)]  # the first two bytes of some sequence
        if seq:
            for k in range(i32[b], i32[b + 1]):
                alt = params[cd.P_ALTS] + 3 * i32[params[cd.P_FIRST_ALT] + k]
                usable = builtin or not i32[alt + 2] & cd.ALT_BUILTIN
                if usable and _seq_at(buf, i, e, i32[alt], i32[alt + 1], u8, i32, params):
                    return True
        if f & (cd.F_DIGIT | cd.F_PLUS) and i >= cluster_end:
            end, hit = cluster_hit(buf, s, i, e, u8, params)
            if hit:
                return True
            cluster_end = end
        if f & cd.F_AT and _email_at(buf, s, i, e, u8):
            return True
        if f & cd.F_KVSEP:
            has_sep = True
            if _kv_hit(buf, s, i, u8, i32, params):
                return True
        if f & cd.F_HIGH and not has_special:
            cp = -1
            if b < 0xE0 and i + 1 < e:
                cp = ((b & 0x1F) << 6) | (buf[i + 1] & 0x3F)
            elif b < 0xF0 and i + 2 < e:
                cp = ((b & 0x0F) << 12) | ((buf[i + 1] & 0x3F) << 6) | (buf[i + 2] & 0x3F)
            if 0 <= cp < 0x10000 and u8[cd.O_SPECIAL + cp]:
                has_special = True
        i += 1
    # a character that lower-cases (or IGNORECASE-matches) to ASCII could complete a keyword
    return has_special and ((kv and has_sep) or ci)


def text_may_change(tables: cd.Tables, text: str) -> bool:
    """`text_hit` on one string (tests and tools): False means scanning it cannot change it."""
    buf = np.frombuffer(text.encode("utf-8") or b"\0", np.uint8)
    return bool(text_hit(buf, 0, len(text.encode("utf-8")), *tables.kernel_args()))
