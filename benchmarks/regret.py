"""Regret of aivmm's choice over the real-model zoo: chosen latency / the best configuration found by hand.

    python benchmarks/regret.py --min-seconds 1          # every realzoo model, the authors' sample inputs
    python benchmarks/regret.py --fast --inputs generated --out /tmp/regret.json
    python benchmarks/regret.py --models yolov8n-nudenet,silero-vad --rounds 20

For each model, in one process:
1. ``plan()`` (defaults, fresh cache) with the model's recommended inputs (``realzoo.sample_inputs``)
   or, with ``--inputs generated``, with none (aivmm generates them) -> every candidate's measured
   latency and aivmm's choice;
2. the oracle set, run by hand with each runtime's own API and an accurate fp32 setting: ONNX
   Runtime ``InferenceSession`` at the ALL / EXTENDED / BASIC optimisation levels (threads not
   spinning unless ``--ort-spinning``), OpenVINO
   ``compile_model`` with ``INFERENCE_PRECISION_HINT=f32`` under the LATENCY and THROUGHPUT hints,
   and the torch backend in eager mode (torch has no ONNX runtime of its own; aivmm's lowering is
   the only way to run these files on torch). Each is checked against the fp32 reference
   (ORT, optimisations off) at the fp32 tolerance; an inaccurate one is not an oracle;
3. the chosen one (through aivmm's backend, as deployed) and every accurate hand configuration
   (torch eager only when within ``--screen`` x of the best 3-call screening) are timed
   interleaved: ``--rounds`` rounds (more with ``--min-seconds``: at least that much calling per
   configuration), each running every configuration for ``--calls`` calls (the first of each turn
   a warm-up), order alternating between rounds, in ``--segments`` segments with every session
   created anew for each; a configuration's figure is the median of its round medians.
regret = chosen / min(oracle), paired and cross-validated (:func:`cross_validated`): the median of
per-round ratios (two configurations timed back to back, so load changes between rounds cancel),
the oracle picked on half of the rounds and the ratio read on the other half, both ways, geometric
mean (picking and scoring on the same timings favours whichever hand configuration was luckiest, so a
choice equal to the best scored above 1). The same-data figure is kept per row as
``regret_same_data``. Summary: geometric mean and worst over the models that planned.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "src"))

import realzoo

Runner = Callable[[dict[str, np.ndarray]], list[np.ndarray]]


def _ort(path: pathlib.Path, level: str, spinning: bool) -> Runner:
    import onnxruntime as ort

    from aivmm.backends._ort_providers import physical_cores
    from aivmm.devices import discover

    so = ort.SessionOptions()
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    }[level]
    so.intra_op_num_threads = physical_cores(next(d for d in discover() if d.id == "cpu:0"))
    so.log_severity_level = 3
    if not spinning:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return lambda feeds: [np.asarray(o) for o in sess.run(None, feeds)]


def _ov(path: pathlib.Path, hint: str) -> Runner:
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(str(path), "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    names = [o.get_any_name() for o in compiled.outputs]

    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        res = req.infer(feeds)
        return [np.asarray(res[compiled.output(n)]) for n in names]

    return run


def _aivmm(spec: Any, config: Any) -> tuple[Runner, Any]:
    from aivmm.backends import registry
    from aivmm.devices import discover

    dev = next(d for d in discover() if d.id == config.device)
    session = registry.get(config.backend).load(spec, dev, config)
    return (lambda feeds: list(session.run(feeds).values())), session


def _accurate(outputs: list[np.ndarray], ref: list[np.ndarray]) -> tuple[bool, float]:
    from aivmm.dtypes import Precision
    from aivmm.optimize import compare, tolerance_for

    tol = tolerance_for(Precision.FP32, ref, None)
    report = compare(outputs, ref, [str(i) for i in range(len(ref))], tol)
    return report.ok, report.max_abs_error


def _interleave(
    runners: dict[str, Runner], feeds: dict[str, np.ndarray], rounds: int, calls: int
) -> dict[str, list[float]]:
    """Each configuration's round medians (ms), rounds in order; the order within a round alternates."""
    names = list(runners)
    meds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else reversed(names):
            turn = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runners[n](feeds)
                turn.append(time.perf_counter() - t0)
            meds[n].append(float(np.median(turn[1:])) * 1e3)
    return meds


