"""Overhead of aivmm's backend sessions against the raw runtime calls, at batch 1 (a benchmark, not a test).

    python benchmarks/backend_overhead.py                  # one-op model and small CNN, ORT and OpenVINO
    python benchmarks/backend_overhead.py --rounds 41 --calls 400 --json out.json

For each model and runtime, three variants run on the *same* runtime session (same threads, same
graph): ``raw`` (``InferenceSession.run(output_names, feeds)`` / OpenVINO ``InferRequest.infer`` with shared
inputs and copied outputs), ``session`` (aivmm ``Session.run``) and ``validated`` (``validate_feeds`` then
``Session.run``: what the façade adds per request before scheduling). Rounds interleave the variants in a
rotating order; each round times a block of calls per variant; the figure is the median over rounds of
(variant block time / raw block time of the same round), so drifts of the machine cancel out.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from aivmm.backends import Config, registry
from aivmm.backends.tensors import validate_feeds
from aivmm.devices._types import Device


def one_op(path: Path) -> Path:
    g = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "one_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def small_cnn(path: Path) -> Path:
    r = np.random.default_rng(0)

    def w(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((r.standard_normal(shape) * 0.1).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["p"]),
        helper.make_node("Flatten", ["p"], ["f"]),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["logits"], transB=1),
    ]
    g = helper.make_graph(
        nodes,
        "small_cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 32, 32])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        initializer=[
            w("w1", 16, 3, 3, 3),
            w("b1", 16),
            w("w2", 16, 16, 3, 3),
            w("b2", 16),
            w("wf", 10, 16),
            w("bf", 10),
        ],
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def host_cpu() -> Device:
    from aivmm.devices import discover

    return next(d for d in discover() if d.id == "cpu:0")


def raw_call(backend: str, session: Any, feeds: dict[str, np.ndarray]) -> Callable[[], Any]:
    if backend == "onnxruntime":
        sess = session._sess
        names = [o.name for o in sess.get_outputs()]
        return lambda: sess.run(names, feeds)
    request = session._compiled.create_infer_request()
    indexed = {i: feeds[p.get_any_name()] for i, p in enumerate(session._compiled.inputs)}
    return lambda: request.infer(indexed, share_inputs=True)  # outputs come back as copies, like aivmm's


def measure(variants: dict[str, Callable[[], Any]], rounds: int, calls: int) -> dict[str, dict[str, float]]:
    for fn in variants.values():  # warm up: first runs allocate arenas and pick kernels
        for _ in range(max(20, calls // 10)):
            fn()
    names = list(variants)
    per_call: dict[str, list[float]] = {n: [] for n in names}
    ratios: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        block: dict[str, float] = {}
        for name in order:
            fn = variants[name]
            start = time.perf_counter_ns()
            for _ in range(calls):
                fn()
            block[name] = (time.perf_counter_ns() - start) / calls
        for name in names:
            per_call[name].append(block[name])
            ratios[name].append(block[name] / block["raw"])
    return {
        n: {"median_us": statistics.median(per_call[n]) / 1e3, "ratio": statistics.median(ratios[n])} for n in names
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--calls", type=int, default=300, help="calls per variant per round")
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--json", type=Path, help="write the figures as JSON")
    args = parser.parse_args(argv)

    cpu = host_cpu()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        import aivmm.models

        for model_name, build in (("one_op", one_op), ("small_cnn", small_cnn)):
            spec = aivmm.models.load(str(build(Path(tmp) / f"{model_name}.onnx")))
            x = (
                np.random.default_rng(1)
                .standard_normal(tuple(d if isinstance(d, int) else 1 for d in spec.inputs[0].shape))
                .astype(np.float32)
            )
            feeds = {spec.inputs[0].name: x}
            for backend_name in args.backends.split(","):
                backend = registry.get(backend_name)
                if not backend.available():
                    print(f"skip {backend_name}: {backend.available().reasons}", file=sys.stderr)
                    continue
                with backend.load(spec, cpu, Config(backend_name, cpu.id)) as session:
                    variants = {
                        "raw": raw_call(backend_name, session, feeds),
                        "session": lambda s=session, f=feeds: s.run(f),
                        "validated": lambda s=session, sp=spec, f=feeds: s.run(validate_feeds(sp, f)),
                    }
                    figures = measure(variants, args.rounds, args.calls)
                rows.append(
                    {
                        "model": model_name,
                        "backend": backend_name,
                        **{f"{k}_{m}": round(v[m], 4) for k, v in figures.items() for m in ("median_us", "ratio")},
                    }
                )
    print(
        f"{'model':10} {'backend':12} {'raw us':>8} {'session us':>10} {'ratio':>6} {'validated us':>12} {'ratio':>6}"
    )
    for row in rows:
        print(
            f"{row['model']:10} {row['backend']:12} {row['raw_median_us']:8.2f} {row['session_median_us']:10.2f} "
            f"{row['session_ratio']:6.3f} {row['validated_median_us']:12.2f} {row['validated_ratio']:6.3f}"
        )
    if args.json:
        meta = {
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "python": platform.python_version(),
            "machine": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "rounds": args.rounds,
            "calls": args.calls,
        }
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
