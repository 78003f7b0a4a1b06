"""The fp32 reference and the accuracy check every transformed candidate must pass.

The reference is ONNX Runtime on the CPU in fp32 with graph optimisations off, so it is the
model's arithmetic as written. The error metric is the largest absolute difference over every
output element (``max_abs_error``); default tolerances scale with the outputs' magnitude
(``scale = max(1, max |reference|)``) so logits in the hundreds and probabilities in [0, 1] are
judged alike. A user tolerance (``Constraints.tolerance``) is an absolute bound and replaces them.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from aivmm.dtypes import Precision
from aivmm.errors import AccuracyError, BackendUnavailableError, ConfigError, ModelLoadError

# Relative to the reference's scale. fp32 is loose enough for fused/reordered kernels; fp16 keeps
# ~3 decimal digits, bf16 ~2; int8 quantisation error on small nets stays under a few percent.
DEFAULT_RELATIVE_TOLERANCE: Mapping[Precision, float] = {
    Precision.FP32: 1e-4,
    Precision.FP16: 1e-2,
    Precision.BF16: 5e-2,
    Precision.INT8: 1e-1,
}


@dataclasses.dataclass(frozen=True)
class AccuracyReport:
    """How far a candidate's outputs are from the fp32 reference, and whether that is accepted."""

    max_abs_error: float
    tolerance: float
    worst_output: str
    ok: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "max_abs_error": _finite(self.max_abs_error),
            "tolerance": self.tolerance,
            "worst_output": self.worst_output,
            "ok": self.ok,
        }

    def error(self, label: str) -> AccuracyError:
        return AccuracyError(
            f"{label}: max abs error {self.max_abs_error:.3g} on output {self.worst_output!r} "
            f"exceeds the tolerance {self.tolerance:.3g}"
        )


def _finite(x: float) -> float | str:
    return x if np.isfinite(x) else str(x)


def tolerance_for(precision: Precision, reference: Sequence[np.ndarray], user: float | None) -> float:
    """The absolute tolerance a candidate computing in ``precision`` is held to."""
    if user is not None:
        return float(user)
    scale = 1.0
    for _label, arr in (leaf for i, ref in enumerate(reference) for leaf in leaves(str(i), ref)):
        if arr is not None and arr.size and arr.dtype.kind in "fiu":
            scale = max(scale, float(np.max(np.abs(arr.astype(np.float64)))))
    return DEFAULT_RELATIVE_TOLERANCE[precision] * scale


def reference_session(model_path: str | pathlib.Path) -> Any:
    """ONNX Runtime CPU fp32 with every graph optimisation disabled: the model's arithmetic as written."""
    from aivmm.backends.ort import cpu_session

    try:
        return cpu_session(model_path, graph_optimization_level="disable")
    except BackendUnavailableError as exc:
        raise ConfigError('the accuracy reference needs onnxruntime: pip install "aivmm[onnxruntime]"') from exc
    except Exception as exc:  # ORT raises its own exception types for bad models
        raise ModelLoadError(f"the fp32 reference cannot load {model_path}: {exc}") from exc


def reference_outputs(model_path: str | pathlib.Path, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of ONNX Runtime CPU fp32 with every graph optimisation disabled."""
    sess = reference_session(model_path)
    return [as_host(o) for o in sess.run(None, dict(feeds))]


def as_host(value: Any) -> Any:
    """An output as numpy: an array, a list of arrays for a sequence, None for an empty optional."""
    if value is None:
        return None
    if isinstance(value, list):
        return [as_host(v) for v in value]
    return np.asarray(value)


def leaves(label: str, value: Any) -> list[tuple[str, np.ndarray | None]]:
    """The tensors of one output, each labelled: itself, or a sequence's ``name[i]``; None stands for
    an empty optional, so a present value and an absent one never compare equal."""
    if value is None:
        return [(label, None)]
    if isinstance(value, list):
        return [leaf for i, v in enumerate(value) for leaf in leaves(f"{label}[{i}]", v)]
    return [(label, np.asarray(value))]


def compare(
    outputs: Sequence[Any], reference: Sequence[np.ndarray], names: Sequence[str], tolerance: float
) -> AccuracyReport:
    """Max-abs error of ``outputs`` against ``reference`` (same order); NaN where the reference has none fails."""
    worst, worst_name = 0.0, names[0] if names else "<none>"
    if len(outputs) != len(reference):
        return AccuracyReport(float("inf"), tolerance, f"{len(outputs)} outputs vs {len(reference)}", False)
    got = [leaf for name, out in zip(names, outputs) for leaf in leaves(name, out)]
    want = [leaf for name, ref in zip(names, reference) for leaf in leaves(name, ref)]
    if [(n, a is None) for n, a in got] != [(n, b is None) for n, b in want]:
        return AccuracyReport(
            float("inf"),
            tolerance,
            "sequence lengths or optional values differ from the "
            f"reference: {[n for n, _ in got]} vs {[n for n, _ in want]}"[:300],
            False,
        )
    for (name, a), (_, b) in zip(got, want):
        if a is None or b is None:
            continue  # both empty optionals
        if a.shape != b.shape:
            return AccuracyReport(float("inf"), tolerance, f"{name} shape {a.shape} vs {b.shape}", False)
        if b.dtype.kind not in "fiub":
            continue
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        diff = np.abs(a64 - b64)
        # a NaN/inf where the reference is finite is an error of infinite size; matching NaNs are equal
        bad = ~np.isfinite(diff) & ~(np.isnan(a64) & np.isnan(b64)) & ~(a64 == b64)
        err = float("inf") if bad.any() else float(np.max(np.where(np.isfinite(diff), diff, 0.0), initial=0.0))
        if err > worst or (worst == 0.0 and name == worst_name):
            worst, worst_name = err, name
    return AccuracyReport(worst, tolerance, worst_name, worst <= tolerance)