def cross_validated(meds: dict[str, list[float]], chosen: str = "aivmm") -> dict[str, Any]:
    """The regret, paired within rounds and without the winner's curse.

    Paired: each round's ratio compares two configurations timed back to back, so a change of the
    machine's load between rounds (other processes on the 2 cores) cancels; the figure is the median
    of those ratios. Cross-validated: the oracle is the fastest of several hand configurations, each
    timed with noise, and picking the minimum and scoring with the same timings takes the luckiest
    one's noise as speed (a choice equal to the true best then scores above 1). So the oracle is
    picked on one half of the rounds and the ratio read on the other, both ways, and the two are
    combined (geometric mean). ``same_data`` is the paired ratio to the oracle picked on all rounds.
    """
    whole = {k: float(np.median(v)) for k, v in meds.items()}
    hands = [k for k in meds if k != chosen]
    if not hands:
        return {}

    def paired(rounds: list[int], other: str) -> float:
        return float(np.median([meds[chosen][r] / meds[other][r] for r in rounds]))

    every = list(range(len(meds[chosen])))
    same_oracle = min(hands, key=lambda k: whole[k])
    out: dict[str, Any] = {"same_data": paired(every, same_oracle), "oracle": same_oracle}
    if len(every) < 4:  # too few rounds to split: the same-data figure is all there is
        out["regret"] = out["same_data"]
        return out
    # Rounds 0,1 / 2,3 / 4,5 ... dealt to two halves, so each half has both orders within a round.
    half_a, half_b = [r for r in every if r % 4 < 2], [r for r in every if r % 4 >= 2]
    pick_a = min(hands, key=lambda k: float(np.median([meds[k][r] for r in half_a])))
    pick_b = min(hands, key=lambda k: float(np.median([meds[k][r] for r in half_b])))
    ratios = (paired(half_b, pick_a), paired(half_a, pick_b))
    out.update(regret=math.sqrt(ratios[0] * ratios[1]), halves=ratios, picked=(pick_a, pick_b))
    return out


def _screen(run: Runner, feeds: dict[str, np.ndarray], n: int = 3) -> float:
    run(feeds)
    t = []
    for _ in range(n):
        t0 = time.perf_counter()
        run(feeds)
        t.append(time.perf_counter() - t0)
    return float(np.median(t)) * 1e3


