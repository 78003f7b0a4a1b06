"""Hypothesis: mutated zoo models (bytes and graph structure) and arbitrary shapes only ever load or
raise the documented errors; nothing else escapes ``aivmm.models.load``."""

from __future__ import annotations

import functools
import pathlib
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")

from aivmm.errors import ConfigError, InputError, ModelLoadError, UnsupportedModelError  # noqa: E402
from aivmm.models import ModelSpec, load, zoo  # noqa: E402

DOCUMENTED = (ModelLoadError, UnsupportedModelError, InputError, ConfigError)
MODELS = ("resnet50", "bert-base", "lstm", "fno", "dlrm")
SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)


@functools.cache
def _bytes(name: str) -> bytes:
    return bytes(zoo.proto(name).SerializeToString())


@pytest.fixture(scope="module")
def scratch() -> Iterator[pathlib.Path]:
    with tempfile.TemporaryDirectory(prefix="aivmm-models-fuzz-") as d:
        yield pathlib.Path(d)


def _load(directory: pathlib.Path, data: bytes, **kwargs: object) -> ModelSpec | None:
    path = directory / "m.onnx"
    path.write_bytes(data)
    try:
        return load(path, **kwargs)  # type: ignore[arg-type]
    except DOCUMENTED as exc:
        assert str(exc), "an error must say what is wrong"
        return None


@SETTINGS
@given(name=st.sampled_from(MODELS), data=st.data())
def test_flipped_bytes(scratch: pathlib.Path, name: str, data: st.DataObject) -> None:
    raw = bytearray(_bytes(name))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _load(scratch, bytes(raw))


@SETTINGS
@given(name=st.sampled_from(MODELS), cut=st.floats(0.0, 1.0, exclude_max=True), junk=st.binary(max_size=64))
def test_truncated_and_spliced(scratch: pathlib.Path, name: str, cut: float, junk: bytes) -> None:
    raw = _bytes(name)
    at = int(cut * len(raw))
    assert _load(scratch, raw[:at]) is None or at > 0
    _load(scratch, raw[:at] + junk + raw[at:])


MUTATIONS = ("drop_node", "op_type", "input_dim", "drop_initializer", "opset", "rename_input", "attribute", "domain")


@SETTINGS
@given(name=st.sampled_from(MODELS), mutation=st.sampled_from(MUTATIONS), data=st.data())
def test_structural_mutations(scratch: pathlib.Path, name: str, mutation: str, data: st.DataObject) -> None:
    model = zoo.proto(name)
    graph = model.graph
    node = graph.node[data.draw(st.integers(0, len(graph.node) - 1))]
    if mutation == "drop_node":
        graph.node.remove(node)
    elif mutation == "op_type":
        node.op_type = data.draw(st.sampled_from(["Conv", "MatMul", "Softmax", "LSTM", "Nope", "", "If", "DFT"]))
    elif mutation == "input_dim":
        dims = graph.input[0].type.tensor_type.shape.dim
        dim = dims[data.draw(st.integers(0, len(dims) - 1))]
        dim.dim_value = data.draw(st.integers(-3, 1 << 40))
    elif mutation == "drop_initializer" and graph.initializer:
        graph.initializer.remove(graph.initializer[data.draw(st.integers(0, len(graph.initializer) - 1))])
    elif mutation == "opset":
        model.opset_import[0].version = data.draw(st.integers(-1, 40))
    elif mutation == "rename_input" and node.input:
        node.input[data.draw(st.integers(0, len(node.input) - 1))] = data.draw(st.sampled_from(["", "ghost", "x"]))
    elif mutation == "attribute" and node.attribute:
        attr = node.attribute[data.draw(st.integers(0, len(node.attribute) - 1))]
        if attr.ints:
            attr.ints[0] = data.draw(st.integers(-5, 1 << 20))
        else:
            attr.i = data.draw(st.integers(-5, 1 << 20))
    elif mutation == "domain":
        node.domain = data.draw(st.sampled_from(["com.microsoft", "custom", "ai.onnx.ml"]))
    _load(scratch, model.SerializeToString())


@SETTINGS
@given(batch=st.integers(-2, 64), seq=st.integers(-2, 40), rank=st.integers(0, 3))
def test_arbitrary_shapes(scratch: pathlib.Path, batch: int, seq: int, rank: int) -> None:
    shape = (batch, seq, 1)[:rank]
    spec = _load(scratch, _bytes("bert-base"), shapes={"input_ids": shape})
    if spec is not None:
        assert spec.shapes_used["input_ids"] == spec.shapes_used["attention_mask"] == (batch, 16)
