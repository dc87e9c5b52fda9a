"""Component lookup by type name.

Each of `receivers/`, `processors/` and `exporters/` lists its components in a
`REGISTRY` mapping type name → module; the module exposes `FACTORY`. Modules are
imported only when a config uses them, which keeps start-up fast.
"""

from __future__ import annotations

import importlib

from gateway.component import Factory, Kind

_PACKAGES = {Kind.RECEIVER: "receivers", Kind.PROCESSOR: "processors", Kind.EXPORTER: "exporters"}


def known_types(kind: Kind) -> list[str]:
    pkg = importlib.import_module(_PACKAGES[kind])
    return sorted(pkg.REGISTRY)


def get_factory(kind: Kind, type_name: str) -> Factory | None:
    pkg = importlib.import_module(_PACKAGES[kind])
    module_name = pkg.REGISTRY.get(type_name)
    if module_name is None:
        return None
    factory = importlib.import_module(module_name).FACTORY
    assert isinstance(factory, Factory) and factory.type == type_name and factory.kind == kind
    return factory
