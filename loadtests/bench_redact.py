"""Throughput of the `redact` processor on realistic GenAI spans, against a naive baseline,
and of its wire-bytes fast path against the reference walk.

    .venv/bin/python -m loadtests.bench_redact [--spans 200] [--batches 5] [--repeat 5]
        [--llmgen-requests 8] [--pii-shares 0,0.01,0.1,0.5] [--skip-naive]

Each span looks like what an OpenAI/Anthropic instrumentation emits: ~20
attributes (system, model, ids, token counts, finish reasons, URLs), the
`gen_ai.input.messages` / `gen_ai.output.messages` JSON (a system prompt and a
1-2 KB conversation) and one `gen_ai.content.prompt` event. Two corpora: without
PII, and with PII in about every other span (e-mail, card, phone, SSN, keys).

Measured: `consume()` of the processor on pre-parsed batches (the OTLP decode is
not part of it), best of `--repeat` runs. Reported in spans/s and in MB/s of
serialized OTLP. The baseline is the same processor with a naive scanner that
runs every detector's regular expression on its own over every string (no
combined pass, no prefilters), as a straightforward implementation would.

Fast path (`fast_path: true`, the default) against the reference walk
(`fast_path: false`), in CPU µs per span (process time: steadier on a shared machine),
on two corpora: llmgen traffic (light
spans: GenAI/HTTP/DB attributes, error messages) at 512 spans per request, and
the content-heavy spans above; for each, PII put into a share of the spans
(`--pii-shares`). Batches carry their wire bytes and are pre-parsed, so the
reference is not charged for the protobuf parse the fast path avoids on clean
batches (with lazily parsed batches its real cost is higher).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue

from gateway.batch import Batch, SpanBatch
from gateway.component import ComponentId, Kind
from gateway.pipeline import _context
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry
from loadtests.llmgen import TrafficConfig, generate_chunks
from processors.redact import FACTORY, wire_scan
from processors.redact.patterns import (
    CATEGORIES,
    SECRET_DETECTORS,
    Detector,
    Scanner,
    all_detectors,
    standalone_source,
)
from processors.redact.processor import RedactProcessor

WORDS = [
    "the",
    "order",
    "refund",
    "policy",
    "customer",
    "shipping",
    "delivery",
    "window",
    "item",
    "damaged",
    "support",
    "ticket",
    "account",
    "please",
    "review",
    "summarize",
    "explain",
    "compare",
    "context",
    "answer",
    "question",
    "concise",
    "section",
    "invoice",
    "product",
    "warranty",
    "return",
    "label",
    "tracking",
    "number",
    "status",
    "update",
    "escalate",
    "agent",
    "tokens",
    "model",
    "response",
    "latency",
]
SYSTEM = (
    "You are a helpful customer-support assistant for Acme Corp. Answer using only the context. "
    "Cite the policy section you rely on. If unsure, say so and offer to escalate to a human agent. "
    "Never reveal internal notes. Refunds are possible within 30 days of delivery; shipping fees are "
    "non-refundable unless the item arrived damaged (see section 4.2)."
)
PII = [
    "jane.roe@example.org",
    "4111 1111 1111 1111",
    "(555) 123-4567",
    "+44 20 7946 0958",
    "123-45-6789",
    "sk-proj-Ab3dEf9hIjKlMnOpQrStUvWxYz0123456789",
    "password=hunter2-Secret!",
]


def prose(rng: random.Random, n_chars: int, pii: bool) -> str:
    out: list[str] = []
    size = 0
    while size < n_chars:
        k = rng.randint(6, 16)
        sentence = " ".join(rng.choice(WORDS) for _ in range(k)).capitalize()
        if rng.random() < 0.3:
            sentence += f" (order {rng.randint(10000, 99999)}, {rng.randint(1, 28)} May 2024)"
        if pii and rng.random() < 0.25:
            sentence += f" my contact is {rng.choice(PII)}"
        out.append(sentence + ".")
        size += len(sentence) + 2
    return " ".join(out)


def _kv(key: str, value: Any) -> KeyValue:
    kv = KeyValue(key=key)
    if isinstance(value, int):
        kv.value.int_value = value
    elif isinstance(value, float):
        kv.value.double_value = value
    elif isinstance(value, list):
        for v in value:
            kv.value.array_value.values.add(string_value=v)
    else:
        kv.value.string_value = value
    return kv


def make_request(n_spans: int, pii_share: float, seed: int) -> ExportTraceServiceRequest:
    rng = random.Random(seed)
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.extend(
        [
            _kv("service.name", "support-bot"),
            _kv("deployment.environment", "prod"),
            _kv("host.name", "ip-10-0-3-17"),
        ]
    )
    ss = rs.scope_spans.add()
    ss.scope.name = "opentelemetry.instrumentation.openai.v2"
    for i in range(n_spans):
        pii = rng.random() < pii_share
        user = prose(rng, rng.randint(600, 1400), pii)
        answer = prose(rng, rng.randint(300, 700), pii)
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": user},
        ]
        sp = ss.spans.add(
            name="chat gpt-4o-mini",
            trace_id=rng.randbytes(16),
            span_id=rng.randbytes(8),
            start_time_unix_nano=1_718_035_200_000_000_000 + i * 1_000_000,
            end_time_unix_nano=1_718_035_200_000_000_000 + i * 1_000_000 + 850_000_000,
            kind=3,
        )
        sp.attributes.extend(
            [
                _kv("gen_ai.operation.name", "chat"),
                _kv("gen_ai.system", "openai"),
                _kv("gen_ai.request.model", "gpt-4o-mini"),
                _kv("gen_ai.response.model", "gpt-4o-mini-2024-07-18"),
                _kv("gen_ai.response.id", f"chatcmpl-{rng.randbytes(12).hex()}"),
                _kv("gen_ai.request.temperature", 0.2),
                _kv("gen_ai.request.max_tokens", 1024),
                _kv("gen_ai.usage.input_tokens", rng.randint(200, 900)),
                _kv("gen_ai.usage.output_tokens", rng.randint(50, 300)),
                _kv("gen_ai.response.finish_reasons", ["stop"]),
                _kv("server.address", "api.openai.com"),
                _kv("server.port", 443),
                _kv("http.request.method", "POST"),
                _kv("url.full", "https://api.openai.com/v1/chat/completions"),
                _kv("gen_ai.conversation.id", f"conv_{rng.randbytes(8).hex()}"),
                _kv("user.session", f"s-{rng.randint(10**5, 10**6)}"),
                _kv("gen_ai.input.messages", json.dumps(messages)),
                _kv(
                    "gen_ai.output.messages",
                    json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": answer}]}]),
                ),
            ]
        )
        ev = sp.events.add(name="gen_ai.content.prompt", time_unix_nano=sp.start_time_unix_nano)
        ev.attributes.append(_kv("gen_ai.prompt", user))
    return req


# ---------------------------------------------------------------- the naive baseline
class NaiveScanner:
    """Every detector's regex on its own over the whole string; same validators, no prefilters."""

    def __init__(self, replacement: str = "[REDACTED:{type}]") -> None:
        self.replacement = replacement
        self.custom = ()
        self.rules: list[tuple[Detector, re.Pattern[str]]] = []
        for det in all_detectors():
            flags = re.IGNORECASE if det in SECRET_DETECTORS and det.lower else 0
            self.rules.append((det, re.compile(standalone_source(det), flags)))

    def scan(self, text: str) -> tuple[str, list[str]] | None:
        found: list[str] = []
        for det, rx in self.rules:
            text = rx.sub(self._sub(det, found), text)
        return (text, found) if found else None

    def _sub(self, det: Detector, found: list[str]) -> Callable[[re.Match[str]], str]:
        rep = self.replacement.format(type=det.kind)

        def sub(m: re.Match[str]) -> str:
            g = det.value_group
            if g == "kv":
                g = next(x for x in ("dq", "sq", "bare") if m.start(x) >= 0)
            target = m.group(g) if g else m.group()
            if target.startswith("[REDACTED") or (det.check is not None and not det.check(target)):
                return m.group()
            found.append(det.kind)
            if g is None:
                return rep
            return m.string[m.start() : m.start(g)] + rep + m.string[m.end(g) : m.end()]

        return sub


