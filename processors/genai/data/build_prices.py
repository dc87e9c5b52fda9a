"""Convert LiteLLM's public price table into LLM-Sentinel's compact ``prices.json``.

This is a maintenance script, not imported at run time.  Usage::

    pip download --no-deps -d /tmp/litellm-wheel litellm
    python processors/genai/data/build_prices.py /tmp/litellm-wheel/litellm-*.whl

The argument may be the ``litellm`` wheel itself (the JSON is read straight out
of the zip, and the package version is taken from the wheel's file name) or an
already extracted ``model_prices_and_context_window*.json`` (then pass
``--version``).  The output is written next to this script unless ``--out`` is
given.  See PRICES_SOURCE.md for provenance and PRICES_LICENSE for the licence.

Output schema (prices in USD per token)::

    {"source": str, "version": str, "retrieved": "YYYY-MM-DD", "license": str,
     "models": {"<provider>/<model>": {"input": float, "output": float,
                                      "cached_input": float | null,
                                      "reasoning": float | null}}}

``cached_input`` is the price of a prompt-cache read (null when the source has
none: such tokens are then billed at ``input``).  ``reasoning`` is null unless
the source lists a separate reasoning-token price: the calculator then bills
reasoning tokens at ``output``, which is how every major provider charges them.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

JSON_NAME = "litellm/model_prices_and_context_window_backup.json"
SOURCE = "LiteLLM model_prices_and_context_window_backup.json, shipped in the litellm wheel on PyPI"
LICENSE = "MIT (Copyright (c) 2023 Berri AI); see PRICES_LICENSE"

# LiteLLM's ``litellm_provider`` value -> our canonical provider id.
PROVIDER_MAP: dict[str, str] = {
    "openai": "openai",
    "text-completion-openai": "openai",
    "anthropic": "anthropic",
    "gemini": "gemini",
    "bedrock": "bedrock",
    "bedrock_converse": "bedrock",
    "bedrock_mantle": "bedrock",
    "azure": "azure",
    "azure_ai": "azure_ai",
    "mistral": "mistral",
    "cohere": "cohere",
    "cohere_chat": "cohere",
    "groq": "groq",
    "deepseek": "deepseek",
    "xai": "xai",
}
# every ``vertex_ai`` / ``vertex_ai-*`` provider maps to vertex_ai (see canonical_provider)

# Prefixes LiteLLM puts in front of some of its keys; stripped from the model part.
KEY_PREFIXES = (
    "openai",
    "anthropic",
    "gemini",
    "vertex_ai",
    "bedrock",
    "bedrock_mantle",
    "azure",
    "azure_ai",
    "mistral",
    "cohere",
    "groq",
    "deepseek",
    "xai",
)

# Token-priced modes we keep (image/audio/video/rerank/... are priced per unit, not per token).
MODES = {"chat", "completion", "embedding", "responses"}

# Providers whose sub-paths are deployment regions / tiers (never seen in telemetry): drop those keys.
DROP_SUBPATHS = {"bedrock", "azure"}


def canonical_provider(litellm_provider: str) -> str | None:
    if litellm_provider == "vertex_ai" or litellm_provider.startswith("vertex_ai-"):
        return "vertex_ai"
    return PROVIDER_MAP.get(litellm_provider)


def _price(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f) or f < 0:
        return None
    return f


def model_name(provider: str, key: str) -> str | None:
    name = key
    head, sep, rest = key.partition("/")
    if sep and head in KEY_PREFIXES:
        name = rest
    if not name:
        return None
    if provider in DROP_SUBPATHS and "/" in name:
        return None
    return name


def convert(raw: dict[str, Any]) -> tuple[dict[str, dict[str, float | None]], list[str]]:
    models: dict[str, dict[str, float | None]] = {}
    lowered: dict[str, str] = {}
    conflicts: list[str] = []
    for key, spec in raw.items():
        if key == "sample_spec" or not isinstance(spec, dict):
            continue
        provider = canonical_provider(str(spec.get("litellm_provider", "")))
        if provider is None or spec.get("mode") not in MODES:
            continue
        name = model_name(provider, key)
        if name is None:
            continue
        inp = _price(spec.get("input_cost_per_token"))
        out = _price(spec.get("output_cost_per_token"))
        if out is None and spec.get("mode") == "embedding":
            out = 0.0
        if inp is None or out is None:
            continue
        entry: dict[str, float | None] = {
            "input": inp,
            "output": out,
            "cached_input": _price(spec.get("cache_read_input_token_cost")),
            "reasoning": _price(spec.get("output_cost_per_reasoning_token")),
        }
        ours = f"{provider}/{name}"
        low = ours.lower()
        if low in lowered:
            # LiteLLM sometimes lists a model twice (with and without its provider prefix, or under two
            # of its provider ids).  The first entry wins, except that a priced entry beats an all-zero
            # placeholder; genuine disagreements are printed for the maintainer.
            kept = models[lowered[low]]
            if kept != entry:
                if kept["input"] == 0 and kept["output"] == 0 and (inp > 0 or out > 0):
                    models[lowered[low]] = entry
                    conflicts.append(f"{key!r} -> {ours!r} replaces an all-zero earlier entry")
                else:
                    conflicts.append(f"{key!r} -> {ours!r} differs from an earlier entry; kept the earlier")
            continue
        lowered[low] = ours
        models[ours] = entry
    return dict(sorted(models.items())), conflicts


def read_source(path: Path) -> tuple[dict[str, Any], str | None]:
    if path.suffix == ".whl":
        m = re.match(r"litellm-([^-]+)-", path.name)
        with zipfile.ZipFile(path) as zf:
            data = json.loads(zf.read(JSON_NAME))
        return data, (m.group(1) if m else None)
    return json.loads(path.read_text(encoding="utf-8")), None


def dump(doc: dict[str, Any]) -> str:
    """Compact JSON with one model per line, so that diffs of price updates stay readable."""
    header = {k: v for k, v in doc.items() if k != "models"}
    lines = ["{"]
    for k, v in header.items():
        lines.append(f"{json.dumps(k)}:{json.dumps(v)},")
    lines.append('"models":{')
    items = list(doc["models"].items())
    for i, (k, v) in enumerate(items):
        sep = "," if i < len(items) - 1 else ""
        lines.append(f"{json.dumps(k)}:{json.dumps(v, separators=(',', ':'))}{sep}")
    lines.append("}}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="litellm wheel (.whl) or the extracted JSON file")
    ap.add_argument("--version", help="litellm version (required when SOURCE is a JSON file)")
    ap.add_argument("--retrieved", default=_dt.date.today().isoformat(), help="retrieval date, YYYY-MM-DD")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("prices.json"))
    args = ap.parse_args(argv)

    raw, wheel_version = read_source(args.source)
    version = args.version or wheel_version
    if not version:
        ap.error("--version is required when the source is not a litellm wheel")
    models, conflicts = convert(raw)
    doc = {
        "source": SOURCE,
        "version": f"litellm {version}",
        "retrieved": args.retrieved,
        "license": LICENSE,
        "models": models,
    }
    text = dump(doc)
    json.loads(text)  # sanity: the hand-rolled writer must produce valid JSON
    args.out.write_text(text, encoding="utf-8")
    per_provider: dict[str, int] = {}
    for key in models:
        p = key.split("/", 1)[0]
        per_provider[p] = per_provider.get(p, 0) + 1
    print(f"wrote {args.out} ({len(text.encode())} bytes, {len(models)} models)", file=sys.stderr)
    print("per provider: " + ", ".join(f"{p}={n}" for p, n in sorted(per_provider.items())), file=sys.stderr)
    for c in conflicts:
        print("conflict: " + c, file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
