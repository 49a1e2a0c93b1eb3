"""Lazy package attributes (PEP 562), so that importing a light module does not load JAX.

``import zojax.cli`` runs ``zojax/__init__.py`` first; if that imported the transformations (and
with them JAX, optax, flax), ``zojax --help`` would take seconds. A package lists its public names
with the submodule each lives in, and each is imported on first access instead.
"""

from __future__ import annotations

import importlib
import types
from collections.abc import Callable, Mapping
from typing import Any


def attach(package: str, exports: Mapping[str, str]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``, whose ``exports`` map a public name to its submodule.

    Any other submodule of the package is imported on first access too (``zojax.transforms``
    works after a bare ``import zojax``, as it did when the package imported everything). Loading
    a submodule binds all its exports at once, and an export named like its own submodule
    (``zojax.tasks.evaluate``, the function) stays that export when the submodule is imported.
    """
    module = importlib.import_module(package)
    namespace = module.__dict__
    by_module: dict[str, list[str]] = {}
    for name, sub in exports.items():
        by_module.setdefault(sub, []).append(name)
    shadowed = {name for name, sub in exports.items() if name == sub}
    if shadowed:

        class Package(types.ModuleType):
            def __setattr__(self, name: str, value: Any) -> None:
                if name in shadowed and isinstance(value, types.ModuleType):
                    value = getattr(value, name)  # the import system binds the submodule: keep the export
                super().__setattr__(name, value)

        module.__class__ = Package

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        if name in exports:
            sub = importlib.import_module(f"{package}.{exports[name]}")
            for other in by_module[exports[name]]:
                namespace[other] = getattr(sub, other)
            return namespace[name]
        try:
            return importlib.import_module(f"{package}.{name}")  # binds itself as an attribute
        except ModuleNotFoundError as e:
            if e.name != f"{package}.{name}":
                raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None

    def __dir__() -> list[str]:
        return sorted({*namespace, *exports})

    return __getattr__, __dir__
