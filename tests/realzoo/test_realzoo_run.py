"""The fast real-zoo models fetch or build, and run on ONNX Runtime with the inputs the zoo gives."""

from __future__ import annotations

import numpy as np
import pytest

import realzoo

ort = pytest.importorskip("onnxruntime")

FAST = [e.name for e in realzoo.entries(fast=True)]


def test_zoo_covers_the_workloads_asked_for() -> None:
    names = {e.name for e in realzoo.entries()}
    assert len(names) >= 15
    kinds = " ".join(e.kind + " " + e.source for e in realzoo.entries()).lower()
    for needed in (
        "yolov8",
        "ocr",
        "ctc",
        "bert",
        "vit",
        "gpt2",
        "lstm",
        "gru",
        "loop",
        "scan",
        "qdq",
        "qlinearconv",
        "embeddingbag",
        "fourier",
        "vad",
        "whisper",
        "if",
    ):
        assert needed in kinds, needed
    assert len(FAST) >= 10


@pytest.mark.parametrize("name", FAST)
def test_fast_model_runs_on_onnxruntime(name: str) -> None:
    path = realzoo.path(name)
    assert path.name == "model.onnx" and path.stat().st_size > 0
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = realzoo.sample_inputs(name)
    assert {i.name for i in session.get_inputs()} == set(feeds)
    outputs = session.run(None, feeds)
    assert outputs and all(np.isfinite(o).all() for o in outputs if o.dtype.kind == "f")


def test_wheel_models_record_their_wheel() -> None:
    meta = realzoo.meta("silero-vad")
    assert meta["wheel"].startswith("silero_vad-6.2.3-") and meta["member"].endswith("silero_vad.onnx")


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(KeyError, match="yolov8n-nudenet"):
        realzoo.get("nope")
