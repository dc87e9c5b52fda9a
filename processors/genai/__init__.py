"""Processor `genai`: recognise LLM spans, extract one row of facts per call, price it, count it.

Adds columns to the span batch (the input of detection), applies the sanity
rules and feeds the LLM metrics on /metrics. Spans are forwarded unchanged;
non-LLM spans get `llm = False` and are never counted.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from pydantic import Field

from gateway.batch import Batch, Signal, SpanBatch
from gateway.component import ComponentConfig, ComponentContext, Factory, Kind, Processor
from processors.genai.extract import STRING_COLUMNS, extract, extract_reference, wire_enabled
from processors.genai.metrics import LABELS, OVERFLOW, LlmMetrics, group_rows
from processors.genai.pricing import PriceOverride, PriceTable, default_price_table
from processors.genai.validation import RULES, ValidationRules, apply_rules
from processors.genai.wire_account import account, group
from processors.genai.wire_extract import Resolved, resolve_wire, warm_up
from processors.genai.wire_resolve import STRING_ROWS

FLOAT_OUTPUTS = (
    "input_tokens",
    "output_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "latency_s",
    "ttft_s",
    "cost_usd",
)
_STRING_OUTPUTS = tuple((name, STRING_ROWS.index(name)) for name in STRING_COLUMNS)
# Stand-ins for the metric arrays when metrics are off (the kernel's argument types stay the same).
_NO_COUNTS = (np.zeros((0, 1), dtype=np.int64),) * 4
_NO_SUMS = (np.zeros(0),) * 4
_NO_OUTCOMES = np.zeros((0, 3), dtype=np.int64)
_NO_SERIES = np.zeros(0, dtype=np.int64)


class MetricsSettings(ComponentConfig):
    enabled: bool = True
    max_series: int = Field(
        default=1000, ge=1, description="Label sets before folding into an overflow series."
    )


class GenAIConfig(ComponentConfig):
    builtin_prices: bool = Field(default=True, description="Use the shipped price table (LiteLLM, MIT).")
    prices: dict[str, PriceOverride] = Field(
        default_factory=dict,
        description="Extra or replacement prices, USD per million tokens, keyed by [provider/]model.",
    )
    validation: ValidationRules = ValidationRules()
    metrics: MetricsSettings = MetricsSettings()


def shared_metrics(ctx: ComponentContext, max_series: int) -> LlmMetrics:
    """One LLM metrics aggregator per runtime, however many pipelines run a genai processor."""

    def create() -> LlmMetrics:
        metrics = LlmMetrics(max_series=max_series)
        ctx.telemetry.registry.register(metrics)
        return metrics

    return ctx.telemetry.singleton("llm_metrics", create)


class GenAIProcessor(Processor):
    config: GenAIConfig

    def __init__(self, ctx: ComponentContext, config: GenAIConfig) -> None:
        super().__init__(ctx, config)
        base = default_price_table() if config.builtin_prices else PriceTable({})
        self.prices = base.with_overrides(config.prices) if config.prices else base
        # User prices also cover dated snapshots and aliases of the model they name, so they are
        # looked up first, with the table's fuzzy matching, in a table of their own.
        self._overrides = PriceTable({}).with_overrides(config.prices) if config.prices else None
        self._row_memo: dict[tuple[str | None, str], int] = {}
        self.metrics = shared_metrics(ctx, config.metrics.max_series) if config.metrics.enabled else None
        p = self.prices
        self._price_columns = np.stack(
            [p.input_price, p.output_price, p.cached_input_price, p.reasoning_price]
        ).reshape(4, len(p))
        v = config.validation
        self._rules = np.array(
            [v.enabled, v.max_latency, float(v.max_tokens), v.max_cost_usd], dtype=np.float64
        )

    async def start(self) -> None:
        # Load (or compile) the wire kernel before the receivers open, so /readyz means fast.
        seconds = await asyncio.to_thread(warm_up)
        self.logger.debug(f"genai wire kernel ready in {seconds:.3f}s")

    async def consume(self, batch: Batch) -> None:
        if isinstance(batch, SpanBatch) and len(batch):
            self.annotate(batch)
        await self.next_consumer.consume(batch)

    def annotate(self, batch: SpanBatch) -> None:
        """Add the LLM columns to `batch` and update metrics: from the protobuf bytes through the
        kernels when the batch has them, else by the reference below (the oracle of the fast path)."""
        if wire_enabled() and batch.wire is not None:
            res = resolve_wire(batch)
            if res is not None:
                self._annotate_resolved(batch, res)
                return
            ex = extract_reference(batch)
        else:
            ex = extract(batch)
        f = ex.floats
        f["cost_usd"] = self._cost(batch, ex.llm, ex.strings, f)
        invalid = apply_rules(self.config.validation, f)
        for name in (
            "input_tokens",
            "output_tokens",
            "cached_input_tokens",
            "reasoning_tokens",
            "latency_s",
            "ttft_s",
            "cost_usd",
        ):
            batch.add_column(name, f[name])
        for name in STRING_COLUMNS:
            batch.add_column(name, ex.strings[name], is_string=True)
        batch.add_column("llm", ex.llm)
        batch.add_column("stream", ex.stream)
        batch.add_column("error", ex.error)
        batch.add_column("rate_limited", ex.rate_limited)
        batch.add_column("truncated", ex.truncated)
        if self.metrics is None:
            return
        for rule, n in invalid.items():
            self.metrics.count_invalid(rule, n)
        rows = np.flatnonzero(ex.llm)
        if not rows.shape[0]:
            return
        columns = [batch.columns["service"][rows]] + [
            ex.strings[n][rows]
            for n in ("provider", "operation", "request_model", "response_model", "error_type")
        ]
        first, series = group_rows(columns)
        values = batch.strings.values
        label_values = [
            tuple(values[x] if x >= 0 else "" for x in u)
            for u in zip(*(c[first].tolist() for c in columns), strict=True)
        ]
        assert len(label_values[0]) == len(LABELS)
        outcome = np.where(ex.rate_limited[rows], 2, np.where(ex.error[rows], 1, 0))
        self.metrics.observe(
            series,
            label_values,
            latency_s=f["latency_s"][rows],
            ttft_s=f["ttft_s"][rows],
            input_tokens=f["input_tokens"][rows],
            output_tokens=f["output_tokens"][rows],
            cost_usd=f["cost_usd"][rows],
            outcome=outcome,
            finish_calls=np.searchsorted(rows, ex.finish_rows),  # finish rows are LLM rows
            finish_codes=ex.finish_codes,
            finish_values=values,
        )

    def _annotate_resolved(self, batch: SpanBatch, res: Resolved) -> None:
        """What the reference below does, on the wire path's result: per distinct value in Python (a
        price key, a label set), per row in the kernels."""
        ex = res.ex
        strings, rows, price_of, price_keys, label_of, labels = group(
            res.ids, ex.llm, res.code, batch.columns["service"]
        )
        values = batch.strings.values
        price_rows = np.array(
            [self._price_of(values, *key) for key in price_keys.tolist()], dtype=np.int64
        ).reshape(-1)
        m = self.metrics
        series_of, overflow = _NO_SERIES, -1
        counts: tuple[np.ndarray, ...] = _NO_COUNTS
        sums: tuple[np.ndarray, ...] = _NO_SUMS
        bounds: tuple[np.ndarray, ...] = _NO_SUMS
        outcomes, cost_sums = _NO_OUTCOMES, _NO_SUMS[0]
        if m is not None and rows.shape[0]:
            text = [*values, ""].__getitem__  # code -1: ""
            series_of = np.array(
                [m.series_index(tuple(map(text, u))) for u in labels.tolist()], dtype=np.int64
            )
            overflow = m.series.get((OVERFLOW,) * len(LABELS), -1)
            hists = (m.duration, m.ttfc, m.tokens_in, m.tokens_out)
            counts = tuple(h.counts for h in hists)
            sums = tuple(h.sums for h in hists)
            bounds = tuple(h.bounds for h in hists)
            outcomes, cost_sums = m.outcomes, m.cost
        f = ex.floats
        cost, violations, folded, fin_series, fin_codes, fin_counts = account(
            res.floats,
            f["latency_s"],
            rows,
            price_of,
            price_rows,
            self._price_columns,
            self._rules,
            label_of,
            series_of,
            overflow,
            ex.error,
            ex.rate_limited,
            res.pair_rows,
            res.code[res.pair_ids],
            counts,
            sums,
            bounds,
            outcomes,
            cost_sums,
        )
        f["cost_usd"] = cost
        # Every array has the batch's rows by construction: one dict update, not 18 checked adds.
        columns = batch.columns
        columns.update((name, f[name]) for name in FLOAT_OUTPUTS)
        columns.update((name, strings[row]) for name, row in _STRING_OUTPUTS)
        columns.update(
            llm=ex.llm, stream=ex.stream, error=ex.error, rate_limited=ex.rate_limited, truncated=ex.truncated
        )
        batch.string_columns.update(STRING_COLUMNS)
        if m is None:
            return
        for rule, n in zip(RULES, violations.tolist(), strict=True):
            m.count_invalid(rule, n)
        if not rows.shape[0]:
            return
        m.overflowed += folded
        finish = m.finish
        for si, c, n in zip(fin_series.tolist(), fin_codes.tolist(), fin_counts.tolist(), strict=True):
            key = (si, values[c])
            finish[key] = finish.get(key, 0) + n

    def _price_of(self, values: list[str], provider: int, response: int, request: int) -> int:
        """Price row of a call by its codes: the response model's, else the request model's."""
        prov = values[provider] if provider >= 0 else None
        row = self._price_row(prov, values[response]) if response >= 0 else -1
        if row < 0 and request >= 0:
            row = self._price_row(prov, values[request])
        return row

    def _price_row(self, provider: str | None, model: str) -> int:
        key = (provider, model)
        row = self._row_memo.get(key)
        if row is None:
            row = -1
            if self._overrides is not None:
                hit = self._overrides.lookup(provider, model)
                combined = self.prices.get(hit.key) if hit is not None else None
                if combined is not None:
                    row = combined.index
            if row < 0:
                row = self.prices.lookup_index(provider, model)
            if len(self._row_memo) > 65536:
                self._row_memo.clear()
            self._row_memo[key] = row
        return row

    def _cost(
        self, batch: SpanBatch, llm: np.ndarray, strs: dict[str, np.ndarray], f: dict[str, np.ndarray]
    ) -> np.ndarray:
        n = len(batch)
        price_rows = np.full(n, -1, dtype=np.int64)
        rows = np.flatnonzero(llm)
        if rows.shape[0]:
            values = batch.strings.values
            columns = [strs["provider"][rows], strs["response_model"][rows], strs["request_model"][rows]]
            first, group = group_rows(columns)
            found = []
            for prov, resp, req in zip(*(c[first].tolist() for c in columns), strict=True):
                provider = values[prov] if prov >= 0 else None
                idx = self._price_row(provider, values[resp]) if resp >= 0 else -1
                if idx < 0 and req >= 0:
                    idx = self._price_row(provider, values[req])
                found.append(idx)
            price_rows[rows] = np.asarray(found, dtype=np.int64)[group]
        cost = self.prices.cost_many(
            price_rows, f["input_tokens"], f["output_tokens"], f["cached_input_tokens"], f["reasoning_tokens"]
        )
        carried = f["span_cost_usd"]
        use_carried = np.isnan(cost) & ~np.isnan(carried)
        cost[use_carried] = carried[use_carried]
        cost[~llm] = np.nan
        return cost


def _create(ctx: ComponentContext, config: Any) -> GenAIProcessor:
    return GenAIProcessor(ctx, config)


FACTORY = Factory(
    type="genai",
    kind=Kind.PROCESSOR,
    config=GenAIConfig,
    create=_create,
    signals=frozenset({Signal.TRACES, Signal.METRICS, Signal.LOGS}),
    description="Recognises LLM spans of all instrumentation families; extracts, prices, counts each call.",
)
