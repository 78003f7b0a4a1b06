"""aivmm's analysis of every real-zoo model against its hand count: category, weights, MACs, FLOPs,
the ratios, and what the analysis costs next to ``onnx.load`` (interleaved rounds, medians).

Exits 1 when a weight or MAC count is more than 5% off its hand count, or a category differs
from the one the zoo entry names, so it doubles as the check of the entries CI does not analyse.

    python benchmarks/realzoo_report.py [--models NAME ...] [--rounds 3] [--out FILE.md] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time

import onnx

import realzoo
from aivmm.models import load


def _timed(fn: object) -> float:
    start = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=[e.name for e in realzoo.entries()])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="write the markdown table here too")
    parser.add_argument("--json", help="write the rows as JSON here")
    args = parser.parse_args()
    rows, bad = [], []
    for name in args.models:
        entry, path = realzoo.get(name), realzoo.path(name)
        shapes = realzoo.shapes(name)
        spec = load(path, shapes=shapes)
        hand = realzoo.hand(name)
        raw, ours = [], []
        for _ in range(args.rounds):
            raw.append(_timed(lambda p=path: onnx.load(str(p))))
            ours.append(_timed(lambda p=path, s=shapes: load(p, shapes=s)))
        primary = spec.categories[0]  # load() always gives at least "other"
        row = {
            "model": name,
            "source": entry.source,
            "category": primary.category.value + (f"/{primary.subtype}" if primary.subtype else ""),
            "categories": [c.category.value for c in spec.categories],
            "parameters": spec.parameters,
            "hand_parameters": hand.parameters,
            "parameters_ratio": spec.parameters / hand.parameters,
            "macs": spec.macs,
            "hand_macs": hand.macs,
            "macs_ratio": spec.macs / hand.macs,
            "flops": spec.flops,
            "load_s": statistics.median(ours),
            "onnx_load_s": statistics.median(raw),
            "notes": [w for w in spec.warnings if w.startswith(("If:", "Loop:", "FLOPs not counted"))],
            "hand_how": hand.how,
        }
        ok = (
            abs(row["parameters_ratio"] - 1) <= 0.05
            and abs(row["macs_ratio"] - 1) <= 0.05
            and spec.categories
            and spec.categories[0].category.value == entry.categories[0]
            and set(entry.categories) <= set(row["categories"])
        )
        if not ok:
            bad.append(name)
        rows.append(row)
        print(
            f"{name:22s} {row['category']:26s} params {spec.parameters:>11,d} / {hand.parameters:>11,d} "
            f"= {row['parameters_ratio']:.4f}  MACs {spec.macs:>14,d} / {hand.macs:>14,d} = {row['macs_ratio']:.4f}",
            flush=True,
        )
    table = [
        "| model | category | parameters (hand) | ratio | MACs (hand) | ratio | FLOPs | load / onnx.load s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        table.append(
            f"| {r['model']} | {r['category']} | {r['parameters']:,} ({r['hand_parameters']:,}) | "
            f"{r['parameters_ratio']:.4f} | {r['macs']:,} ({r['hand_macs']:,}) | {r['macs_ratio']:.4f} | "
            f"{r['flops']:,} | {r['load_s']:.3f} / {r['onnx_load_s']:.3f} |"
        )
    text = "\n".join(table)
    print()
    print(text)
    print(f"\n{len(rows) - len(bad)} of {len(rows)} within 5% of the hand count with the expected category")
    if bad:
        print("outside 5% or wrong category: " + ", ".join(bad), file=sys.stderr)
    machine = f"{platform.machine()} {platform.python_version()}, onnx {onnx.__version__}"
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(
                f"Command: python benchmarks/realzoo_report.py --rounds {args.rounds}\n\nMachine: {machine}\n\n"
            )
            handle.write(text + "\n")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"machine": machine, "rows": rows}, handle, indent=1)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
