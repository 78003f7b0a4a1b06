"""End-to-end fixtures: a model repository of tiny ONNX models, built once per session."""

from __future__ import annotations

import pathlib

import _serve_models
import pytest


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    pytest.importorskip("onnxruntime")
    return _serve_models.repository(tmp_path_factory.mktemp("repo"))
