"""Running a PyTorch model once on example inputs to observe it: FLOPs (torch's FlopCounterMode),
the sequence of ATen ops (a dispatch-mode recorder) and activation sizes (leaf-module hooks)."""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from aivmm.models._categorize import Facts

ATTENTION_MATMULS = frozenset({"aten.bmm", "aten.matmul", "aten.mm", "aten.baddbmm"})
SOFTMAX = frozenset({"aten._softmax", "aten.softmax", "aten._safe_softmax"})
RECURRENT = {"aten.lstm": "LSTM", "aten.gru": "GRU", "aten.rnn_tanh": "RNN", "aten.rnn_relu": "RNN"}
DENSE = frozenset({"aten.addmm", "aten.linear", "aten.mm"})


@dataclasses.dataclass
class Trace:
    flops: int
    per_op_flops: dict[str, int]
    ops: list[str]  # ATen op packets in execution order
    causal_sdpa: int  # scaled_dot_product_attention calls with is_causal=True
    peak_bytes: int
    outputs: Any


def run(model: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Trace:
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    class Recorder(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.ops: list[str] = []
            self.causal = 0

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            name = str(func.overloadpacket)
            self.ops.append(name)
            if "scaled_dot_product" in name and (kwargs or {}).get("is_causal", False):
                self.causal += 1
            return func(*args, **(kwargs or {}))

    sizes: list[int] = []

    def hook(_module: Any, inputs: Any, output: Any) -> None:
        sizes.append(_bytes(inputs) + _bytes(output))

    handles = []
    if isinstance(model, torch.nn.Module):
        handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    recorder = Recorder()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter, recorder:
            outputs = model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    per_op = {str(k): int(v) for k, v in counter.get_flop_counts().get("Global", {}).items()}
    inputs = _bytes(args) + _bytes(kwargs)
    return Trace(
        int(counter.get_total_flops()),
        per_op,
        recorder.ops,
        recorder.causal,
        inputs + max(sizes, default=_bytes(outputs)),
        outputs,
    )


def _bytes(obj: Any) -> int:
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_bytes(v) for v in obj)
    return 0


def graph_ops(program: Any) -> list[str]:
    """The ATen op packets an exported program's graph calls (``aten.gru.input`` -> ``aten.gru``):
    at dispatch level recurrent ops are already decomposed, in the graph they are still whole."""
    ops = []
    for node in program.graph.nodes:
        if node.op == "call_function":
            parts = str(node.target).split(".")
            ops.append(".".join(parts[:2]) if parts[0] == "aten" else str(node.target))
    return ops


_RECURRENT_MODULES = {"LSTM": "LSTM", "GRU": "GRU", "RNN": "RNN"}


def facts(trace: Trace, module: Any, inputs: dict[str, Any], program_ops: list[str] | None = None) -> Facts:
    """Structural facts from the op sequence, the module tree (or the exported graph) and the inputs."""
    import torch

    f = Facts()
    counts = collections.Counter(trace.ops)
    structural = collections.Counter(program_ops or ())
    f.top_ops = [op for op, _ in counts.most_common()]
    f.convolutions = sum(n for op, n in counts.items() if "conv" in op and "convert" not in op and "backward" not in op)
    for op, kind in RECURRENT.items():
        if structural.get(op):
            f.recurrent_ops[kind] = f.recurrent_ops.get(kind, 0) + structural[op]
    if isinstance(module, torch.nn.Module) and not program_ops:
        for sub in module.modules():
            module_kind = _RECURRENT_MODULES.get(type(sub).__name__) if isinstance(sub, torch.nn.RNNBase) else None
            if module_kind:
                f.recurrent_ops[module_kind] = f.recurrent_ops.get(module_kind, 0) + 1
    f.fused_attention = sum(n for op, n in counts.items() if "scaled_dot_product" in op)
    for i, op in enumerate(trace.ops):
        if (
            op in SOFTMAX
            and any(o in ATTENTION_MATMULS for o in trace.ops[max(0, i - 8) : i])
            and any(o in ATTENTION_MATMULS for o in trace.ops[i + 1 : i + 9])
        ):
            f.attention_blocks += 1
    f.layer_norms = counts.get("aten.native_layer_norm", 0) + counts.get("aten.layer_norm", 0)
    f.dense_layers = sum(counts.get(op, 0) for op in DENSE)
    f.spectral_ops = {op: n for op, n in counts.items() if "fft" in op}
    f.periodic_activations = counts.get("aten.sin", 0) + counts.get("aten.cos", 0)
    f.tanh_activations = counts.get("aten.tanh", 0)
    if trace.causal_sdpa:
        f.causal_evidence.append(f"{trace.causal_sdpa} scaled_dot_product_attention call(s) with is_causal=True")
    if counts.get("aten.tril") or counts.get("aten.triu"):
        f.causal_evidence.append("tril/triu builds a triangular (causal) mask")
    if isinstance(module, torch.nn.Module):
        for name, buf in module.named_buffers():
            if _triangular(buf):
                f.causal_evidence.append(f"triangular buffer {name!r} {list(buf.shape)}: a causal mask")
                break
        for name, sub in module.named_modules():
            if isinstance(sub, torch.nn.Embedding | torch.nn.EmbeddingBag) and sub.num_embeddings >= 16:
                f.embedding_tables[name or "embedding"] = int(sub.num_embeddings)
                f.embedding_bags += isinstance(sub, torch.nn.EmbeddingBag)
            if isinstance(sub, torch.nn.MultiheadAttention) and not f.attention_blocks:
                f.fused_attention += 1
    elif counts.get("aten.embedding"):
        f.embedding_tables["embedding"] = counts["aten.embedding"]
    f.embedding_bags += counts.get("aten._embedding_bag", 0) if not f.embedding_bags else 0
    for name, value in inputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        if not value.is_floating_point() and value.dim() == 2 and value.shape[1] != 1:
            f.token_inputs.append(name)
        if not value.is_floating_point() and value.dtype != torch.bool:
            f.index_inputs.add(name)
        if value.is_floating_point():
            f.float_inputs += 1
            if value.dim() in (2, 3) and value.shape[-1] <= 4:
                f.coordinate_inputs.append(name)
    if not f.index_inputs:
        f.embedding_tables.clear()  # tables looked up by computed indices are not categorical features
    return f


def _triangular(t: Any) -> bool:
    import torch

    if t.dim() < 2 or t.shape[-1] != t.shape[-2] or t.shape[-1] < 2 or t.numel() > (1 << 22):
        return False
    a = t.reshape(-1, t.shape[-2], t.shape[-1])[0]
    n = a.shape[0]
    upper = a[torch.triu(torch.ones(n, n, dtype=torch.bool), 1)]
    lower = a[torch.tril(torch.ones(n, n, dtype=torch.bool))]
    return bool((upper == upper[0]).all() and (lower == lower[0]).all() and upper[0] != lower[0])
