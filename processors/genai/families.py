"""Which attribute carries which LLM fact, per instrumentation family, in precedence order.

The first key present on a span wins. Newer conventions come first so a span
that carries both old and new names (instrumentations in transition emit both)
is read by the newer one. This table is the documented contract; README's
"GenAI extraction" section is generated from it by `precedence_markdown()`.

Families: OTel GenAI semconv ≥ 1.37 and ≤ 1.36, OpenLLMetry/Traceloop (new and
legacy), OpenInference, OpenLIT.
"""

from __future__ import annotations

# field -> ordered (attribute key, family) pairs
PRECEDENCE: dict[str, tuple[tuple[str, str], ...]] = {
    "provider": (
        ("gen_ai.provider.name", "semconv ≥1.37"),
        ("gen_ai.system", "semconv ≤1.36, OpenLLMetry, OpenLIT"),
        ("llm.provider", "OpenInference"),
        ("llm.system", "OpenInference"),
    ),
    "operation": (
        ("gen_ai.operation.name", "semconv, OpenLIT, OpenLLMetry ≥0.4x"),
        ("llm.request.type", "OpenLLMetry legacy"),
        ("openinference.span.kind", "OpenInference (LLM → chat, EMBEDDING → embeddings)"),
    ),
    "request_model": (
        ("gen_ai.request.model", "semconv, OpenLLMetry, OpenLIT"),
        ("llm.request.model", "OpenLLMetry legacy"),
        ("llm.invocation_parameters", 'OpenInference (JSON "model", before llm.model_name)'),
        ("llm.model_name", "OpenInference"),
        ("embedding.model_name", "OpenInference embeddings"),
    ),
    "response_model": (
        ("gen_ai.response.model", "semconv, OpenLLMetry, OpenLIT"),
        ("llm.response.model", "OpenLLMetry legacy"),
        ("llm.model_name", "OpenInference"),
        ("embedding.model_name", "OpenInference embeddings"),
    ),
    "input_tokens": (
        ("gen_ai.usage.input_tokens", "semconv ≥1.27, OpenLLMetry ≥0.4x, OpenLIT"),
        ("gen_ai.usage.prompt_tokens", "semconv ≤1.26, OpenLLMetry"),
        ("llm.usage.prompt_tokens", "OpenLLMetry legacy"),
        ("llm.token_count.prompt", "OpenInference"),
    ),
    "output_tokens": (
        ("gen_ai.usage.output_tokens", "semconv ≥1.27, OpenLLMetry ≥0.4x, OpenLIT"),
        ("gen_ai.usage.completion_tokens", "semconv ≤1.26, OpenLLMetry"),
        ("llm.usage.completion_tokens", "OpenLLMetry legacy"),
        ("llm.token_count.completion", "OpenInference"),
    ),
    "cached_input_tokens": (
        ("gen_ai.usage.cache_read.input_tokens", "semconv ≥1.37"),
        ("gen_ai.usage.cache_read_input_tokens", "OpenLLMetry"),
        ("llm.token_count.prompt_details.cache_read", "OpenInference"),
        ("gen_ai.usage.cached_tokens", "OpenLIT"),
    ),
    "reasoning_tokens": (
        ("gen_ai.usage.reasoning.output_tokens", "semconv (proposed)"),
        ("gen_ai.usage.reasoning_tokens", "OpenLLMetry, OpenLIT"),
        ("llm.usage.reasoning_tokens", "OpenLLMetry"),
        ("llm.token_count.completion_details.reasoning", "OpenInference"),
    ),
    "total_tokens": (
        ("llm.usage.total_tokens", "OpenLLMetry"),
        ("gen_ai.usage.total_tokens", "OpenLIT"),
        ("gen_ai.client.token.usage", "OpenLIT (span attribute)"),
        ("llm.token_count.total", "OpenInference"),
    ),
    "finish_reasons": (
        ("gen_ai.response.finish_reasons", "semconv, OpenLIT (string array)"),
        ("gen_ai.completion.{i}.finish_reason", "OpenLLMetry (per choice)"),
        ("llm.finish_reason", "OpenInference"),
        ("llm.output_messages.{i}.message.finish_reason", "OpenInference (per message)"),
        ("gen_ai.output.messages", "semconv ≥1.37 (finish_reason of each output message)"),
    ),
    "stream": (
        ("gen_ai.request.stream", "semconv"),
        ("gen_ai.is_streaming", "OpenLLMetry ≥0.5x, OpenLIT"),
        ("llm.is_streaming", "OpenLLMetry legacy"),
        ("gen_ai.request.is_stream", "OpenLIT"),
        ("llm.invocation_parameters", 'OpenInference (JSON with "stream")'),
    ),
    "ttft_s": (
        ("gen_ai.response.time_to_first_chunk", "semconv ≥1.37 (seconds)"),
        ("gen_ai.server.time_to_first_token", "OpenLIT (seconds)"),
        ("event:llm.content.completion.chunk", "OpenLLMetry (first chunk event − span start)"),
        ("event:First Token Stream Event", "OpenInference (event − span start)"),
    ),
    "error_type": (
        ("error.type", "semconv, OpenLLMetry, OpenLIT"),
        ("event:exception → exception.type", "all families; OpenInference only has this"),
    ),
    "cost_usd": (
        ("gen_ai.usage.cost", "OpenLIT (used only when no price is known)"),
        ("llm.cost.total", "OpenInference cost (used only when no price is known)"),
    ),
}

# Keys that mark a span as an LLM call when no operation/kind attribute decides it.
LLM_MARKERS = frozenset(
    {
        "gen_ai.provider.name",
        "gen_ai.system",
        "gen_ai.request.model",
        "gen_ai.response.model",
        "llm.request.type",
        "llm.model_name",
    }
)

# gen_ai.operation.name values that are model calls (agent and tool spans are not).
LLM_OPERATIONS = {
    "chat": "chat",
    "text_completion": "text_completion",
    "completion": "text_completion",
    "generate_content": "generate_content",
    "embeddings": "embeddings",
    "embedding": "embeddings",
    "responses": "chat",
    "response": "chat",
}

# Legacy OpenLLMetry llm.request.type values.
REQUEST_TYPES = {
    "chat": "chat",
    "completion": "text_completion",
    "embedding": "embeddings",
    "rerank": "rerank",
}

OPENINFERENCE_KINDS = {"LLM": "chat", "EMBEDDING": "embeddings"}

TRUNCATION_REASONS = frozenset({"length", "max_tokens", "max_output_tokens", "MAX_TOKENS", "LENGTH"})

# Every plain attribute key the extractor reads (templated and event keys are matched separately).
WANTED_KEYS = frozenset(
    key
    for pairs in PRECEDENCE.values()
    for key, _ in pairs
    if "{i}" not in key and not key.startswith("event:")
) | {
    "openinference.span.kind",
    "http.response.status_code",
    "http.status_code",
}


def precedence_markdown() -> str:
    """The precedence table as Markdown, for the README."""
    lines = ["| field | attributes, first present wins | family |", "|---|---|---|"]
    for field, pairs in PRECEDENCE.items():
        for n, (key, family) in enumerate(pairs):
            lines.append(f"| {field if n == 0 else ''} | `{key}` | {family} |")
    return "\n".join(lines)
