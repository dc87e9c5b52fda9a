"""The precedence rules of `extract`, per span, in numba: the second kernel of the genai wire path.

`wire_scan.scan` says which wanted keys each span has and with what value;
`wire_extract` works out once per distinct string what it means (`props`:
its number, its pool id, lower-cased, as a stream flag, as an operation, its
JSON "model"/"stream", whether it reads as a rate limit). `resolve` then goes
through each span's keys in the order of `families.PRECEDENCE`, exactly as
`span_facts` does, and returns the columns plus the (row, reason) pairs of the
finish reasons. Reasons held in JSON strings are left to Python (`source`).
`finish` then sets each call's first reason and truncation, its latency, and
the order in which the reference would intern the strings; `resolve` runs it
too unless Python has rows or reasons to add first (one kernel call, not two).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit

from processors.genai import wire_scan as scan_kinds
from processors.genai.extract import _STREAM_KEYS
from processors.genai.extract import STATUS_ERROR as _STATUS_ERROR
from processors.genai.families import LLM_MARKERS, PRECEDENCE
from processors.genai.wire_scan import SLOT, UNCOUNTED

# Constants the kernel compiles in. numba's cache only notices edits to this file, so they are
# spelled out here and checked against their sources at import rather than imported.
ABSENT, STR, INT, DOUBLE, BOOL, ARRAY, BYTES = 0, 2, 3, 4, 5, 6, 7
EMPTY = -2
STATUS_ERROR = 2
_KINDS = (
    scan_kinds.ABSENT,
    scan_kinds.STR,
    scan_kinds.INT,
    scan_kinds.DOUBLE,
    scan_kinds.BOOL,
    scan_kinds.ARRAY,
    scan_kinds.BYTES,
)
if (*_KINDS, scan_kinds.EMPTY, _STATUS_ERROR) != (
    ABSENT,
    STR,
    INT,
    DOUBLE,
    BOOL,
    ARRAY,
    BYTES,
    EMPTY,
    STATUS_ERROR,
):
    raise ImportError("wire_resolve's constants differ from wire_scan's or extract's: update both")

# Rows of `props` (int64), one column per distinct string plus a last one for "".
R_ID, R_TEXT, R_LOWER, R_STREAM, R_KIND, R_OPNAME, R_RTYPE, R_MODEL, R_PSTREAM, R_LIMITED, R_LEN = range(11)
# What "" reads as, per row of `props` (R_MODEL: -2, no "model": the next key decides).
PROP_DEFAULTS = np.array([-1, -1, -1, -1, -1, -1, -1, -2, -1, 0, 0], dtype=np.int64)
# Rows of `chains`: slots in precedence order, -1 after the last.
(
    F_PROVIDER,
    F_REQUEST,
    F_RESPONSE,
    F_INPUT,
    F_OUTPUT,
    F_CACHED,
    F_REASONING,
    F_TOTAL,
    F_COST,
    F_TTFT,
    F_STREAM,
    F_OPERATION,
    F_MARKERS,
    F_SPECIAL,
) = range(14)
# Positions in chains[F_SPECIAL].
S_PARAMS, S_ERROR_TYPE, S_HTTP_NEW, S_HTTP_OLD, S_FINISH, S_LLM_FINISH, S_MESSAGES = range(7)
# Pool ids `resolve` needs, in `consts`.
C_CHAT, C_EMBEDDINGS, C_OTHER = range(3)
# Where a call's finish reasons come from; JSON ones are parsed in Python.
SRC_NONE, SRC_ARRAY, SRC_JSON, SRC_INDEXED, SRC_LLM, SRC_MESSAGES = range(6)
# Rows of the float output.
FLOAT_ROWS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "span_cost_usd",
    "ttft_s",
)
# Rows of the string output (pool ids), in the order the reference interns them.
STRING_ROWS = ("operation", "provider", "request_model", "response_model", "finish_reason", "error_type")
FINISH_ROW = STRING_ROWS.index("finish_reason")


def _chains() -> np.ndarray:
    def chain(field: str) -> list[int]:
        return [SLOT[k] for k, _ in PRECEDENCE[field] if k in SLOT]

    rows = [
        chain("provider"),
        chain("request_model"),
        chain("response_model"),
        chain("input_tokens"),
        chain("output_tokens"),
        chain("cached_input_tokens"),
        chain("reasoning_tokens"),
        chain("total_tokens"),
        chain("cost_usd"),
        chain("ttft_s"),
        [SLOT[k] for k in _STREAM_KEYS],
        [SLOT[k] for k in ("openinference.span.kind", "gen_ai.operation.name", "llm.request.type")],
        [SLOT[k] for k in sorted(LLM_MARKERS)],
        [
            SLOT[k]
            for k in (
                "llm.invocation_parameters",
                "error.type",
                "http.response.status_code",
                "http.status_code",
                "gen_ai.response.finish_reasons",
                "llm.finish_reason",
                "gen_ai.output.messages",
            )
        ],
    ]
    out = np.full((len(rows), max(len(r) for r in rows) + 1), -1, dtype=np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return out


CHAINS = _chains()


@njit(cache=True, nogil=True, inline="always")
def _number(kind: np.ndarray, num: np.ndarray, sid: np.ndarray, pnum: np.ndarray, r: int, slot: int) -> float:
    """`_number` of the reference: ints and doubles as they are, strings parsed (in `pnum`), else NaN."""
    k = kind[r, slot]
    if k in (INT, DOUBLE):
        return num[r, slot]
    if k == STR:
        return pnum[sid[r, slot]]
    return np.nan


@njit(cache=True, nogil=True, inline="always")
def _first_number(
    kind: np.ndarray, num: np.ndarray, sid: np.ndarray, pnum: np.ndarray, chains: np.ndarray, f: int, r: int
) -> float:
    """`_first_number`: the first key of chain `f` holding a number."""
    for j in range(chains.shape[1]):
        slot = chains[f, j]
        if slot < 0:
            break
        v = _number(kind, num, sid, pnum, r, slot)
        if not np.isnan(v):
            return v
    return np.nan


@njit(cache=True, nogil=True, inline="always")
def _first_string(
    kind: np.ndarray,
    sid: np.ndarray,
    props: np.ndarray,
    chains: np.ndarray,
    f: int,
    prop: int,
    params: int,
    r: int,
) -> int:
    """`_first`: the first present key of chain `f` decides; a string counts as props[prop] of it.
    The JSON parameters decide only when they hold a truthy "model"."""
    for j in range(chains.shape[1]):
        slot = chains[f, j]
        if slot < 0:
            break
        k = kind[r, slot]
        if slot == params:
            if k == STR and props[R_MODEL, sid[r, slot]] != -2:
                return props[R_MODEL, sid[r, slot]]
            continue
        if k != ABSENT:
            return props[prop, sid[r, slot]] if k == STR else -1
    return -1


@njit(**UNCOUNTED)
def _rows(
    kind: np.ndarray,
    num: np.ndarray,
    sid: np.ndarray,
    status_code: np.ndarray,
    odd: np.ndarray,
    exc_type: np.ndarray,
    exc_msg: np.ndarray,
    status_msg: np.ndarray,
    chunk_ttft: np.ndarray,
    fin_off: np.ndarray,
    fin_len: np.ndarray,
    fin_sid: np.ndarray,
    ix_row: np.ndarray,
    ix_idx: np.ndarray,
    ix_sid: np.ndarray,
    props: np.ndarray,
    pnum: np.ndarray,
    chains: np.ndarray,
    consts: np.ndarray,
    llm: np.ndarray,
    ids: np.ndarray,
    floats: np.ndarray,
    stream: np.ndarray,
    error: np.ndarray,
    limited: np.ndarray,
    source: np.ndarray,
    pair_rows: np.ndarray,
    pair_ids: np.ndarray,
) -> int:
    """The rules, row by row, into `resolve`'s arrays; returns the number of reason pairs.

    Compiled without reference counting: the inlined helpers would otherwise count their array
    arguments at every call, per row.
    """
    n = kind.shape[0]
    empty = props.shape[1] - 1
    params, et = chains[F_SPECIAL, S_PARAMS], chains[F_SPECIAL, S_ERROR_TYPE]
    h_new, h_old = chains[F_SPECIAL, S_HTTP_NEW], chains[F_SPECIAL, S_HTTP_OLD]
    fr, lf, om = chains[F_SPECIAL, S_FINISH], chains[F_SPECIAL, S_LLM_FINISH], chains[F_SPECIAL, S_MESSAGES]
    n_ix = ix_row.shape[0]
    n_pairs = 0
    ix = 0
    for r in range(n):
        ix0 = ix  # indexed finish reasons come in row order
        while ix < n_ix and ix_row[ix] == r:
            ix += 1
        if odd[r]:
            continue
        # ---- classify
        op = -1
        decided = False
        for j in range(3):  # span.kind, operation.name, request.type: the first string decides
            slot = chains[F_OPERATION, j]
            if kind[r, slot] == STR:
                op = props[R_KIND + j, sid[r, slot]]
                decided = True
                break
        if not decided:
            for j in range(chains.shape[1]):
                slot = chains[F_MARKERS, j]
                if slot < 0:
                    break
                if kind[r, slot] != ABSENT:
                    op = consts[C_CHAT]
                    break
        if op < 0:
            continue
        llm[r] = True
        ids[0, r] = op
        ids[1, r] = _first_string(kind, sid, props, chains, F_PROVIDER, R_LOWER, params, r)
        ids[2, r] = _first_string(kind, sid, props, chains, F_REQUEST, R_ID, params, r)
        ids[3, r] = _first_string(kind, sid, props, chains, F_RESPONSE, R_ID, params, r)
        # ---- numbers
        t_in = _first_number(kind, num, sid, pnum, chains, F_INPUT, r)
        t_out = _first_number(kind, num, sid, pnum, chains, F_OUTPUT, r)
        if op == consts[C_EMBEDDINGS]:
            if np.isnan(t_in):
                t_in = _first_number(kind, num, sid, pnum, chains, F_TOTAL, r)
            if np.isnan(t_out) and not np.isnan(t_in):
                t_out = 0.0  # embeddings produce no output tokens
        floats[0, r] = t_in
        floats[1, r] = t_out
        floats[2, r] = _first_number(kind, num, sid, pnum, chains, F_CACHED, r)
        floats[3, r] = _first_number(kind, num, sid, pnum, chains, F_REASONING, r)
        floats[4, r] = _first_number(kind, num, sid, pnum, chains, F_COST, r)
        ttft = _first_number(kind, num, sid, pnum, chains, F_TTFT, r)
        if np.isnan(ttft):
            ttft = chunk_ttft[r]
        floats[5, r] = ttft
        # ---- stream
        flag = -1
        for j in range(chains.shape[1]):
            slot = chains[F_STREAM, j]
            if slot < 0:
                break
            k = kind[r, slot]
            if k == BOOL:
                flag = int(num[r, slot])
                break
            if k == STR and props[R_STREAM, sid[r, slot]] >= 0:
                flag = props[R_STREAM, sid[r, slot]]
                break
        if flag < 0 and kind[r, params] == STR:
            flag = props[R_PSTREAM, sid[r, params]]
        if flag < 0 and not np.isnan(ttft):
            flag = 1
        stream[r] = flag
        # ---- finish reasons
        if kind[r, fr] == ARRAY and num[r, fr] > 0:
            source[r] = SRC_ARRAY
            for e in range(fin_off[r], fin_off[r] + fin_len[r]):
                pair_rows[n_pairs], pair_ids[n_pairs] = r, props[R_TEXT, fin_sid[e]]
                n_pairs += 1
        elif kind[r, fr] == STR and num[r, fr] > 0:
            source[r] = SRC_JSON
        elif ix > ix0:
            source[r] = SRC_INDEXED
            for e in range(ix0, ix):  # sorted by (row, index, byte order): the last of an index wins
                if e + 1 < ix and ix_idx[e + 1] == ix_idx[e]:
                    continue
                pair_rows[n_pairs], pair_ids[n_pairs] = r, props[R_TEXT, ix_sid[e]]
                n_pairs += 1
        elif kind[r, lf] == STR and num[r, lf] > 0:
            source[r] = SRC_LLM
            pair_rows[n_pairs], pair_ids[n_pairs] = r, props[R_TEXT, sid[r, lf]]
            n_pairs += 1
        elif kind[r, om] == STR:
            source[r] = SRC_MESSAGES
        # ---- errors
        named = kind[r, et] == STR and num[r, et] > 0
        if status_code[r] != STATUS_ERROR and not named:
            continue
        error[r] = True
        xt = empty if exc_type[r] == EMPTY else exc_type[r]
        xm = empty if exc_msg[r] == EMPTY else exc_msg[r]
        if named:
            ids[5, r] = props[R_ID, sid[r, et]]
            rl = props[R_LIMITED, sid[r, et]] != 0
        elif xt >= 0 and props[R_LEN, xt] > 0:
            ids[5, r] = props[R_ID, xt]
            rl = props[R_LIMITED, xt] != 0
        else:
            ids[5, r] = consts[C_OTHER]
            rl = False
        http = _number(kind, num, sid, pnum, r, h_new if kind[r, h_new] != ABSENT else h_old)
        rl = rl or http == 429
        rl = rl or (xt >= 0 and props[R_LIMITED, xt] != 0) or (xm >= 0 and props[R_LIMITED, xm] != 0)
        rl = rl or (status_msg[r] >= 0 and props[R_LIMITED, status_msg[r]] != 0)
        limited[r] = rl
    return n_pairs


@njit(cache=True, nogil=True)
def finish(
    ids: np.ndarray,
    llm: np.ndarray,
    pair_rows: np.ndarray,
    pair_ids: np.ndarray,
    truncating: np.ndarray,
    start_ns: np.ndarray,
    end_ns: np.ndarray,
) -> tuple[Any, ...]:
    """(truncated, latency_s, pool ids in the order the reference interns them); sets each call's
    first reason in `ids`. Reason pairs come sorted by row; `truncating[pool id]`: a truncation reason.

    The reference interns each call's strings, row by row, then every reason.
    """
    n = llm.shape[0]
    truncated = np.zeros(n, dtype=np.bool_)
    latency = np.full(n, np.nan)
    for r in range(n):
        if llm[r]:
            latency[r] = np.float64(end_ns[r] - start_ns[r]) / 1e9  # as latency_of: int64, then / 1e9
    last = -1
    for i in range(pair_rows.shape[0]):
        r, p = pair_rows[i], pair_ids[i]
        if r != last:
            ids[FINISH_ROW, r] = p
            last = r
        if truncating[p]:
            truncated[r] = True
    n_pool = truncating.shape[0]
    seen = np.zeros(n_pool, dtype=np.bool_)
    order = np.empty(n_pool, dtype=np.int64)
    m = 0
    for r in range(n):
        if llm[r]:
            for j in range(ids.shape[0]):
                p = ids[j, r]
                if p >= 0 and not seen[p]:
                    seen[p] = True
                    order[m] = p
                    m += 1
    for p in pair_ids:
        if p >= 0 and not seen[p]:
            seen[p] = True
            order[m] = p
            m += 1
    return truncated, latency, order[:m]


@njit(cache=True, nogil=True)
def resolve(
    kind: np.ndarray,
    num: np.ndarray,
    sid: np.ndarray,
    status_code: np.ndarray,
    odd: np.ndarray,
    exc_type: np.ndarray,
    exc_msg: np.ndarray,
    status_msg: np.ndarray,
    chunk_ttft: np.ndarray,
    fin_off: np.ndarray,
    fin_len: np.ndarray,
    fin_sid: np.ndarray,
    ix_row: np.ndarray,
    ix_idx: np.ndarray,
    ix_sid: np.ndarray,
    props: np.ndarray,
    pnum: np.ndarray,
    chains: np.ndarray,
    consts: np.ndarray,
    printed: np.ndarray,
    truncating: np.ndarray,
    start_ns: np.ndarray,
    end_ns: np.ndarray,
) -> tuple[Any, ...]:
    """(odd, llm, strings [6, n] pool ids in STRING_ROWS order, floats [6, n] in FLOAT_ROWS order,
    stream, error, rate_limited, reason source, reason rows, reason pool ids, whether Python must
    finish, then `finish`'s truncated, latency and first-use order).

    `odd` comes back with the rows whose `printed` slots hold truthy non-strings (the reference prints
    them). Rows left odd and reasons held in JSON (`source`) are Python's: then `finish` is not run
    here (its outputs come back empty) and must be called once Python has added those.
    Indexed finish reasons must come sorted by (row, index, byte order).
    """
    n = kind.shape[0]
    odd = odd.copy()
    for r in range(n):
        for slot in printed:
            if kind[r, slot] >= INT and num[r, slot] != 0:  # int, double, bool, array, bytes
                odd[r] = True
    llm = np.zeros(n, dtype=np.bool_)
    ids = np.full((6, n), -1, dtype=np.int64)
    floats = np.full((6, n), np.nan)
    stream = np.full(n, -1, dtype=np.int8)
    error = np.zeros(n, dtype=np.bool_)
    limited = np.zeros(n, dtype=np.bool_)
    source = np.zeros(n, dtype=np.int8)
    pair_rows = np.empty(fin_sid.shape[0] + ix_row.shape[0] + n, dtype=np.int64)
    pair_ids = np.empty(fin_sid.shape[0] + ix_row.shape[0] + n, dtype=np.int64)
    inputs = (kind, num, sid, status_code, odd, exc_type, exc_msg, status_msg, chunk_ttft, fin_off, fin_len)
    more = (fin_sid, ix_row, ix_idx, ix_sid, props, pnum, chains, consts)
    outputs = (llm, ids, floats, stream, error, limited, source, pair_rows, pair_ids)
    n_pairs = _rows(*inputs, *more, *outputs)
    pair_rows, pair_ids = pair_rows[:n_pairs], pair_ids[:n_pairs]
    python = False
    for r in range(n):
        if odd[r] or source[r] == SRC_JSON or source[r] == SRC_MESSAGES:
            python = True
            break
    if python:
        truncated, latency, order = np.zeros(0, np.bool_), np.zeros(0), np.zeros(0, np.int64)
    else:
        truncated, latency, order = finish(ids, llm, pair_rows, pair_ids, truncating, start_ns, end_ns)
    return (
        odd,
        llm,
        ids,
        floats,
        stream,
        error,
        limited,
        source,
        pair_rows,
        pair_ids,
        python,
        truncated,
        latency,
        order,
    )
