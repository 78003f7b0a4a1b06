"""Property tests: a damaged or hostile ONNX file never crashes ``aivmm.models.load``; it loads, or
it raises a documented aivmm error (ModelLoadError, UnsupportedModelError, ...) that says why."""

from __future__ import annotations

import os
import pathlib
import tempfile
from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aivmm.errors import AivmmError, ModelLoadError  # noqa: E402
from aivmm.models import ModelSpec, load  # noqa: E402

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _valid_model() -> onnx.ModelProto:
    """A small but representative model: weights, a conv, a symbolic batch, two outputs."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(np.zeros(4, np.float32), "b")
    fc = numpy_helper.from_array(rng.standard_normal((4, 2)).astype(np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "fc"], ["y"], name="fc"),
        helper.make_node("Softmax", ["y"], ["p"], axis=-1, name="softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "fuzz",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
            helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2]),
        ],
        initializer=[w, b, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


VALID = _valid_model()
VALID_BYTES = VALID.SerializeToString()


@pytest.fixture(scope="module")
def scratch() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="aivmm-fuzz-") as d:
        yield pathlib.Path(d)


def _load_bytes(directory: pathlib.Path, data: bytes) -> ModelSpec | None:
    path = directory / "model.onnx"
    path.write_bytes(data)
    try:
        return load(path)
    except AivmmError:
        return None  # documented: every aivmm error derives from AivmmError
    finally:
        os.unlink(path)


def test_the_valid_model_loads(scratch: pathlib.Path) -> None:
    spec = _load_bytes(scratch, VALID_BYTES)
    assert spec is not None
    assert [t.name for t in spec.inputs] == ["x"] and [t.name for t in spec.outputs] == ["y", "p"]


# -- byte-level damage: what a truncated download or a flipped bit leaves -------------------
@FAST
@given(st.integers(min_value=0, max_value=len(VALID_BYTES) - 1))
@example(0)
@example(1)
def test_truncated_file(scratch: pathlib.Path, cut: int) -> None:
    _load_bytes(scratch, VALID_BYTES[:cut])


@FAST
@given(
    st.lists(
        st.tuples(st.integers(min_value=0, max_value=len(VALID_BYTES) - 1), st.integers(0, 255)), min_size=1, max_size=8
    )
)
def test_overwritten_bytes(scratch: pathlib.Path, edits: list[tuple[int, int]]) -> None:
    data = bytearray(VALID_BYTES)
    for pos, value in edits:
        data[pos] = value
    _load_bytes(scratch, bytes(data))


@FAST
@given(st.integers(min_value=0, max_value=len(VALID_BYTES)), st.binary(min_size=1, max_size=64))
def test_inserted_bytes(scratch: pathlib.Path, pos: int, junk: bytes) -> None:
    _load_bytes(scratch, VALID_BYTES[:pos] + junk + VALID_BYTES[pos:])


@FAST
@given(st.binary(max_size=512))
@example(b"")
@example(b"\x08\x07")  # ir_version 7 and nothing else
@example(b"PK\x03\x04")  # a zip (a .pt file) renamed .onnx
def test_random_bytes(scratch: pathlib.Path, data: bytes) -> None:
    spec = _load_bytes(scratch, data)
    assert spec is None or spec.outputs  # anything accepted has a signature


def test_empty_file_is_a_load_error(scratch: pathlib.Path) -> None:
    path = scratch / "empty.onnx"
    path.write_bytes(b"")
    with pytest.raises(ModelLoadError, match=r"empty\.onnx"):
        load(path)


# -- structural damage: a well-formed protobuf that is a wrong model -------------------------
def _set_elem_type(m: onnx.ModelProto, v: int) -> None:
    m.graph.input[0].type.tensor_type.elem_type = v


def _set_dim(m: onnx.ModelProto, v: int) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[1].dim_value = v


def _set_opset(m: onnx.ModelProto, v: int) -> None:
    m.opset_import[0].version = v


def _set_ir(m: onnx.ModelProto, v: int) -> None:
    m.ir_version = v


def _drop_initializer(m: onnx.ModelProto, v: int) -> None:
    del m.graph.initializer[v % len(m.graph.initializer)]


def _rewire(m: onnx.ModelProto, v: int) -> None:
    node = m.graph.node[v % len(m.graph.node)]
    node.input[0] = f"missing_{v}"


def _rename_op(m: onnx.ModelProto, v: int) -> None:
    m.graph.node[v % len(m.graph.node)].op_type = ["Conv2D", "", "relu", "Loop", "Foo"][v % 5]


def _custom_domain(m: onnx.ModelProto, v: int) -> None:
    m.graph.node[v % len(m.graph.node)].domain = "com.example"


def _cycle(m: onnx.ModelProto, v: int) -> None:
    m.graph.node[0].input[0] = m.graph.node[-1].output[0]


def _weight_dims(m: onnx.ModelProto, v: int) -> None:
    m.graph.initializer[0].dims[0] = v  # raw_data no longer matches the dims


def _external(m: onnx.ModelProto, v: int) -> None:
    t = m.graph.initializer[v % len(m.graph.initializer)]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    location = ["../../../etc/passwd", "/etc/passwd", "weights.bin", "", "w.bin"][v % 5]
    t.external_data.add(key="location", value=location)
    t.external_data.add(key="offset", value=str(v))


def _no_outputs(m: onnx.ModelProto, v: int) -> None:
    del m.graph.output[:]


def _duplicate_output(m: onnx.ModelProto, v: int) -> None:
    m.graph.node[v % len(m.graph.node)].output[0] = "r"


def _attribute(m: onnx.ModelProto, v: int) -> None:
    m.graph.node[0].attribute[0].ints[:] = [v, -v]


MUTATIONS: list[Callable[[onnx.ModelProto, int], None]] = [
    _set_elem_type,
    _set_dim,
    _set_opset,
    _set_ir,
    _drop_initializer,
    _rewire,
    _rename_op,
    _custom_domain,
    _cycle,
    _weight_dims,
    _external,
    _no_outputs,
    _duplicate_output,
    _attribute,
]


@FAST
@given(
    st.lists(
        st.tuples(st.sampled_from(MUTATIONS), st.integers(min_value=-(2**31), max_value=2**31)), min_size=1, max_size=3
    )
)
def test_mutated_model(
    scratch: pathlib.Path, mutations: list[tuple[Callable[[onnx.ModelProto, int], None], int]]
) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(VALID)
    for mutate, value in mutations:
        try:
            mutate(model, value)
        except (ValueError, IndexError, TypeError):
            return  # the mutation itself is not representable in the protobuf
    _load_bytes(scratch, model.SerializeToString())


@pytest.mark.parametrize("location", ["../../../etc/passwd", "/etc/passwd"])
def test_external_data_outside_the_model_directory_is_refused(scratch: pathlib.Path, location: str) -> None:
    model = onnx.ModelProto()
    model.CopyFrom(VALID)
    t = model.graph.initializer[0]
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value=location)
    path = scratch / "escape.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="external-data"):
        load(path)
