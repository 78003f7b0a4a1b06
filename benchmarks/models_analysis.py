"""Cost of ``aivmm.models.load`` (read, hash, validate, infer shapes, analyse, categorise) on the
full-size zoo models, against the raw cost of reading the same file with ``onnx.load`` and of
creating an ONNX Runtime CPU session from it. Also times building each full model.

Rounds are interleaved (onnx.load, aivmm, ort, onnx.load, ...) so machine noise hits all alike;
figures are medians, ratios are per-round medians.

    python benchmarks/models_analysis.py [--rounds 5] [--models resnet50 bert-base ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import onnx

from aivmm.models import load, zoo


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models", nargs="*", default=zoo.names())
    parser.add_argument("--no-ort", action="store_true", help="skip the ONNX Runtime session baseline")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    ort = None
    if not args.no_ort:
        import onnxruntime as ort
    rows = []
    for name in args.models:
        build = _timed(lambda n=name: zoo.build(n, "full", force=True))
        path = zoo.build(name, "full")
        spec = load(path)
        raw, ours, session, ratios = [], [], [], []
        for _ in range(args.rounds):
            raw.append(_timed(lambda p=path: onnx.load(str(p))))
            ours.append(_timed(lambda p=path: load(p)))
            if ort is not None:
                session.append(_timed(lambda p=path: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])))
            ratios.append(ours[-1] / raw[-1])
        rows.append(
            {
                "model": name,
                "file_mb": round(path.stat().st_size / 1e6, 1),
                "parameters": spec.parameters,
                "gflops": round(spec.flops / 1e9, 3),
                "categories": [c.category.value for c in spec.categories],
                "build_s": round(build, 2),
                "onnx_load_s": round(statistics.median(raw), 3),
                "aivmm_load_s": round(statistics.median(ours), 3),
                "ratio_vs_onnx_load": round(statistics.median(ratios), 2),
                "ort_session_s": round(statistics.median(session), 3) if session else None,
            }
        )
        print(
            json.dumps(rows[-1])
            if args.json
            else f"{name:<10} {rows[-1]['file_mb']:7.1f} MB build {rows[-1]['build_s']:6.2f}s  onnx.load "
            f"{rows[-1]['onnx_load_s']:6.3f}s  aivmm.load {rows[-1]['aivmm_load_s']:6.3f}s "
            f"(x{rows[-1]['ratio_vs_onnx_load']})  ort session {rows[-1]['ort_session_s']}s",
            flush=True,
        )
    if args.json:
        print(json.dumps({"machine": platform.processor() or platform.machine(), "rounds": args.rounds, "rows": rows}))


if __name__ == "__main__":
    main()
