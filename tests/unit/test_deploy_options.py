"""DeployOptions: one frozen value for everything VMM.deploy takes besides the model, checked once."""

from __future__ import annotations

import dataclasses
import pathlib
import pickle

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import aivmm
from aivmm.errors import ConfigError
from aivmm.options import DeployOptions
from aivmm.planner import plan
from aivmm.runtime import BatchingConfig


def _relu(path: pathlib.Path) -> pathlib.Path:
    graph = oh.make_graph(
        [oh.make_node("Relu", ["x"], ["y"])],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def vmm():
    with aivmm.VMM() as v:
        yield v


def test_exported_frozen_and_checked_once():
    opts = aivmm.DeployOptions(constraints={"max_latency_ms": 5}, replicas=2, batching={"max_batch_size": 4})
    assert opts.constraints == aivmm.Constraints(max_latency_ms=5.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        opts.replicas = 3  # type: ignore[misc]
    with pytest.raises(TypeError):
        opts.batching["max_batch_size"] = 8  # type: ignore[index]  # a frozen copy, not the caller's dict
    assert pickle.loads(pickle.dumps(opts)) == opts and hash(pickle.loads(pickle.dumps(opts))) == hash(opts)
    assert opts.replace(replicas=3).replicas == 3 and opts.replicas == 2
    with pytest.raises(ConfigError, match="replicas must be a positive integer"):
        opts.replace(replicas=0)
    with pytest.raises(ConfigError, match="unknown deploy option"):
        opts.replace(replica=3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"replica": 2}, r"x\.json: unknown deploy option\(s\) \['replica'\]"),
        ({"replicas": "2"}, r"x\.json: replicas must be a positive integer, got '2'"),
        ({"strict": 1}, r"x\.json: deploy option strict must be true or false, got 1"),
        ({"device": 0}, r"x\.json: deploy option device must be a non-empty string"),
        ({"constraints": [1]}, r"x\.json: deploy option constraints must be a mapping, got list"),
        ({"constraints": {"max_latency": 1}}, r"x\.json: unknown constraint\(s\) \['max_latency'\]"),
        ({"batching": 8}, r"x\.json: deploy option batching must be .*got int"),
        ({"sample_inputs": {}}, r"unknown deploy option\(s\) \['sample_inputs'\]"),  # arrays are not plain data
    ],
)
def test_from_mapping_names_the_bad_option(data, message):
    with pytest.raises(ConfigError, match=message):
        DeployOptions.from_mapping(data, source="x.json")


def test_plain_data_round_trip():
    opts = DeployOptions(
        constraints={"prefer": "cpu", "precision": "fp16"},
        device="cpu:0",
        backend="onnxruntime",
        strict=True,
        name="m",
        batching=BatchingConfig(max_batch_size=4),
        replicas=2,
        measure=False,
        fast_start=True,
    )
    data = opts.to_mapping()
    assert data["constraints"]["precision"] == "fp16" and data["batching"]["max_batch_size"] == 4
    back = DeployOptions.from_mapping(data)
    assert back.replace(batching=BatchingConfig.from_mapping(back.batching)) == opts  # type: ignore[arg-type]
    assert DeployOptions.from_mapping(None) == DeployOptions()


def test_deploy_takes_options_or_keywords_not_both(vmm, tmp_path):
    path = _relu(tmp_path / "relu.onnx")
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    opts = DeployOptions(name="by-options", measure=False, device="cpu:0", replicas=2)
    with (
        vmm.deploy(path, options=opts) as a,
        vmm.deploy(path, name="by-keywords", measure=False, device="cpu:0", replicas=2) as b,
    ):
        np.testing.assert_array_equal(a.execute(x)["y"], b.execute(x)["y"])
        # b is deployed beside a: the same choice, with ORT's threads not spinning on the shared cores.
        ca, cb = a.plan.chosen.config, b.plan.chosen.config
        assert (ca.backend, ca.device, ca.precision) == (cb.backend, cb.device, cb.precision)
        assert {**ca.options, "allow_spinning": False} == dict(cb.options)
        assert len(a.stats()["replicas"]) == len(b.stats()["replicas"]) == 2
        assert a.options == opts and b.options == opts.replace(name="by-keywords")
    with pytest.raises(ConfigError, match=r"not both \(also got \['constraints', 'replicas'\]\)"):
        vmm.deploy(path, {"max_latency_ms": 1}, options=opts, replicas=3)
    with pytest.raises(ConfigError, match=r"options must be aivmm\.DeployOptions"):
        vmm.deploy(path, options={"measure": False})


def test_plan_takes_the_same_options(tmp_path):
    from aivmm.devices import discover
    from aivmm.models import load

    spec = load(_relu(tmp_path / "relu.onnx"))
    devices = discover()
    opts = DeployOptions(measure=False, device="cpu:0", backend="onnxruntime", strict=True)
    by_options = plan(spec, devices, options=opts, cache=False)
    by_keywords = plan(spec, devices, measure=False, device="cpu:0", backend="onnxruntime", strict=True, cache=False)
    assert by_options.chosen.config == by_keywords.chosen.config
    assert by_options.chosen.config.backend == "onnxruntime"
    with pytest.raises(ConfigError, match="not both"):
        plan(spec, devices, options=opts, strict=False, backend="openvino")
