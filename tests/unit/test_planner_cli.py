"""``aivmm plan`` and the shared constraint flags."""

from __future__ import annotations

import argparse
import json

import pytest
from _planner_models import mlp

from aivmm.cli._constraint_flags import add_constraint_arguments, constraints_from_args
from aivmm.cli.main import main
from aivmm.errors import ConfigError
from aivmm.planner.constraints import Objective, PrecisionPolicy


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


def _parse(argv):
    parser = argparse.ArgumentParser()
    add_constraint_arguments(parser)
    return constraints_from_args(parser.parse_args(argv))


def test_every_flag_reaches_the_constraints():
    c = _parse(
        [
            "--max-latency-ms",
            "5",
            "--latency-percentile",
            "99",
            "--max-memory",
            "512MiB",
            "--max-power-w",
            "70",
            "--max-energy-j",
            "0.5",
            "--min-throughput",
            "100",
            "--precision",
            "int8",
            "--tolerance",
            "0.01",
            "--prefer",
            "nvidia:0,gpu",
            "--prefer",
            "cpu",
            "--exclude",
            "npu",
            "--objective",
            "throughput",
            "--batch-size",
            "8",
        ]
    )
    assert (c.max_latency_ms, c.latency_percentile, c.max_memory_bytes) == (5.0, 99, 512 * 2**20)
    assert (c.max_power_w, c.max_energy_j, c.min_throughput, c.tolerance) == (70.0, 0.5, 100.0, 0.01)
    assert c.precision is PrecisionPolicy.INT8 and c.objective is Objective.THROUGHPUT and c.batch_size == 8
    assert [s.text for s in c.prefer] == ["nvidia:0", "gpu", "cpu"] and [s.text for s in c.exclude] == ["npu"]


def test_no_flags_are_the_defaults():
    assert _parse([]) == type(_parse([]))()


@pytest.mark.parametrize(
    "argv",
    [
        ["--max-memory", "lots"],
        ["--max-latency-ms", "-2"],
        ["--prefer", "quantum"],
        ["--prefer", "gpu", "--exclude", "gpu"],
        ["--precision", "int4"],
    ],
)
def test_bad_flags_are_config_errors(argv):
    with pytest.raises(ConfigError, match="bad constraint flag"):
        _parse(argv)


def test_plan_json(tmp_path, capsys):
    model = mlp(tmp_path / "m.onnx")
    assert main(["plan", str(model), "--json", "--budget-s", "0.3", "--top-k", "2", "--backend", "onnxruntime"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["chosen"]["backend"] == "onnxruntime" and data["chosen"]["latency_ms"] > 0
    assert isinstance(data["alternatives"], list) and isinstance(data["rejected"], list)


def test_plan_text_and_errors(tmp_path, capsys):
    model = mlp(tmp_path / "m.onnx")
    assert main(["plan", str(model), "--no-measure"]) == 0
    assert "why:" in capsys.readouterr().out
    assert main(["plan", str(model), "--exclude", "cpu", "--no-measure"]) == 2
    assert "exclude every device" in capsys.readouterr().err
    assert main(["plan", str(tmp_path / "missing.onnx")]) == 2
    assert "no such file or zoo model" in capsys.readouterr().err


def test_plan_a_zoo_model_by_name(capsys):
    from aivmm.models import zoo

    name = "lstm" if "lstm" in zoo.names() else zoo.default_model()
    assert main(["plan", name, "--no-measure", "--json", "--backend", "onnxruntime"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"]["name"] and data["chosen"]["backend"] == "onnxruntime"
    assert data["measured"] is False
