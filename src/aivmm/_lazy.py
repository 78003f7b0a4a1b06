"""Lazy names: a table from a public name to the ``"module:attr"`` that defines it, imported on first use.

The one mechanism behind every deferred import of aivmm:

- a package ``__init__`` lists the public names that would import something heavy (a runtime,
  numpy-heavy tooling, Ray, prometheus-client) or close an import cycle in a ``{name: "module:attr"}``
  table and sets ``__getattr__ = LazyExports(__name__, TABLE)``; its other names are imported
  eagerly. The package still names each lazy export under ``TYPE_CHECKING`` so type checkers see
  the real object;
- the backend and probe registries store their entries as the same ``"module:attr"`` strings and
  resolve them with :func:`load`.

``tests/unit/test_layering.py`` checks that every table entry resolves to a name in its package's
``__all__``, and that no module imports another package's private module.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from typing import Any


def load(target: str) -> Any:
    """The object ``"module:attr"`` names (``attr`` may be dotted); ``"module"`` alone is the module.

    Raises ImportError when the module cannot be imported and AttributeError when it lacks ``attr``."""
    module_name, sep, attr = target.partition(":")
    obj: Any = importlib.import_module(module_name)
    if not sep:
        return obj
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class LazyExports:
    """A module-level ``__getattr__`` for ``package`` resolving the names of ``table`` on first use.

    A resolved name is stored in the package namespace, so later look-ups are plain attribute reads
    and this is not called again. ``table`` stays readable (the layering test checks it)."""

    def __init__(self, package: str, table: Mapping[str, str]) -> None:
        self.package = package
        self.table: Mapping[str, str] = dict(table)

    def __call__(self, name: str) -> Any:
        target = self.table.get(name)
        if target is None:
            raise AttributeError(f"module {self.package!r} has no attribute {name!r}")
        value = load(target)
        setattr(sys.modules[self.package], name, value)
        return value
