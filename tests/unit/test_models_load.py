"""Loading ONNX files: signature, hashing, external data (never read), and every bad input
answered by a documented aivmm error that names the problem."""

from __future__ import annotations

import hashlib
import os
import pathlib
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from aivmm.dtypes import DType  # noqa: E402
from aivmm.errors import ConfigError, InputError, ModelLoadError, UnsupportedModelError  # noqa: E402
from aivmm.models import ModelFormat, load  # noqa: E402

F = TensorProto.FLOAT


def _conv_model(channels: object = 3, opset: int = 17) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    fc = numpy_helper.from_array(np.ones((8, 4), np.float32), "fc")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["c"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "fc"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", F, ["batch", channels, 16, 16])],
        [helper.make_tensor_value_info("y", F, ["batch", 4])],
        [w, fc],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


@pytest.fixture
def model_path(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(), path)
    return path


def test_signature_and_figures(model_path: pathlib.Path) -> None:
    spec = load(model_path)
    assert spec.format is ModelFormat.ONNX and spec.name == "conv" and spec.source == model_path
    assert [t.describe() for t in spec.inputs] == ["x: float32[batch, 3, 16, 16]"]
    assert spec.outputs[0].dtype is DType.FLOAT32 and spec.outputs[0].shape == ("batch", 4)
    assert spec.parameters == 8 * 27 + 32 and spec.parameter_bytes == 4 * spec.parameters
    assert spec.batch_dim == 0
    assert spec.opsets == {"ai.onnx": 17}
    assert spec.sha256 == hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert spec.size_bytes == model_path.stat().st_size
    assert load(model_path, name="mine").name == "mine"


def test_hash_detects_a_changed_file(model_path: pathlib.Path) -> None:
    before = load(model_path).sha256
    model = _conv_model()
    model.graph.initializer[1].raw_data = np.full((8, 4), 2, np.float32).tobytes()
    onnx.save(model, model_path)
    assert load(model_path).sha256 != before


def test_external_data_is_located_hashed_and_not_loaded(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(
        _conv_model(),
        path,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.bin",
        size_threshold=0,
    )
    spec = load(path)
    assert spec.external_data
    assert spec.parameters == 8 * 27 + 32 and spec.parameter_bytes == 4 * spec.parameters
    both = hashlib.sha256(path.read_bytes() + (tmp_path / "ext.bin").read_bytes()).hexdigest()
    assert spec.sha256 == both
    assert spec.size_bytes == path.stat().st_size + (tmp_path / "ext.bin").stat().st_size
    data = bytearray((tmp_path / "ext.bin").read_bytes())
    data[0] ^= 0xFF
    (tmp_path / "ext.bin").write_bytes(bytes(data))
    assert load(path).sha256 != spec.sha256  # a change in the weights alone is detected


def test_model_over_2gb_is_analysed_without_reading_weights(tmp_path: pathlib.Path) -> None:
    """A 2.2 GB weight in a sparse external file: figures come from the tensor header."""
    rows, cols = 550_000, 1024  # 563M floats = 2.25 GB
    weight = TensorProto(name="emb", data_type=F, dims=[rows, cols], data_location=TensorProto.EXTERNAL)
    for key, value in (("location", "big.bin"), ("offset", "0"), ("length", str(rows * cols * 4))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    node = helper.make_node("Gather", ["emb", "ids"], ["y"])
    graph = helper.make_graph(
        [node],
        "big",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 8])],
        [helper.make_tensor_value_info("y", F, ["batch", 8, cols])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    with open(tmp_path / "big.bin", "wb") as fh:
        fh.truncate(rows * cols * 4)  # sparse: no disk blocks, reads as zeros
    tracemalloc.start()
    try:
        spec = load(path, shapes={"ids": (2, 8)})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert spec.parameters == rows * cols and spec.parameter_bytes == rows * cols * 4 > 2**31
    assert spec.external_data and spec.size_bytes > 2**31
    assert peak < 64 * 2**20, f"loading allocated {peak} bytes: weights were read into memory"
    assert any("fingerprint" in w for w in spec.warnings)
    assert spec.peak_activation_bytes == 2 * 8 * 8 + 2 * 8 * cols * 4


def test_large_external_data_is_fingerprinted(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from aivmm.models import _onnx_file

    path = tmp_path / "ext.onnx"
    onnx.save(_conv_model(), path, save_as_external_data=True, location="w.bin", size_threshold=0)
    monkeypatch.setattr(_onnx_file, "FULL_HASH_LIMIT", 100)
    first = load(path)
    assert any("fingerprint" in w for w in first.warnings)
    assert load(path).sha256 == first.sha256
    data = bytearray((tmp_path / "w.bin").read_bytes())
    data[-1] ^= 0xFF  # the last block is always sampled
    (tmp_path / "w.bin").write_bytes(bytes(data))
    assert load(path).sha256 != first.sha256


def test_missing_external_file_is_named(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(_conv_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(ModelLoadError, match=r"weights\.bin.*missing"):
        load(path)


def test_truncated_external_file_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ext.onnx"
    onnx.save(_conv_model(), path, save_as_external_data=True, location="weights.bin", size_threshold=0)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ModelLoadError, match="truncated"):
        load(path)


def test_external_location_outside_the_model_directory_is_refused(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "ext.onnx"
    model = _conv_model()
    onnx.save(model, path, save_as_external_data=True, location="w.bin", size_threshold=0)
    model = onnx.load(path, load_external_data=False)
    for t in model.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../../etc/passwd"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match="invalid external-data location"):
        load(path)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (os.urandom(0) + bytes(range(256)) * 8, "not an ONNX model"),
        (b"hello, this is a text file and not a model\n" * 10, "not an ONNX model"),
        (b"", "not an ONNX model"),
    ],
    ids=["random-bytes", "text", "empty"],
)
def test_not_a_model(tmp_path: pathlib.Path, content: bytes, match: str) -> None:
    path = tmp_path / "bad.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelLoadError, match=match):
        load(path)


def test_truncated_protobuf(model_path: pathlib.Path) -> None:
    data = model_path.read_bytes()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        model_path.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError, match=str(model_path.name)):
            load(model_path)


def test_missing_file_and_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load(tmp_path / "absent.onnx")
    with pytest.raises(ModelLoadError, match="not a file"):
        load(tmp_path)


def test_unknown_opset_is_unsupported(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "future.onnx"
    model = _conv_model()
    model.opset_import[0].version = 99
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="opset 99"):
        load(path)


def test_undeclared_domain_is_unsupported(tmp_path: pathlib.Path) -> None:
    model = _conv_model()
    model.graph.node[1].domain = "com.nowhere"
    path = tmp_path / "dom.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedModelError, match=r"com\.nowhere"):
        load(path)


def test_unknown_standard_operator_is_unsupported(tmp_path: pathlib.Path) -> None:
    model = _conv_model()
    model.graph.node[1].op_type = "GlobalAveragePoool"
    path = tmp_path / "typo.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(UnsupportedModelError, match="GlobalAveragePoool"):
        load(path)


def test_shape_with_wrong_rank(model_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"'x'.*rank 3.*rank 4"):
        load(model_path, shapes={"x": (1, 3, 16)})


def test_shape_contradicting_a_fixed_dim(model_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"dimension 2 is fixed to 16"):
        load(model_path, shapes={"x": (1, 3, 32, 16)})


def test_shape_for_an_unknown_input(model_path: pathlib.Path) -> None:
    with pytest.raises(InputError, match=r"unknown input.*'images'.*x: float32"):
        load(model_path, shapes={"images": (1, 3, 16, 16)})


@pytest.mark.parametrize("bad", [(1, 3, 0, 16), (1, 3, -2, 16), ("a", 3, 16, 16), 5])
def test_shape_values_must_be_positive_integers(model_path: pathlib.Path, bad: object) -> None:
    with pytest.raises(InputError, match="'x'"):
        load(model_path, shapes={"x": bad})  # type: ignore[dict-item]


def test_shape_contradicting_the_weights(tmp_path: pathlib.Path) -> None:
    """The feature dim is symbolic, but the weight needs 4 features: 5 contradicts the model."""
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [vi("x", F, ["batch", "features"])],
        [vi("y", F, ["batch", 2])],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sym.onnx"
    onnx.save(model, path)
    assert load(path, shapes={"x": (2, 4)}).macs == 2 * 4 * 2
    with pytest.raises(InputError, match="contradict the model"):
        load(path, shapes={"x": (2, 5)})


def test_symbolic_dims_shared_across_inputs_must_agree(tmp_path: pathlib.Path) -> None:
    node = helper.make_node("Add", ["a", "b"], ["y"])
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [node], "add", [vi("a", F, ["batch", 4]), vi("b", F, ["batch", 4])], [vi("y", F, ["batch", 4])]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "add.onnx"
    onnx.save(model, path)
    assert load(path, shapes={"a": (6, 4)}).shapes_used == {"a": (6, 4), "b": (6, 4)}
    with pytest.raises(InputError, match="'batch'"):
        load(path, shapes={"a": (6, 4), "b": (5, 4)})


def test_other_objects_are_refused(model_path: pathlib.Path) -> None:
    with pytest.raises(ModelLoadError, match="cannot load a dict"):
        load({"not": "a model"})
    with pytest.raises(ConfigError, match="example_inputs"):
        load(model_path, example_inputs=(np.zeros(1),))
    with pytest.raises(ConfigError, match="name"):
        load(model_path, name="  ")


def test_importing_the_package_imports_neither_onnx_nor_torch() -> None:
    code = "import sys, aivmm.models, aivmm.models.zoo; print('onnx' in sys.modules, 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["False", "False"]


def test_weight_whose_data_does_not_match_its_dims(tmp_path: pathlib.Path) -> None:
    model = _conv_model()
    model.graph.initializer[1].dims[0] = 9  # fc: 8x4 floats of data, dims now claim 9x4
    path = tmp_path / "bad.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"fc.*144"):
        load(path)


def test_large_weight_whose_data_does_not_match_its_dims(tmp_path: pathlib.Path) -> None:
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((100, 64), np.float32), "w")
    w.dims[0] = 10_000  # claims 2.56 MB in a file of 26 kB
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [vi("x", F, ["batch", 10_000])],
        [vi("y", F, ["batch", 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "big.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ModelLoadError, match=r"'w' holds 25600 bytes.*\[10000, 64\] need 2560000"):
        load(path)


def test_batch_dim_of_a_time_major_model(tmp_path: pathlib.Path) -> None:
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((1, 16, 8), np.float32), "W")
    r = numpy_helper.from_array(np.ones((1, 16, 4), np.float32), "R")
    node = helper.make_node("RNN", ["x", "W", "R"], ["y"], hidden_size=4)
    graph = helper.make_graph(
        [node], "rnn", [vi("x", F, ["seq", "batch", 8])], [vi("y", F, ["seq", 1, "batch", 4])], [w, r]
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "tm.onnx"
    onnx.save(model, path)
    spec = load(path)
    assert spec.batch_dim == 1
    assert spec.shapes_used == {"x": (128, 1, 8)}  # sequence-like dims default to 128, batch to 1


def test_input_without_a_declared_shape(tmp_path: pathlib.Path) -> None:
    vi = helper.make_tensor_value_info
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [vi("x", F, None)],
        [vi("y", F, None)],
        [numpy_helper.from_array(np.ones((4, 2), np.float32), "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "unranked.onnx"
    onnx.save(model, path)
    with pytest.raises(ModelLoadError, match=r"'shape'.*required"):  # the checker requires input shapes
        load(path)


def _save(model: onnx.ModelProto, path: pathlib.Path) -> pathlib.Path:
    path.write_bytes(model.SerializeToString())
    return path


def test_weight_with_more_data_than_its_dims(tmp_path: pathlib.Path) -> None:
    # onnx.checker only asks that data be not too short; every runtime fails to reshape the rest.
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((200, 64), np.float32), "w")
    w.dims[0] = 100  # 51200 bytes of data, dims claim 25600
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "mm",
        [vi("x", F, ["batch", 100])],
        [vi("y", F, ["batch", 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match=r"'w' holds more: 51200 bytes.*\[100, 64\] need 25600"):
        load(_save(model, tmp_path / "long.onnx"))


def test_constant_inside_a_subgraph_is_checked_too(tmp_path: pathlib.Path) -> None:
    vi = helper.make_tensor_value_info
    value = numpy_helper.from_array(np.ones((64, 64), np.float32), "c")
    value.dims[0] = 65
    branch = helper.make_graph([helper.make_node("Constant", [], ["k"], value=value)], "b", [], [vi("k", F, [65, 64])])
    node = helper.make_node("If", ["cond"], ["y"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph([node], "if", [vi("cond", TensorProto.BOOL, [])], [vi("y", F, [65, 64])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match=r"'c' holds 16384 bytes"):
        load(_save(model, tmp_path / "if.onnx"))


@pytest.mark.parametrize(
    ("edit", "says"),
    [
        ("weight-type", r"node 'mm' \(MatMul\): .*type"),  # float activations times int32 weights
        ("weight-shape", r"node 'mm' \(MatMul\): Incompatible dimensions"),
        ("axis", r"node 'sm' \(Softmax\): 'axis' must be in"),
        ("output-type", r"Inferred elem type differs"),
    ],
)
def test_operators_that_contradict_each_other(tmp_path: pathlib.Path, edit: str, says: str) -> None:
    vi = helper.make_tensor_value_info
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=-1),
    ]
    out = vi("y", TensorProto.INT64 if edit == "output-type" else F, ["batch", 4])
    if edit == "weight-type":
        w = numpy_helper.from_array(np.ones((8, 4), np.int32), "w")
    elif edit == "weight-shape":
        w = numpy_helper.from_array(np.ones((4, 8), np.float32), "w")
    elif edit == "axis":
        nodes[1] = helper.make_node("Softmax", ["h"], ["y"], name="sm", axis=5)
    graph = helper.make_graph(nodes, "g", [vi("x", F, ["batch", 8])], [out], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(ModelLoadError, match=says):
        load(_save(model, tmp_path / f"{edit}.onnx"))


def test_a_model_of_ai_onnx_ml_operators_only_loads(tmp_path: pathlib.Path) -> None:
    # scikit-learn exports import only ai.onnx.ml: no default opset is needed for them.
    vi = helper.make_tensor_value_info
    node = helper.make_node("Binarizer", ["x"], ["y"], domain="ai.onnx.ml", threshold=0.5)
    graph = helper.make_graph([node], "bin", [vi("x", F, ["batch", 3])], [vi("y", F, ["batch", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 8
    spec = load(_save(model, tmp_path / "ml.onnx"))
    assert spec.opsets == {"ai.onnx.ml": 1}
    # A default-domain node in such a model is still refused, by name.
    model.graph.node.append(helper.make_node("Relu", ["y"], ["z"]))
    model.graph.output[0].name = "z"
    with pytest.raises(UnsupportedModelError, match=r"domain ''.*does not import"):
        load(_save(model, tmp_path / "ml-relu.onnx"))


def test_symbolic_shape_inference_loads_without_onnxruntime_tools() -> None:
    # Importing the onnxruntime.tools package imports torch (its __init__ pulls an export helper):
    # that was ~10 s of a 15 s `aivmm analyze` on BERT. The pass is loaded from its file instead.
    pytest.importorskip("onnxruntime")
    pytest.importorskip("sympy")
    from aivmm.models import _shapes

    package_was_imported = "onnxruntime.tools" in sys.modules
    cls = _shapes._symbolic_shape_inference()
    assert cls is not None and cls.__name__ == "SymbolicShapeInference"
    assert package_was_imported or "onnxruntime.tools" not in sys.modules
