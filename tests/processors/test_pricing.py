"""Tests for the LLM price table (processors/genai/pricing.py) and its data (processors/genai/data)."""

from __future__ import annotations

import importlib.resources
import importlib.util
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

from processors.genai.pricing import (
    ModelPrice,
    PriceOverride,
    PriceTable,
    cost,
    cost_vectorized,
    default_price_table,
)

DATA_DIR = Path(__file__).resolve().parents[2] / "processors" / "genai" / "data"


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    text = importlib.resources.files("processors.genai").joinpath("data/prices.json").read_text("utf-8")
    doc: dict[str, Any] = json.loads(text)
    return doc


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return default_price_table()


def expected_cost(
    entry: dict[str, Any], inp: float, out: float, cached: float = 0.0, reasoning: float = 0.0
) -> float:
    cached_price = entry["input"] if entry["cached_input"] is None else entry["cached_input"]
    reasoning_price = entry["output"] if entry["reasoning"] is None else entry["reasoning"]
    return (
        (inp - cached) * entry["input"]
        + cached * cached_price
        + (out - reasoning) * entry["output"]
        + reasoning * reasoning_price
    )


# ----------------------------------------------------------------------------- data file


def test_data_file_schema_size_and_provenance(raw: dict[str, Any]) -> None:
    assert raw["source"] and raw["version"].startswith("litellm ")
    models = raw["models"]
    assert 500 < len(models) < 5000
    assert (DATA_DIR / "prices.json").stat().st_size < 300_000
    assert (DATA_DIR / "PRICES_LICENSE").read_text().count("MIT License") == 1
    assert raw["version"].split()[1] in (DATA_DIR / "PRICES_SOURCE.md").read_text()
    providers = {k.split("/", 1)[0] for k in models}
    for p in ("openai", "anthropic", "gemini", "vertex_ai", "bedrock", "azure", "mistral", "cohere", "groq"):
        assert p in providers, p
    assert "deepseek" in providers
    for key, entry in models.items():
        assert set(entry) == {"input", "output", "cached_input", "reasoning"}, key
        for field in ("input", "output"):
            assert isinstance(entry[field], float | int) and entry[field] >= 0, key
        for field in ("cached_input", "reasoning"):
            assert entry[field] is None or entry[field] >= 0, key


def test_load_time_and_caching(raw: dict[str, Any]) -> None:
    data = importlib.resources.files("processors.genai").joinpath("data/prices.json").read_bytes()
    t0 = time.perf_counter()
    fresh = PriceTable.from_json(data)
    elapsed = time.perf_counter() - t0
    # reported, not asserted: a wall-clock bound fails on a loaded machine (timings live in loadtests/)
    print(f"\nprice table: {len(fresh)} models, {len(data)} bytes, parsed in {elapsed * 1e3:.1f} ms")
    assert len(fresh) == len(raw["models"])
    assert default_price_table() is default_price_table()
    assert default_price_table().version == raw["version"]


def test_price_columns_match_entries(table: PriceTable) -> None:
    for p in table.prices[:50]:
        assert table.input_price[p.index] == p.input
        assert table.output_price[p.index] == p.output
        assert table.cached_input_price[p.index] == p.effective_cached_input
        assert table.reasoning_price[p.index] == p.effective_reasoning
    assert not table.input_price.flags.writeable


# ----------------------------------------------------------------------------- costs


def test_hand_checked_gpt_4o_mini(table: PriceTable) -> None:
    price = table.lookup("openai", "gpt-4o-mini")
    assert price is not None and price.key == "openai/gpt-4o-mini"
    # OpenAI list price: $0.15 / 1M input, $0.60 / 1M output, $0.075 / 1M cached input.
    assert price.input == pytest.approx(0.15e-6, rel=1e-12)
    assert price.output == pytest.approx(0.60e-6, rel=1e-12)
    assert price.cached_input == pytest.approx(0.075e-6, rel=1e-12)
    # 1000 prompt tokens (400 of them cached) and 500 completion tokens
    assert cost(price, 1000, 500) == pytest.approx(0.00015 + 0.0003, rel=1e-12)
    assert cost(price, 1000, 500, 400) == pytest.approx(600 * 0.15e-6 + 400 * 0.075e-6 + 0.0003, rel=1e-12)


