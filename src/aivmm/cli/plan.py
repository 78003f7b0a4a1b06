"""``aivmm plan MODEL``: plan a model's placement and explain the choice (``--json`` for the data)."""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Any

from aivmm.errors import ConfigError, ModelLoadError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from aivmm.cli._constraint_flags import add_constraint_arguments
    from aivmm.cli.run import add_verbose_argument

    parser.add_argument("model", help="an ONNX file, a zoo name (aivmm zoo) or a decoder LLM directory")
    parser.add_argument("--size", choices=("tiny", "full"), default="tiny", help="zoo model size (default tiny)")
    parser.add_argument("--json", action="store_true", help="print the plan as JSON")
    parser.add_argument("--device", help="pin a device id (cpu:0, nvidia:0, ...)")
    parser.add_argument("--backend", help="pin a backend (onnxruntime, openvino, torch, ...)")
    parser.add_argument("--strict", action="store_true", help="fail instead of falling back from a pin")
    parser.add_argument("--no-measure", action="store_true", help="plan from the cost model only")
    parser.add_argument("--budget-s", type=float, help="total profiling time budget in seconds")
    parser.add_argument("--top-k", type=int, help="how many candidates to measure (default 8)")
    parser.add_argument("--no-cache", action="store_true", help="plan again even when a cached plan exists")
    parser.add_argument("--simulate", help="add simulated devices from a JSON spec (as AIVMM_SIMULATE)")
    parser.add_argument(
        "--input",
        action="append",
        default=[],
        metavar="FILE.npz|NAME=FILE.npy",
        help="measure with these inputs instead of generated ones (as aivmm run --input)",
    )
    add_verbose_argument(parser)
    add_constraint_arguments(parser)


def _resolve_model(ref: str, size: str) -> tuple[pathlib.Path, dict[str, Any] | None]:
    """A path, or a zoo model built on demand (with its sample inputs)."""
    path = pathlib.Path(ref)
    if path.exists():
        if not path.is_file():
            raise ModelLoadError(f"{ref} is not a file")
        return path, None
    try:
        from aivmm.models import zoo
    except ImportError:
        zoo = None  # type: ignore[assignment]
    names = list(zoo.names()) if zoo is not None and hasattr(zoo, "names") else []
    if ref in names:
        return pathlib.Path(zoo.build(ref, size=size)), dict(zoo.sample_inputs(ref, size=size))
    hint = f"; zoo models: {', '.join(names)}" if names else ""
    raise ConfigError(f"no such file or zoo model: {ref!r}{hint}")


def run(args: argparse.Namespace) -> int:
    from aivmm.cli._constraint_flags import constraints_from_args
    from aivmm.cli.run import _parse_inputs
    from aivmm.devices import discover
    from aivmm.models import load
    from aivmm.planner import plan

    constraints = constraints_from_args(args)  # bad flags fail before anything loads
    if _is_llm(args.model):
        return _plan_llm(args)
    path, zoo_inputs = _resolve_model(args.model, args.size)
    spec = load(path)
    given = _parse_inputs(args.input, spec) if args.input else None
    if given is None and constraints.batch_size == 1:
        given = zoo_inputs
    devices = discover(args.simulate) if args.simulate else discover()
    result = plan(
        spec,
        devices,
        constraints,
        device=args.device,
        backend=args.backend,
        strict=args.strict,
        measure=not args.no_measure,
        sample_inputs=given,
        cache=not args.no_cache,
        budget_s=args.budget_s,
        top_k=args.top_k,
    )
    if args.json:
        json.dump(result.to_json(), sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    else:
        print(result.explain())
    return 0


def _is_llm(ref: str) -> bool:
    from aivmm.llm import is_llm_source

    return pathlib.Path(ref).exists() and is_llm_source(ref)


def _plan_llm(args: argparse.Namespace) -> int:
    """A decoder with a KV cache: the generation plan (what ``deploy`` would choose and why)."""
    from aivmm.devices import discover
    from aivmm.llm import plan_llm
    from aivmm.options import DeployOptions

    devices = discover(args.simulate) if args.simulate else discover()
    options = DeployOptions(device=args.device, backend=args.backend, strict=args.strict, measure=not args.no_measure)
    got = plan_llm(args.model, devices, options)
    kv, gplan, notes = got["kv"], got["plan"], got["notes"]
    if args.json:
        data = {"model": got["model"], "kind": "llm", "kv_cache": kv.to_json(), **gplan.to_json(), "notes": notes}
        json.dump(data, sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
        return 0
    print(f"{got['model']}: decoder LLM, kv cache {kv.describe()}")
    ref = f"reference generation: {gplan.prompt_tokens}-token prompt + {gplan.new_tokens} new tokens"
    print(ref + ("" if gplan.measured else " (not measured)"))
    print(gplan.explain())
    for note in notes:
        print(f"note: {note}")
    return 0
