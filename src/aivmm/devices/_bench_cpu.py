"""CPU capability measurements: matmul throughput per precision and memory bandwidth.

fp32 uses numpy (its BLAS is what a CPU user already has); bf16 and fp16 need torch (numpy has no
bf16 arithmetic); int8 uses ONNX Runtime's MatMulInteger (MLAS, VNNI/AMX when present) or torch's
``_int_mm``. Each figure records which runtime measured it.
"""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from aivmm.devices._bench_timing import Budget, grow, median_seconds, wall

_SIZES = (256, 512, 1024, 2048, 4096)
_TARGET_S = 0.05  # one matmul this long is timed well by the host clock


def installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def kernels(runtime: str) -> dict[str, Callable[[Budget], float]]:
    """precision -> function measuring TFLOP/s with this runtime (only what it can do here)."""
    table: dict[str, dict[str, Callable[[Budget], float]]] = {
        "numpy": {"fp32": _numpy_fp32},
        "torch": {
            "fp32": _torch("float32"),
            "bf16": _torch("bfloat16"),
            "fp16": _torch("float16"),
            "int8": _torch_int8,
        },
        "onnxruntime": {"fp32": _ort("fp32"), "int8": _ort("int8")},
    }
    needs = {"numpy": "numpy", "torch": "torch", "onnxruntime": "onnxruntime"}
    if runtime not in table or not installed(needs[runtime]):
        return {}
    if runtime == "onnxruntime" and not installed("onnx"):
        return {}  # the test models are built with onnx.helper
    return table[runtime]


def _tflops(n: int, seconds: float) -> float:
    return 2.0 * n**3 / seconds / 1e12


def _measure_square(make: Callable[[int], Callable[[], object]], budget: Budget) -> float:
    ops: dict[int, Callable[[], object]] = {}

    def time_at(n: int) -> float:
        ops[n] = make(n)
        return wall(ops[n])()

    n = grow(time_at, _SIZES, target_s=_TARGET_S, budget=budget)
    seconds = median_seconds(wall(ops[n]), budget_s=min(1.5, budget.left()), max_reps=20)
    return _tflops(n, seconds)


def _numpy_fp32(budget: Budget) -> float:
    rng = np.random.default_rng(0)

    def make(n: int) -> Callable[[], object]:
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        out = np.empty((n, n), dtype=np.float32)
        return lambda: np.matmul(a, b, out=out)

    return _measure_square(make, budget)


def _torch(dtype_name: str) -> Callable[[Budget], float]:
    def measure(budget: Budget) -> float:
        import torch

        dtype = getattr(torch, dtype_name)

        def make(n: int) -> Callable[[], object]:
            gen = torch.Generator().manual_seed(0)
            a = torch.randn((n, n), generator=gen).to(dtype)
            b = torch.randn((n, n), generator=gen).to(dtype)
            out = torch.empty((n, n), dtype=dtype)
            return lambda: torch.matmul(a, b, out=out)

        with torch.inference_mode():
            return _measure_square(make, budget)

    return measure


def _torch_int8(budget: Budget) -> float:
    import torch

    def make(n: int) -> Callable[[], object]:
        gen = torch.Generator().manual_seed(0)
        a = torch.randint(-64, 64, (n, n), dtype=torch.int8, generator=gen)
        b = torch.randint(-64, 64, (n, n), dtype=torch.int8, generator=gen)
        return lambda: torch._int_mm(a, b)

    with torch.inference_mode():
        return _measure_square(make, budget)


def _ort(precision: str) -> Callable[[Budget], float]:
    def measure(budget: Budget) -> float:
        import onnx
        from onnx import TensorProto, helper

        from aivmm.backends.ort import cpu_session

        rng = np.random.default_rng(0)
        tmp = Path(tempfile.mkdtemp(prefix="aivmm-bench-"))

        def make(n: int) -> Callable[[], object]:
            a: np.ndarray
            b: np.ndarray
            if precision == "int8":
                b = rng.integers(-64, 64, (n, n), dtype=np.int8)
                node = helper.make_node("MatMulInteger", ["A", "B"], ["Y"])
                a_type, y_type = TensorProto.UINT8, TensorProto.INT32
                a = rng.integers(0, 128, (n, n), dtype=np.uint8)
            else:
                b = rng.standard_normal((n, n), dtype=np.float32)
                node = helper.make_node("MatMul", ["A", "B"], ["Y"])
                a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
                a = rng.standard_normal((n, n), dtype=np.float32)
            graph = helper.make_graph(
                [node],
                f"matmul_{precision}_{n}",
                [helper.make_tensor_value_info("A", a_type, [n, n])],
                [helper.make_tensor_value_info("Y", y_type, [n, n])],
                [onnx.numpy_helper.from_array(b, "B")],
            )
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            # onnx stamps its own newest IR version, which an older onnxruntime refuses ("Unsupported
            # model IR version: 14, max supported IR version: 13" on the GPU machine); opset 17 needs IR 8.
            model.ir_version = 8
            path = tmp / f"{precision}_{n}.onnx"
            onnx.save(model, path)
            session = cpu_session(path)
            feeds = {"A": a}
            return lambda: session.run(None, feeds)

        return _measure_square(make, budget)

    return measure


def memory_bandwidth_gbps(budget: Budget, available_bytes: int) -> float:
    """Large copy within host memory: (read + write bytes) / time, in GB/s (1e9 bytes)."""
    size = 256 * 2**20
    if available_bytes:
        size = max(16 * 2**20, min(size, available_bytes // 8))
    src = np.ones(size // 8, dtype=np.float64)
    dst = np.empty_like(src)
    seconds = median_seconds(wall(lambda: np.copyto(dst, src)), budget_s=min(1.0, budget.left()), max_reps=15)
    return 2 * src.nbytes / seconds / 1e9
