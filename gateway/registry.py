"""Component lookup by type name.

Each of `receivers/`, `processors/` and `exporters/` lists its components in a
`REGISTRY` mapping type name → module; the module exposes `FACTORY`. Modules are
imported only when a config uses them, which keeps start-up fast.
"""

from __future__ import annotations

import importlib

from gateway.component import Factory, Kind

# kind -> (package, name of its registry mapping); connectors live with the processors
_REGISTRIES = {
    Kind.RECEIVER: ("receivers", "REGISTRY"),
    Kind.PROCESSOR: ("processors", "REGISTRY"),
    Kind.EXPORTER: ("exporters", "REGISTRY"),
    Kind.CONNECTOR: ("processors", "CONNECTORS"),
}


def _registry(kind: Kind) -> dict[str, str]:
    package, attr = _REGISTRIES[kind]
    return dict(getattr(importlib.import_module(package), attr, {}))


def known_types(kind: Kind) -> list[str]:
    return sorted(_registry(kind))


def get_factory(kind: Kind, type_name: str) -> Factory | None:
    module_name = _registry(kind).get(type_name)
    if module_name is None:
        return None
    factory = importlib.import_module(module_name).FACTORY
    assert isinstance(factory, Factory) and factory.type == type_name and factory.kind == kind
    return factory
