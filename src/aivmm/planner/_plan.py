"""The plan: the chosen candidate, the ranked alternatives, every rejection, as data and as text."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import pathlib
from typing import Any

from aivmm.backends import Config
from aivmm.models import ModelSpec
from aivmm.planner._values import Candidate, Measurement, Prediction, Rejection, RejectReason
from aivmm.planner.constraints import Constraints

SCHEMA_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
    """Where a model runs and why.

    ``chosen`` is the candidate to load (``chosen.model`` with ``chosen.config``); ``alternatives``
    are the other feasible candidates, best first; ``rejected`` every candidate that was not kept,
    each with its reasons; ``fallbacks`` what was placed elsewhere than the caller pinned.
    ``upgrade`` (fast start only) resolves to the fully measured plan; see docs/planner.md.
    """

    model_name: str
    model_sha256: str
    chosen: Candidate
    alternatives: tuple[Candidate, ...]
    rejected: tuple[Candidate, ...]
    fallbacks: tuple[str, ...]
    constraints: Constraints
    planning_seconds: float
    measured: bool
    cache_hit: bool = False
    notes: tuple[str, ...] = ()
    upgrade: concurrent.futures.Future[Plan] | None = None

    @property
    def precision(self) -> str:
        return self.chosen.precision.value

    def ranked(self) -> tuple[Candidate, ...]:
        return (self.chosen, *self.alternatives)

    def replicas(self, n: int) -> list[Candidate]:
        """``n`` candidates to place replicas on: the chosen one, then the best alternatives on other
        devices that load the same model file (same pass), then the chosen one again. All of them
        can be loaded from ``self.chosen.model``, so one engine entry serves them."""
        out = [self.chosen]
        for alt in self.alternatives:
            if len(out) >= n:
                break
            if alt.transform == self.chosen.transform and alt.config.device not in {c.config.device for c in out}:
                out.append(alt)
        while len(out) < n:
            out.append(self.chosen)
        return out

    def to_json(self) -> dict[str, Any]:
        chosen = self.chosen.to_json()
        return {
            "schema": SCHEMA_VERSION,
            "model": {"name": self.model_name, "sha256": self.model_sha256},
            "chosen": chosen,
            "alternatives": [c.to_json() for c in self.alternatives],
            "rejected": [c.to_json() for c in self.rejected],
            "fallbacks": list(self.fallbacks),
            "constraints": self.constraints.to_json(),
            "planning_seconds": round(self.planning_seconds, 6),
            "measured": self.measured,
            "cache_hit": self.cache_hit,
            "notes": list(self.notes),
            "upgrade_pending": self.upgrade is not None and not self.upgrade.done(),
        }

    def explain(self) -> str:
        c = self.chosen
        lines = [f"{self.model_name}: {c.label}  ({c.precision.value})"]
        lines.append("  why: " + _why(self))
        lines.append("  " + _figures_line(c, full=True))
        if c.accuracy:
            lines.append(
                f"  accuracy: max abs error {c.accuracy['max_abs_error']} (tolerance {c.accuracy['tolerance']:.3g})"
            )
        for note in c.notes:
            lines.append(f"  note: {note}")
        for fb in self.fallbacks:
            lines.append(f"  fallback: {fb}")
        if self.alternatives:
            lines.append(f"alternatives ({len(self.alternatives)}, best first):")
            for i, a in enumerate(self.alternatives[:10], 1):
                lines.append(f"  {i}. {a.label}  {_figures_line(a)}")
            if len(self.alternatives) > 10:
                lines.append(f"  ... {len(self.alternatives) - 10} more (--json for all)")
        if self.rejected:
            lines.append(f"rejected ({len(self.rejected)}):")
            # option variants of one backend/device/precision refused for the same reasons share a line
            groups: dict[tuple[str, str], list[Candidate]] = {}
            for r in self.rejected:
                head = f"{r.config.backend}@{r.config.device}/{r.precision.value}" + (
                    f"+{r.transform}" if r.transform else ""
                )
                groups.setdefault((head, "; ".join(str(x) for x in r.rejections)), []).append(r)
            for (head, reasons), members in groups.items():
                label = members[0].label if len(members) == 1 else f"{head} ({len(members)} option variants)"
                lines.append(f"  - {label}: {reasons.splitlines()[0] if reasons else ''}")
        timing = f"planned in {self.planning_seconds * 1e3:.1f} ms" + (" (cache hit)" if self.cache_hit else "")
        lines.append(timing + ("" if self.measured else ", from predictions only (not measured)"))
        lines.extend(f"note: {n}" for n in self.notes)
        return "\n".join(lines)

    @classmethod
    def from_json(cls, data: dict[str, Any], spec: ModelSpec) -> Plan:
        """Rebuild a plan (from the plan cache) for the same model ``spec``."""

        def cand(d: dict[str, Any]) -> Candidate:
            config = Config.from_json({**d, "precision": d.get("backend_precision", d["precision"])})
            model = spec
            if d.get("model_path"):
                model = dataclasses.replace(
                    spec,
                    source=pathlib.Path(d["model_path"]),
                    quantized_operators=tuple(d.get("quantized_operators", ())),
                )
            return Candidate(
                config=config,
                model=model,
                transform=d.get("transform"),
                materialised=bool(d.get("model_path")),
                prediction=Prediction.from_json(d["predicted"]) if d.get("predicted") else None,
                measurement=Measurement.from_json(d["measured"]) if d.get("measured") else None,
                accuracy=d.get("accuracy"),
                rejections=tuple(Rejection(RejectReason(r["reason"]), r["detail"]) for r in d.get("reasons", [])),
                notes=tuple(d.get("notes", [])),
            )

        return cls(
            model_name=data["model"]["name"],
            model_sha256=data["model"]["sha256"],
            chosen=cand(data["chosen"]),
            alternatives=tuple(cand(d) for d in data["alternatives"]),
            rejected=tuple(cand(d) for d in data["rejected"]),
            fallbacks=tuple(data["fallbacks"]),
            constraints=Constraints.from_mapping(data["constraints"]),
            planning_seconds=float(data["planning_seconds"]),
            measured=bool(data["measured"]),
            cache_hit=bool(data.get("cache_hit", False)),
            notes=tuple(data.get("notes", [])),
        )


def _figures_line(c: Candidate, *, full: bool = False) -> str:
    parts = []
    if c.measurement is not None:
        m = c.measurement
        parts.append(f"measured p50 {m.p50_ms:.3f} ms, p99 {m.p99_ms:.3f} ms, {m.throughput:.1f}/s")
        parts.append(f"memory +{m.memory_bytes / 2**20:.1f} MiB ({m.memory_source})")
        if m.energy_j is not None:
            parts.append(f"energy {m.energy_j:.4g} J/inference")
        elif full:
            parts.append(f"energy n/a ({m.energy_source})")
    if c.prediction is not None:
        p = c.prediction
        parts.append(f"predicted {p.latency_ms:.3f} ms ({p.bound}-bound)")
    return "; ".join(parts) if parts else "no figures"


def _why(plan: Plan) -> str:
    c = plan.chosen
    objective = plan.constraints.objective.value
    basis = "measured" if c.measurement is not None else "predicted"
    why = f"best {basis} {objective} among {1 + len(plan.alternatives)} feasible candidate(s)"
    if plan.alternatives:
        nxt = plan.alternatives[0]
        if c.latency_ms and nxt.latency_ms:
            why += f"; next best {nxt.label} at {nxt.latency_ms / c.latency_ms:.2f}x its latency"
    if plan.constraints.prefer:
        why += f"; preferred hardware {[s.text for s in plan.constraints.prefer]} ranks first"
    return why
