"""Identical ONNX Runtime sessions drift apart: the OS's placement of a pool thread, not the configuration.

    python benchmarks/ort_thread_placement.py --model fno1d --rounds 1500

Creates ``--sessions`` sessions of ONE configuration (EXTENDED, 2 intra-op threads, not spinning)
and, as a second group, the same with the pool thread pinned (``session.intra_op_thread_affinities``),
times them interleaved (``--calls`` per turn, the first a warm-up, order alternating) and prints the
median of each tenth of the rounds. On the 2-vCPU VM a session steps ~25 % slower for hundreds of
rounds and back, at random, whole groups at a time: its pool thread shares a core with the calling
thread. This is why ``benchmarks/regret.py`` re-creates every session per segment.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

import realzoo


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="fno1d", help="a realzoo name")
    ap.add_argument("--rounds", type=int, default=1500)
    ap.add_argument("--calls", type=int, default=6)
    ap.add_argument("--sessions", type=int, default=3, help="sessions per group")
    ap.add_argument("--affinity", default="2", help="ORT's intra_op_thread_affinities for the pinned group")
    args = ap.parse_args()
    import onnxruntime as ort

    path = realzoo.path(args.model)
    feeds = realzoo.sample_inputs(args.model)

    def make(affinity: str | None) -> ort.InferenceSession:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        so.log_severity_level = 3
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if affinity:
            so.add_session_config_entry("session.intra_op_thread_affinities", affinity)
        return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])

    sessions = {f"free{i}": make(None) for i in range(args.sessions)}
    sessions |= {f"pinned{i}": make(args.affinity) for i in range(args.sessions)}
    meds: dict[str, list[float]] = {k: [] for k in sessions}
    names = list(sessions)
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            sess, turn = sessions[n], []
            for _ in range(args.calls):
                t0 = time.perf_counter()
                sess.run(None, feeds)
                turn.append(time.perf_counter() - t0)
            meds[n].append(float(np.median(turn[1:])) * 1e3)
    step = max(1, args.rounds // 10)
    print(f"# {args.model}: median ms per tenth of {args.rounds} interleaved rounds")
    print("| rounds | " + " | ".join(names) + " |")
    print("| ---: | " + " | ".join("---:" for _ in names) + " |")
    for i in range(0, args.rounds, step):
        print(f"| {i}– | " + " | ".join(f"{statistics.median(meds[k][i : i + step]):.4f}" for k in names) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
