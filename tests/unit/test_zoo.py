"""The built-in zoo: every tiny model passes onnx.checker, runs in ONNX Runtime and OpenVINO with the
same answer, has the parameter count of its architecture's formula and is categorised right."""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Iterator

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

from aivmm.errors import ConfigError  # noqa: E402
from aivmm.models import Category, load, zoo  # noqa: E402


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[pathlib.Path]:
    root = tmp_path_factory.mktemp("zoo-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AIVMM_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def built(cache: pathlib.Path) -> dict[str, pathlib.Path]:
    return {name: zoo.build(name) for name in zoo.names()}


def test_names_and_default() -> None:
    assert zoo.names() == ["resnet50", "bert-base", "gpt2", "lstm", "dlrm", "pinn", "fno", "crnn"]
    assert zoo.default_model() in zoo.names()
    assert zoo.info(zoo.default_model()).categories == (Category.CNN,)
    covered = {c for name in zoo.names() for c in zoo.info(name).categories}
    assert covered == set(Category) - {Category.OTHER}


@pytest.mark.parametrize("name", zoo.names())
def test_tiny_model_is_valid_onnx_with_a_symbolic_batch(built: dict[str, pathlib.Path], name: str) -> None:
    model = onnx.load(built[name])
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == 17
    for value in model.graph.input:
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"


@pytest.mark.parametrize("name", zoo.names())
def test_tiny_model_runs_in_onnxruntime_and_openvino_alike(built: dict[str, pathlib.Path], name: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    ov = pytest.importorskip("openvino")
    feeds = zoo.sample_inputs(name, batch=3)
    session = ort.InferenceSession(str(built[name]), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    # Pin f32: OpenVINO on CPUs with AMX/AVX512-BF16 otherwise infers in bf16.
    compiled = ov.Core().compile_model(str(built[name]), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled(feeds)
    got = [result[out] for out in compiled.outputs]
    spec = load(built[name])
    assert [o.name for o in session.get_outputs()] == [t.name for t in spec.outputs]
    for want, have, out in zip(expected, got, spec.outputs):
        assert want.shape[0] == 3 and want.shape[1:] == tuple(out.shape[1:])
        assert np.isfinite(want).all()
        np.testing.assert_allclose(have, want, rtol=1e-3, atol=1e-4)
        assert float(np.abs(want).max()) > 0  # not a dead network


@pytest.mark.parametrize("name", zoo.names())
def test_tiny_model_is_analysed_and_categorised(built: dict[str, pathlib.Path], name: str) -> None:
    entry = zoo.info(name)
    spec = load(built[name])
    found = [c.category for c in spec.categories]
    assert set(found) == set(entry.categories), spec.categories
    transformer = next((c for c in spec.categories if c.category is Category.TRANSFORMER), None)
    assert (transformer.subtype if transformer else "") == entry.subtype
    assert all(c.evidence for c in spec.categories)
    assert spec.batch_dim == 0
    assert spec.flops > 0 and spec.peak_activation_bytes > 0
    assert spec.parameters == zoo.expected_parameters(name)
    assert not [w for w in spec.warnings if not w.startswith("assumed")], spec.warnings


def test_crnn_is_both_cnn_and_rnn(built: dict[str, pathlib.Path]) -> None:
    spec = load(built["crnn"])
    assert spec.has_category(Category.CNN) and spec.has_category(Category.RNN)
    assert spec.operators["Conv"] == 2 and spec.operators["GRU"] == 1


def test_full_configs_have_the_real_architectures_parameter_counts() -> None:
    # Formulas only (building the full models is for benchmarks).
    assert zoo.expected_parameters("resnet50", "full") == 25_530_472  # ResNet-50 with BN folded into conv biases
    assert zoo.expected_parameters("bert-base", "full") == 109_482_240  # BERT-base, as published
    assert zoo.expected_parameters("gpt2", "full") == 124_439_808 + 128 * 128  # GPT-2 small + its causal mask


def test_sample_inputs_are_deterministic_and_valid() -> None:
    a = zoo.sample_inputs("bert-base", batch=4, seed=1)
    b = zoo.sample_inputs("bert-base", batch=4, seed=1)
    c = zoo.sample_inputs("bert-base", batch=4, seed=2)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["input_ids"], c["input_ids"])
    assert a["input_ids"].dtype == np.int64 and a["input_ids"].max() < 1000
    assert a["attention_mask"][1, -1] == 0 and a["attention_mask"][0, -1] == 1
    dlrm = zoo.sample_inputs("dlrm", batch=5)
    assert dlrm["dense"].shape == (5, 13) and all(dlrm[f"cat_{i}"].shape == (5,) for i in range(4))


def test_weights_are_deterministic(cache: pathlib.Path) -> None:
    assert zoo.proto("gpt2").SerializeToString() == zoo.proto("gpt2").SerializeToString()
    assert onnx.load(zoo.build("pinn")).SerializeToString() == zoo.proto("pinn").SerializeToString()


def test_cache_location_reuse_force_and_stale_cleanup(cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = zoo.build("pinn")
    assert path.parent == cache / "zoo" and path.name.startswith("pinn-tiny-v")
    stamp = path.stat().st_mtime_ns
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    assert zoo.build("pinn") == path and path.stat().st_mtime_ns == stamp - 10**9  # reused, not rebuilt
    zoo.build("pinn", force=True)
    assert path.stat().st_mtime_ns != stamp - 10**9
    monkeypatch.setattr(zoo, "BUILDER_VERSION", zoo.BUILDER_VERSION + 1)
    zoo._source_digest.cache_clear()
    try:
        newer = zoo.build("pinn")
        assert newer != path and newer.is_file() and not path.exists()  # a new version replaces the stale file
    finally:
        zoo._source_digest.cache_clear()
    assert not list((cache / "zoo").glob(".*.tmp"))  # atomic writes leave no temporaries


def test_failed_build_leaves_no_partial_file(cache: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(model: object, fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(zoo, "_write", boom)
    with pytest.raises(OSError, match="disk full"):
        zoo.build("fno", force=True)
    assert not zoo.path("fno").exists() or zoo.path("fno").read_bytes() != b"partial"
    assert not list((cache / "zoo").glob(".*.tmp"))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: zoo.build("alexnet"), "unknown zoo model 'alexnet'"),
        (lambda: zoo.build("pinn", "huge"), "unknown zoo size 'huge'"),
        (lambda: zoo.sample_inputs("pinn", batch=0), "batch"),
        (lambda: zoo.info("nope"), "resnet50"),
    ],
)
def test_bad_requests(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]


def test_cli_zoo_list_and_build(cache: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aivmm.cli.main import main

    assert main(["zoo", "build", "pinn", "fno", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)["built"]
    assert [b["name"] for b in built] == ["pinn", "fno"] and all(pathlib.Path(b["path"]).is_file() for b in built)
    assert main(["zoo", "list", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listing["models"]} == set(zoo.names())
    assert next(m for m in listing["models"] if m["name"] == "pinn")["cached"]["tiny"] is True
    assert main(["zoo"]) == 0
    assert "crnn" in capsys.readouterr().out
    assert main(["zoo", "build", "nope"]) == 2
    assert "unknown zoo model 'nope'" in capsys.readouterr().err


def test_cli_analyze(cache: pathlib.Path, capsys: pytest.CaptureFixture[str], tmp_path: pathlib.Path) -> None:
    from aivmm.cli.main import main

    assert main(["analyze", "gpt2", "--json", "--shape", "input_ids=2x16"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "inputs",
        "outputs",
        "parameters",
        "parameter_bytes",
        "flops",
        "peak_activation_bytes",
        "operators",
        "categories",
        "hints",
    ):
        assert key in data
    assert data["name"] == "gpt2" and data["shapes_used"] == {"input_ids": [2, 16]}
    assert data["categories"][0]["subtype"] == "causal-decoder-llm"
    assert main(["analyze", "crnn"]) == 0
    text = capsys.readouterr().out
    assert "cnn" in text and "rnn" in text and "parameters:" in text
    assert main(["analyze", "gpt2", "--shape", "input_ids=2x17"]) == 2
    assert "fixed to 16" in capsys.readouterr().err
    assert main(["analyze", "gpt2", "--shape", "input_ids=2xQ"]) == 2
    assert "NAME=1x3x224x224" in capsys.readouterr().err
    junk = tmp_path / "junk.onnx"
    junk.write_text("not a model")
    assert main(["analyze", str(junk)]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
