"""Chunked prefill: how long a running stream waits for its next token while a long prompt prefills.

One stream decodes (greedy, ``--tokens`` new tokens); after its 10th token a second request with a
``--prompt``-token prompt arrives. Without chunking its whole prefill runs between two decode steps of
the stream; with ``prefill_chunk_tokens`` it runs one chunk per decode step. The figure is the
longest gap between two tokens of the running stream while the long request is in flight (median
over rounds), next to the stream's median gap. Each round's long prompt is new (the prefix cache
would otherwise serve all but its last block). Same tiny Llama as ``llm_cpu.py``, both deployments in
one process, rounds interleaved.

    python benchmarks/llm_chunked_prefill.py [--rounds 7] [--prompt 200] [--chunks 16,32,64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import statistics
import sys
import threading
import time

import aivmm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import _llm_models


def one_round(llm: aivmm.DeployedLLM, long_prompt: list[int], tokens: int) -> tuple[float, float]:
    """(longest gap while the long prompt is in flight, median gap) of the running stream, in ms."""
    stamps: list[float] = []
    window: list[float] = []
    done = threading.Event()

    def long_request() -> None:
        window.append(time.perf_counter())
        llm.generate(long_prompt, max_new_tokens=2, ignore_eos=True)
        window.append(time.perf_counter())
        done.set()

    for ev in llm.stream([5, 6, 7, 8], max_new_tokens=tokens, ignore_eos=True):
        stamps.append(time.perf_counter())
        if ev.index == 10:
            threading.Thread(target=long_request, daemon=True).start()
    done.wait(30)
    gaps = [(b - a, b) for a, b in itertools.pairwise(stamps)]
    during = [g for g, t in gaps if window[0] <= t <= window[1] + (gaps[-1][0] if gaps else 0)]
    return 1e3 * max(during, default=0.0), 1e3 * statistics.median(g for g, _ in gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--prompt", type=int, default=200)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--chunks", default="16,32,64")
    args = ap.parse_args()
    folder = _llm_models.build_tiny_llama()
    vmm = aivmm.VMM()
    models = {"whole": vmm.deploy(folder, name="whole", measure=False, batching={"prefill_chunk_tokens": None})}
    for c in args.chunks.split(","):
        models[f"chunk {c}"] = vmm.deploy(
            folder, name=f"c{c}", measure=False, batching={"prefill_chunk_tokens": int(c)}
        )
    results: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for r in range(args.rounds + 1):
        long_prompt = [10 + (7 * r + i) % 400 for i in range(args.prompt)]  # new each round: no prefix reuse
        for k, m in models.items():
            results[k].append(one_round(m, long_prompt, args.tokens))
    report = {
        "command": "python benchmarks/llm_chunked_prefill.py " + " ".join(sys.argv[1:]),
        "max_gap_ms_during_long_prefill": {
            k: round(statistics.median(x for x, _ in v[1:]), 3) for k, v in results.items()
        },
        "median_gap_ms": {k: round(statistics.median(y for _, y in v[1:]), 3) for k, v in results.items()},
    }
    print(json.dumps(report, indent=2))
    vmm.close()


if __name__ == "__main__":
    main()
