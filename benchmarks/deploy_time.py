"""Time of ``VMM.deploy`` to the first result, with and without the plan cache, in one process.

Per round and model: a deploy that plans (plan cache emptied first: measures every candidate),
its first ``execute``, then a second deploy of the same file (a plan-cache hit) and its first
``execute``. Also counts, per deploy, the sessions created for the chosen configuration and the
parses of the model file, so a regression to "load twice" shows as a number, not only as time.
Reports medians over rounds; the machine is shared, so compare runs made back to back.

    python benchmarks/deploy_time.py [--rounds 5] [--models resnet50,bert-base]
"""

from __future__ import annotations

import argparse
import collections
import pathlib
import platform
import shutil
import statistics
import time
from typing import Any

import aivmm
from aivmm.backends import Backend
from aivmm.models import zoo
from aivmm.optimize import cache_dir


class _Counts:
    """While installed: Backend.load calls per configuration label, and protobuf parses of the
    model file's bytes (onnx.load, onnx.load_model_from_string and aivmm's reader all end there)."""

    def __init__(self, path: str) -> None:
        import onnx

        self.loads: collections.Counter[str] = collections.Counter()
        self.parses = 0
        data = pathlib.Path(path).read_bytes()
        original_load, original_parse = Backend.load, onnx.ModelProto.ParseFromString

        def load(backend: Any, model: Any, device: Any, config: Any) -> Any:
            self.loads[config.label()] += 1
            return original_load(backend, model, device, config)

        def parse(proto: Any, blob: bytes) -> Any:
            self.parses += len(blob) == len(data) and blob == data
            return original_parse(proto, blob)

        self._undo = [(Backend, "load", original_load), (onnx.ModelProto, "ParseFromString", original_parse)]
        Backend.load = load  # type: ignore[method-assign]
        onnx.ModelProto.ParseFromString = parse

    def close(self) -> None:
        for owner, attr, old in self._undo:
            setattr(owner, attr, old)


def _deploy(vmm: aivmm.VMM, path: str, name: str, feeds: Any) -> dict[str, Any]:
    counts = _Counts(path)
    try:
        t0 = time.perf_counter()
        model = vmm.deploy(path, name=name)
        model.execute(feeds)
        seconds = time.perf_counter() - t0
    finally:
        counts.close()
    chosen = model.plan.chosen.config.label()
    out = {
        "seconds": seconds,
        "chosen": chosen,
        "cache_hit": model.plan.cache_hit,
        "chosen_loads": counts.loads[chosen],
        "loads": sum(counts.loads.values()),
        "parses": counts.parses,
    }
    model.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--models", default="resnet50,bert-base")
    args = ap.parse_args()
    vmm = aivmm.VMM()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for model in args.models.split(","):
        path = str(zoo.build(model))
        feeds = zoo.sample_inputs(model, batch=1)
        runs = results.setdefault(model, {"planned": [], "cached": []})
        for r in range(args.rounds):
            shutil.rmtree(cache_dir("plans"), ignore_errors=True)
            runs["planned"].append(_deploy(vmm, path, f"{model}-{r}-a", feeds))
            runs["cached"].append(_deploy(vmm, path, f"{model}-{r}-b", feeds))
    vmm.close()
    print(f"machine: {platform.machine()} {platform.processor() or ''}, python {platform.python_version()}")
    for model, runs in results.items():
        for kind, rows in runs.items():
            med = statistics.median(x["seconds"] for x in rows)
            last = rows[-1]
            each = ", ".join(f"{x['seconds']:.2f}" for x in rows)
            print(
                f"{model:10s} {kind:8s} median {med:7.3f} s over {len(rows)} "
                f"(each: {each}); chosen {last['chosen']}: "
                f"{last['chosen_loads']} session(s), {last['loads']} in all, {last['parses']} parse(s) of the file"
            )


if __name__ == "__main__":
    main()
