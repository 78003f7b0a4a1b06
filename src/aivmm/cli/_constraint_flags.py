"""The constraint flags shared by ``aivmm plan``, ``aivmm run`` and ``aivmm serve``.

Values are passed through to :class:`~aivmm.planner.constraints.Constraints`, which validates
them; a bad value is a ConfigError naming the flag's constraint before any work starts.
"""

from __future__ import annotations

import argparse

from aivmm.errors import ConfigError
from aivmm.planner.constraints import Constraints

_DESTS = ("max_latency_ms", "latency_percentile", "max_memory", "max_power_w", "max_energy_j", "min_throughput",
          "precision", "tolerance", "prefer", "exclude", "objective", "batch_size")


def add_constraint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("constraints", "what the placement must satisfy and what it optimises")
    g.add_argument("--max-latency-ms", type=float, metavar="MS", help="latency limit per request")
    g.add_argument("--latency-percentile", type=int, choices=(50, 99), default=None,
                   help="percentile --max-latency-ms applies to (default 50)")
    g.add_argument("--max-memory", metavar="SIZE", help="memory limit for the model (512MiB, 2GiB, bytes)")
    g.add_argument("--max-power-w", type=float, metavar="W", help="average power limit while running")
    g.add_argument("--max-energy-j", type=float, metavar="J", help="energy limit per inference")
    g.add_argument("--min-throughput", type=float, metavar="N", help="inferences per second at least")
    g.add_argument("--precision", metavar="POLICY",
                   help="lowest precision allowed: fp32 (exact, default), fp16 (also bf16), int8")
    g.add_argument("--tolerance", type=float, metavar="ABS",
                   help="largest max-abs error against the fp32 reference for a lowered precision")
    g.add_argument("--prefer", action="append", default=None, metavar="HW",
                   help="preferred hardware: device id, kind or vendor (repeatable or comma-separated, in order)")
    g.add_argument("--exclude", action="append", default=None, metavar="HW",
                   help="hardware never to use (repeatable or comma-separated)")
    g.add_argument("--objective", choices=("latency", "throughput", "energy"), default=None,
                   help="what to optimise among the feasible candidates (default latency)")
    g.add_argument("--batch-size", type=int, metavar="N", default=None, help="batch size to plan for (default 1)")


def _split(values: list[str] | None) -> tuple[str, ...]:
    out: list[str] = []
    for v in values or ():
        out.extend(x.strip() for x in v.split(",") if x.strip())
    return tuple(out)


def constraints_from_args(args: argparse.Namespace) -> Constraints:
    """The Constraints the flags ask for (defaults for flags not given or not defined on this parser)."""
    get = {d: getattr(args, d, None) for d in _DESTS}
    kwargs: dict[str, object] = {}
    for dest, field in (("max_latency_ms", "max_latency_ms"), ("max_power_w", "max_power_w"),
                        ("max_energy_j", "max_energy_j"), ("min_throughput", "min_throughput"),
                        ("tolerance", "tolerance"), ("latency_percentile", "latency_percentile"),
                        ("objective", "objective"), ("batch_size", "batch_size"), ("precision", "precision")):
        if get[dest] is not None:
            kwargs[field] = get[dest]
    if get["max_memory"] is not None:
        kwargs["max_memory_bytes"] = get["max_memory"]
    if get["prefer"]:
        kwargs["prefer"] = _split(get["prefer"])
    if get["exclude"]:
        kwargs["exclude"] = _split(get["exclude"])
    try:
        return Constraints(**kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        raise ConfigError(f"bad constraint flag: {exc}") from exc