# ---------------------------------------------------------------- measuring
def make_processor(naive: bool, fast: bool = False) -> RedactProcessor:
    ctx = _context(ComponentId("redact"), Kind.PROCESSOR, SelfTelemetry(), Admission(), "traces")
    proc = FACTORY.create(ctx, FACTORY.config.model_validate({"fast_path": fast}))
    assert isinstance(proc, RedactProcessor)
    if naive:
        proc.scanner = NaiveScanner()  # type: ignore[assignment]

    class Sink:
        async def consume(self, batch: Batch) -> None:
            pass

    proc.set_next(Sink())
    return proc


def measure(proc: RedactProcessor, wires: list[list[bytes]]) -> float:
    """Best seconds over runs; each run is its own list of batches (decode excluded).

    Every run gets freshly generated content, so the scanner's value cache only
    helps with what really repeats between spans (model names, URLs, …), not
    with the prompts of an earlier run.
    """
    best = float("inf")
    for run in wires:
        items = []
        for wire in run:
            req = ExportTraceServiceRequest()
            req.ParseFromString(wire)
            items.append(SpanBatch.from_request(req, wire=wire))

        async def go(items: list[SpanBatch] = items) -> None:
            for b in items:
                await proc.consume(b)

        t0 = time.perf_counter()
        asyncio.run(go())
        best = min(best, time.perf_counter() - t0)
    return best


