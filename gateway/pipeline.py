"""Build the component graph from a validated config.

Like the Collector: one instance per receiver id (shared by the pipelines it
feeds), one instance per exporter id (shared by its pipelines), and a fresh
processor instance per pipeline. Each pipeline is a chain
`processors[0] → … → fan-out to exporters`; a receiver feeding several
pipelines of one signal fans out to their heads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.batch import Batch, Signal
from gateway.component import (
    Component,
    ComponentContext,
    ComponentId,
    Connector,
    ConsumeError,
    Consumer,
    Exporter,
    Kind,
    Processor,
    Receiver,
)
from gateway.config.model import GatewayConfig
from gateway.pressure import Admission
from gateway.telemetry import SelfTelemetry


class FanOut:
    """Hands one batch to several consumers; the first error (if any) is reported upstream.

    With `clone=True` (a receiver feeding several pipelines) every consumer but
    the last gets its own copy, because processors such as `redact` change data
    in place and one pipeline must never see another's edits.
    """

    def __init__(self, consumers: Sequence[Consumer], *, clone: bool = False) -> None:
        self.consumers = list(consumers)
        self.clone = clone

    async def consume(self, batch: Batch) -> None:
        if len(self.consumers) == 1:
            await self.consumers[0].consume(batch)
            return
        batches = [batch.copy() if self.clone else batch for _ in self.consumers[:-1]] + [batch]
        results = await asyncio.gather(
            *(c.consume(b) for c, b in zip(self.consumers, batches, strict=True)), return_exceptions=True
        )
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            # Prefer a retryable error so clients retry rather than drop.
            retryable = [e for e in errors if isinstance(e, ConsumeError) and e.retryable]
            raise (retryable or errors)[0]


@dataclass
class PipelineChain:
    name: str
    signal: Signal
    head: Consumer
    processors: list[Processor]
    fed_by_connector: bool = False


@dataclass
class Graph:
    receivers: dict[ComponentId, Receiver] = field(default_factory=dict)
    exporters: dict[ComponentId, Exporter] = field(default_factory=dict)
    connectors: dict[ComponentId, Connector] = field(default_factory=dict)
    pipelines: list[PipelineChain] = field(default_factory=list)

    def all_processors(self) -> list[Processor]:
        return [p for pl in self.pipelines for p in pl.processors]


def _context(
    cid: ComponentId, kind: Kind, telemetry: SelfTelemetry, admission: Admission, pipeline: str = ""
) -> ComponentContext:
    logger = logging.getLogger(f"sentinel.{kind.singular}.{cid}")
    return ComponentContext(cid, kind, logger, telemetry, admission, pipeline)


def build_graph(
    config: GatewayConfig,
    telemetry: SelfTelemetry,
    admission: Admission,
    sink_for: Callable[[ComponentId], Consumer] | None = None,
) -> Graph:
    """Instantiate and wire every component; `sink_for` replaces exporters (replay uses it)."""
    graph = Graph()
    referenced = {c for p in config.pipelines for c in (*p.receivers, *p.exporters)}
    targets: tuple[tuple[Kind, dict[ComponentId, Any]], ...] = (
        (Kind.RECEIVER, graph.receivers),
        (Kind.EXPORTER, graph.exporters),
        (Kind.CONNECTOR, graph.connectors),
    )
    for kind, target in targets:
        if kind is Kind.EXPORTER and sink_for is not None:
            continue
        for cid, spec in config.components[kind].items():
            if cid in referenced:
                comp: Component = spec.factory.create(_context(cid, kind, telemetry, admission), spec.config)
                target[cid] = comp
    sinks: dict[ComponentId, Consumer] = {**graph.exporters, **graph.connectors}
    if sink_for is not None:
        sinks.update({cid: sink_for(cid) for cid in config.components[Kind.EXPORTER] if cid in referenced})
    sources: dict[ComponentId, Receiver | Connector] = {**graph.receivers, **graph.connectors}
    heads: dict[tuple[ComponentId, Signal], list[Consumer]] = {}
    for pl in config.pipelines:
        tail: Consumer = FanOut([sinks[e] for e in pl.exporters])
        procs: list[Processor] = []
        for pid in reversed(pl.processors):
            spec = config.components[Kind.PROCESSOR][pid]
            proc = spec.factory.create(
                _context(pid, Kind.PROCESSOR, telemetry, admission, pl.name), spec.config
            )
            assert isinstance(proc, Processor)
            proc.set_next(tail)
            tail = proc
            procs.insert(0, proc)
        fed = any(r in graph.connectors for r in pl.receivers)
        graph.pipelines.append(PipelineChain(pl.name, pl.signal, tail, procs, fed))
        for rid in pl.receivers:
            heads.setdefault((rid, pl.signal), []).append(tail)
    for (rid, signal), consumers in heads.items():
        sources[rid].set_consumer(
            signal, consumers[0] if len(consumers) == 1 else FanOut(consumers, clone=True)
        )
    return graph
