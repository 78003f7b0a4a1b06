"""The optimisation pipeline: precision and graph passes on ONNX files, each checked for accuracy.

::

    from aivmm.optimize import Pass, apply, sample_inputs, reference_outputs, compare, tolerance_for
    path = apply("model.onnx", Pass.INT8_DYNAMIC)          # cached under AIVMM_CACHE_DIR/optimized/
    feeds = sample_inputs(spec)                            # ints below the Gather table size
    ref = reference_outputs("model.onnx", feeds)           # ORT CPU fp32, no graph optimisation
    report = compare(outputs, ref, names, tolerance_for(Precision.INT8, ref, None))
"""

from aivmm.optimize._accuracy import (
    DEFAULT_RELATIVE_TOLERANCE,
    AccuracyReport,
    as_host,
    compare,
    reference_outputs,
    tolerance_for,
)
from aivmm.optimize._cache import cache_dir, file_sha256
from aivmm.optimize._inputs import InputPlan, check_feeds, check_generatable, index_bounds, input_plans, sample_inputs
from aivmm.optimize._passes import Pass, PassAvailability, apply, availability, transformed_path
from aivmm.optimize._probe import Generated, describe_feeds
from aivmm.optimize._probe import generate as generate_inputs

__all__ = [
    "DEFAULT_RELATIVE_TOLERANCE",
    "AccuracyReport",
    "Generated",
    "InputPlan",
    "Pass",
    "PassAvailability",
    "apply",
    "as_host",
    "availability",
    "cache_dir",
    "check_feeds",
    "check_generatable",
    "compare",
    "describe_feeds",
    "file_sha256",
    "generate_inputs",
    "index_bounds",
    "input_plans",
    "reference_outputs",
    "sample_inputs",
    "tolerance_for",
    "transformed_path",
]
