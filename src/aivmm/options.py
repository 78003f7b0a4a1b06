"""How to deploy a model: one frozen value passed whole from the API to the planner, the runtime,
the cluster and the LLM path.

::

    opts = aivmm.DeployOptions(constraints={"max_latency_ms": 10}, device="cpu:0", replicas=2)
    model = vmm.deploy("model.onnx", options=opts)
    model = vmm.deploy("model.onnx", {"max_latency_ms": 10}, device="cpu:0", replicas=2)  # the same

Every option is checked once, here, when the value is built: a bad one is a ConfigError naming it
before any work starts. :meth:`DeployOptions.from_mapping` builds one from plain data (a serve
repository's config, a cluster message) and :meth:`DeployOptions.to_mapping` is its inverse.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from aivmm.errors import ConfigError

if TYPE_CHECKING:
    from aivmm.planner.constraints import Constraints
    from aivmm.runtime import BatchingConfig

# Neither the planner nor the runtime is imported at import time: the planner imports this module
# (a cycle otherwise), and `import aivmm.options` stays as light as `import aivmm`.


def _constraints(name: str, value: Any) -> Constraints:
    from aivmm.planner.constraints import coerce_constraints

    return coerce_constraints(value)


def _no_constraints() -> Constraints:
    from aivmm.planner.constraints import Constraints

    return Constraints()


def _optional_str(name: str, value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value):
        raise ConfigError(f"deploy option {name} must be a non-empty string or None, got {value!r}")
    return value


def _flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"deploy option {name} must be true or false, got {value!r}")
    return value


def _replicas(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    return value


class FrozenMapping(Mapping[str, Any]):
    """A read-only copy of a mapping, hashable when its values are (a frozen DeployOptions holds
    batching options this way); pickles as a dict's items."""

    __slots__ = ("_items",)
    _items: dict[str, Any]

    def __init__(self, data: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_items", dict(data))

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self._items.items())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._items == dict(other)

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to {name!r}: the mapping is frozen")

    def __reduce__(self) -> tuple[Any, ...]:
        return (FrozenMapping, (self._items,))

    def __repr__(self) -> str:
        return repr(self._items)


def _batching(name: str, value: Any) -> BatchingConfig | FrozenMapping | None:
    # A mapping stays a mapping here: whether its keys are the engine's (BatchingConfig) or an LLM
    # generator's (max_waiting, kv_cache_tokens…) is known only once the model is loaded.
    if value is None or isinstance(value, Mapping):
        return None if value is None else FrozenMapping(value)
    from aivmm.runtime import BatchingConfig

    if not isinstance(value, BatchingConfig):
        raise ConfigError(
            f"deploy option {name} must be an aivmm.runtime.BatchingConfig, a mapping or None, "
            f"got {type(value).__name__}"
        )
    return value


def _inputs(name: str, value: Any) -> Any:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"deploy option {name} must be a mapping of input name to array, got {type(value).__name__}")
    return value


def _any(name: str, value: Any) -> Any:
    return value


# How each option is checked (and normalised) when a DeployOptions is built.
_CHECKS: dict[str, Callable[[str, Any], Any]] = {
    "constraints": _constraints,
    "device": _optional_str,
    "backend": _optional_str,
    "strict": _flag,
    "name": _optional_str,
    "batching": _batching,
    "replicas": _replicas,
    "isolation": _flag,
    "sample_inputs": _inputs,
    "example_inputs": _any,
    "measure": _flag,
    "fast_start": _flag,
    "replan_on_first_request": _flag,
}
# Options that hold arrays or objects, not plain data: left out of to_mapping / from_mapping.
_NOT_PLAIN = frozenset({"sample_inputs", "example_inputs"})


@dataclasses.dataclass(frozen=True)
class DeployOptions:
    """Everything ``VMM.deploy`` takes besides the model.

    ``device`` / ``backend`` pin the placement: when they cannot be honoured the plan records the
    fallback or, with ``strict=True``, a FallbackError is raised. ``batching`` is a
    ``BatchingConfig`` or a mapping of its keys (an LLM takes its generator's keys). ``replicas``
    copies are loaded on the best candidates; ``isolation`` runs each in a worker process.
    ``sample_inputs`` are measured on instead of generated inputs; ``example_inputs`` trace a torch
    module. ``measure=False`` plans from predictions only; ``fast_start`` serves at once from a
    ready candidate and switches to the measured one; ``replan_on_first_request`` plans again on
    the first request's real inputs.
    """

    constraints: Constraints = dataclasses.field(default_factory=_no_constraints)
    device: str | None = None
    backend: str | None = None
    strict: bool = False
    name: str | None = None
    batching: BatchingConfig | Mapping[str, Any] | None = None
    replicas: int = 1
    isolation: bool = False
    sample_inputs: Mapping[str, Any] | None = dataclasses.field(default=None, compare=False, repr=False)
    example_inputs: Any = dataclasses.field(default=None, compare=False, repr=False)
    measure: bool = True
    fast_start: bool = False
    replan_on_first_request: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _CHECKS[f.name](f.name, getattr(self, f.name)))

    def replace(self, **changes: Any) -> DeployOptions:
        """A copy with ``changes`` (checked as in the constructor)."""
        unknown = sorted(set(changes) - set(_CHECKS))
        if unknown:
            raise ConfigError(f"unknown deploy option(s) {unknown}; known: {sorted(_CHECKS)}")
        return dataclasses.replace(self, **changes)

    def to_mapping(self) -> dict[str, Any]:
        """Plain data (JSON, a Ray message): every option but the input arrays."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _NOT_PLAIN:
                continue
            value = getattr(self, f.name)
            if f.name == "constraints":
                value = value.to_json()
            elif f.name == "batching" and value is not None:
                value = dict(value) if isinstance(value, Mapping) else value.to_json()
            out[f.name] = value
        return out

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None, *, source: str = "deploy options") -> DeployOptions:
        """From plain data; an unknown or wrongly typed option is a ConfigError naming it and ``source``."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: deploy options must be a mapping, got {type(data).__name__}")
        unknown = sorted(set(data) - (set(_CHECKS) - _NOT_PLAIN), key=str)
        if unknown:
            raise ConfigError(
                f"{source}: unknown deploy option(s) {unknown}; known: {sorted(set(_CHECKS) - _NOT_PLAIN)}"
            )
        constraints = data.get("constraints")
        if constraints is not None and not isinstance(constraints, Mapping):
            raise ConfigError(
                f"{source}: deploy option constraints must be a mapping, got {type(constraints).__name__}"
            )
        try:
            return cls(**dict(data))
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from exc


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _differs(value: Any, default: Any) -> bool:
    if value is default:
        return False
    return not (type(value) is type(default) and isinstance(value, bool | int | str) and value == default)


def coerce_options(options: DeployOptions | None, constraints: Any = None, **loose: Any) -> DeployOptions:
    """The one DeployOptions of a call that takes either ``options=`` or the separate keywords
    (``loose``: every keyword with the value the caller passed or its default).

    Giving ``options`` and also a keyword that differs from its default is refused, naming it.
    """
    if options is None:
        return DeployOptions(constraints=constraints, **loose)
    if not isinstance(options, DeployOptions):
        raise ConfigError(f"options must be aivmm.DeployOptions, got {type(options).__name__}")
    defaults = {f.name: _default(f) for f in dataclasses.fields(DeployOptions)}
    both = sorted(k for k, v in loose.items() if _differs(v, defaults[k]))
    if constraints is not None:
        both.insert(0, "constraints")
    if both:
        raise ConfigError(f"pass either options= or the separate deploy keywords, not both (also got {both})")
    return options
