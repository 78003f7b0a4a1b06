"""The ONNX backend test suite, one case at a time, with what happened classified.

Tooling shared by ``benchmarks/conformance.py`` (the full run, one subprocess per runner) and
``tests/conformance`` (a fixed subset in CI). A *runner* is one way of executing the suite:
aivmm's auto placement, one aivmm backend alone, or onnxruntime's own ``onnxruntime.backend``
as the reference point. Each case ends in one :class:`Status` with a short, stable *reason* so
failures can be grouped ("wrong values", "onnxruntime: no kernel for <op>"), and the first line
of the error as detail.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import io
import re
import time
import unittest
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# Runner name -> what it runs. "ort-native" is onnxruntime's own backend module, not aivmm.
RUNNERS: dict[str, str] = {
    "auto": "aivmm auto placement (VMM.deploy; next backend on failure, recorded)",
    "onnxruntime": "aivmm onnxruntime backend alone (registry, no planner)",
    "openvino": "aivmm openvino backend alone (registry, no planner; f32 pinned)",
    "torch": "aivmm torch backend alone (aivmm's ONNX -> torch.fx lowering)",
    "ort-native": "onnxruntime.backend (onnxruntime's own ONNX backend, the reference point)",
}

KINDS: tuple[str, ...] = ("node", "simple", "pytorch-converted", "pytorch-operator")
_CATEGORY_KIND = {
    "OnnxBackendNodeModelTest": "node",
    "OnnxBackendSimpleModelTest": "simple",
    "OnnxBackendPyTorchConvertedModelTest": "pytorch-converted",
    "OnnxBackendPyTorchOperatorModelTest": "pytorch-operator",
    "OnnxBackendRealModelTest": "real",
}


class Status(enum.Enum):
    PASS = "pass"
    FAIL = "fail"  # ran, but the outputs differ from the reference
    ERROR = "error"  # raised before producing outputs
    SKIP = "skip"
    TIMEOUT = "timeout"
    CRASH = "crash"  # the process running the case died


@dataclasses.dataclass(frozen=True)
class Outcome:
    test: str
    status: Status
    reason: str = ""
    detail: str = ""
    seconds: float = 0.0
    placement: str = ""  # auto mode: the configuration that produced the outputs
    attempts: tuple[str, ...] = ()  # auto mode: configurations that failed first, with why

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["status"] = self.status.value
        out["attempts"] = list(self.attempts)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            test=str(data["test"]),
            status=Status(data["status"]),
            reason=str(data.get("reason", "")),
            detail=str(data.get("detail", "")),
            seconds=float(data.get("seconds", 0.0)),
            placement=str(data.get("placement", "")),
            attempts=tuple(data.get("attempts", ())),
        )


def backend_for(runner: str) -> Any:
    """The object BackendTest drives for a runner: an aivmm Backend class, or onnxruntime's module."""
    from aivmm.errors import ConfigError

    if runner not in RUNNERS:
        raise ConfigError(f"unknown conformance runner {runner!r}; known: {', '.join(RUNNERS)}")
    if runner == "ort-native":
        import onnxruntime.backend

        return onnxruntime.backend
    from aivmm.onnx_backend import with_backend

    return with_backend(None if runner == "auto" else runner)


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # the BackendTest method name, e.g. "test_abs_cpu"
    kind: str  # node | simple | pytorch-converted | pytorch-operator | real
    holder: type[unittest.TestCase]


def cases(backend: Any, *, kinds: Iterable[str] = KINDS, device: str = "CPU") -> dict[str, Case]:
    """Every case of the suite for ``backend`` on one device, by name (building the suite takes ~5 s:
    onnx computes the node tests' reference outputs on import)."""
    import onnx.backend.test

    wanted = set(kinds)
    suffix = f"_{device.lower()}"
    with warnings_quiet():
        suite = onnx.backend.test.BackendTest(backend, __name__).test_cases
    out: dict[str, Case] = {}
    for category, holder in suite.items():
        kind = _CATEGORY_KIND.get(category, category)
        if kind not in wanted:
            continue
        for name in dir(holder):
            if name.startswith("test_") and name.endswith(suffix):
                out[name] = Case(name, kind, holder)
    return out


@contextlib.contextmanager
def warnings_quiet() -> Iterator[None]:
    """onnx's node-test generators warn about deliberate overflows; they are not ours to report."""
    import warnings

    import numpy as np

    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


