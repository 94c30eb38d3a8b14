"""Package attributes imported on first use (keeps ``import energyflow_ros.runtime`` light)."""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ['lazy_exports']


def lazy_exports(namespace: dict[str, Any], exports: dict[str, list[str]]) -> None:
    """Give a package ``__all__``, ``__getattr__`` and ``__dir__`` over its modules' names.

    Args:
        namespace: the package's ``globals()``.
        exports: submodule name -> the names it provides; each is imported on first access.
    """
    package = namespace['__name__']
    module_of = {name: module for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in module_of:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        return getattr(importlib.import_module(f'{package}.{module_of[name]}'), name)

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(module_of))

    namespace.update(__all__=sorted(module_of), __getattr__=__getattr__, __dir__=__dir__)
