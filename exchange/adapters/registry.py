"""Finding adapters: the ``exchange.adapters`` entry-point group."""

from __future__ import annotations

from importlib.metadata import entry_points

from exchange.adapters.base import Adapter
from exchange.errors import AdapterError

GROUP = "exchange.adapters"


def available() -> dict[str, str]:
    """Adapter kind -> ``module:Class`` for every installed adapter."""
    return {ep.name: ep.value for ep in entry_points(group=GROUP)}


def adapter_class(kind: str) -> type[Adapter]:
    """Load the adapter class registered under ``kind``."""
    matches = [ep for ep in entry_points(group=GROUP) if ep.name == kind]
    if not matches:
        raise AdapterError(
            f"no adapter named {kind!r} is installed; installed adapters: {sorted(available())}. "
            "Install the package that provides it or fix `adapter =` in the node's TOML"
        )
    cls = matches[0].load()
    if not (isinstance(cls, type) and issubclass(cls, Adapter)):
        raise AdapterError(f"entry point {matches[0].value} for adapter {kind!r} is not an Adapter subclass")
    return cls
