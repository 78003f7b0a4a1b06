"""Overhead of ``DeployedModel.execute`` against the same runtime's raw call, in one process.

Runs interleaved rounds (raw, aivmm, raw, aivmm, ...) so machine noise hits both alike, and
reports the median of per-round ratios. The raw call is the runtime's own API on the session aivmm
created, so both sides run the same file with the same runtime settings.
Models: a one-op Gemm (1x1024 · 1024x1024), a one-op
Relu on a tiny tensor (the pure per-call floor), and a small CNN from the zoo, each at batch 1,
on ONNX Runtime CPU and on OpenVINO CPU (fp32 pinned in both).

    python benchmarks/facade_overhead.py [--rounds 15] [--calls 400]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import tempfile
import time

import numpy as np
import onnx
import onnx.helper as oh
import onnx.numpy_helper as onh

import aivmm


def _one_op_models(tmp: pathlib.Path) -> dict[str, tuple[pathlib.Path, dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    w = onh.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), "w")
    gemm = oh.make_graph(
        [oh.make_node("Gemm", ["x", "w"], ["y"])],
        "gemm",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 1024])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 1024])],
        [w],
    )
    relu = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "relu",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 16])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 16])],
    )
    out = {}
    for name, graph, feed in (
        ("one-op gemm 1x1024x1024", gemm, rng.standard_normal((1, 1024))),
        ("one-op relu 1x16", relu, rng.standard_normal((1, 16))),
    ):
        path = tmp / f"{graph.name}.onnx"
        onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
        out[name] = (path, {"x": feed.astype(np.float32)})
    return out


def _raw_call(model: aivmm.DeployedModel) -> callable:
    """The runtime's own call on the very session aivmm created (same file, threads, spinning and
    optimisation level), so the ratio isolates aivmm's layers: execute → validation → engine fast
    path → Session.run."""
    session = model.handle.replicas[0].session
    if model.plan.chosen.config.backend == "onnxruntime":
        sess = session._sess  # onnxruntime.InferenceSession
        return lambda feeds: sess.run(None, feeds)
    req = session._compiled.create_infer_request()  # openvino.CompiledModel
    return lambda feeds: req.infer(feeds)


def _time(fn, feeds, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn(feeds)
    return (time.perf_counter() - start) / calls


def measure(vmm: aivmm.VMM, label: str, path: pathlib.Path, feeds: dict, backend: str, rounds: int, calls: int) -> dict:
    model = vmm.deploy(path, backend=backend, strict=True, measure=False, name=f"{label}-{backend}")
    try:
        config = model.plan.chosen.config
        raw = _raw_call(model)
        for _ in range(50):  # warm both
            raw(feeds)
            model.execute(feeds)
        ratios, raw_t, ours_t = [], [], []
        for _ in range(rounds):
            r = _time(raw, feeds, calls)
            a = _time(model.execute, feeds, calls)
            ratios.append(a / r)
            raw_t.append(r)
            ours_t.append(a)
        return {
            "model": label,
            "backend": backend,
            "config": config.label(),
            "raw_us": statistics.median(raw_t) * 1e6,
            "aivmm_us": statistics.median(ours_t) * 1e6,
            "ratio_median": statistics.median(ratios),
        }
    finally:
        model.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--json", type=pathlib.Path)
    args = parser.parse_args()
    from aivmm.models import zoo

    rows = []
    with tempfile.TemporaryDirectory() as tmp, aivmm.VMM() as vmm:
        models = _one_op_models(pathlib.Path(tmp))
        cnn = zoo.default_model()
        models[f"zoo {cnn} (tiny)"] = (zoo.build(cnn, size="tiny"), zoo.sample_inputs(cnn, size="tiny"))
        for label, (path, feeds) in models.items():
            for backend in ("onnxruntime", "openvino"):
                calls = args.calls if "relu" in label else max(20, args.calls // 10)
                rows.append(measure(vmm, label, path, feeds, backend, args.rounds, calls))
    print(
        f"machine: {platform.processor() or platform.machine()}, {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d')}"
    )
    print("| model | backend | raw µs | aivmm µs | ratio (median of rounds) |")
    print("| --- | --- | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['model']} | {r['backend']} | {r['raw_us']:.1f} | {r['aivmm_us']:.1f} | {r['ratio_median']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
