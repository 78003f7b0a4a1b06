"""``aivmm run [MODEL]``: deploy a model, run it, say where it ran and how fast.

With no MODEL it runs every model of the built-in zoo (tiny size), which is the README's first
command: it shows aivmm discovering, planning and running on a fresh machine.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time
from collections.abc import Mapping
from typing import Any

import numpy as np

from aivmm.errors import ConfigError, InputError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aivmm.cli._constraint_flags import add_constraint_arguments

    parser.add_argument("model", nargs="?", help="an ONNX file or a zoo name (default: every zoo model)")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="FILE.npz|NAME=FILE.npy",
        help="inputs from a .npz (one array per input name), NAME=FILE.npy, or FILE.npy for a "
        "one-input model (repeatable); they are also what the planner measures with",
    )
    parser.add_argument(
        "--random",
        action="store_true",
        help="random inputs shaped by the model's signature (the default for zoo models is their sample inputs)",
    )
    parser.add_argument("--device", help="pin a device id (cpu:0, nvidia:0, ...)")
    parser.add_argument("--backend", help="pin a backend (onnxruntime, openvino, torch, ...)")
    parser.add_argument("--strict", action="store_true", help="refuse any fallback from the pinned device/backend")
    parser.add_argument("--output-dir", type=pathlib.Path, help="write each output as DIR/<output name>.npy")
    parser.add_argument("--repeat", type=int, default=1, help="run N times and report the median latency")
    parser.add_argument("--json", action="store_true", help="print a JSON report")
    parser.add_argument("--no-measure", action="store_true", help="plan from the cost model only (faster start)")
    parser.add_argument("--simulate", help="add simulated devices from a JSON spec (as AIVMM_SIMULATE)")
    add_verbose_argument(parser)
    add_constraint_arguments(parser)


def add_verbose_argument(parser: argparse.ArgumentParser) -> None:
    """``-v`` after the command too (``aivmm run m.onnx -v``): the runtimes' captured output while
    measuring is logged at INFO. SUPPRESS keeps a ``-v`` given before the command."""
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=argparse.SUPPRESS,
        help="more logging: the runtimes' full output while measuring (-vv for debug)",
    )


def _load_array(label: str, path: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(f"--input {label}: cannot read {path}: {exc}") from exc


def _parse_inputs(items: list[str], spec: Any = None) -> dict[str, np.ndarray]:
    """``FILE.npz`` (every array by name), ``NAME=FILE.npy``, or ``FILE.npy`` for a one-input model."""
    feeds: dict[str, np.ndarray] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if sep and name and path:
            feeds[name] = _load_array(name, path)
        elif not sep and item.endswith(".npz"):
            try:
                with np.load(item, allow_pickle=False) as archive:
                    feeds.update({k: archive[k] for k in archive.files})
            except (OSError, ValueError) as exc:
                raise InputError(f"--input {item}: cannot read it as .npz: {exc}") from exc
        elif not sep and item.endswith(".npy") and spec is not None and len(spec.inputs) == 1:
            feeds[spec.inputs[0].name] = _load_array(item, item)
        else:
            raise ConfigError(f"--input expects FILE.npz, NAME=FILE.npy or (one-input model) FILE.npy, got {item!r}")
    return feeds


def random_inputs(spec: Any, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs generated as the planner generates them (sizes from dim names, metadata and probing;
    ids inside their tables; compared-with constants): see :mod:`aivmm.optimize._probe`."""
    from aivmm.dtypes import DType
    from aivmm.optimize import generate_inputs

    for t in spec.inputs:
        if t.dtype is DType.STRING:
            raise InputError(f"input {t.name!r} is a string tensor: pass it with --input")
    src = spec.source
    path = src if isinstance(src, str | pathlib.Path) and str(src).endswith(".onnx") else None
    return generate_inputs(spec, seed=seed, model_path=path).feeds


def _summary(array: Any) -> dict[str, Any]:
    if array is None:  # an empty optional output
        return {"value": None}
    if isinstance(array, list):  # a sequence output: a summary per tensor
        return {"sequence": [_summary(item) for item in array]}
    a = np.asarray(array)
    out: dict[str, Any] = {"shape": list(a.shape), "dtype": str(a.dtype)}
    if a.size and a.dtype.kind in "fiub":
        af = a.astype(np.float64)
        out.update(min=float(af.min()), max=float(af.max()), mean=float(af.mean()))
    return out


