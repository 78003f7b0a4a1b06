"""A corpus of broken models made from real ones, deterministically.

Each :class:`Mutant` is one way a model file goes bad in the field: cut short by a failed copy,
bits flipped on disk, edited by a tool that got the graph wrong, exported for a newer runtime, or
shipped without its weights file. ``build(source, directory)`` writes every mutant of one real ONNX
file (an Optimum export, an ONNX file from a PyPI wheel) and says what a user must be told about it.
"""

from __future__ import annotations

import copy
import dataclasses
import pathlib
import random
from collections.abc import Callable, Iterator

import numpy as np
import onnx
from onnx import external_data_helper, helper, numpy_helper

from aivmm.errors import InfeasibleError, ModelLoadError, UnsupportedModelError

# What deploy may raise for a broken model: the file is not a valid model, an operator or opset no
# backend runs, or (the model is valid ONNX yet nothing can run it) no candidate is feasible.
DEPLOY_ERRORS = (ModelLoadError, UnsupportedModelError, InfeasibleError)


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str  # "<model>-<mutation>"
    path: pathlib.Path
    expected: tuple[type[Exception], ...]  # deploy must raise one of these; () = may deploy (valid ONNX)
    says: str = ""  # a regular expression the one-line message must match


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    yield graph
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("g"):
                yield from _graphs(a.g)
            for g in a.graphs:
                yield from _graphs(g)


def _body(m: onnx.ModelProto) -> onnx.GraphProto:
    """The graph holding most of the work (Silero VAD keeps its whole network inside an If branch)."""
    return max(_graphs(m.graph), key=lambda g: len(g.node))


