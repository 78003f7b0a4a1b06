"""Model repositories: Triton layout and config.pbtxt as they are, aivmm config.json, path safety."""

from __future__ import annotations

import os
import pathlib

import pytest

from aivmm.errors import ConfigError, ModelNotFoundError, PermissionDeniedError
from aivmm.serve._model_config import from_pbtxt, merge_json
from aivmm.serve._repository import Repository

TRITON_CONFIG = """
name: "resnet"
platform: "onnxruntime_onnx"
max_batch_size: 16
version_policy: { specific: { versions: [1, 3] } }
input [ { name: "input" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, 224, 224 ] reshape { shape: [1] } } ]
output [ { name: "output" data_type: TYPE_FP32 dims: [ 1000 ] label_filename: "labels.txt" } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 2500
                   default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 100 } }
instance_group [ { count: 2 kind: KIND_GPU gpus: [ 1 ] } ]
optimization { execution_accelerators { gpu_execution_accelerator : [ { name : "tensorrt" } ] } }
model_warmup [ { name: "w" batch_size: 1
                 inputs { key: "input" value { data_type: TYPE_FP32 dims: [3] zero_data: true } } } ]
parameters { key: "intra_op_thread_count" value: { string_value: "2" } }
"""


def test_triton_config_as_it_is() -> None:
    cfg = from_pbtxt(TRITON_CONFIG, "resnet")
    assert cfg.max_batch_size == 16
    assert cfg.batching == {"max_batch_size": 16, "max_queue_delay_ms": 2.5, "preferred_sizes": [4, 8]}
    assert cfg.instances == 2
    assert cfg.pin.kind == "gpu" and cfg.pin.gpu_ordinal == 1
    assert cfg.versions.select([1, 2, 3, 4]) == [1, 3]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('name: "other"', "does not match its directory"),
        ('platform: "tensorrt_plan"', "not served by aivmm"),
        ('backend: "python"', "not served by aivmm"),
        ("max_batch_size: 0 dynamic_batching { }", "needs max_batch_size > 0"),
        ("max_batch_size: 4 dynamic_batching { preferred_batch_size: [ 8 ] }", "preferred_sizes"),
        ("max_batch_size: [", "config.pbtxt"),
        ('max_batch_size: "eight"', "config.pbtxt"),
    ],
)
def test_bad_triton_configs_are_config_errors(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        cfg = from_pbtxt(text, "m")
        from aivmm.serve._dataplane import batching_config

        batching_config(cfg.batching)


def test_triton_backend_is_read_from_backend_info() -> None:
    # a registered backend whose BackendInfo lists ONNX is served; any other name is refused, listing them
    assert from_pbtxt('backend: "onnxruntime"', "m").name == "m"
    with pytest.raises(ConfigError, match=r"registered: .*onnxruntime"):
        from_pbtxt('backend: "python"', "m")


def test_aivmm_json_config_overrides_triton() -> None:
    cfg = merge_json(
        from_pbtxt(TRITON_CONFIG, "resnet"),
        """{
        "constraints": {"max_latency_ms": 20, "precision": "fp16"},
        "batching": {"max_batch_size": 4, "max_queue_delay_ms": 1},
        "instances": 1, "device": "cpu:0", "versions": "all", "replan_on_first_request": true}""",
    )
    assert cfg.replan_on_first_request and cfg.to_json()["replan_on_first_request"] is True
    assert cfg.constraints == {"max_latency_ms": 20, "precision": "fp16"}
    assert cfg.batching == {"max_batch_size": 4, "max_queue_delay_ms": 1}
    assert cfg.pin.device_id == "cpu:0" and cfg.instances == 1 and cfg.versions.kind == "all"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"constraint": {}}', "unknown key"),
        ('{"constraints": {"max_latency": 3}}', "unknown constraint"),
        ('{"batching": {"max_batch": 3}}', "unknown batching key"),
        ('{"instances": 0}', "instances"),
        ('{"device": "gpu"}', "device id"),
        ('{"filename": "../x.onnx"}', "plain file name"),
        ('{"versions": [0]}', "versions"),
        ('{"replan_on_first_request": "yes"}', "replan_on_first_request"),
        ("{oops", "not valid JSON"),
    ],
)
def test_bad_json_configs(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        merge_json(from_pbtxt("", "m"), text)


@pytest.fixture
def repo(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "tri" / "1").mkdir(parents=True)
    (tmp_path / "tri" / "3").mkdir()
    (tmp_path / "tri" / "1" / "model.onnx").write_bytes(b"v1")
    (tmp_path / "tri" / "3" / "model.onnx").write_bytes(b"v3")
    (tmp_path / "tri" / "config.pbtxt").write_text('name: "tri"')
    (tmp_path / "flat.onnx").write_bytes(b"flat")
    (tmp_path / "empty").mkdir()
    (tmp_path / ".hidden").mkdir()
    return tmp_path


def test_layouts_side_by_side(repo: pathlib.Path) -> None:
    r = Repository(repo)
    assert r.names() == ["empty", "flat", "tri"]
    tri = r.source("tri")
    assert [v for v, _ in tri.versions] == [1, 3] and tri.selected() == [3]
    assert r.source("flat").versions[0][0] == 1
    with pytest.raises(ModelNotFoundError, match="no version directory"):
        r.source("empty")
    with pytest.raises(ModelNotFoundError, match="no model 'ghost'"):
        r.source("ghost")


@pytest.mark.parametrize("name", ["../etc", "a/b", "/abs", "..", ".hidden", "", "a\\b", "x" * 200])
def test_names_that_could_leave_the_repository(repo: pathlib.Path, name: str) -> None:
    with pytest.raises(PermissionDeniedError):
        Repository(repo).source(name)


def test_symlink_escaping_the_repository(repo: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> None:
    outside = tmp_path_factory.mktemp("outside")
    (outside / "1").mkdir()
    (outside / "1" / "model.onnx").write_bytes(b"x")
    os.symlink(outside, repo / "sneaky")
    os.symlink(outside / "1" / "model.onnx", repo / "sneaky2.onnx")
    (repo / "tri" / "4").mkdir()
    os.symlink(outside / "1" / "model.onnx", repo / "tri" / "4" / "model.onnx")
    r = Repository(repo)
    for name in ("sneaky", "sneaky2", "tri"):
        with pytest.raises(PermissionDeniedError, match="outside the repository"):
            r.source(name)


def test_symlink_inside_the_repository_is_fine(repo: pathlib.Path) -> None:
    os.symlink(repo / "flat.onnx", repo / "alias.onnx")
    assert Repository(repo).source("alias").versions[0][1] == (repo / "flat.onnx").resolve()


def test_repository_must_be_a_directory(tmp_path: pathlib.Path) -> None:
    with pytest.raises(ConfigError, match="not a directory"):
        Repository(tmp_path / "nope")