def scan_only(make: Callable[[], Any], texts: list[str], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        scanner = make()  # a fresh scanner: no cached results from the previous run
        t0 = time.perf_counter()
        for t in texts:
            scanner.scan(t)
        best = min(best, time.perf_counter() - t0)
    return best


# ---------------------------------------------------------------- fast path vs reference
def llmgen_wires(n_requests: int, spans: int, pii_share: float, seed: int) -> list[bytes]:
    """llmgen requests; with `pii_share`, that share of spans gets a `user.note` holding PII."""
    config = TrafficConfig(seed=seed, duration_s=6 * 3600, spans_per_request=spans)
    wires = [c.wire for c in itertools.islice(generate_chunks(config), n_requests)]
    if not pii_share:
        return wires
    rng = random.Random(seed)
    out = []
    for wire in wires:
        req = ExportTraceServiceRequest.FromString(wire)
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for sp in ss.spans:
                    if rng.random() < pii_share:
                        note = f"customer asked to be called back at {rng.choice(PII)}"
                        sp.attributes.add(key="user.note").value.string_value = note
        out.append(req.SerializeToString())
    return out


_loop: asyncio.AbstractEventLoop | None = None


def one_run(proc: RedactProcessor, wires: list[bytes]) -> tuple[float, int]:
    """Seconds of consume() over fresh batches of `wires` (pre-parsed, wire kept), and their spans.

    All runs share one event loop, as a gateway does: `asyncio.run` would charge each run the
    set-up and tear-down of a loop (about 0.2 µs per span at 8 x 512 spans, on both paths).
    """
    global _loop
    if _loop is None:
        _loop = asyncio.new_event_loop()
    batches = [SpanBatch.from_request(ExportTraceServiceRequest.FromString(w), wire=w) for w in wires]

    async def go() -> None:
        for b in batches:
            await proc.consume(b)

    t0 = time.process_time()
    _loop.run_until_complete(go())
    return time.process_time() - t0, sum(len(b) for b in batches)


def parse_time(wires: list[bytes]) -> float:
    t0 = time.process_time()
    for w in wires:
        ExportTraceServiceRequest.FromString(w)
    return time.process_time() - t0


def fast_vs_reference(args: argparse.Namespace) -> None:
    wire_scan.warm_up()
    shares = [float(x) for x in args.pii_shares.split(",")]
    print(f"\nfast path vs reference walk: CPU µs per span, best of {args.repeat} interleaved runs")
    print("(batches pre-parsed for both; 'parse' is what a lazily parsed batch adds to the reference)")
    head = f"{'corpus':<26} {'PII spans':>9} {'reference':>10} {'fast':>8} {'ratio':>7} {'parse':>7}"
    print(f"{head} {'flagged spans':>14} {'untouched req':>14}")
    corpora: list[tuple[str, Callable[[float], list[bytes]]]] = [
        (
            f"llmgen {args.llmgen_spans}/request",
            lambda x: llmgen_wires(args.llmgen_requests, args.llmgen_spans, x, 5),
        ),
        (
            f"GenAI content {args.spans}/request",
            lambda x: [
                make_request(args.spans, x, seed=7000 + i).SerializeToString() for i in range(args.batches)
            ],
        ),
    ]
    for label, make_wires in corpora:
        for share in shares:
            wires = make_wires(share)
            ref, fast = make_processor(False, fast=False), make_processor(False, fast=True)
            assert fast.wire is not None and ref.wire is None
            one_run(fast, wires[:1])  # learn the keys once, as a running gateway would have
            t_ref = t_fast = t_parse = float("inf")
            n = 0
            for _ in range(args.repeat):
                t, n = one_run(ref, wires)
                t_ref = min(t_ref, t)
                t_fast = min(t_fast, one_run(fast, wires)[0])
                t_parse = min(t_parse, parse_time(wires))
            plans = [
                fast.wire.plan(SpanBatch.from_request(ExportTraceServiceRequest.FromString(w), wire=w))
                for w in wires
            ]
            flagged = sum(p.rows.shape[0] for p in plans if p is not None)
            clean = sum(1 for p in plans if p is not None and p.clean)
            us = 1e6 / n
            print(
                f"{label:<26} {share:>8.0%} {t_ref * us:>10.2f} {t_fast * us:>8.2f} {t_ref / t_fast:>6.1f}x "
                f"{t_parse * us:>7.2f} {flagged / n:>13.1%} {clean:>7}/{len(wires)}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spans", type=int, default=200, help="spans per batch")
    ap.add_argument("--batches", type=int, default=5, help="batches per run")
    ap.add_argument("--repeat", type=int, default=5, help="runs; the best is reported")
    ap.add_argument(
        "--llmgen-requests", type=int, default=8, help="llmgen requests per run (fast path section)"
    )
    ap.add_argument("--llmgen-spans", type=int, default=512, help="spans per llmgen request")
    ap.add_argument(
        "--pii-shares", default="0,0.01,0.1,0.5", help="shares of spans given PII (fast path section)"
    )
    ap.add_argument("--skip-naive", action="store_true", help="only the fast path section")
    args = ap.parse_args()
    if not args.skip_naive:
        naive_vs_redact(args)
    fast_vs_reference(args)


def naive_vs_redact(args: argparse.Namespace) -> None:
    fast, naive = make_processor(False), make_processor(True)
    print(f"{args.batches} batches x {args.spans} spans, best of {args.repeat} runs (each run new content)")
    print(f"{'corpus':<10} {'impl':<6} {'spans/s':>10} {'MB/s':>8} {'ratio':>7}")
    for k, (label, share) in enumerate((("no PII", 0.0), ("with PII", 0.5))):
        seeds = iter(range(1000 * (k + 1), 1000 * (k + 2)))
        runs = [
            [
                make_request(args.spans, share, seed=next(seeds)).SerializeToString()
                for _ in range(args.batches)
            ]
            for _ in range(args.repeat)
        ]
        size = sum(len(w) for w in runs[0]) / args.batches
        mb = size * args.batches / 1e6
        n = args.spans * args.batches
        t_fast = measure(fast, runs)
        t_naive = measure(naive, runs)
        for impl, t in (("redact", t_fast), ("naive", t_naive)):
            ratio = f"{t_naive / t:6.1f}x" if impl == "redact" else "  1.0x"
            print(f"{label:<10} {impl:<6} {n / t:>10,.0f} {mb / t:>8.1f} {ratio:>7}")
        print(f"{'':<10} (a batch of {args.spans} spans is {size / 1e6:.2f} MB serialized)")

    # the scanner alone, on the string values of the PII corpus
    req = make_request(args.spans, 0.5, seed=11)
    texts = [
        kv.value.string_value
        for sp in req.resource_spans[0].scope_spans[0].spans
        for kv in (*sp.attributes, *(a for e in sp.events for a in e.attributes))
        if kv.value.WhichOneof("value") == "string_value"
    ]
    chars = sum(len(t) for t in texts) / 1e6
    t_fast = scan_only(lambda: Scanner(CATEGORIES), texts, args.repeat)
    t_naive = scan_only(NaiveScanner, texts, args.repeat)
    print(
        f"scanner only, {len(texts)} strings / {chars:.2f} M chars: "
        f"redact {chars / t_fast:.1f} M chars/s, naive {chars / t_naive:.1f} M chars/s, "
        f"ratio {t_naive / t_fast:.1f}x"
    )


if __name__ == "__main__":
    main()
