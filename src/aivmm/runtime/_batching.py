"""Dynamic batching: the validated configuration and the pure functions that merge and split.

Requests are concatenated along the model's batch dimension, padded up to an allowed size when the
model wants one, run once, and the outputs cut back into one result per request. A model that does
not keep the batch dimension in an output cannot be batched: that is checked on every batch, never
assumed.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivmm.errors import ConfigError, ExecutionError


@dataclasses.dataclass(frozen=True)
class BatchingConfig:
    """``max_batch_size`` items per run, waiting at most ``max_queue_delay_ms`` for more.

    ``preferred_sizes`` pads a batch up to the next listed size (static-shape engines, CUDA graphs);
    ``max_queue_size`` bounds the requests waiting for the model (full -> OverloadedError).
    """

    max_batch_size: int = 8
    max_queue_delay_ms: float = 2.0
    preferred_sizes: tuple[int, ...] = ()
    max_queue_size: int = 1024

    def __post_init__(self) -> None:
        object.__setattr__(self, "preferred_sizes", tuple(sorted(self.preferred_sizes)))
        for name in ("max_batch_size", "max_queue_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"BatchingConfig.{name} must be an int >= 1, got {value!r}")
        delay = self.max_queue_delay_ms
        if isinstance(delay, bool) or not isinstance(delay, int | float) or not math.isfinite(delay) or delay < 0:
            raise ConfigError(f"BatchingConfig.max_queue_delay_ms must be a finite number >= 0, got {delay!r}")
        if delay > 10_000:
            raise ConfigError(f"BatchingConfig.max_queue_delay_ms={delay} is absurd (more than 10 s)")
        for size in self.preferred_sizes:
            if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= self.max_batch_size:
                raise ConfigError(
                    f"BatchingConfig.preferred_sizes must be ints in [1, max_batch_size={self.max_batch_size}],"
                    f" got {size!r}"
                )

    @property
    def max_queue_delay_s(self) -> float:
        return self.max_queue_delay_ms / 1e3

    def padded_size(self, n: int) -> int:
        for size in self.preferred_sizes:
            if size >= n:
                return size
        return n

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> BatchingConfig:
        """A config from a plain mapping (API keyword, config file, CLI): unknown keys are an error."""
        if not isinstance(mapping, Mapping):
            raise ConfigError(f"batching must be a mapping or a BatchingConfig, got {type(mapping).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(mapping) - known)
        if unknown:
            raise ConfigError(f"unknown batching key(s) {unknown}; known: {sorted(known)}")
        values = dict(mapping)
        if "preferred_sizes" in values:
            sizes = values["preferred_sizes"]
            if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
                raise ConfigError(f"BatchingConfig.preferred_sizes must be a list of ints, got {sizes!r}")
            values["preferred_sizes"] = tuple(sizes)
        return cls(**values)


def items_in(feeds: Mapping[str, Any], batch_dim: int) -> int:
    """The batch size of one request (all inputs must agree)."""
    sizes = {np.shape(v)[batch_dim] for v in feeds.values() if np.ndim(v) > batch_dim}
    if len(sizes) != 1:
        raise ExecutionError(f"inputs disagree on the batch dimension {batch_dim}: sizes {sorted(sizes)}")
    return sizes.pop()


def compat_key(feeds: Mapping[str, Any], batch_dim: int) -> tuple[Any, ...] | None:
    """Requests with equal keys can share a batch; None when this one cannot be batched at all."""
    key: list[Any] = []
    for name in sorted(feeds):
        value = feeds[name]
        if not isinstance(value, np.ndarray) or value.ndim <= batch_dim:
            return None
        shape = value.shape[:batch_dim] + value.shape[batch_dim + 1 :]
        key.append((name, value.dtype.str, shape))
    return tuple(key)


def merge(requests: Sequence[Mapping[str, np.ndarray]], batch_dim: int, padded_to: int) -> dict[str, np.ndarray]:
    """Concatenate along ``batch_dim``; pad by repeating the last item (real values, so no NaN or
    division by zero can appear in rows nobody reads)."""
    out: dict[str, np.ndarray] = {}
    for name in requests[0]:
        parts = [r[name] for r in requests]
        merged = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=batch_dim)
        missing = padded_to - merged.shape[batch_dim]
        if missing > 0:
            last = np.take(merged, [merged.shape[batch_dim] - 1], axis=batch_dim)
            merged = np.concatenate([merged, np.repeat(last, missing, axis=batch_dim)], axis=batch_dim)
        out[name] = merged
    return out


def split(
    outputs: Mapping[str, Any], sizes: Sequence[int], batch_dim: int, model: str, padded: int | None = None
) -> list[dict[str, Any]]:
    """Cut batched outputs back into one dict per request, checking the batch was preserved."""
    total = sum(sizes) if padded is None else padded
    for name, value in outputs.items():
        shape = np.shape(value)
        if len(shape) <= batch_dim or shape[batch_dim] != total:
            raise ExecutionError(
                f"model {model!r} does not preserve the batch dimension {batch_dim} in output {name!r}"
                f" (shape {tuple(shape)} for a batch of {total}); deploy it without batching"
            )
    results: list[dict[str, Any]] = [{} for _ in sizes]
    lead = (slice(None),) * batch_dim
    for name, value in outputs.items():
        start = 0
        for i, n in enumerate(sizes):
            results[i][name] = value[(*lead, slice(start, start + n))]
            start += n
    return results
