"""The engine's deployed models by name: one handle per name, added and dropped under one lock."""

from __future__ import annotations

import threading

from aivmm.errors import ConfigError, ModelNotFoundError
from aivmm.runtime._handle import ModelHandle


class ModelCatalog:
    """Names to handles. A name is taken from the moment its model starts loading until it is gone."""

    def __init__(self) -> None:
        self._models: dict[str, ModelHandle] = {}
        self._lock = threading.Lock()

    def add(self, handle: ModelHandle) -> None:
        """Take ``handle.name`` (ConfigError when a model already has it)."""
        with self._lock:
            if handle.name in self._models:
                raise ConfigError(
                    f"a model named {handle.name!r} is already deployed; remove it first or pick another name"
                )
            self._models[handle.name] = handle

    def drop(self, handle: ModelHandle) -> None:
        """Forget ``handle`` (not a newer model deployed under the same name since)."""
        with self._lock:
            if self._models.get(handle.name) is handle:
                del self._models[handle.name]

    def get(self, name: str) -> ModelHandle:
        """The handle named ``name`` (ModelNotFoundError naming the deployed ones if none)."""
        with self._lock:
            handle = self._models.get(name)
            if handle is None:
                raise ModelNotFoundError(f"no model named {name!r}; deployed: {sorted(self._models)}")
            return handle

    def names(self) -> list[str]:
        """The deployed names, sorted."""
        with self._lock:
            return sorted(self._models)

    def handles(self) -> dict[str, ModelHandle]:
        """A copy, sorted by name: safe to iterate while models come and go."""
        with self._lock:
            return dict(sorted(self._models.items()))
