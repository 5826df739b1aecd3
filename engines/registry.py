"""The one model registry: architecture name -> constructor, with fail-loud lookups.

Architectures live in ``engines/arch/``; each module registers its constructors with
``@register("name")``. Every module in that package is imported on first lookup, so a
new architecture needs no edit here.

A constructor takes ``num_classes`` (and optional keyword options) and returns a
``torch.nn.Module`` mapping (N, 3, H, W) float32 to (N, K, H/s, W/s) logits, where ``s``
is the model's ``output_stride`` attribute (1 when it upsamples itself).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

ModelFactory = Callable[..., Any]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    factory: ModelFactory
    family: str  # "realtime" or "classic"
    description: str


_REGISTRY: dict[str, ModelEntry] = {}
_loaded = False


class UnknownModelError(KeyError):
    """Lookup of a name that is not registered; the message lists the valid names."""

    def __str__(self) -> str:  # KeyError quotes its message otherwise
        return str(self.args[0])


def register(name: str, *, family: str = "realtime", description: str = "") -> Callable[
        [ModelFactory], ModelFactory]:
    """Decorator: register ``factory`` under ``name`` (names are unique)."""

    def deco(factory: ModelFactory) -> ModelFactory:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} registered twice")
        doc = description or (factory.__doc__ or "").strip().splitlines()[0:1]
        _REGISTRY[name] = ModelEntry(name, factory, family,
                                     doc if isinstance(doc, str) else "".join(doc))
        return factory

    return deco


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    import engines.arch as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if not mod.name.startswith("_"):
            importlib.import_module(f"engines.arch.{mod.name}")
    _loaded = True


def available_models() -> list[str]:
    """Sorted registered architecture names."""
    _load_all()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_all()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownModelError(
            f"unknown model {name!r}; valid models: {', '.join(sorted(_REGISTRY))}"
        ) from None


def build_model(name: str, num_classes: int, **options: Any) -> Any:
    """Instantiate architecture ``name`` for ``num_classes`` classes."""
    return get_entry(name).factory(num_classes=num_classes, **options)