@pytest.mark.parametrize(
    "key",
    [
        "openai/gpt-4o",
        "openai/o1",
        "openai/text-embedding-3-small",
        "anthropic/claude-sonnet-4-5",
        "gemini/gemini-2.5-flash",
        "vertex_ai/gemini-2.5-pro",
        "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        "azure/gpt-4o-mini",
        "mistral/mistral-large-latest",
        "cohere/command-r-08-2024",
        "deepseek/deepseek-chat",
    ],
)
def test_known_costs_match_json(raw: dict[str, Any], table: PriceTable, key: str) -> None:
    entry = raw["models"][key]
    price = table.get(key)
    assert price is not None and price.key == key
    assert (price.input, price.output, price.cached_input, price.reasoning) == (
        entry["input"],
        entry["output"],
        entry["cached_input"],
        entry["reasoning"],
    )
    for args in [(1234, 567, 0, 0), (10_000, 2_000, 3_000, 0), (800, 4_000, 0, 1_500), (5, 0, 5, 0)]:
        assert cost(price, *args) == pytest.approx(expected_cost(entry, *args), rel=1e-12, abs=0)


def test_reasoning_defaults_to_output_price_and_cached_to_input_price() -> None:
    t = PriceTable({"x/m": {"input": 1e-6, "output": 4e-6, "cached_input": None, "reasoning": None}})
    p = t.get("x/m")
    assert p is not None
    assert cost(p, 100, 50, 40, 30) == pytest.approx(100 * 1e-6 + 50 * 4e-6, rel=1e-12)
    t2 = PriceTable({"m": {"input": 1e-6, "output": 4e-6, "cached_input": 0.5e-6, "reasoning": 8e-6}})
    p2 = t2.get("m")
    assert p2 is not None
    # cached and reasoning are subsets of input and output
    assert cost(p2, 100, 50, 40, 30) == pytest.approx(60e-6 + 40 * 0.5e-6 + 20 * 4e-6 + 30 * 8e-6, rel=1e-12)


def test_unknown_tokens_and_unknown_model_give_nan(table: PriceTable) -> None:
    price = table.lookup("openai", "gpt-4o")
    assert price is not None
    for inp, out in [(math.nan, 10), (10, math.nan), (None, 10), (10, None), (-1, 10), (10, -5)]:
        assert math.isnan(cost(price, inp, out))
    assert math.isnan(cost(None, 10, 10))
    # unknown cached / reasoning counts are treated as 0, oversize subsets are clamped
    assert cost(price, 100, 10, math.nan, math.nan) == cost(price, 100, 10)
    assert cost(price, 100, 10, None, -3) == cost(price, 100, 10)
    assert cost(price, 100, 10, 1000, 1000) == cost(price, 100, 10, 100, 10)
    assert cost(price, 0, 0) == 0.0


# ----------------------------------------------------------------------------- lookup


