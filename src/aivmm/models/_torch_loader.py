"""PyTorch front end: an ``nn.Module`` with example inputs, or a ``torch.export.ExportedProgram``.

The signature comes from the example inputs (a module) or the program's placeholders (an exported
program, whose dynamic dims stay symbolic); parameters from the module; FLOPs from one run under
``torch.utils.flop_counter.FlopCounterMode``, which counts matrix products, convolutions and
attention (elementwise ops are not counted: they are a few percent of a network's FLOPs).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping, Sequence
from typing import Any

from aivmm.dtypes import DType
from aivmm.errors import ConfigError, InputError, ModelLoadError
from aivmm.models import _shapes
from aivmm.models._categorize import categorize
from aivmm.models._spec import Dim, ModelFormat, ModelSpec, TensorSpec
from aivmm.models._torch_trace import facts, graph_ops, run


def _dtype(t: Any, what: str) -> DType:
    try:
        return DType(str(t.dtype).removeprefix("torch."))
    except ValueError:
        raise InputError(f"{what}: dtype {t.dtype} is not supported") from None


def _arguments(example_inputs: Any) -> tuple[tuple[Any, ...], dict[str, Any]]:
    import torch

    args: tuple[Any, ...]
    if isinstance(example_inputs, torch.Tensor):
        args, kwargs = (example_inputs,), {}
    elif isinstance(example_inputs, Mapping):
        args, kwargs = (), dict(example_inputs)
    elif isinstance(example_inputs, list | tuple):
        args, kwargs = tuple(example_inputs), {}
    else:
        raise ConfigError(
            f"example_inputs must be a tensor, a tuple of tensors or a dict of tensors, not "
            f"{type(example_inputs).__name__}"
        )
    for key, value in [*enumerate(args), *kwargs.items()]:
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"example input {key!r} is a {type(value).__name__}; expected a torch.Tensor")
    return args, kwargs


def _names(forward: Any, count: int) -> list[str]:
    try:
        params = [
            p
            for p in inspect.signature(forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        ]
    except (TypeError, ValueError):
        params = []
    return [params[i].name if i < len(params) else f"input_{i}" for i in range(count)]


def _outputs(out: Any, batch: int | None) -> tuple[TensorSpec, ...]:
    import torch

    if isinstance(out, torch.Tensor):
        items: list[tuple[str, Any]] = [("output", out)]
    elif isinstance(out, Mapping):
        items = [(str(k), v) for k, v in out.items()]
    elif isinstance(out, list | tuple):
        items = [(f"output_{i}", v) for i, v in enumerate(out)]
    else:
        items = []
    specs = []
    for name, value in items:
        if isinstance(value, torch.Tensor):
            dims: tuple[Dim, ...] = tuple(value.shape)
            if batch is not None and dims and dims[0] == batch:
                dims = ("batch", *dims[1:])
            specs.append(TensorSpec(name, _dtype(value, f"output {name!r}"), dims))
    return tuple(specs)


def _resized(value: Any, shape: tuple[int, ...]) -> Any:
    """An input of ``shape`` like ``value``: values repeated from it, so ids stay valid indices."""
    import torch

    if tuple(value.shape) == shape:
        return value
    flat = value.reshape(-1)
    n = 1
    for d in shape:
        n *= d
    return (
        flat.repeat((n + flat.numel() - 1) // max(flat.numel(), 1))[:n].reshape(shape).to(value.dtype)
        if flat.numel()
        else torch.zeros(shape, dtype=value.dtype)
    )


def load_torch(
    obj: Any, *, shapes: Mapping[str, Sequence[int]] | None, example_inputs: Any, name: str | None
) -> ModelSpec:
    import torch
    from torch.export import ExportedProgram

    warnings: list[str] = []
    if isinstance(obj, ExportedProgram):
        fmt = ModelFormat.TORCH_EXPORTED
        module: torch.nn.Module = obj.module()
        if example_inputs is None:
            example_inputs = _program_examples(obj)
        args, kwargs = _arguments(example_inputs)
        names = list(obj.graph_signature.user_inputs)[: len(args)] + list(kwargs)
        declared = _program_dims(obj)
        parameters = [obj.state_dict[k] for k in obj.graph_signature.parameters if k in obj.state_dict]
        buffers = [obj.state_dict[k] for k in obj.graph_signature.buffers if k in obj.state_dict]
        buffers += [v for v in obj.constants.values() if isinstance(v, torch.Tensor)]
        inspected: Any = module
        program_ops: list[str] | None = graph_ops(obj)
    elif isinstance(obj, torch.nn.Module):
        fmt = ModelFormat.TORCH_MODULE
        if example_inputs is None:
            raise ConfigError("a torch.nn.Module needs example_inputs= (a tensor, a tuple or a dict of tensors)")
        module = obj
        args, kwargs = _arguments(example_inputs)
        names = _names(obj.forward, len(args)) + list(kwargs)
        declared = {}
        unique = {id(p): p for p in obj.parameters()}
        parameters = list(unique.values())
        buffers = list({id(b): b for b in obj.buffers()}.values())
        inspected = obj
        program_ops = None
        warnings.append("batch dimension assumed at dim 0 of every input (a module declares no dynamic dims)")
    else:  # pragma: no cover - load() dispatches only torch objects here
        raise ModelLoadError(f"not a torch model: {type(obj).__name__}")

    values = list(args) + list(kwargs.values())
    inputs = tuple(
        TensorSpec(
            n, _dtype(v, f"input {n!r}"), declared.get(n) or (("batch", *tuple(v.shape)[1:]) if v.dim() >= 1 else ())
        )
        for n, v in zip(names, values)
    )
    signature = "inputs (" + "; ".join(t.describe() for t in inputs) + ")"
    given = dict(shapes or {})
    for spec, value in zip(inputs, values):
        given.setdefault(spec.name, tuple(value.shape))  # the examples bind what shapes= leaves open
    binding = _shapes.bind(inputs, given, signature)
    bound = [_resized(v, binding.shapes[n]) for n, v in zip(names, values)]
    run_args, run_kwargs = tuple(bound[: len(args)]), dict(zip(kwargs, bound[len(args) :]))
    # Analyse in inference mode (dropout off, batch-norm statistics frozen); an exported program's
    # module refuses eval() and is already fixed in the mode it was exported in.
    was_training = fmt is ModelFormat.TORCH_MODULE and module.training
    if fmt is ModelFormat.TORCH_MODULE:
        module.eval()
    try:
        trace = run(module, run_args, run_kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"the model failed on the example inputs ({signature}): {exc}") from exc
    finally:
        if was_training:
            module.train()
    batch = bound[0].shape[0] if bound and bound[0].dim() >= 1 else None
    params = sum(p.numel() for p in parameters)
    param_bytes = sum(p.numel() * p.element_size() for p in parameters + buffers)
    histogram: dict[str, int] = {}
    for op in trace.ops:
        histogram[op] = histogram.get(op, 0) + 1
    digest = hashlib.sha256()
    for p in parameters + buffers:  # a content hash of the weights: detects a model changed in place
        digest.update(p.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    batch_dim = 0 if inputs and all(t.rank >= 1 and not isinstance(t.shape[0], int) for t in inputs) else None
    warnings.append("peak activation memory is estimated at leaf-module boundaries")
    return ModelSpec(
        name=name or type(obj).__name__,
        format=fmt,
        inputs=inputs,
        outputs=_outputs(trace.outputs, batch),
        parameters=params,
        parameter_bytes=param_bytes,
        flops=trace.flops,
        macs=trace.flops // 2,
        peak_activation_bytes=trace.peak_bytes,
        operators=dict(sorted(histogram.items(), key=lambda kv: (-kv[1], kv[0]))),
        per_operator_flops=dict(sorted(trace.per_op_flops.items(), key=lambda kv: -kv[1])),
        categories=categorize(facts(trace, inspected, dict(zip(names, bound)), program_ops)),
        shapes_used={n: tuple(int(d) for d in v.shape) for n, v in zip(names, bound)},
        source=obj,
        sha256=digest.hexdigest(),
        size_bytes=param_bytes,
        batch_dim=batch_dim,
        warnings=tuple(warnings),
    )


def _program_dims(program: Any) -> dict[str, tuple[Dim, ...]]:
    """Input dims of an exported program: ints where static, the symbol's name where dynamic."""
    dims: dict[str, tuple[Dim, ...]] = {}
    user = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in user and "val" in node.meta:
            dims[node.name] = tuple(d if isinstance(d, int) else str(d) for d in node.meta["val"].shape)
    return dims


def _program_examples(program: Any) -> Any:
    examples = getattr(program, "example_inputs", None)
    if examples:
        args, kwargs = examples
        return dict(kwargs) if kwargs and not args else tuple(args)
    raise ConfigError("this exported program carries no example inputs: pass example_inputs=")
