"""Planner quality bar: the chosen configuration against the best found by measuring every candidate,
and against ONNX Runtime's CPU default, at the same accuracy tolerance; planning and cache-hit time.

    python benchmarks/planner.py                                # zoo tiny + ONNX light models, fp32 policy
    python benchmarks/planner.py --models zoo-tiny --precision int8 --out /tmp/p.json
    python benchmarks/planner.py --models zoo-full:resnet50,light:squeezenet

For each model:
1. ``plan()`` (default top-k and budget, fresh cache) -> the chosen candidate and the planning time;
2. ``plan()`` again -> a cache hit, timed (median of 5 hits);
3. ``plan(top_k=all)`` -> every candidate measured (same constraints, so the same tolerance);
4. the chosen one, the ``--contenders`` fastest of step 3 and a raw ``onnxruntime.InferenceSession``
   with default options are loaded side by side and timed interleaved (``--rounds`` rounds of
   ``--calls`` calls each, order alternating, median per call), so drift on a shared machine hits
   all alike. "best" is the fastest of the contenders there; ratios are of those medians.
Light models ship without weight values: random initialisers of the stored shapes are generated
(seeded), which changes no timing that matters here.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def _light_models(names: list[str] | None, folder: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
    import onnx
    from onnx import numpy_helper

    src = pathlib.Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    out = []
    for path in sorted(src.glob("light_*.onnx")):
        name = path.stem.removeprefix("light_")
        if names is not None and name not in names:
            continue
        model = onnx.load(str(path))
        rng = np.random.default_rng(0)
        inits = []
        for init in model.graph.initializer:
            arr = numpy_helper.to_array(init) if (init.raw_data or init.float_data or init.int64_data) else None
            if arr is None or arr.size != int(np.prod(init.dims)):
                dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
                if np.issubdtype(dtype, np.floating):
                    arr = (rng.standard_normal(tuple(init.dims)) * 0.05).astype(dtype)
                else:
                    arr = np.ones(tuple(init.dims), dtype)
            inits.append(numpy_helper.from_array(arr, init.name))
        del model.graph.initializer[:]
        model.graph.initializer.extend(inits)
        # old exporters list weights as graph inputs too; keep only the real inputs
        names_init = {i.name for i in inits}
        real = [i for i in model.graph.input if i.name not in names_init]
        del model.graph.input[:]
        model.graph.input.extend(real)
        model.ir_version = max(model.ir_version, 4)  # IR 4 lets initialisers stand without a graph input
        dst = folder / f"light_{name}.onnx"
        onnx.save(model, str(dst))
        out.append((f"light:{name}", dst))
    return out


def _zoo_models(size: str, names: list[str] | None) -> list[tuple[str, pathlib.Path, dict[str, Any]]]:
    from aivmm.models import zoo

    out = []
    for name in zoo.names():
        if names is not None and name not in names:
            continue
        out.append(
            (f"zoo-{size}:{name}", pathlib.Path(zoo.build(name, size=size)), dict(zoo.sample_inputs(name, size=size)))
        )
    return out


def _timer(run: Callable[[], Any]) -> Callable[[], float]:
    def once() -> float:
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0

    return once


def _interleaved(runners: dict[str, Callable[[], float]], rounds: int, calls: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():  # warm-up
        for _ in range(3):
            fn()
    for r in range(rounds):
        order = list(runners.items())
        if r % 2:
            order.reverse()
        for name, fn in order:
            samples[name].extend(fn() for _ in range(calls))
    return {k: statistics.median(v) * 1e3 for k, v in samples.items()}


def _session_runner(candidate: Any, devices: dict[str, Any], feeds: dict[str, np.ndarray]) -> tuple[Any, Callable]:
    from aivmm.backends import registry

    sess = registry.get(candidate.config.backend).load(
        candidate.model, devices[candidate.config.device], candidate.config
    )
    return sess, _timer(lambda: sess.run(feeds))


def bench_model(
    label: str,
    path: pathlib.Path,
    feeds: dict[str, np.ndarray] | None,
    args: argparse.Namespace,
    devices: tuple[Any, ...],
) -> dict[str, Any]:
    import onnxruntime as ort

    from aivmm.models import load
    from aivmm.optimize import sample_inputs
    from aivmm.planner import Constraints, plan

    cons = Constraints(precision=args.precision)
    spec = load(path)
    feeds = feeds or sample_inputs(spec)
    t0 = time.perf_counter()
    chosen_plan = plan(spec, devices, cons, sample_inputs=feeds, cache=True)
    planning_s = time.perf_counter() - t0
    hits = []
    for _ in range(5):
        t0 = time.perf_counter()
        again = plan(spec, devices, cons, sample_inputs=feeds, cache=True)
        hits.append(time.perf_counter() - t0)
        assert again.cache_hit, "second plan was not a cache hit"
    t0 = time.perf_counter()
    full = plan(spec, devices, cons, sample_inputs=feeds, cache=False, top_k=10_000)
    exhaustive_s = time.perf_counter() - t0
    measured = [c for c in full.ranked() if c.measurement is not None]
    chosen = chosen_plan.chosen
    # "The best": the exhaustive run's leaders, re-timed beside the chosen one (its own ranking is
    # as noisy as any single measurement on a shared machine).
    contenders = {chosen.label: chosen}
    for c in sorted(measured, key=lambda c: c.measurement.p50_ms)[: args.contenders]:
        contenders.setdefault(c.label, c)
    by_id = {d.id: d for d in devices}
    sessions = []
    try:
        runners = {}
        for lbl, cand in contenders.items():
            sess, runners[lbl] = _session_runner(cand, by_id, feeds)
            sessions.append(sess)
        raw = ort.InferenceSession(str(path), ort.SessionOptions(), providers=["CPUExecutionProvider"])
        runners["<ort default>"] = _timer(lambda: raw.run(None, feeds))
        med = _interleaved(runners, args.rounds, args.calls)
    finally:
        for s in sessions:
            s.close()
    best_label = min(contenders, key=lambda k: med[k])
    med["chosen"], med["best"], med["ort_default"] = med[chosen.label], med[best_label], med["<ort default>"]
    best = contenders[best_label]
    return {
        "model": label,
        "flops": spec.flops,
        "chosen": chosen.label,
        "best": best.label,
        "candidates_measured_by_plan": sum(1 for c in chosen_plan.ranked() if c.measurement is not None),
        "candidates_measured_exhaustive": len(measured),
        "rejected": len(full.rejected),
        "contenders": {k: round(v, 4) for k, v in med.items() if k not in ("chosen", "best", "ort_default")},
        "chosen_ms": round(med["chosen"], 4),
        "best_ms": round(med["best"], 4),
        "ort_default_ms": round(med["ort_default"], 4),
        "chosen_over_best": round(med["chosen"] / med["best"], 4),
        "chosen_over_ort_default": round(med["chosen"] / med["ort_default"], 4),
        "planning_s": round(planning_s, 3),
        "exhaustive_s": round(exhaustive_s, 3),
        "cache_hit_ms": round(statistics.median(hits) * 1e3, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models",
        default="zoo-tiny,light:squeezenet,light:shufflenet,light:inception_v1,"
        "light:bvlc_alexnet,light:zfnet512,light:resnet50",
        help="comma list: zoo-tiny, zoo-full, zoo-tiny:NAME, zoo-full:NAME, light, light:NAME",
    )
    parser.add_argument("--precision", default="fp32", help="precision policy (fp32, fp16, int8)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=10)
    parser.add_argument(
        "--contenders",
        type=int,
        default=3,
        help="how many of the exhaustive run's fastest are re-timed beside the chosen one",
    )
    parser.add_argument("--out", type=pathlib.Path, help="write the JSON results here")
    args = parser.parse_args(argv)

    from aivmm.devices import discover

    work = pathlib.Path(tempfile.mkdtemp(prefix="aivmm-planner-bench-"))
    os.environ["AIVMM_CACHE_DIR"] = str(work / "cache")  # a cold cache: planning time is honest
    devices = tuple(d for d in discover() if not d.simulated)
    models: list[tuple[str, pathlib.Path, dict[str, Any] | None]] = []
    zoo_sel: dict[str, list[str] | None] = {}
    light_sel: list[str] | None = []
    for item in [x.strip() for x in args.models.split(",") if x.strip()]:
        kind, _, name = item.partition(":")
        if kind in ("zoo-tiny", "zoo-full"):
            size = kind.split("-")[1]
            if name:
                if zoo_sel.get(size, []) is not None:
                    zoo_sel.setdefault(size, []).append(name)  # type: ignore[union-attr]
            else:
                zoo_sel[size] = None
        elif kind == "light":
            if name and light_sel is not None:
                light_sel.append(name)
            elif not name:
                light_sel = None
        else:
            parser.error(f"unknown model selector {item!r}")
    for size, names in zoo_sel.items():
        models.extend(_zoo_models(size, names))
    if light_sel is None or light_sel:
        models.extend((lbl, p, None) for lbl, p in _light_models(light_sel, work))

    rows = []
    for label, path, feeds in models:
        print(f"{label} ...", file=sys.stderr, flush=True)
        try:
            row = bench_model(label, path, feeds, args, devices)
        except Exception as exc:  # one model's failure is a result, not the end of the run
            row = {"model": label, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    ok = [r for r in rows if "error" not in r]
    summary = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": "python benchmarks/planner.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.node()} {platform.processor() or platform.machine()}, {os.cpu_count()} cpus",
        "devices": [f"{d.id} {d.name} runtimes={list(d.runtimes)}" for d in devices],
        "precision_policy": args.precision,
        "geomean_chosen_over_best": round(math.exp(statistics.mean(math.log(r["chosen_over_best"]) for r in ok)), 4)
        if ok
        else None,
        "max_chosen_over_best": max((r["chosen_over_best"] for r in ok), default=None),
        "geomean_chosen_over_ort_default": round(
            math.exp(statistics.mean(math.log(r["chosen_over_ort_default"]) for r in ok)), 4
        )
        if ok
        else None,
        "max_chosen_over_ort_default": max((r["chosen_over_ort_default"] for r in ok), default=None),
        "median_planning_s": statistics.median(r["planning_s"] for r in ok) if ok else None,
        "median_cache_hit_ms": statistics.median(r["cache_hit_ms"] for r in ok) if ok else None,
        "max_cache_hit_ms": max((r["cache_hit_ms"] for r in ok), default=None),
        "rows": rows,
    }
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
