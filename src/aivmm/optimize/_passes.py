"""Model transformations, each cached on disk keyed by the model's content hash and the pass.

Passes work on ONNX files with ONNX Runtime's own tools (offline graph optimisation,
``onnxruntime.transformers.float16``, ``onnxruntime.quantization``), so a transformed file is a
plain ONNX model every ONNX backend can load. Precisions a runtime applies natively (OpenVINO's
INFERENCE_PRECISION_HINT, torch bf16) are not passes: the planner hands them to the backend as the
Config's precision.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import os
import pathlib
import tempfile
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from aivmm.dtypes import Precision
from aivmm.errors import ConfigError, ModelLoadError
from aivmm.optimize._cache import cache_dir, file_sha256

log = logging.getLogger(__name__)


class Pass(enum.Enum):
    """One transformation of an ONNX file."""

    GRAPH_BASIC = "graph-basic"  # constant folding, redundant node elimination
    GRAPH_EXTENDED = "graph-extended"  # + operator fusions (GELU, LayerNorm, attention, ...)
    FP16 = "fp16"  # weights and compute in fp16, inputs and outputs kept fp32
    INT8_DYNAMIC = "int8-dynamic"  # int8 weights, activations quantised per call
    INT8_STATIC = "int8-static"  # int8 weights and activations, scales calibrated on sample inputs

    @property
    def precision(self) -> Precision:
        return {Pass.FP16: Precision.FP16, Pass.INT8_DYNAMIC: Precision.INT8, Pass.INT8_STATIC: Precision.INT8}.get(
            self, Precision.FP32
        )

    @property
    def needs_calibration(self) -> bool:
        return self is Pass.INT8_STATIC


@dataclasses.dataclass(frozen=True)
class PassAvailability:
    available: bool
    reason: str = ""


def availability(p: Pass) -> PassAvailability:
    """Whether the tools a pass needs are importable here (cheap: import only, nothing runs)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return PassAvailability(False, 'onnxruntime is not installed: pip install "aivmm[onnxruntime]"')
    if p is Pass.FP16:
        try:
            from onnxruntime.transformers import float16  # noqa: F401
        except ImportError as exc:
            return PassAvailability(False, f"onnxruntime.transformers.float16 is not importable: {exc}")
    if p in (Pass.INT8_DYNAMIC, Pass.INT8_STATIC):
        try:
            from onnxruntime import quantization  # noqa: F401
        except ImportError as exc:
            return PassAvailability(False, f"onnxruntime.quantization is not importable: {exc}")
    return PassAvailability(True)


def _calibration_key(samples: Sequence[Mapping[str, np.ndarray]]) -> str:
    import hashlib

    digest = hashlib.sha256()
    for feeds in samples:
        for name in sorted(feeds):
            arr = np.ascontiguousarray(feeds[name])
            digest.update(name.encode() + str(arr.dtype).encode() + str(arr.shape).encode() + arr.tobytes())
    return digest.hexdigest()[:12]


def transformed_path(
    model_path: str | os.PathLike[str],
    p: Pass,
    *,
    model_sha256: str = "",
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
) -> pathlib.Path:
    """Where the output of ``p`` on ``model_path`` is cached (whether or not it exists yet)."""
    digest = model_sha256 or file_sha256(model_path)
    suffix = f"-{_calibration_key(calibration)}" if p.needs_calibration else ""
    return cache_dir("optimized", digest[:32]) / f"{p.value}{suffix}.onnx"


def apply(
    model_path: str | os.PathLike[str],
    p: Pass,
    *,
    model_sha256: str = "",
    calibration: Sequence[Mapping[str, np.ndarray]] = (),
) -> pathlib.Path:
    """Apply ``p`` to the ONNX file and return the cached result's path (computed once per model+pass).

    ``calibration`` (a few feed dicts) is required by INT8_STATIC and keys its cache entry.
    """
    src = pathlib.Path(model_path)
    if not src.is_file():
        raise ModelLoadError(f"cannot optimise {src}: not a file")
    avail = availability(p)
    if not avail.available:
        raise ConfigError(f"pass {p.value} is unavailable: {avail.reason}")
    if p.needs_calibration and not calibration:
        raise ConfigError(f"pass {p.value} needs calibration inputs (sample_inputs)")
    out = transformed_path(src, p, model_sha256=model_sha256, calibration=calibration)
    if out.is_file():
        return out
    # Write to a temporary name in the same folder, then rename: a crash never leaves a half file
    # that a later run would trust.
    with _atomic_target(out) as tmp:
        try:
            _RUNNERS[p](src, tmp, calibration)
        except ConfigError:
            raise
        except Exception as exc:  # the ORT tools raise many types for graphs they cannot handle
            raise ModelLoadError(f"pass {p.value} failed on {src.name}: {type(exc).__name__}: {exc}") from exc
    log.info("pass %s on %s -> %s", p.value, src.name, out)
    return out


@contextlib.contextmanager
def _atomic_target(out: pathlib.Path) -> Iterator[pathlib.Path]:
    fd, tmp_name = tempfile.mkstemp(prefix=out.stem + ".", suffix=".tmp.onnx", dir=out.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def _graph(src: pathlib.Path, dst: pathlib.Path, level: str) -> None:
    from aivmm.backends.ort import cpu_session

    # Building the session writes the optimised graph; CPU EP only so no device-specific nodes land in it.
    cpu_session(src, graph_optimization_level=level, optimized_model_path=dst)


def _run_graph_basic(src: pathlib.Path, dst: pathlib.Path, _: Sequence[Mapping[str, np.ndarray]]) -> None:
    _graph(src, dst, "basic")


def _run_graph_extended(src: pathlib.Path, dst: pathlib.Path, _: Sequence[Mapping[str, np.ndarray]]) -> None:
    _graph(src, dst, "extended")


def _run_fp16(src: pathlib.Path, dst: pathlib.Path, _: Sequence[Mapping[str, np.ndarray]]) -> None:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    # keep_io_types: callers keep feeding and receiving fp32, the signature does not change.
    converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    onnx.save(converted, str(dst))


def _run_int8_dynamic(src: pathlib.Path, dst: pathlib.Path, _: Sequence[Mapping[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocess(src, pathlib.Path(tmp))
        quantize_dynamic(str(prepared), str(dst), weight_type=QuantType.QInt8)


def _run_int8_static(src: pathlib.Path, dst: pathlib.Path, calibration: Sequence[Mapping[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            item = next(self._it, None)
            return dict(item) if item else None

    with tempfile.TemporaryDirectory() as tmp:
        prepared = _preprocess(src, pathlib.Path(tmp))
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )


def _preprocess(src: pathlib.Path, tmp: pathlib.Path) -> pathlib.Path:
    """ORT's recommended pre-quantisation step (shape inference + basic optimisation); the source when it fails."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    out = tmp / "prepared.onnx"
    try:
        quant_pre_process(str(src), str(out), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing is an optimisation: quantise the original rather than fail
        log.info("quant_pre_process skipped for %s: %s", src.name, exc)
        return src
    return out


_RUNNERS = {
    Pass.GRAPH_BASIC: _run_graph_basic,
    Pass.GRAPH_EXTENDED: _run_graph_extended,
    Pass.FP16: _run_fp16,
    Pass.INT8_DYNAMIC: _run_int8_dynamic,
    Pass.INT8_STATIC: _run_int8_static,
}