def one(name: str, args: argparse.Namespace, devices: Any) -> dict[str, Any]:
    from aivmm.backends._base import Config
    from aivmm.errors import AivmmError
    from aivmm.models import load
    from aivmm.optimize import reference_outputs
    from aivmm.planner import plan

    path = realzoo.path(name)
    spec = load(path)
    feeds = realzoo.sample_inputs(name)
    row: dict[str, Any] = {"model": name, "inputs": args.inputs}
    t0 = time.perf_counter()
    try:
        p = plan(spec, devices, cache=False, sample_inputs=feeds if args.inputs == "sample" else None)
    except AivmmError as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        return row
    row["planning_s"] = round(time.perf_counter() - t0, 2)
    chosen = p.chosen
    row["chosen"] = chosen.label
    row["candidates"] = {
        c.label: round(c.measurement.p50_ms, 4) for c in (*p.ranked(), *p.rejected) if c.measurement is not None
    }
    row["failed"] = {
        c.label: str(c.rejections[0])[:160]
        for c in p.rejected
        if c.rejections and c.rejections[0].reason.value in ("failed", "accuracy", "not-measured")
    }
    if args.inputs == "generated":
        # The oracle is timed on the same inputs the plan measured with.
        from aivmm.optimize._probe import generate

        feeds = generate(spec, model_path=path).feeds
    ref = reference_outputs(path, feeds)
    hand: dict[str, Runner] = {}
    keep: list[Any] = []
    oracle_info: dict[str, Any] = {}
    makers: list[tuple[str, Callable[[], Runner]]] = [
        ("ort[all]", lambda: _ort(path, "all", args.ort_spinning)),
        ("ort[extended]", lambda: _ort(path, "extended", args.ort_spinning)),
        ("ort[basic]", lambda: _ort(path, "basic", args.ort_spinning)),
        ("openvino[LATENCY,f32]", lambda: _ov(path, "LATENCY")),
        ("openvino[THROUGHPUT,f32]", lambda: _ov(path, "THROUGHPUT")),
    ]

    def torch_eager() -> Runner:
        run, session = _aivmm(spec, Config("torch", "cpu:0", options={"compile": None}))
        keep.append(session)
        return run

    makers.append(("torch[eager]", torch_eager))
    screen: dict[str, float] = {}
    for label, make in makers:
        try:
            run = make()
            ok, err = _accurate(run(feeds), ref)
        except Exception as exc:  # a runtime that cannot run this model is no oracle
            oracle_info[label] = f"cannot run: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
            continue
        if not ok:
            oracle_info[label] = f"inaccurate (max abs error {err:.3g})"
            continue
        hand[label] = run
        screen[label] = _screen(run, feeds)
    chosen_run, chosen_session = _aivmm(chosen.model, chosen.config)
    screen["aivmm"] = _screen(chosen_run, feeds)
    # Screening (3 calls) is as noisy as the machine: every ORT and OpenVINO configuration is raced;
    # only torch eager (10-100x slower on CPU) is left out when it screens over --screen x the best.
    best = min(v for k, v in screen.items() if k != "torch[eager]")
    racers = {
        "aivmm": chosen_run,
        **{k: v for k, v in hand.items() if not k.startswith("torch") or screen[k] <= args.screen * best},
    }
    row["oracle_excluded"] = oracle_info | {
        k: f"screened {screen[k]:.3f} ms > {args.screen}x best" for k in hand if k not in racers
    }
    # Sub-millisecond models need many rounds before drift averages out: at least --min-seconds of
    # timed calls per configuration.
    per_round_s = max(1e-6, args.calls * max(screen[k] for k in racers) / 1e3)
    rounds = max(args.rounds, min(2000, math.ceil(args.min_seconds / per_round_s)))
    row["rounds"] = rounds
    # Segments with every session created anew: on this 2-core VM an ONNX Runtime session whose pool
    # thread the kernel has put on the caller's core runs ~25 % slower until the thread moves, and
    # that state can last the whole race; it hit aivmm's session in one run (fno1d 1.175) and the
    # hand ones in the next (benchmarks/results/regret.md, run 7). New sessions per segment sample
    # the thread placement instead of keeping one draw for the whole race.
    segments = max(1, min(args.segments, rounds // 4))
    row["segments"] = segments
    makers_by_label = dict(makers)
    meds: dict[str, list[float]] = {k: [] for k in racers}
    for seg in range(segments):
        if seg:
            chosen_session.close()
            for s in keep:
                s.close()
            keep.clear()
            chosen_run, chosen_session = _aivmm(chosen.model, chosen.config)
            racers = {"aivmm": chosen_run, **{k: makers_by_label[k]() for k in racers if k != "aivmm"}}
            for run in racers.values():
                run(feeds)  # the first call of a new session (allocations, lazy init) is not timed
        part = _interleave(racers, feeds, -(-rounds // segments), args.calls)
        for k, v in part.items():
            meds[k].extend(v)
    chosen_session.close()
    for s in keep:
        s.close()
    timed = {k: float(np.median(v)) for k, v in meds.items()}
    row["timed_ms"] = {k: round(v, 4) for k, v in timed.items()}
    row["round_ms"] = {k: [round(x, 4) for x in v] for k, v in meds.items()}  # to recompute any figure
    row["chosen_ms"] = round(timed["aivmm"], 4)
    q1, q3 = np.percentile(meds["aivmm"], [25, 75])
    row["chosen_round_spread"] = round(float((q3 - q1) / timed["aivmm"]), 3)  # IQR of its rounds / median: the noise
    row["same_as"] = None if chosen.transform else _same_configuration(chosen.config)
    scored = cross_validated(meds)
    if scored:
        row["oracle"] = scored["oracle"]
        row["oracle_ms"] = round(timed[scored["oracle"]], 4)
        row["regret"] = round(scored["regret"], 4)
        row["regret_same_data"] = round(scored["same_data"], 4)
        if "halves" in scored:
            row["regret_halves"] = [round(x, 4) for x in scored["halves"]]
            row["oracle_picked_by_half"] = list(scored["picked"])
    return row


def _same_configuration(config: Any) -> str | None:
    """The hand configuration that is aivmm's choice run without aivmm, if there is one."""
    opts = {k: v for k, v in config.options.items() if v not in (None, False)}
    if config.backend == "onnxruntime" and set(opts) <= {"graph_optimization_level"}:
        return f"ort[{opts.get('graph_optimization_level', 'all')}]"
    if config.backend == "openvino" and set(opts) <= {"performance_hint"}:
        return f"openvino[{str(opts.get('performance_hint', 'LATENCY')).upper()},f32]"
    if config.backend == "torch" and not opts:
        return "torch[eager]"
    return None


def markdown(summary: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    """The table for BENCHMARKS.md / benchmarks/results/regret.md: one row per model, then every
    candidate's planning measurement."""
    out = [
        f"`{summary['command']}` — {summary['when']}, {summary['machine']}",
        "",
        "| model | aivmm's choice | chosen ms | oracle (by hand) | oracle ms | regret (cross-validated) "
        "| regret (same data) | choice = a hand config |",
        "| --- | --- | ---: | --- | ---: | ---: | ---: | --- |",
    ]
    for r in rows:
        if "regret" in r:
            out.append(
                f"| {r['model']} | {r['chosen']} | {r['chosen_ms']:.3f} | {r['oracle']} | {r['oracle_ms']:.3f} "
                f"| {r['regret']:.3f} | {r.get('regret_same_data', r['regret']):.3f} | {r.get('same_as') or '-'} |"
            )
        else:
            out.append(f"| {r['model']} | {r.get('error', 'no oracle ran')} | | | | | | |")
    out += [
        "",
        f"geomean **{summary['geomean']}**, worst **{summary['worst']}** ({summary['worst_model']}), "
        f"{summary['planned']} of {summary['models']} models planned (cross-validated); same data: geomean "
        f"{summary.get('geomean_same_data')}, worst {summary.get('worst_same_data')}",
        "",
        "Every candidate's latency as the planner measured it (ms; screening, or the race for finalists):",
        "",
    ]
    for r in rows:
        cands = ", ".join(f"{k} {v:g}" for k, v in sorted(r.get("candidates", {}).items(), key=lambda kv: kv[1]))
        out.append(
            f"- **{r['model']}**: {cands or '-'}" + (f"; failed: {', '.join(r['failed'])}" if r.get("failed") else "")
        )
    return "\n".join(out) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated realzoo names (default: all)")
    ap.add_argument("--fast", action="store_true", help="only the CI subset of the real zoo")
    ap.add_argument("--inputs", choices=("sample", "generated"), default="sample")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--calls", type=int, default=6, help="calls per turn (the first is a warm-up)")
    ap.add_argument(
        "--min-seconds",
        type=float,
        default=0.0,
        help="at least this many seconds of calls per configuration (more rounds for fast models)",
    )
    ap.add_argument(
        "--ort-spinning",
        action="store_true",
        help="hand ONNX Runtime sessions keep their threads spinning (run 5 did): in this race of up to seven "
        "sessions the spinning threads take the cores from whichever session runs next, aivmm's choice included "
        "(benchmarks/ort_spinning.py); off by default, as aivmm's planner sets it when sessions share the cores",
    )
    ap.add_argument(
        "--segments",
        type=int,
        default=3,
        help="split the race into this many segments, every session created anew for each (samples the "
        "OS's placement of the runtimes' threads instead of one draw per session)",
    )
    ap.add_argument("--screen", type=float, default=3.0, help="race hand configs within this factor of the best")
    ap.add_argument("--out", type=pathlib.Path, help="write the rows as JSON")
    ap.add_argument("--markdown", type=pathlib.Path, help="write the tables as Markdown")
    args = ap.parse_args()
    os.environ.setdefault("AIVMM_CACHE_DIR", "/tmp/aivmm-regret-cache")
    from aivmm.devices import discover

    devices = discover()
    subset = realzoo.entries(fast=True if args.fast else None)
    names = args.models.split(",") if args.models else [e.name for e in subset]
    rows = []
    for name in names:
        row = one(name, args, devices)
        rows.append(row)
        if "regret" in row:
            print(
                f"{name:24s} chosen {row['chosen']:70s} {row['chosen_ms']:9.3f} ms | oracle {row['oracle']:24s} "
                f"{row['oracle_ms']:9.3f} ms | regret {row['regret']:.3f} (same data {row['regret_same_data']:.3f}; "
                f"load {os.getloadavg()[0]:.1f})",
                flush=True,
            )
        else:
            print(f"{name:24s} {row.get('error', 'no oracle ran')}", flush=True)
    regrets = [r["regret"] for r in rows if "regret" in r]
    biased = [r.get("regret_same_data", r["regret"]) for r in rows if "regret" in r]
    summary = {
        "models": len(rows),
        "planned": len(regrets),
        "geomean": round(math.exp(sum(math.log(x) for x in regrets) / len(regrets)), 4) if regrets else None,
        "worst": max(regrets) if regrets else None,
        "worst_model": max((r for r in rows if "regret" in r), key=lambda r: r["regret"])["model"] if regrets else None,
        "geomean_same_data": round(math.exp(sum(math.log(x) for x in biased) / len(biased)), 4) if biased else None,
        "worst_same_data": max(biased) if biased else None,
        "load_average": [round(x, 1) for x in os.getloadavg()],
        "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": "python " + " ".join(sys.argv),
    }
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, default=str))
    if args.markdown:
        args.markdown.write_text(markdown(summary, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
