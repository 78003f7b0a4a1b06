"""``aivmm analyze MODEL [--json] [--shape NAME=1x3x224x224 ...]``: what a model is and what it costs."""

from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX file or a zoo model name (see 'aivmm zoo list')")
    parser.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="NAME=1x3x224x224",
        help="bind an input's shape for the FLOPs and memory figures (repeatable)",
    )
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="zoo model size (default tiny)")
    parser.add_argument("--json", action="store_true", help="print the analysis as JSON")


def _resolve(ref: str, size: str) -> tuple[pathlib.Path, str | None]:
    """The file to analyse and, for a zoo model, its name."""
    from aivmm.models import zoo

    path = pathlib.Path(ref)
    if path.exists() or ref not in zoo.names():
        return path, None
    return zoo.build(ref, size), ref


def run(args: argparse.Namespace) -> int:
    from aivmm.models import category_hints, load, parse_shape_arg

    shapes = dict(parse_shape_arg(text) for text in args.shape)
    path, name = _resolve(args.model, args.size)
    kv = None
    if path.is_dir():
        from aivmm.llm import model_file

        path = model_file(path)
    # Loading first: a corrupt or missing file gets the loader's one-line error, not the KV probe's.
    spec = load(path, shapes=shapes or None, name=name)
    if path.suffix == ".onnx":  # a decoder file: name its KV-cache layout
        from aivmm.llm import detect_kv_layout

        kv = detect_kv_layout(path)
    hints = category_hints(spec)
    if args.json:
        data = spec.to_json()
        data["hints"] = hints.to_json()
        data["kv_cache"] = kv.to_json() if kv is not None else None
        print(json.dumps(data, indent=2))
        return 0
    print(render(spec, hints))
    if kv is not None:
        print(f"kv cache:        {kv.describe()}")
    return 0


def _bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.1f} {unit}" if unit != "B" else f"{int(value)} B"
        value /= 1024
    return f"{value:.1f} GiB"


def _count(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def render(spec: Any, hints: Any) -> str:
    shapes = ", ".join(f"{k}={'x'.join(map(str, v))}" for k, v in spec.shapes_used.items())
    lines = [
        f"{spec.name}  ({spec.format.value}, {_bytes(spec.size_bytes)}"
        f"{', external data' if spec.external_data else ''}, sha256 {spec.sha256[:12]})",
        "inputs:",
        *(f"  {t.describe()}" for t in spec.inputs),
        "outputs:",
        *(f"  {t.describe()}" for t in spec.outputs),
        f"parameters:      {_count(spec.parameters)} ({spec.parameters:,}), {_bytes(spec.parameter_bytes)}",
        f"compute:         {_count(spec.flops)}FLOPs, {_count(spec.macs)}MACs at {shapes or 'static shapes'}",
        f"peak activation: {_bytes(spec.peak_activation_bytes)}",
        f"opsets:          {', '.join(f'{d} {v}' for d, v in spec.opsets.items())}",
        "categories:",
    ]
    for c in spec.categories:
        subtype = f" [{c.subtype}]" if c.subtype else ""
        lines.append(f"  {c.category.value}{subtype} {c.confidence:.2f}")
        lines.extend(f"    - {e}" for e in c.evidence)
    top = list(spec.operators.items())[:8]
    lines.append(
        "operators:       "
        + ", ".join(f"{op} x{n}" for op, n in top)
        + (f", ... ({len(spec.operators)} kinds)" if len(spec.operators) > len(top) else "")
    )
    flops = list(spec.per_operator_flops.items())[:5]
    if flops and spec.flops:
        lines.append("FLOPs by op:     " + ", ".join(f"{op} {100 * v / spec.flops:.1f}%" for op, v in flops))
    for label, values in (
        ("control flow", spec.control_flow),
        ("quantised ops", spec.quantized_operators),
        ("custom domains", spec.custom_domains),
    ):
        if values:
            lines.append(f"{label + ':':<17}{', '.join(values)}")
    lines.append(f"batch dimension: {spec.batch_dim if spec.batch_dim is not None else 'none'}")
    lines.append(
        f"planner hints:   batch <= {hints.max_batch} within {hints.batch_timeout_ms:g} ms, precisions "
        f"{'/'.join(p.value for p in hints.precisions)}, runtimes {', '.join(hints.runtimes)}"
        + (", memory-bound" if hints.memory_bound else "")
        + (", sequential" if hints.sequential else "")
    )
    lines.extend(f"warning: {w}" for w in spec.warnings)
    return "\n".join(lines)
