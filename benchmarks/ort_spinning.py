"""ONNX Runtime's spinning intra-op threads with other runtimes' sessions in the process (issue 15).

After each parallel region ONNX Runtime's pool threads spin, waiting for more work, before they
sleep. Alone that saves a wake-up per region; with an OpenVINO and a torch session in the same
process (the planner's finalist race, a multi-model engine) the spinning threads take the cores from
whatever runs next, and the next ORT call finds its own threads descheduled. This prints, for the
zoo GPT-2 (``benchmarks/realzoo``), the median of per-round medians of:

- ORT alone, spinning on / off (each in a fresh process, nothing else loaded);
- ORT, OpenVINO (LATENCY, f32) and torch eager (aivmm's lowering) alive and called in alternation,
  ORT spinning on / off (fresh processes), with the OpenVINO and torch figures too: spinning taxes
  the other models as well as itself;
- the same plus ORT ALL and OpenVINO THROUGHPUT: five configurations raced as the planner races
  its finalists (two ORT thread pools spinning against each other).

    python benchmarks/ort_spinning.py [--model gpt2] [--rounds 40] [--calls 10]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time
from collections.abc import Callable

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))

Runner = Callable[[dict[str, np.ndarray]], object]
SCENARIOS = ("ORT alone", "ORT + OpenVINO + torch, alternated", "five configurations raced (the planner's race)")


def _ort(path: pathlib.Path, spinning: bool, level: str = "basic") -> Runner:
    from aivmm.backends.ort import cpu_session

    sess = cpu_session(path, graph_optimization_level=level, threads=os.cpu_count(), allow_spinning=spinning)
    return lambda feeds: sess.run(None, feeds)


def _ov(path: pathlib.Path, hint: str = "LATENCY") -> Runner:
    import openvino as ov

    compiled = ov.Core().compile_model(str(path), "CPU", {"PERFORMANCE_HINT": hint, "INFERENCE_PRECISION_HINT": "f32"})
    req = compiled.create_infer_request()
    return lambda feeds: req.infer(feeds)


def _torch(path: pathlib.Path) -> Runner:
    from aivmm.backends import Config, registry
    from aivmm.devices import discover
    from aivmm.models import load

    dev = next(d for d in discover() if d.id == "cpu:0")
    session = registry.get("torch").load(load(path), dev, Config("torch", "cpu:0", options={"compile": None}))
    return lambda feeds: session.run(feeds)


def _scenario(model: str, spinning: bool, mixed: int, rounds: int, calls: int) -> dict[str, float]:
    import realzoo

    path = realzoo.path(model)
    feeds = realzoo.sample_inputs(model)
    runners = {"ort": _ort(path, spinning)}
    if mixed:
        runners["openvino"] = _ov(path)
        runners["torch"] = _torch(path)
    if mixed > 1:  # the planner's finalist race: a second ORT level and OpenVINO's other hint too
        runners["ort-all"] = _ort(path, spinning, "all")
        runners["openvino-tput"] = _ov(path, "THROUGHPUT")
    meds: dict[str, list[float]] = {n: [] for n in runners}
    for run in runners.values():
        run(feeds)  # first call apart
    for r in range(rounds):
        names = list(runners) if r % 2 == 0 else list(reversed(runners))
        for name in names:
            turn = []
            for _ in range(calls):
                t0 = time.perf_counter()
                runners[name](feeds)
                turn.append(time.perf_counter() - t0)
            meds[name].append(float(np.median(turn[1:])) * 1e3)
    return {n: round(float(np.median(v)), 3) for n, v in meds.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=2, help="fresh processes per scenario, alternating")
    ap.add_argument("--child", nargs=2, metavar=("SPINNING", "MIXED"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        spinning, mixed = args.child[0] == "1", int(args.child[1])
        print(json.dumps(_scenario(args.model, spinning, mixed, args.rounds, args.calls)))
        return 0
    print(f"model {args.model}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    results: dict[tuple[int, bool], list[dict[str, float]]] = {}
    for _ in range(args.repeats):
        for mixed in (0, 1, 2):
            for spinning in (True, False):
                cmd = [
                    sys.executable,
                    __file__,
                    "--model",
                    args.model,
                    "--rounds",
                    str(args.rounds),
                    "--calls",
                    str(args.calls),
                    "--child",
                    str(int(spinning)),
                    str(int(mixed)),
                ]
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=900).stdout
                results.setdefault((mixed, spinning), []).append(json.loads(out.strip().splitlines()[-1]))
    keys = ("ort", "openvino", "torch", "ort-all", "openvino-tput")
    heads = ("ORT BASIC", "OpenVINO LATENCY", "torch", "ORT ALL", "OpenVINO THROUGHPUT")
    print("| scenario | ORT spinning | " + " | ".join(f"{h} ms" for h in heads) + " |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for (mixed, spinning), runs in results.items():
        cells = [" / ".join(f"{r[k]:.2f}" for r in runs) if k in runs[0] else "-" for k in keys]
        print(f"| {SCENARIOS[mixed]} | {'on' if spinning else 'off'} | " + " | ".join(cells) + " |")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
