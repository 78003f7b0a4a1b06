"""Generated inputs that real models accept: models from PyPI wheels and Optimum exports (the real zoo)."""

from __future__ import annotations

import pathlib
import sys

import numpy as np
import onnx
import pytest

_BENCHMARKS = str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks")
if _BENCHMARKS not in sys.path:
    sys.path.insert(0, _BENCHMARKS)

import realzoo  # noqa: E402
from aivmm.backends.tensors import validate_feeds  # noqa: E402
from aivmm.models import load  # noqa: E402
from aivmm.optimize import _dims, _probe  # noqa: E402
from aivmm.optimize import sample_inputs as generated  # noqa: E402


@pytest.fixture(scope="module")
def cls_path() -> pathlib.Path:
    return realzoo.path("ppocr-cls")


def test_dim_expressions_are_evaluated_not_guessed():
    e = _dims.parse("past_sequence_length + sequence_length")
    assert isinstance(e, _dims.Expression) and e.names == ("past_sequence_length", "sequence_length")
    assert e.evaluate({"past_sequence_length": 0, "sequence_length": 7}) == 7
    assert _dims.parse("2*(a.b - 1)").evaluate({"a.b": 5}) == 8
    assert _dims.parse("batch") == "batch" and _dims.parse("batch size") == "batch size"


def test_question_marks_and_minus_one_are_each_their_own_unknown(cls_path):
    spec = load(cls_path)  # PP-OCR direction classifier: x[-1, 3, ?, ?]
    assert spec.inputs[0].shape[1] == 3 and spec.inputs[0].shape[0] is None
    assert spec.inputs[0].shape[2] is None and spec.inputs[0].shape[3] is None
    # The recommended 48x192 text line: height and width differ, and the signature accepts it.
    x = np.zeros((2, 3, 48, 192), np.float32)
    assert validate_feeds(spec, {"x": x})["x"] is x
    gen = _probe.generate(spec, model_path=cls_path)
    assert gen.reference is not None and gen.feeds["x"].shape == (1, 3, 224, 224)


def test_gpt2_with_past_gets_an_empty_past_and_a_mask_of_past_plus_sequence(tiny_gpt2_dir):
    path = tiny_gpt2_dir / "model.onnx"  # Optimum's with-past export: mask [batch, past + sequence]
    spec = load(path)
    gen = _probe.generate(spec, model_path=path)
    assert gen.reference is not None, gen.reference_error  # the model ran on them
    f = gen.feeds
    seq = f["input_ids"].shape[1]
    past = [v for k, v in f.items() if k.startswith("past_key_values")]
    assert past and all(v.shape[2] == 0 for v in past)  # a first request: nothing cached
    assert f["attention_mask"].shape == (1, 0 + seq) and (f["attention_mask"] == 1).all()
    if "position_ids" in f:
        assert np.array_equal(f["position_ids"][0], np.arange(seq))
    vocab = onnx.load(str(path), load_external_data=False)
    assert f["input_ids"].min() >= 0 and f["input_ids"].max() < max(d for t in vocab.graph.initializer for d in t.dims)


def test_silero_gets_the_compared_sample_rate_and_a_length_found_by_probing():
    path = realzoo.path("silero-vad")  # If on Equal(sr, 16000); input[?, ?], state[2, ?, 128]
    spec = load(path)
    gen = _probe.generate(spec, model_path=path)
    assert gen.reference is not None, gen.reference_error
    assert int(gen.feeds["sr"]) == 16000
    assert gen.feeds["state"].shape == (2, 1, 128) and gen.feeds["input"].shape[0] == 1
    assert gen.feeds["input"].shape[1] >= 256
    assert any("retried with" in n and "which it accepts" in n for n in gen.notes)  # says so


def test_ultralytics_metadata_sets_the_image_size(tmp_path, cls_path):
    model = onnx.load(str(cls_path))
    for key, value in (("imgsz", "[64, 256]"), ("stride", "32")):
        p = model.metadata_props.add()
        p.key, p.value = key, value
    path = tmp_path / "with_meta.onnx"
    onnx.save(model, str(path))
    spec = load(path)
    assert generated(spec)["x"].shape == (1, 3, 64, 256)
    gen = _probe.generate(spec, model_path=path)
    assert gen.reference is not None and "imgsz=[64, 256]" in " ".join(gen.notes)


def test_run_input_npz_wins_over_generated_inputs(tmp_path, cls_path, capsys):
    import json

    from aivmm.cli.main import main

    np.savez(tmp_path / "in.npz", x=np.random.default_rng(0).random((2, 3, 48, 192), dtype=np.float32))
    assert main(["run", str(cls_path), "--input", str(tmp_path / "in.npz"), "--json", "--no-measure"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs_from"] == "--input" and report["inputs"]["x"]["shape"] == [2, 3, 48, 192]
    assert report["outputs"][0]["shape"] == [2, 2]


def test_probe_retries_the_next_multiple_of_32_then_64_then_grows():
    from aivmm.optimize._inputs import Assignment

    side = _dims.Role(200, "an image side of the usual size", free=True)
    base = Assignment(
        {"height": 200, "batch": 1}, {"height": side, "batch": _dims.Role(1, "the batch size", False)}, {}
    )
    tries = _probe._attempts(base)
    whys = [w for w, _ in tries]
    assert whys[:2] == ["sizes rounded up to a multiple of 32", "sizes rounded up to a multiple of 64"]
    assert [a.sizes["height"] for _, a in tries[:2]] == [224, 256]
    assert all(a.sizes["batch"] == 1 for _, a in tries)  # the batch is never a guess to change
    assert "an image height of 48" in whys and whys[-1].startswith("sizes grown")