@pytest.mark.parametrize(
    ("provider", "model", "key"),
    [
        # dated names fall back to the undated entry when the dated one is not listed
        ("openai", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini-2024-07-18"),
        ("openai", "gpt-4o-mini-2099-12-31", "openai/gpt-4o-mini"),
        ("openai", "gpt-4-0314", "openai/gpt-4"),
        ("openai", "gpt-4o-latest", "openai/gpt-4o"),
        ("mistral", "mistral-tiny-latest", "mistral/mistral-tiny"),
        ("anthropic", "claude-sonnet-4-6-20990101", "anthropic/claude-sonnet-4-6"),
        ("anthropic", "claude-haiku-4-5-20251001", "anthropic/claude-haiku-4-5-20251001"),
        ("openai", "ft:gpt-4o-mini-2024-07-18:acme:support:AbC123", "openai/ft:gpt-4o-mini-2024-07-18"),
        # case-insensitive
        ("OpenAI", "GPT-4o-Mini", "openai/gpt-4o-mini"),
        # OpenTelemetry gen_ai.provider.name / gen_ai.system and OpenInference values
        ("azure.ai.openai", "gpt-4o", "azure/gpt-4o"),
        ("az.ai.openai", "gpt-4o-mini-2024-07-18", "azure/gpt-4o-mini-2024-07-18"),
        ("gcp.gemini", "gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("gemini", "models/gemini-2.5-flash", "gemini/gemini-2.5-flash"),
        ("google", "gemini-2.5-pro", "gemini/gemini-2.5-pro"),
        ("mistral_ai", "mistral-large-latest", "mistral/mistral-large-latest"),
        ("mistralai", "mistral-large-latest", "mistral/mistral-large-latest"),
        ("cohere", "command-r-08-2024", "cohere/command-r-08-2024"),
        ("deepseek", "deepseek-chat", "deepseek/deepseek-chat"),
        ("groq", "openai/gpt-oss-120b", "groq/openai/gpt-oss-120b"),
        # provider prefix in the model name, with or without a provider
        (None, "openai/gpt-4o", "openai/gpt-4o"),
        ("", "anthropic/claude-sonnet-4-5", "anthropic/claude-sonnet-4-5"),
        ("openai", "openai/gpt-4o-mini", "openai/gpt-4o-mini"),
        # no provider: first-party price
        (None, "gpt-4o-mini", "openai/gpt-4o-mini"),
        # Bedrock
        (
            "aws.bedrock",
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (
            "aws.bedrock",
            "us.anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/us.anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (
            "bedrock",
            "apac.anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (
            None,
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        (
            "aws",
            "arn:aws:bedrock:us-east-1::foundation-model/anthropic.claude-3-5-sonnet-20240620-v1:0",
            "bedrock/anthropic.claude-3-5-sonnet-20240620-v1:0",
        ),
        # Vertex
        ("gcp.vertex_ai", "claude-3-5-sonnet@20240620", "vertex_ai/claude-3-5-sonnet@20240620"),
        ("vertexai", "claude-3-haiku@20991231", "vertex_ai/claude-3-haiku"),
        ("gcp.vertex_ai", "gemini-2.0-flash-001", "vertex_ai/gemini-2.0-flash"),
        (
            "gcp.vertex_ai",
            "projects/p/locations/us-central1/publishers/google/models/gemini-2.5-pro",
            "vertex_ai/gemini-2.5-pro",
        ),
    ],
)
def test_lookup(table: PriceTable, provider: str | None, model: str, key: str) -> None:
    price = table.lookup(provider, model)
    assert price is not None, (provider, model)
    assert price.key == key


def test_dated_fallbacks_are_not_listed_themselves(table: PriceTable) -> None:
    for key in (
        "openai/gpt-4o-mini-2099-12-31",
        "openai/gpt-4-0314",
        "openai/gpt-4o-latest",
        "mistral/mistral-tiny-latest",
    ):
        assert table.get(key) is None


def test_unknown_model(table: PriceTable) -> None:
    for provider, model in [
        ("openai", "no-such-model"),
        (None, "no-such-model"),
        ("my-vllm", "llama-local"),
        ("openai", ""),
    ]:
        assert table.lookup(provider, model) is None
        assert table.lookup_index(provider, model) == -1
        assert math.isnan(cost(table.lookup(provider, model), 100, 100))
    assert table.lookup("openai", None) is None


def test_cross_provider_fallback_can_be_disabled(raw: dict[str, Any]) -> None:
    on = PriceTable(raw["models"])
    off = PriceTable(raw["models"], cross_provider_fallback=False)
    # Azure does not list this OpenAI model: approximated by OpenAI's list price unless disabled
    assert on.get("azure/gpt-4o-mini-search-preview") is None
    fallback = on.lookup("azure.ai.openai", "gpt-4o-mini-search-preview")
    assert fallback is not None and fallback.key == "openai/gpt-4o-mini-search-preview"
    assert off.lookup("azure.ai.openai", "gpt-4o-mini-search-preview") is None
    # without a provider (or with an unknown one) any provider is searched either way
    assert off.lookup(None, "gpt-4o-mini-search-preview") is not None
    assert off.lookup("some-router", "gpt-4o-mini-search-preview") is not None


def test_lookup_is_memoised(table: PriceTable) -> None:
    a = table.lookup("OpenAI", "gpt-4o-mini-2099-01-01")
    b = table.lookup("OpenAI", "gpt-4o-mini-2099-01-01")
    assert a is b and ("OpenAI", "gpt-4o-mini-2099-01-01") in table._memo


# ----------------------------------------------------------------------------- overrides


def test_overrides_replace_and_extend(table: PriceTable) -> None:
    original = table.lookup("openai", "gpt-4o")
    assert original is not None
    t = table.with_overrides(
        {
            "OpenAI/GPT-4o": {
                "input_per_million": 2.5,
                "output_per_million": 10,
                "cached_input_per_million": 1.25,
            },
            "my-finetune": {"input_per_million": 1, "output_per_million": 2},
            "az.ai.openai/team-deployment": PriceOverride(input_per_million=3, output_per_million=12),
            "my-vllm/llama-3": {"input_per_million": 0, "output_per_million": 0},
            "reasoner": {"input_per_million": 1, "output_per_million": 2, "reasoning_per_million": 3},
        }
    )
    gpt4o = t.lookup("openai", "gpt-4o")
    assert gpt4o is not None and gpt4o.key == "openai/gpt-4o"
    assert (gpt4o.input, gpt4o.output, gpt4o.cached_input) == (2.5e-6, 1e-5, 1.25e-6)
    assert len(t) == len(table) + 4

    ft = t.lookup(None, "my-finetune")
    assert ft is not None and (ft.input, ft.output, ft.cached_input, ft.reasoning) == (1e-6, 2e-6, None, None)
    assert t.lookup("openai", "my-finetune") is ft  # provider-less entries match any provider
    assert t.lookup("openai", "my-finetune-2024-01-01") is ft
    dep = t.lookup("azure.ai.openai", "team-deployment")
    assert dep is not None and dep.key == "azure/team-deployment" and dep.input == 3e-6
    local = t.lookup("my-vllm", "llama-3")
    assert local is not None and cost(local, 1000, 1000) == 0.0
    r = t.lookup(None, "reasoner")
    assert r is not None
    assert cost(r, 1_000_000, 1_000_000, 0, 250_000) == pytest.approx(1 + 0.75 * 2 + 0.25 * 3, rel=1e-12)

    # the source table is untouched
    assert table.lookup("openai", "my-finetune") is None
    assert table.lookup("openai", "gpt-4o") is original


def test_provider_less_override_applies_everywhere_but_specific_wins(table: PriceTable) -> None:
    t = table.with_overrides(
        {
            "openai/gpt-4o": {"input_per_million": 9, "output_per_million": 9},
            "gpt-4o": {"input_per_million": 1, "output_per_million": 1},
        }
    )
    openai = t.lookup("openai", "gpt-4o")
    azure = t.lookup("az.ai.openai", "gpt-4o")
    unknown = t.lookup("some-router", "gpt-4o")
    assert openai is not None and openai.input == 9e-6
    assert azure is not None and azure.key == "azure/gpt-4o" and azure.input == 1e-6
    assert unknown is not None and unknown.key == "gpt-4o" and unknown.input == 1e-6


@pytest.mark.parametrize(
    "bad",
    [
        {"input_per_million": -1, "output_per_million": 1},
        {"input_per_million": 1},
        {"input_per_million": 1, "output_per_million": 1, "currency": "EUR"},
        {"input_per_million": math.nan, "output_per_million": 1},
        {"input_per_million": 1, "output_per_million": 1, "cached_input_per_million": -0.5},
    ],
)
def test_override_validation(table: PriceTable, bad: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PriceOverride.model_validate(bad)
    with pytest.raises(ValidationError):
        table.with_overrides({"x/y": bad})


def test_bad_table_entries_rejected() -> None:
    with pytest.raises(ValueError):
        PriceTable({"a/b": {"input": -1, "output": 1}})
    with pytest.raises(ValueError):
        PriceTable({"a/b": {"output": 1}})
    with pytest.raises(ValueError):
        PriceTable({"openai/x": {"input": 1, "output": 1}, "OpenAI/X": {"input": 1, "output": 1}})
    with pytest.raises(ValueError):
        PriceTable.from_json(b'{"models": []}')


# ----------------------------------------------------------------------------- vectorised


def test_vectorised_equals_scalar(table: PriceTable) -> None:
    rng = np.random.default_rng(7)
    n = 2_000
    rows = rng.integers(-1, len(table), size=n)
    rows[:5] = [-1, len(table), 0, 1, 2]  # out of range rows are unknown too
    inp = rng.integers(0, 200_000, size=n).astype(np.float64)
    out = rng.integers(0, 20_000, size=n).astype(np.float64)
    cached = np.floor(inp * rng.random(n))
    reasoning = np.floor(out * rng.random(n))
    inp[rng.random(n) < 0.05] = np.nan
    out[rng.random(n) < 0.05] = np.nan
    cached[rng.random(n) < 0.05] = np.nan
    reasoning[rng.random(n) < 0.05] = 5e9  # clamped to the output count
    inp[10] = -3.0

    got = table.cost_many(rows, inp, out, cached, reasoning)
    want = np.array(
        [
            cost(table.prices[r] if 0 <= r < len(table) else None, i, o, c, z)
            for r, i, o, c, z in zip(
                rows.tolist(), inp.tolist(), out.tolist(), cached.tolist(), reasoning.tolist(), strict=True
            )
        ]
    )
    np.testing.assert_array_equal(got, want)  # bit-identical, NaN where unknown
    assert np.isnan(got[[0, 1, 10]]).all()
    assert np.isfinite(got).sum() > n // 2

    # without cached / reasoning arrays
    got2 = table.cost_many(rows, inp, out)
    want2 = np.array(
        [
            cost(table.prices[r] if 0 <= r < len(table) else None, i, o)
            for r, i, o in zip(rows.tolist(), inp.tolist(), out.tolist(), strict=True)
        ]
    )
    np.testing.assert_array_equal(got2, want2)


def test_lookup_indices_and_kernel(table: PriceTable) -> None:
    idx = table.lookup_indices(
        ["openai", "az.ai.openai", None, "openai"], ["gpt-4o-mini", "gpt-4o", "nope", "gpt-4o"]
    )
    assert idx.dtype == np.int64 and idx[2] == -1
    c = cost_vectorized(
        idx,
        np.array([1000.0, 1000.0, 1000.0, math.nan]),
        np.array([500.0, 500.0, 500.0, 1.0]),
        None,
        None,
        input_price=table.input_price,
        output_price=table.output_price,
        cached_input_price=table.cached_input_price,
        reasoning_price=table.reasoning_price,
    )
    assert c[0] == pytest.approx(0.00045, rel=1e-12)
    assert np.isnan(c[2]) and np.isnan(c[3])
    empty = PriceTable({})
    assert np.isnan(empty.cost_many([0, -1], [1, 1], [1, 1])).all()
    with pytest.raises(ValueError):
        table.cost_many([0, 1], [1.0], [1.0, 2.0])


def test_model_price_effective_prices() -> None:
    p = ModelPrice("k", 1.0, 2.0)
    assert (p.effective_cached_input, p.effective_reasoning) == (1.0, 2.0)


# ----------------------------------------------------------------------------- converter


def test_build_prices_converter() -> None:
    spec = importlib.util.spec_from_file_location("build_prices", DATA_DIR / "build_prices.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["build_prices"] = mod
    try:
        spec.loader.exec_module(mod)
        src = {
            "sample_spec": {"litellm_provider": "openai", "mode": "chat"},
            "gpt-x": {
                "litellm_provider": "openai",
                "mode": "chat",
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 2e-6,
                "cache_read_input_token_cost": 5e-7,
            },
            "gemini/gem-x": {
                "litellm_provider": "gemini",
                "mode": "chat",
                "input_cost_per_token": 1e-7,
                "output_cost_per_token": 4e-7,
                "output_cost_per_reasoning_token": 5e-7,
            },
            "vertex_ai/claude-x@2024": {
                "litellm_provider": "vertex_ai-anthropic_models",
                "mode": "chat",
                "input_cost_per_token": 3e-6,
                "output_cost_per_token": 1.5e-5,
            },
            "bedrock/us-east-1/meta.llama": {
                "litellm_provider": "bedrock",
                "mode": "chat",
                "input_cost_per_token": 1e-6,
                "output_cost_per_token": 1e-6,
            },
            "emb": {"litellm_provider": "openai", "mode": "embedding", "input_cost_per_token": 1e-8},
            "dall-e": {
                "litellm_provider": "openai",
                "mode": "image_generation",
                "input_cost_per_token": 1e-8,
                "output_cost_per_token": 0,
            },
            "other/model": {
                "litellm_provider": "together_ai",
                "mode": "chat",
                "input_cost_per_token": 1e-8,
                "output_cost_per_token": 0,
            },
            "copilot": {"litellm_provider": "openai", "mode": "chat"},
        }
        models, conflicts = mod.convert(src)
        assert models == {
            "gemini/gem-x": {"input": 1e-7, "output": 4e-7, "cached_input": None, "reasoning": 5e-7},
            "openai/emb": {"input": 1e-8, "output": 0.0, "cached_input": None, "reasoning": None},
            "openai/gpt-x": {"input": 1e-6, "output": 2e-6, "cached_input": 5e-7, "reasoning": None},
            "vertex_ai/claude-x@2024": {
                "input": 3e-6,
                "output": 1.5e-5,
                "cached_input": None,
                "reasoning": None,
            },
        }
        assert conflicts == []
        assert json.loads(mod.dump({"source": "s", "version": "v", "models": models}))["models"] == models
    finally:
        sys.modules.pop("build_prices", None)
