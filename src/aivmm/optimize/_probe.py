"""Generated inputs checked against the model itself: run the fp32 reference, adjust, say so.

Shape inference cannot tell that a detector needs its side divisible by 32 or that a VAD needs at
least 512 samples: those limits live in Concat/Resize/Pad arithmetic that only running reveals.
So the first guess (:func:`aivmm.optimize._inputs.assign`) is run through the reference session
(ONNX Runtime, optimisations off: the same run the accuracy check needs anyway, so a success
costs nothing extra); on failure the free sizes are moved to the next multiple of 32, then of 64,
then grown, and If-condition flags flipped, a bounded number of attempts in all. Every change is
a note in the plan.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.errors import AivmmError
from aivmm.models import ModelSpec
from aivmm.optimize import _accuracy, _inputs

GROWTH = 4  # a too-short length is grown by this factor per attempt
MAX_GROWTH_STEPS = 3  # 8 -> 32 -> 128 -> 512
MAX_SIZE = 4096
TEXT_LINE_HEIGHTS = (48, 32, 64)
SQUARE_SIDES = (96, 128, 160, 192, 256, 299, 384, 512, 32, 64)


@dataclasses.dataclass(frozen=True)
class Generated:
    """Inputs the reference accepted (or the first guess when nothing could check them)."""

    feeds: dict[str, np.ndarray]
    plans: tuple[_inputs.InputPlan, ...]
    assignment: _inputs.Assignment
    notes: tuple[str, ...]
    reference: list[np.ndarray] | None  # the reference's outputs on ``feeds``, when it ran
    reference_error: str = ""  # why there is no reference


def _describe(plans: tuple[_inputs.InputPlan, ...]) -> str:
    return ", ".join(f"{p.name}: {p.dtype.value}[{'x'.join(map(str, p.shape))}]" for p in plans)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:240]


def _attempts(base: _inputs.Assignment) -> list[tuple[str, _inputs.Assignment]]:
    free = [k for k, r in base.roles.items() if r.free and base.sizes[k] > 0]
    out: list[tuple[str, _inputs.Assignment]] = []
    for m in (32, 64):
        changes = {k: -(-base.sizes[k] // m) * m for k in free}
        if any(changes[k] != base.sizes[k] for k in free):
            out.append((f"sizes rounded up to a multiple of {m}", base.with_sizes(changes)))
    sides = [k for k in free if base.roles[k].why.startswith("an image side")]
    if sides:
        # Text-line recognisers fix the height (PP-OCR: 48) and refuse the usual square image.
        for h in TEXT_LINE_HEIGHTS:
            out.append((f"an image height of {h}", base.with_sizes({sides[0]: h})))
        # A ViT's position table fixes the side (a 96x96 export refuses 224): the usual square sides.
        for side in SQUARE_SIDES:
            if any(base.sizes[k] != side for k in sides):
                out.append((f"an image side of {side}", base.with_sizes(dict.fromkeys(sides, side))))
    grown = dict(base.sizes)
    for step in range(MAX_GROWTH_STEPS):
        changes = {k: min(MAX_SIZE, max(32, grown[k] * GROWTH)) for k in free}
        if all(changes[k] == grown[k] for k in free):
            break
        grown.update(changes)
        out.append((f"sizes grown x{GROWTH ** (step + 1)}", base.with_sizes(changes)))
    return out


def generate(
    spec: ModelSpec, *, batch: int = 1, seed: int = 0, probe: bool = True, model_path: Any = None
) -> Generated:
    """Inputs for ``spec`` that its fp32 reference accepts (``probe``), with why each was chosen."""
    facts = _inputs.graph_facts(spec)
    base = _inputs.assign(spec, batch=batch, facts=facts)
    plans = _inputs.input_plans(spec, batch=batch, assignment=base)
    feeds = _inputs.feeds_for(plans, seed=seed)
    if not probe or model_path is None:
        return Generated(feeds, plans, base, (), None, "no ONNX file to check the inputs against")
    try:
        session = _accuracy.reference_session(model_path)
    except AivmmError as exc:
        return Generated(feeds, plans, base, (), None, str(exc))
    first_error = ""
    tries: list[tuple[str, _inputs.Assignment]] = [("", base)]
    if facts.conditions:
        tries.append(
            (
                f"If condition(s) {sorted(facts.conditions)} set to False",
                dataclasses.replace(base, flipped=frozenset(facts.conditions)),
            )
        )
    tries.extend(_attempts(base))
    for why, a in tries:
        p = plans if not why else _inputs.input_plans(spec, batch=batch, assignment=a)
        f = feeds if not why else _inputs.feeds_for(p, seed=seed)
        try:
            outputs = [_accuracy.as_host(o) for o in session.run(None, dict(f))]
        except Exception as exc:  # ORT's own exception types: the next attempt may fit
            if not first_error:
                first_error = f"the fp32 reference (ONNX Runtime) failed on {_describe(p)}: {_first_line(exc)}"
            continue
        notes = [f"generated inputs {_describe(p)}: " + "; ".join(f"{x.name} {x.reason}" for x in p)]
        if a.describe():
            notes.append(f"dimension sizes: {a.describe()}")
        if why:
            notes.append(f"{first_error}; retried with {why}, which it accepts")
        return Generated(f, p, a, tuple(notes), outputs)
    tried = ", ".join(w for w, _ in tries[1:]) or "no other sizes to try"
    return Generated(
        feeds, plans, base, (f"{first_error}; also tried: {tried}",), None, f"{first_error} (also tried: {tried})"
    )


def describe_feeds(feeds: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}: {_describe_value(v)}" for k, v in feeds.items())


def _describe_value(v: Any) -> str:
    if v is None:
        return "None"
    if isinstance(v, list):
        return f"[{', '.join(_describe_value(x) for x in v)}]"
    return f"{v.dtype}[{'x'.join(str(d) for d in v.shape)}]"
