"""One pass over a span batch's columns counting what receivers reject (`SpanBatch.invalid_reasons`).

Nearly every request is clean, and answering that with numpy took a dozen array operations
per request; this kernel answers it in one loop. Only a batch with problems builds masks.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def span_problems(
    ids_ok: np.ndarray,
    trace_hi: np.ndarray,
    trace_lo: np.ndarray,
    span_id: np.ndarray,
    start: np.ndarray,
    end: np.ndarray,
) -> tuple[int, int, int]:
    """(bad ids, times past int64, end before start); a time past int64 is not also counted as
    out of order, as in `invalid_reasons`."""
    bad_ids = out_of_range = bad_order = 0
    for i in range(ids_ok.shape[0]):
        if not ids_ok[i] or (trace_hi[i] | trace_lo[i]) == 0 or span_id[i] == 0:
            bad_ids += 1
        if start[i] < 0 or end[i] < 0:
            out_of_range += 1
        elif end[i] < start[i]:
            bad_order += 1
    return bad_ids, out_of_range, bad_order
