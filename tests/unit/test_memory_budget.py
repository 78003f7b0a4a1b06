"""Budgets (argument and AIVMM_MEMORY_BUDGET) and footprints."""

from __future__ import annotations

import pytest

from aivmm.dtypes import DType, Precision
from aivmm.errors import ConfigError
from aivmm.memory import estimate, parse_budget_spec, resolve_capacities
from aivmm.memory._footprint import format_bytes
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec
from aivmm.runtime._toy import simulated_device


def test_budget_string_parses():
    assert parse_budget_spec("cpu:0=512MiB, nvidia:0=20GiB") == {"cpu:0": 512 * 2**20, "nvidia:0": 20 * 2**30}
    assert parse_budget_spec("") == {}


@pytest.mark.parametrize("text", ["cpu=1GiB", "cpu:0", "cpu:0=", "cpu:0=lots", "cpu:0=1GiB,cpu:0=2GiB"])
def test_bad_budget_string_names_the_entry(text):
    with pytest.raises(ConfigError, match="AIVMM_MEMORY_BUDGET"):
        parse_budget_spec(text)


def test_capacity_is_free_minus_reserve_unless_a_budget_is_given():
    a = simulated_device("nvidia:0", memory=1000)
    b = simulated_device("nvidia:1", memory=1000)
    caps = resolve_capacities([a, b], {"nvidia:1": "600"}, reserve_fraction=0.1, environ={})
    assert caps == {"nvidia:0": 900, "nvidia:1": 600}


def test_argument_wins_over_environment():
    a = simulated_device("nvidia:0", memory=10_000)
    env = {"AIVMM_MEMORY_BUDGET": "nvidia:0=1KiB"}
    assert resolve_capacities([a], None, environ=env) == {"nvidia:0": 1024}
    assert resolve_capacities([a], {"nvidia:0": 2048}, environ=env) == {"nvidia:0": 2048}


def test_budget_for_unknown_device_is_refused():
    with pytest.raises(ConfigError, match=r"unknown device.*amd:3"):
        resolve_capacities([simulated_device("nvidia:0")], {"amd:3": "1GiB"}, environ={})


@pytest.mark.parametrize("fraction", [-0.1, 1.0, "0.1", True])
def test_bad_reserve_fraction(fraction):
    with pytest.raises(ConfigError, match="reserve_fraction"):
        resolve_capacities([simulated_device("nvidia:0")], reserve_fraction=fraction, environ={})


def _spec(params: int, act: int, batch_used: int = 1) -> ModelSpec:
    return ModelSpec(
        "m",
        ModelFormat.ONNX,
        (TensorSpec("x", DType.FLOAT32, ("N", 4)),),
        (),
        parameters=params,
        parameter_bytes=4 * params,
        peak_activation_bytes=act,
        shapes_used={"x": (batch_used, 4)},
    )


def test_footprint_scales_weights_by_precision_and_activations_by_batch():
    spec = _spec(1000, 400, batch_used=2)
    fp32 = estimate(spec, Precision.FP32, batch=2)
    assert (fp32.weights_bytes, fp32.activation_bytes) == (4000, 400)
    fp16 = estimate(spec, Precision.FP16, batch=8)
    assert (fp16.weights_bytes, fp16.activation_bytes, fp16.total) == (2000, 1600, 3600)


def test_format_bytes():
    assert format_bytes(512) == "512 B"
    assert format_bytes(1536) == "1.5 KiB"
    assert format_bytes(3 * 2**30) == "3.0 GiB"
