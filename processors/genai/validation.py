"""Sanity rules for extracted values (from the seed design: latency 0–600 s, bounded tokens, cost ≤ $100).

A value outside its rule is set to NaN, so it is excluded from metrics and
detection, and counted per rule; the span itself is forwarded untouched.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from gateway.component import ComponentConfig, Duration


class ValidationRules(ComponentConfig):
    enabled: bool = True
    max_latency: Duration = Field(default=600.0, gt=0, description="Longest plausible call.")
    max_tokens: int = Field(
        default=2_000_000,
        gt=0,
        description="Per-call token count ceiling (each of input/output/cached/reasoning); "
        "above the largest context windows in service.",
    )
    max_cost_usd: float = Field(default=100.0, gt=0, description="Most a single call may plausibly cost.")


# The rules in the order `apply_rules` counts them.
RULES = ("latency_range", "ttft_range", "token_limit", "cost_limit")


def _out_of_range(values: np.ndarray, high: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return ~np.isnan(values) & ((values < 0) | (values > high))


def apply_rules(rules: ValidationRules, floats: dict[str, np.ndarray]) -> dict[str, int]:
    """Blank out-of-range values in place; return violations per rule name."""
    if not rules.enabled:
        return {}
    counts: dict[str, int] = {}

    def check(rule: str, names: tuple[str, ...], high: float) -> None:
        for name in names:
            bad = _out_of_range(floats[name], high)
            n = int(bad.sum())
            if n:
                floats[name][bad] = np.nan
                counts[rule] = counts.get(rule, 0) + n

    check("latency_range", ("latency_s",), rules.max_latency)
    # TTFT cannot exceed the call itself.
    lat = np.where(np.isnan(floats["latency_s"]), rules.max_latency, floats["latency_s"])
    with np.errstate(invalid="ignore"):
        bad_ttft = ~np.isnan(floats["ttft_s"]) & ((floats["ttft_s"] < 0) | (floats["ttft_s"] > lat))
    if bad_ttft.any():
        floats["ttft_s"][bad_ttft] = np.nan
        counts["ttft_range"] = int(bad_ttft.sum())
    check(
        "token_limit",
        ("input_tokens", "output_tokens", "cached_input_tokens", "reasoning_tokens"),
        float(rules.max_tokens),
    )
    check("cost_limit", ("cost_usd",), rules.max_cost_usd)
    return counts