def _weights(m: onnx.ModelProto) -> list[tuple[onnx.TensorProto, onnx.GraphProto, onnx.NodeProto | None]]:
    """Every weight with the graph holding it: initializers, and Constant nodes' values (node given)."""
    out: list[tuple[onnx.TensorProto, onnx.GraphProto, onnx.NodeProto | None]] = []
    for g in _graphs(m.graph):
        out += [(t, g, None) for t in g.initializer]
        out += [(a.t, g, n) for n in g.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    return sorted(out, key=lambda w: (-int(np.prod(w[0].dims)), w[0].name, w[2].name if w[2] else ""))


def _middle(g: onnx.GraphProto, want: Callable[[onnx.NodeProto], bool] = lambda n: True) -> onnx.NodeProto:
    nodes = [n for n in g.node if want(n)]
    return nodes[len(nodes) // 2]


def _set_dims(t: onnx.TensorProto, dims: list[int]) -> None:
    del t.dims[:]
    t.dims.extend(dims)


def _double_dim(m: onnx.ModelProto) -> str:
    t = _weights(m)[0][0]
    _set_dims(t, [t.dims[0] * 2, *t.dims[1:]])
    return r"holds \d+ bytes of data but its dims"


def _reverse_dims(m: onnx.ModelProto) -> str:
    # A MatMul/Gemm weight where there is one: ONNX inference proves those dims wrong at load.
    matmul = {i for g in _graphs(m.graph) for n in g.node if n.op_type in ("MatMul", "Gemm") for i in n.input}
    fits = [w[0] for w in _weights(m) if len(w[0].dims) >= 2 and w[0].dims[0] != w[0].dims[-1]]
    t = next((t for t in fits if t.name in matmul), fits[0])
    _set_dims(t, list(t.dims)[::-1])  # same byte count: only the graph's shapes disagree
    # ONNX inference proves some of these wrong (MatMul); others (Conv channels) only a run finds.
    return r"invalid ONNX model: node |no candidate"


def _drop_weight(m: onnx.ModelProto) -> str:
    t, g, node = _weights(m)[0]
    if node is not None:
        g.node.remove(node)
        return r"topologically sorted|invalid ONNX model"
    g.initializer.remove(t)
    if any(i.name == t.name for i in g.input):  # IR < 4 lists weights as inputs too: now a required feed
        return ""
    return rf"'{t.name}'"


def _dangling_input(m: onnx.ModelProto) -> str:
    node = _middle(_body(m), lambda n: len(n.input) > 0 and bool(n.input[0]))
    node.input[0] = "tensor_nobody_produces"
    return r"tensor_nobody_produces"


def _input_rank(m: onnx.ModelProto) -> str:
    m.graph.input[0].type.tensor_type.shape.dim.add().dim_value = 3
    # Inference cannot always prove it (a clash with a declared shape is merged leniently, as ONNX
    # Runtime does): then every candidate fails on the inputs and the planner says so.
    return r"invalid ONNX model|no candidate ran"


def _opset(version: int) -> Callable[[onnx.ModelProto], str]:
    def mutate(m: onnx.ModelProto) -> str:
        for entry in m.opset_import:
            if entry.domain in ("", "ai.onnx"):
                entry.version = version
        return r"opset|invalid ONNX model"

    return mutate


def _unknown_op(m: onnx.ModelProto) -> str:
    _middle(_body(m), lambda n: n.op_type != "Constant").op_type = "NoSuchOperator"
    return r"'NoSuchOperator' does not exist"


def _custom_op(m: onnx.ModelProto) -> str:
    _middle(_body(m), lambda n: n.op_type != "Constant").domain = "com.example.unshipped"
    m.opset_import.append(helper.make_opsetid("com.example.unshipped", 1))
    return r"com\.example\.unshipped"


def _weight_dtype(m: onnx.ModelProto) -> str:
    t = next(w[0] for w in _weights(m) if w[0].data_type == onnx.TensorProto.FLOAT and int(np.prod(w[0].dims)) > 1)
    t.data_type = onnx.TensorProto.INT32  # same item size: the bytes fit, the types do not
    return r"invalid ONNX model"


def _output_dtype(m: onnx.ModelProto) -> str:
    out = m.graph.output[0].type.tensor_type
    out.elem_type = onnx.TensorProto.STRING if out.elem_type != onnx.TensorProto.STRING else onnx.TensorProto.FLOAT
    return r"invalid ONNX model"


def _unsorted(m: onnx.ModelProto) -> str:
    g = _body(m)
    nodes = list(g.node)
    random.Random(7).shuffle(nodes)
    del g.node[:]
    g.node.extend(nodes)
    return r"topologically sorted"


def _duplicate_output(m: onnx.ModelProto) -> str:
    g = _body(m)
    a, b = g.node[len(g.node) // 2], g.node[len(g.node) // 2 + 1]
    b.output[0] = a.output[0]
    return r"single static assignment|topologically sorted"


STRUCTURAL: dict[str, tuple[Callable[[onnx.ModelProto], str], tuple[type[Exception], ...]]] = {
    "double-dim": (_double_dim, (ModelLoadError,)),
    "reverse-dims": (_reverse_dims, (ModelLoadError, InfeasibleError)),
    "drop-weight": (_drop_weight, (ModelLoadError,)),
    "dangling-input": (_dangling_input, (ModelLoadError,)),
    "input-rank": (_input_rank, (ModelLoadError, InfeasibleError)),
    "opset-99": (_opset(99), (UnsupportedModelError,)),
    "opset-1": (_opset(1), (ModelLoadError, UnsupportedModelError)),
    "unknown-op": (_unknown_op, (UnsupportedModelError,)),
    "custom-op": (_custom_op, (InfeasibleError, UnsupportedModelError)),
    "weight-dtype": (_weight_dtype, (ModelLoadError,)),
    "output-dtype": (_output_dtype, (ModelLoadError,)),
    "unsorted-nodes": (_unsorted, (ModelLoadError,)),
    "duplicate-output": (_duplicate_output, (ModelLoadError,)),
}
# Mutations made only of some sources. The extra input dim on BERT and reversed MatMul weights on
# PP-OCR (whose "?" dims hide the clash from inference) reach the planner, which measures every
# candidate before it can refuse: ~10-40 s of CI each. One such case (bert-input-rank) is enough.
ONLY_FOR: dict[str, tuple[str, ...]] = {"input-rank": ("bert", "silero-vad"), "reverse-dims": ("bert", "silero-vad")}
TRUNCATIONS = (0.0, 0.05, 0.5, 0.9, 0.999)
BIT_FLIP_SEEDS = range(1)


def build(source: pathlib.Path, directory: pathlib.Path, label: str) -> Iterator[Mutant]:
    """Write every mutant of ``source`` under ``directory``; same input, same bytes out."""
    directory.mkdir(parents=True, exist_ok=True)
    raw = source.read_bytes()
    base = onnx.load(str(source))
    for frac in TRUNCATIONS:
        path = directory / f"{label}-truncated-{frac:g}.onnx"
        path.write_bytes(raw[: int(len(raw) * frac)])
        yield Mutant(path.stem, path, (ModelLoadError,), r"truncated|not an ONNX model")
    for seed in BIT_FLIP_SEEDS:
        rng = random.Random(seed)
        flipped = bytearray(raw)
        for _ in range(16):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        path = directory / f"{label}-bitflip-{seed}.onnx"
        path.write_bytes(bytes(flipped))
        # Flips in weight bytes leave a valid model with other numbers: it may deploy.
        yield Mutant(path.stem, path, ())
    for name, (mutate, expected) in STRUCTURAL.items():
        if label not in ONLY_FOR.get(name, (label,)):
            continue
        model = copy.deepcopy(base)
        says = mutate(model)
        path = directory / f"{label}-{name}.onnx"
        path.write_bytes(model.SerializeToString())
        yield Mutant(path.stem, path, expected if says else (), says)
    yield from _external(base, directory / f"{label}-external", label)


def _external(base: onnx.ModelProto, directory: pathlib.Path, label: str) -> Iterator[Mutant]:
    """The weights in a file beside the model, then that file moved, cut short, or pointed outside."""
    directory.mkdir(parents=True, exist_ok=True)
    good = directory / "model.onnx"
    model = copy.deepcopy(base)
    blob = bytearray()
    # onnx's own save_as_external_data leaves tensors inside subgraphs (Silero's If branches) inline.
    for t, _, _ in _weights(model):
        data = numpy_helper.to_array(t).tobytes()  # raw or typed fields (PaddlePaddle writes float_data)
        if len(data) >= 1024:
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                t.ClearField(field)
            t.raw_data = data  # set_external_data asks for raw_data, then the bytes leave the model
            external_data_helper.set_external_data(t, "weights.bin", offset=len(blob), length=len(data))
            t.data_location = onnx.TensorProto.EXTERNAL
            t.ClearField("raw_data")
            blob += data
    assert blob, "the model has no weight to move out"
    (directory / "weights.bin").write_bytes(bytes(blob))
    onnx.save_model(model, str(good))
    weights = bytes(blob)
    (directory / "short.bin").write_bytes(weights[: len(weights) // 3])
    for name, location, says in (
        ("missing", "moved-away.bin", r"external-data file 'moved-away.bin' is missing"),
        ("short", "short.bin", r"'short.bin' is truncated"),
        ("escape", "../../../etc/passwd", r"invalid external-data location"),
        ("absolute", "/etc/passwd", r"invalid external-data location"),
    ):
        model = onnx.load(str(good), load_external_data=False)
        for t, _, _ in _weights(model):
            for entry in t.external_data:
                if entry.key == "location":
                    entry.value = location
        path = directory / f"{name}.onnx"
        onnx.save_model(model, str(path))
        yield Mutant(f"{label}-external-{name}", path, (ModelLoadError,), says)