def _summary_text(o: Mapping[str, Any]) -> str:
    if "sequence" in o:
        return f"sequence of {len(o['sequence'])} [" + "; ".join(_summary_text(i) for i in o["sequence"]) + "]"
    if "dtype" not in o:
        return "empty optional (no value)"
    stats = f" min={o['min']:.4g} max={o['max']:.4g} mean={o['mean']:.4g}" if "mean" in o else ""
    return f"{o['dtype']}{o['shape']}{stats}"


def _run_one(vmm: Any, target: str, args: argparse.Namespace, constraints: Any, *, zoo_name: str | None) -> dict:
    from aivmm.models import load, zoo

    model_ref: Any = target
    if zoo_name is not None:
        model_ref = zoo.build(zoo_name, size="tiny")
    given: dict[str, Any] | None = None
    if args.input:  # the user's inputs win: the planner measures and checks accuracy on them too
        model_ref = load(model_ref)
        given = _parse_inputs(args.input, model_ref)
    deployed = vmm.deploy(
        model_ref,
        constraints,
        device=args.device,
        backend=args.backend,
        strict=args.strict,
        name=zoo_name or pathlib.Path(target).stem,
        measure=not args.no_measure,
        sample_inputs=given,
    )
    try:
        if given is not None:
            feeds: dict[str, Any] = given
        elif zoo_name is not None and not args.random:
            feeds = zoo.sample_inputs(zoo_name, size="tiny")
        else:
            feeds = random_inputs(deployed.spec)
        repeat = max(1, args.repeat)
        latencies = []
        outputs: dict[str, Any] = {}
        for _ in range(repeat):
            start = time.perf_counter()
            outputs = deployed.execute(feeds)
            latencies.append((time.perf_counter() - start) * 1e3)
        if args.output_dir is not None:
            args.output_dir.mkdir(parents=True, exist_ok=True)
            for name, value in outputs.items():
                if isinstance(value, list):  # a sequence: its tensors in order, arr_0, arr_1, ...
                    np.savez(args.output_dir / f"{name}.npz", *value)
                elif value is not None:  # an empty optional output has nothing to write
                    np.save(args.output_dir / f"{name}.npy", np.asarray(value))
        chosen = deployed.plan.chosen.config
        return {
            "model": deployed.name,
            "category": deployed.spec.primary_category.value,
            "device": chosen.device,
            "backend": chosen.backend,
            "precision": chosen.precision.value,
            "options": dict(chosen.options),
            "latency_ms": statistics.median(latencies),
            "runs": repeat,
            "fallbacks": list(deployed.plan.fallbacks),
            "inputs": {k: {"shape": list(np.shape(v)), "dtype": str(np.asarray(v).dtype)} for k, v in feeds.items()},
            "inputs_from": "--input"
            if given is not None
            else ("zoo sample" if zoo_name and not args.random else "generated"),
            "outputs": [{"name": k, **_summary(v)} for k, v in outputs.items()],
        }
    finally:
        deployed.close()


def run(args: argparse.Namespace) -> int:
    from aivmm.cli._constraint_flags import constraints_from_args
    from aivmm.vmm import VMM

    if args.repeat < 1:
        raise ConfigError(f"--repeat must be at least 1, got {args.repeat}")
    constraints = constraints_from_args(args)
    vmm = VMM(simulate=args.simulate) if args.simulate else VMM()
    reports: list[dict[str, Any]] = []
    try:
        if args.model is None:
            from aivmm.models import zoo

            if args.input:
                raise ConfigError("--input needs a MODEL")
            for name in zoo.names():
                reports.append(_run_one(vmm, name, args, constraints, zoo_name=name))
        else:
            from aivmm.models import zoo

            is_zoo = args.model in zoo.names() and not pathlib.Path(args.model).exists()
            reports.append(_run_one(vmm, args.model, args, constraints, zoo_name=args.model if is_zoo else None))
    finally:
        vmm.close()

    if args.json:
        json.dump(reports[0] if args.model else reports, sys.stdout, indent=2, default=str)
        print()
        return 0
    devices = ", ".join(f"{d.id} ({d.name})" for d in vmm.devices)
    print(f"devices: {devices}")
    for r in reports:
        opts = ",".join(f"{k}={v}" for k, v in r["options"].items())
        print(
            f"\n{r['model']} [{r['category']}] ran on {r['device']} with {r['backend']} {r['precision']}"
            + (f" ({opts})" if opts else "")
            + f": {r['latency_ms']:.3f} ms"
            + (f" (median of {r['runs']})" if r["runs"] > 1 else "")
        )
        for note in r["fallbacks"]:
            print(f"  fallback: {note}")
        for o in r["outputs"]:
            print(f"  {o['name']}: {_summary_text(o)}")
    if args.output_dir is not None:
        print(f"\noutputs written to {args.output_dir}/")
    return 0
