"""Component contracts: ids, kinds, factories, the consumer chain and its errors.

Shaped like the OpenTelemetry Collector: receivers push batches into a chain of
processors that ends in a fan-out to exporters. Each component type ships a
typed config (pydantic, unknown keys forbidden) and a `Factory` registered by
type name.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Annotated, Any, Protocol

from pydantic import BaseModel, BeforeValidator, ConfigDict

from gateway.batch import OTLP_SIGNALS, Batch, Signal

if TYPE_CHECKING:
    from gateway.pressure import Admission
    from gateway.telemetry import SelfTelemetry


class Kind(StrEnum):
    RECEIVER = "receivers"
    PROCESSOR = "processors"
    EXPORTER = "exporters"
    CONNECTOR = "connectors"  # exporter in one pipeline, receiver in another (as in the Collector)

    @property
    def singular(self) -> str:
        return self.value[:-1]


_ID_RE = re.compile(r"^[a-z][a-z0-9_]*(/[^\s/][^\s]*)?$")


@dataclass(frozen=True, order=True)
class ComponentId:
    """`type[/name]`, e.g. `otlp` or `file/spans`."""

    type: str
    name: str = ""

    @classmethod
    def parse(cls, text: str) -> ComponentId:
        if not _ID_RE.match(text):
            raise ValueError(
                f"invalid component id {text!r}: expected type[/name] "
                "(type in lowercase letters, digits and _)"
            )
        typ, _, name = text.partition("/")
        return cls(typ, name)

    def __str__(self) -> str:
        return f"{self.type}/{self.name}" if self.name else self.type


# ---------------------------------------------------------------- config types
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ns|us|µs|ms|s|m|h)?\s*$")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: Any) -> Any:
    """Go-style durations as the Collector writes them (`200ms`, `5s`, `1m30s`), or seconds as a number."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 5s or 200ms")
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str):
        raise ValueError("expected a duration such as 5s or 200ms")
    total = 0.0
    rest = value.strip()
    if not rest:
        raise ValueError("expected a duration such as 5s or 200ms")
    for m in re.finditer(r"(\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h)", rest):
        total += float(m.group(1)) * _UNIT[m.group(2)]
    if re.fullmatch(r"((\d+(?:\.\d*)?)(ns|us|µs|ms|s|m|h))+", rest):
        return total
    plain = _DURATION_RE.match(rest)
    if plain and plain.group(2) is None:
        return float(plain.group(1))
    raise ValueError(f"invalid duration {value!r}: expected a number of seconds or e.g. 500ms, 5s, 1m30s")


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ComponentConfig(BaseModel):
    """Base of every component config: unknown keys are errors, values are validated."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


# ---------------------------------------------------------------- errors
class ConsumeError(Exception):
    """A batch could not be taken. `retryable` tells senders whether to try again."""

    retryable = True

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RefusedError(ConsumeError):
    """Refused under pressure (memory, full queue): the client should back off and retry."""


class ThrottledError(RefusedError):
    """Refused because data arrives faster than it drains (full queue): HTTP 429 rather than 503."""


class PermanentError(ConsumeError):
    """The data itself is unacceptable; retrying cannot help."""

    retryable = False


# ---------------------------------------------------------------- runtime contracts
class Consumer(Protocol):
    """Anything that takes a batch: an OTLP `Batch`, or an `AnomalyBatch` on the anomalies signal."""

    async def consume(self, batch: Any) -> None: ...


@dataclass
class ComponentContext:
    """What a component gets from the runtime besides its config."""

    id: ComponentId
    kind: Kind
    logger: logging.Logger
    telemetry: SelfTelemetry
    admission: Admission
    pipeline: str = ""  # processors only: the pipeline they belong to


class Component:
    """Lifecycle shared by all components."""

    def __init__(self, ctx: ComponentContext, config: Any) -> None:
        self.ctx = ctx
        self.config = config
        self.logger = ctx.logger

    @property
    def id(self) -> ComponentId:
        return self.ctx.id

    async def start(self) -> None:
        """Acquire resources; raise to abort start-up with a clear message."""

    async def shutdown(self) -> None:
        """Release resources; flush what can be flushed."""


class Receiver(Component):
    """Turns requests into batches and hands them to one consumer per signal."""

    def __init__(self, ctx: ComponentContext, config: Any) -> None:
        super().__init__(ctx, config)
        self.consumers: dict[Signal, Consumer] = {}

    def set_consumer(self, signal: Signal, consumer: Consumer) -> None:
        self.consumers[signal] = consumer

    def listening(self) -> bool:
        """True once every endpoint accepts connections (drives /readyz)."""
        return True

    def endpoints(self) -> dict[str, str]:
        """Actually bound addresses by transport (ports chosen by the OS included)."""
        return {}


class Processor(Component):
    """Transforms batches and passes them on to `next_consumer`."""

    next_consumer: Consumer

    def set_next(self, consumer: Consumer) -> None:
        self.next_consumer = consumer

    async def consume(self, batch: Batch) -> None:
        await self.next_consumer.consume(batch)


class Exporter(Component):
    """Sends batches somewhere outside the gateway."""

    async def consume(self, batch: Batch) -> None:
        raise NotImplementedError


ConfigClass = type[ComponentConfig]


class Connector(Component):
    """Consumes one pipeline's data (as its exporter) and feeds other pipelines (as their receiver)."""

    def __init__(self, ctx: ComponentContext, config: Any) -> None:
        super().__init__(ctx, config)
        self.consumers: dict[Signal, Consumer] = {}

    def ready(self) -> bool:
        """False while the connector could not yet serve data promptly (drives /readyz)."""
        return True

    def set_consumer(self, signal: Signal, consumer: Consumer) -> None:
        self.consumers[signal] = consumer

    async def consume(self, batch: Batch) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Factory:
    """How to configure and build one component type."""

    type: str
    kind: Kind
    config: ConfigClass
    create: Callable[[ComponentContext, Any], Component]
    signals: frozenset[Signal] = OTLP_SIGNALS  # accepted (for a connector: as an exporter)
    description: str = ""
    output_signals: frozenset[Signal] = frozenset()  # connectors only: emitted as a receiver
