import subprocess
import sys

import pytest

import aivmm
from aivmm.dtypes import DType, Precision
from aivmm.errors import ConfigError
from aivmm.planner.constraints import Constraints, parse_bytes


def test_exported_members_are_pinned():
    assert aivmm.__all__ == [
        "VMM",
        "Constraints",
        "DType",
        "DeployOptions",
        "DeployedLLM",
        "DeployedModel",
        "Device",
        "DeviceKind",
        "FinishReason",
        "Generation",
        "Objective",
        "Precision",
        "PrecisionPolicy",
        "SamplingParams",
        "TokenEvent",
        "Vendor",
        "__version__",
        "discover",
        "errors",
    ]


def test_import_touches_no_runtime():
    code = (
        "import sys, aivmm; heavy = [m for m in ('onnxruntime', 'openvino', 'torch', 'pynvml', 'ray', 'onnx')"
        " if m in sys.modules]; print(heavy); sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_dtype_roundtrips():
    for dt in DType:
        assert DType.from_kserve(dt.kserve) is dt
    assert DType.from_numpy("float32") is DType.FLOAT32
    with pytest.raises(ConfigError, match="unknown datatype"):
        DType.from_kserve("FLOAT")
    assert Precision.parse("BF16") is Precision.BF16


@pytest.mark.parametrize(
    ("text", "value"), [("512MiB", 512 * 2**20), ("20GiB", 20 * 2**30), ("1.5GB", 1_500_000_000), ("1024", 1024)]
)
def test_parse_bytes(text, value):
    assert parse_bytes(text) == value


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_latency_ms": -1},
        {"max_latency_ms": float("nan")},
        {"max_memory_bytes": "lots"},
        {"prefer": "gpu", "exclude": "gpu"},
        {"prefer": "quantum"},
        {"latency_percentile": 90},
        {"objective": "speed"},
        {"precision": "int4"},
        {"batch_size": 0},
    ],
)
def test_bad_constraints_raise(kwargs):
    with pytest.raises(ConfigError):
        Constraints(**kwargs)
