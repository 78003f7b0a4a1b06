"""One declarative table of constraints read by the API, the CLI flags, the server's config and
the planner's checks: each path accepts and refuses the same values, and a new row is all a new
constraint needs."""

from __future__ import annotations

import argparse
import json
import math
import pathlib

import pytest
from _planner_models import mlp

import aivmm
from aivmm.cli._constraint_flags import add_constraint_arguments, constraints_from_args
from aivmm.cli.main import main
from aivmm.errors import ConfigError
from aivmm.planner import constraints as table_module
from aivmm.planner.constraints import Bound, ConstraintRow, Constraints, Limit, constraint_table
from aivmm.serve._model_config import from_pbtxt, merge_json


def constraints_markdown() -> str:
    """The table as docs/planner.md shows it."""
    lines = [
        "| constraint | unit | type | default | how it is checked | CLI flag |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in constraint_table():
        default = r.dump(r.default)
        default = "none" if default in (None, [], ()) else f"`{default}`"
        lines.append(
            f"| `{r.name}` | {r.unit or '-'} | {r.type} | {default} | {r.how_checked} | `{r.flag} {r.metavar}` |"
        )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    add_constraint_arguments(parser)
    return parser


def _by_api(name, value):
    return Constraints(**{name: value})


def _by_cli(name, value):
    row = next(r for r in constraint_table() if r.name == name)
    argv = [x for v in value for x in (row.flag, str(v))] if isinstance(value, list) else [row.flag, str(value)]
    return constraints_from_args(_parser().parse_args(argv))


def _by_server_config(name, value):
    cfg = merge_json(from_pbtxt("", "m"), json.dumps({"constraints": {name: value}}))
    return Constraints.from_mapping(cfg.constraints)


def _outcome(path, name, value):
    try:
        return path(name, value)
    except ConfigError as exc:
        return "refused", str(exc).rsplit(": ", 1)[-1]  # the reason, without where it came from


CASES = [
    ("max_latency_ms", 5), ("max_latency_ms", 0.25), ("max_latency_ms", -2), ("max_latency_ms", 0),
    ("max_latency_ms", "fast"), ("max_latency_ms", math.inf), ("max_latency_ms", 1e9),
    ("latency_percentile", 99), ("latency_percentile", 75), ("max_memory_bytes", "512MiB"),
    ("max_memory_bytes", 1048576), ("max_memory_bytes", "lots"), ("max_memory_bytes", 0), ("max_power_w", 70),
    ("max_energy_j", 0.5), ("min_throughput", 100), ("min_throughput", -1), ("prefer", ["nvidia:0", "gpu"]),
    ("prefer", ["quantum"]), ("exclude", ["npu"]), ("precision", "int8"), ("precision", "int4"),
    ("tolerance", 0.01), ("tolerance", -1), ("objective", "throughput"), ("objective", "speed"),
    ("batch_size", 8), ("batch_size", 0), ("batch_size", 8.0),
]  # fmt: skip


@pytest.mark.parametrize(("name", "value"), CASES)
def test_api_cli_and_server_config_accept_and_refuse_the_same_values(name, value):
    api = _outcome(_by_api, name, value)
    assert _outcome(_by_cli, name, value) == api
    assert _outcome(_by_server_config, name, value) == api
    assert _outcome(lambda n, v: aivmm.DeployOptions(constraints={n: v}).constraints, name, value) == api


def test_every_row_is_a_flag_a_keyword_and_a_typed_attribute():
    flags = {a.dest: a.option_strings for a in _parser()._actions}
    for row in constraint_table():
        assert flags[f"constraint_{row.name}"] == [row.flag]
        assert row.name in Constraints.__annotations__  # typed for users and mypy
        assert getattr(Constraints(), row.name) == row.default
        assert row.how_checked and row.unit is not None and row.type and row.help
    assert list(Constraints().to_json()) == [r.name for r in constraint_table()]
    limits = {r.name: r.limit.figure for r in constraint_table() if r.limit is not None}
    assert limits == {"max_latency_ms": "latency", "max_memory_bytes": "memory", "max_power_w": "power",
                      "max_energy_j": "energy", "min_throughput": "throughput"}  # fmt: skip


def test_the_docs_show_the_table():
    docs = (pathlib.Path(__file__).parents[2] / "docs" / "planner.md").read_text()
    assert constraints_markdown() in docs, "docs/planner.md: paste this table:\n" + constraints_markdown()


@pytest.fixture
def min_rate(monkeypatch):
    """A constraint that exists only as a row: at least this many inferences per second."""
    row = ConstraintRow(
        name="min_rate", unit="1/s", type="number", default=None,
        parse=lambda name, v: table_module._positive(name, v, upper=1e15),
        flag="--min-rate", metavar="N", help="inferences per second at least (test row)",
        limit=Limit("throughput", Bound.MIN, lambda v: f"{v:.1f}/s"),
    )  # fmt: skip
    monkeypatch.setattr(table_module, "CONSTRAINTS", (*table_module.CONSTRAINTS, row))
    return row


def test_a_new_row_is_a_flag_an_api_keyword_a_config_key_and_a_planner_check(min_rate, tmp_path, monkeypatch, capsys):
    assert "--min-rate N" in _parser().format_help()
    assert _by_cli("min_rate", 5).min_rate == 5.0
    assert Constraints(min_rate=5).min_rate == 5.0
    assert Constraints.from_mapping({"min_rate": 5}).to_json()["min_rate"] == 5.0
    assert _by_server_config("min_rate", 5) == Constraints(min_rate=5)
    for path in (_by_api, _by_cli, _by_server_config):
        assert _outcome(path, "min_rate", -5)[0] == "refused"
    # The planner checks it against the plan's throughput figure, from the CLI as from the API.
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    model = mlp(tmp_path / "m.onnx")
    assert main(["plan", str(model), "--no-measure", "--backend", "onnxruntime", "--min-rate", "1e14"]) == 2
    err = capsys.readouterr().err
    assert "min_rate=100000000000000.0/s: best achievable throughput" in err
    with aivmm.VMM() as vmm:
        with pytest.raises(aivmm.errors.InfeasibleError, match="min_rate="):
            vmm.deploy(model, {"min_rate": 1e14}, measure=False, backend="onnxruntime")
        with vmm.deploy(model, {"min_rate": 1e-3}, measure=False, backend="onnxruntime") as m:
            assert m.plan.constraints == Constraints(min_rate=1e-3)


def test_violations_and_infeasible_read_the_limits(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))
    model = mlp(tmp_path / "m.onnx")
    with aivmm.VMM() as vmm, pytest.raises(aivmm.errors.InfeasibleError) as info:
        vmm.deploy(model, {"max_memory_bytes": 1, "min_throughput": 1e9}, measure=False, backend="onnxruntime")
    msg = str(info.value)
    assert "max_memory_bytes=1 B: best achievable memory" in msg
    assert "min_throughput=1000000000.0/s: best achievable throughput" in msg