class _Result(unittest.TestResult):
    """Keeps the exception objects (unittest keeps only formatted tracebacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.outcome: tuple[Status, BaseException | str | None] = (Status.PASS, None)

    def addError(self, test: unittest.TestCase, err: Any) -> None:
        self.outcome = (Status.ERROR, err[1])

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:
        self.outcome = (Status.FAIL, err[1])

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:
        self.outcome = (Status.SKIP, reason)


def run_case(case: Case, *, observe: Callable[[], tuple[str, tuple[str, ...]]] | None = None) -> Outcome:
    """Run one case in this process and classify the result. ``observe`` returns the placement and
    failed attempts recorded while it ran (auto mode)."""
    result = _Result()
    start = time.perf_counter()
    # Backends print to stdout at times; the runner's protocol owns stdout.
    with warnings_quiet(), contextlib.redirect_stdout(io.StringIO()):
        case.holder(case.name).run(result)
    seconds = time.perf_counter() - start
    status, err = result.outcome
    placement, attempts = observe() if observe is not None else ("", ())
    if status is Status.PASS:
        return Outcome(case.name, status, seconds=seconds, placement=placement, attempts=attempts)
    if status is Status.SKIP:
        return Outcome(case.name, status, reason=f"skipped: {err}", seconds=seconds)
    assert isinstance(err, BaseException)
    if isinstance(err, AssertionError):
        status = Status.FAIL
    return Outcome(
        case.name,
        status,
        reason=classify(err),
        detail=first_line(err),
        seconds=seconds,
        placement=placement,
        attempts=attempts,
    )


def first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


# Reasons worth their own name; anything else is grouped by exception type and normalised message.
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p, re.IGNORECASE | re.DOTALL), r)
    for p, r in (
        (r"has incorrect shape", "wrong output shape"),
        (r"ACTUAL: dtype\(", "wrong output dtype"),
        (r"Not equal to tolerance", "wrong values (beyond tolerance)"),
        (r"Arrays are not equal", "wrong values"),
        (r"Items are not equal.*ACTUAL: \d+", "wrong number of outputs"),
        (r"Could not find an implementation for (\w+)", r"no onnxruntime kernel for \1 (with these types)"),
        (r"No (?:conversion rule|translator) found for operations?:?\s*([\w.:-]+)", r"openvino: no conversion for \1"),
        (r"OpConversionFailure|conversion failed", "openvino: operator conversion failed"),
        (r"Unsupported model IR version", "IR version newer than the runtime"),
        (
            r"opset \d+ is under development|opset.*(?:not supported|unsupported)|onnx ai.onnx opset version",
            "opset newer than the runtime",
        ),
    )
)
_NOISE = (
    (re.compile(r"(['\"`]).{0,120}?\1"), "'…'"),
    (re.compile(r"(/[\w.@+-]+)+"), "<path>"),
    (re.compile(r"\b(0x[0-9a-f]+|\d+(\.\d+)?)\b", re.IGNORECASE), "N"),  # numbers, not digits inside names
    (re.compile(r"\s+"), " "),
)


def classify(exc: BaseException) -> str:
    """A short reason that stays the same across cases failing the same way."""
    text = str(exc)
    for pattern, reason in _PATTERNS:
        m = pattern.search(text)
        if m:
            return m.expand(reason)
    msg = first_line(exc).partition(": ")[2]
    for pattern, repl in _NOISE:
        msg = pattern.sub(repl, msg)
    msg = msg.strip()
    return f"{type(exc).__name__}: {msg[:110]}" if msg else type(exc).__name__


# Node cases auto placement once lost although one of its backends passes them, kept in the CI subset
# so they stay won: a backend that runs and answers wrong (found by checking the first outputs
# against the ONNX reference), and models of ai.onnx.ml operators only (no default opset).
WON_BACK: tuple[str, ...] = (
    "test_ai_onnx_ml_array_feature_extractor_cpu",
    "test_ai_onnx_ml_binarizer_cpu",
    "test_ai_onnx_ml_label_encoder_string_int_cpu",
    "test_ai_onnx_ml_label_encoder_string_int_no_default_cpu",
    "test_ai_onnx_ml_label_encoder_tensor_mapping_cpu",
    "test_ai_onnx_ml_label_encoder_tensor_value_only_mapping_cpu",
    "test_ai_onnx_ml_tree_ensemble_set_membership_cpu",
    "test_ai_onnx_ml_tree_ensemble_single_tree_cpu",
    "test_attention_4d_causal_fp16_cpu",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_3d_mask_causal_cpu",
    "test_attention_4d_with_past_and_present_qk_matmul_bias_4d_mask_causal_cpu",
    "test_dft_axis_cpu",
    "test_dft_axis_opset19_cpu",
    "test_dft_cpu",
    "test_dft_irfft_cpu",
    "test_dft_irfft_opset19_cpu",
    "test_dft_opset19_cpu",
    "test_dft_rfft_cpu",
    "test_dft_rfft_opset19_cpu",
    "test_gru_batchwise_cpu",
    "test_lstm_batchwise_cpu",
    "test_resize_downsample_scales_cubic_align_corners_cpu",
    "test_resize_downsample_scales_linear_align_corners_cpu",
    "test_simple_rnn_batchwise_cpu",
    # sequence and optional values at the model boundary (the model spec was tensor-only)
    "test_identity_opt_cpu",
    "test_identity_sequence_cpu",
    "test_if_seq_cpu",
    "test_loop13_seq_cpu",
    "test_sequence_insert_at_back_cpu",
    "test_sequence_map_add_1_sequence_1_tensor_cpu",
    "test_split_to_sequence_1_cpu",
)


def select_subset(per_op: int = 1) -> list[str]:
    """A fixed CI subset covering many operator families: for each ONNX operator the first ``per_op``
    node cases (alphabetically, function expansions left out), every ``simple`` model case, and
    the :data:`WON_BACK` cases."""
    from onnx.backend.test.loader import load_model_tests

    chosen: dict[str, list[str]] = {}
    with warnings_quiet():
        node_cases = sorted(load_model_tests(kind="node"), key=lambda c: c.name)
    for case in node_cases:
        if case.name.endswith("_expanded") or case.model is None or not case.model.graph.node:
            continue
        ops = chosen.setdefault(case.model.graph.node[-1].op_type, [])
        if len(ops) < per_op:
            ops.append(f"{case.name}_cpu")
    names = [n for op in sorted(chosen) for n in chosen[op]]
    names += sorted(f"{c.name}_cpu" for c in load_model_tests(kind="simple"))
    return names + [n for n in WON_BACK if n not in names]


def read_list(path: Any) -> list[str]:
    """A test-name list file: one name a line, '#' comments."""
    import pathlib

    lines = pathlib.Path(path).read_text().splitlines()
    return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]
