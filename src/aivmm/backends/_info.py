"""What a backend is, as data: one frozen :class:`BackendInfo` per backend, read by the planner's
enumeration, its cost model and the plan cache.

Every fact the planner needs about a runtime lives here, filled in by the backend that owns it:
the formats, devices and precisions it runs; the options worth enumerating and what each value
does (:class:`OptionEffect`: compute and per-call factors, seconds of compilation, whether it only
chooses how the graph is run); its fixed cost per call; the option that sets CPU threads; and the
versions that change what it measures (the plan cache's key, through ``Backend.versions()``, which
built-ins answer from package metadata so a cache hit imports no runtime). A backend registered by entry point
is planned, costed and cached from its ``info()`` alone: nothing in the planner names a backend.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from importlib import metadata
from types import MappingProxyType
from typing import Any

from aivmm.devices import DeviceKind
from aivmm.dtypes import Precision
from aivmm.models import ModelFormat, ValueKind

# A backend that states no figure of its own: a Python binding, input checks and one dispatch.
DEFAULT_CALL_OVERHEAD_MS = 0.05


@functools.cache  # parsing METADATA costs milliseconds, and the loaded runtime does not change
def _dist_version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def distribution_versions(*dists: str) -> dict[str, str]:
    """The installed version of each distribution that is installed, from package metadata (nothing
    imported): what a backend's ``versions()`` can answer with on a plan-cache hit."""
    return {dist: v for dist in dists if (v := _dist_version(dist)) is not None}


@dataclasses.dataclass(frozen=True)
class OptionEffect:
    """What one option value does, for the cost model and the planner (1.0 and 0 are neutral).

    Coarse heuristics: they rank candidates so only the promising few are measured, and stand in for
    measurement when the planner does not measure.
    """

    compute: float = 1.0  # factor on the compute/memory-bound time (fusions, compiled kernels)
    overhead: float = 1.0  # factor on the fixed per-call cost
    load_s: float = 0.0  # seconds added to session creation (compilation, engine build, graph capture)
    compiles: bool = False  # the first load compiles: the session is not ready for a fast start
    # The value chooses how the graph is run (compiled, replayed) rather than what it computes: the
    # planner pairs such a candidate with its plain twin to measure it only where it can win.
    runner: bool = False


NEUTRAL = OptionEffect()


def _same(key: Any, value: Any) -> bool:
    if isinstance(key, str) and isinstance(value, str):
        return key.lower() == value.lower()
    return type(key) is type(value) and key == value


def _lookup(table: Mapping[Any, OptionEffect], value: Any) -> OptionEffect | None:
    """The effect of ``value``: its own key (strings compared without case), else the ``True`` key
    for any other set value (``"reduce-overhead"`` is one of the ways ``compile`` is on)."""
    exact = next((effect for key, effect in table.items() if _same(key, value)), None)
    if exact is not None or not value:
        return exact
    return next((effect for key, effect in table.items() if key is True), None)


@dataclasses.dataclass(frozen=True)
class BackendInfo:
    """What a backend can do and what its options cost, as data (see the module docstring)."""

    name: str
    formats: frozenset[ModelFormat]
    device_kinds: frozenset[DeviceKind]
    precisions: frozenset[Precision]
    # Tunable options the planner may enumerate, each with its candidate values, defaults first
    # (for example {"graph_optimization_level": ("all", "basic")}). Options that only matter when
    # several sessions share the cores (inter-op threads, spinning) do not belong here: measuring one
    # candidate at a time cannot rank them.
    options: Mapping[str, tuple[Any, ...]] = dataclasses.field(default_factory=dict)
    # Runtime versions (and anything else that changes what a measurement means: the providers or
    # devices the runtime found). The plan cache keys on them, so a change is a miss.
    versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    # Fixed cost of one call through the runtime (binding, input checks, dispatch), in ms.
    call_overhead_ms: float = DEFAULT_CALL_OVERHEAD_MS
    # option name -> option value -> its effect; True stands for any set value without a key of its own.
    effects: Mapping[str, Mapping[Any, OptionEffect]] = dataclasses.field(default_factory=dict)
    # The option that sets the threads of one call on a CPU (None: the runtime uses every core).
    thread_option: str | None = None
    # What model inputs and outputs may hold: tensors, and for runtimes that take them, ONNX sequences
    # and optionals (a model with others is refused at planning, with the reason).
    value_kinds: frozenset[ValueKind] = frozenset({ValueKind.TENSOR})
    # Python loggers the runtime writes to: captured while candidates are measured, like its stderr.
    loggers: tuple[str, ...] = ()
    # Options a CPU session takes when other sessions share its cores (the planner's finalist race
    # keeps several open; a model deployed beside others): ONNX Runtime's {"allow_spinning": False},
    # whose idle pool threads otherwise spin after each call and take the cores from the next
    # session's call (benchmarks/ort_spinning.py). The planner sets them and says why in the plan.
    shared_cores: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))
        object.__setattr__(self, "versions", MappingProxyType(dict(self.versions)))
        object.__setattr__(self, "shared_cores", MappingProxyType(dict(self.shared_cores)))
        effects = {k: MappingProxyType(dict(v)) for k, v in self.effects.items()}
        object.__setattr__(self, "effects", MappingProxyType(effects))
        if self.call_overhead_ms < 0:
            raise ValueError(f"{self.name}: call_overhead_ms must be >= 0, got {self.call_overhead_ms}")

    def effect_of(self, option: str, value: Any) -> OptionEffect:
        table = self.effects.get(option)
        found = _lookup(table, value) if table else None
        return found or NEUTRAL

    def effect(self, options: Mapping[str, Any]) -> OptionEffect:
        """The combined effect of a config's options: factors multiply, load seconds add."""
        compute, overhead, load_s, compiles, runner = 1.0, 1.0, 0.0, False, False
        for option, value in options.items():
            e = self.effect_of(option, value)
            compute *= e.compute
            overhead *= e.overhead
            load_s += e.load_s
            compiles |= e.compiles
            runner |= e.runner
        return OptionEffect(compute, overhead, load_s, compiles, runner)

    def compiling(self, options: Mapping[str, Any]) -> tuple[str, ...]:
        """The options (sorted) whose values compile on the first load."""
        return tuple(sorted(k for k, v in options.items() if self.effect_of(k, v).compiles))

    @property
    def runner_options(self) -> frozenset[str]:
        """Options that choose how the graph is run (compiled, replayed) rather than what it computes."""
        return frozenset(k for k, table in self.effects.items() if any(e.runner for e in table.values()))

    def without_runner(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options that say what is computed: set values only, runner choices dropped."""
        runners = self.runner_options
        return {k: v for k, v in options.items() if v and k not in runners}
