"""The ONNX specification's executable semantics as a check on a runtime's answer.

``onnx.reference.ReferenceEvaluator`` is the pure-numpy implementation the ONNX project ships
with the spec. It is too slow to serve with, but on one input it tells whether a runtime's
outputs follow the spec: ``aivmm.onnx_backend`` (auto mode) runs the planner's choice and the
reference on the first real inputs and, when they disagree, tries the other backends in order
(the next runtime may implement that operator correctly where the first does not).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# The ONNX backend suite's default tolerances (onnx.backend.test.runner): a result the suite
# accepts is accepted here too.
RTOL = 1e-3
ATOL = 1e-7
# The reference evaluator is numpy loops: above this many FLOPs one run costs seconds to minutes,
# more than a check at prepare time is worth.
MAX_FLOPS = 2e9


@dataclasses.dataclass(frozen=True)
class Reference:
    """The reference outputs by output name, or why there are none."""

    outputs: Mapping[str, Any] | None
    unavailable: str = ""


def evaluate(model: Any, feeds: Mapping[str, Any], *, flops: int = 0) -> Reference:
    """Run ``model`` (a ModelProto) on ``feeds`` with onnx's reference evaluator."""
    if flops > MAX_FLOPS:
        return Reference(None, f"{flops:.2g} FLOPs is too much for the reference evaluator")
    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError as exc:  # an onnx without the reference package
        return Reference(None, f"onnx.reference unavailable ({exc})")
    names = [o.name for o in model.graph.output]
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            values = ReferenceEvaluator(model).run(None, dict(feeds))
    except Exception as exc:  # the reference lacks many ops and kernels; any failure means "no verdict"
        text = str(exc).strip().splitlines()
        return Reference(None, f"the reference evaluator failed: {type(exc).__name__}: {text[0] if text else ''}"[:200])
    return Reference(dict(zip(names, values)))


def mismatch(
    actual: Mapping[str, Any],
    expected: Mapping[str, Any],
    names: Sequence[str],
    *,
    rtol: float = RTOL,
    atol: float = ATOL,
) -> str | None:
    """``None`` when every output matches; else what differs first, in one line. Sequence outputs
    (lists) are compared tensor by tensor, an empty optional is ``None`` on both sides."""
    for name in names:
        if name not in actual or name not in expected:
            continue  # an output the reference does not produce (optional, unnamed): no verdict on it
        diff = _differs(f"output {name!r}", actual[name], expected[name], rtol, atol)
        if diff is not None:
            return diff
    return None


def _differs(what: str, actual: Any, expected: Any, rtol: float, atol: float) -> str | None:
    if actual is None or expected is None:
        return None if actual is expected else f"{what}: {_kind(actual)}, the ONNX reference gives {_kind(expected)}"
    if isinstance(actual, list) or isinstance(expected, list):
        if not (isinstance(actual, list) and isinstance(expected, list)):
            return f"{what}: {_kind(actual)}, the ONNX reference gives {_kind(expected)}"
        if len(actual) != len(expected):
            return f"{what}: a sequence of {len(actual)}, the ONNX reference gives {len(expected)}"
        for i, (a, e) in enumerate(zip(actual, expected)):
            diff = _differs(f"{what}[{i}]", a, e, rtol, atol)
            if diff is not None:
                return diff
        return None
    got, want = np.asarray(actual), np.asarray(expected)
    if got.shape != want.shape:
        return f"{what}: shape {list(got.shape)}, the ONNX reference gives {list(want.shape)}"
    if got.dtype.kind in "OUS" and want.dtype.kind in "OUS":  # strings: numpy object vs unicode arrays
        return None if got.tolist() == want.tolist() else f"{what}: strings differ from the ONNX reference"
    if got.dtype != want.dtype:
        return f"{what}: dtype {got.dtype}, the ONNX reference gives {want.dtype}"
    if want.dtype.kind in "fc":
        wide = np.complex128 if want.dtype.kind == "c" else np.float64
        g, w = got.astype(wide), want.astype(wide)
        with np.errstate(all="ignore"):
            bad = ~np.isclose(g, w, rtol=rtol, atol=atol, equal_nan=True)
            if bad.any():
                errors = np.abs(g - w)[bad]
                worst = float(np.nanmax(errors)) if np.isfinite(errors).any() else float("nan")
                return (
                    f"{what}: {int(bad.sum())} of {bad.size} values differ from the ONNX "
                    f"reference (max abs error {worst:.3g})"
                )
    elif not np.array_equal(got, want):
        return f"{what}: {int((got != want).sum())} of {got.size} values differ from the ONNX reference"
    return None


def _kind(value: Any) -> str:
    if value is None:
        return "no value (empty optional)"
    return f"a sequence of {len(value)}" if isinstance(value, list) else "a tensor"
