"""The plan cache: reused when nothing changed, missed when any part of the key changes."""

from __future__ import annotations

import json
import pathlib

import pytest
from _planner_models import cpu, mlp

from aivmm.backends import registry
from aivmm.models import load
from aivmm.planner import _cache, plan

ORT = ("onnxruntime",)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def spec(tmp_path):
    return load(mlp(tmp_path / "mlp.onnx"))


def _plan(spec, devices=None, constraints=None, **kw):
    return plan(spec, devices or [cpu()], constraints, backends=ORT, measure=False, **kw)


def test_second_plan_is_a_cache_hit_with_the_same_choice(spec):
    first = _plan(spec)
    again = _plan(spec)
    assert not first.cache_hit and again.cache_hit
    assert again.chosen.config == first.chosen.config
    assert [c.label for c in again.alternatives] == [c.label for c in first.alternatives]
    assert [c.label for c in again.rejected] == [c.label for c in first.rejected]
    assert again.to_json()["cache_hit"] is True
    assert again.planning_seconds >= 0


def test_measured_plans_roundtrip_with_transformed_models(spec):
    first = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, budget_s=0.6, top_k=5)
    again = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, budget_s=0.6, top_k=5)
    assert again.cache_hit
    by_label = {c.label: c for c in again.ranked()}
    for c in first.ranked():
        twin = by_label[c.label]
        assert str(twin.model.source) == str(c.model.source)
        if c.measurement is not None:
            # throughput is derived from p50, which the JSON stores to the nanosecond
            assert twin.measurement.p50_ms == pytest.approx(c.measurement.p50_ms, abs=1e-6)
            assert twin.measurement.runs == c.measurement.runs


def test_a_plan_whose_transformed_file_vanished_is_a_miss(spec, tmp_path):
    first = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, budget_s=0.3, top_k=4)
    transformed = [c for c in first.ranked() if c.transform]
    assert transformed
    for c in transformed:
        pathlib.Path(str(c.model.source)).unlink(missing_ok=True)
    again = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, budget_s=0.3, top_k=4)
    assert not again.cache_hit
    assert all(pathlib.Path(str(c.model.source)).is_file() for c in again.ranked() if c.transform)


def test_model_change_misses(spec, tmp_path):
    _plan(spec)
    other = load(mlp(tmp_path / "mlp.onnx", seed=1))  # same path, new content
    assert other.sha256 != spec.sha256
    assert not _plan(other).cache_hit


def test_device_change_misses(spec):
    _plan(spec)
    assert not _plan(spec, [cpu(features=frozenset({"avx2", "fma", "avx512f"}))]).cache_hit
    assert _plan(spec, [cpu(memory_free_bytes=2**30)]).cache_hit  # free memory is not part of the key


def test_runtime_version_change_misses(spec, monkeypatch):
    _plan(spec)
    ort = registry.get("onnxruntime")
    assert ort.versions()["onnxruntime"] == ort.info().versions["onnxruntime"]
    older = {**ort.versions(), "onnxruntime": "0.0.1"}
    with monkeypatch.context() as m:  # the key holds the versions the backend states
        m.setattr(ort, "versions", lambda: older)
        assert not _plan(spec).cache_hit
    assert _plan(spec).cache_hit


def test_planner_dependency_version_change_misses(spec, monkeypatch):
    _plan(spec)
    real = _cache.runtime_versions(ORT)
    monkeypatch.setattr(_cache, "runtime_versions", lambda names: {**real, "onnx": "0.0.1"})
    assert not _plan(spec).cache_hit


def test_constraint_change_misses(spec):
    _plan(spec)
    assert not _plan(spec, constraints={"batch_size": 2}).cache_hit
    assert not _plan(spec, constraints={"objective": "throughput"}).cache_hit


def test_cache_false_neither_reads_nor_writes(spec, tmp_path):
    _plan(spec, cache=False)
    assert not list((tmp_path / "cache").glob("plans/*.json"))


def test_corrupt_entry_is_a_miss_and_is_replaced(spec, tmp_path):
    _plan(spec)
    (entry,) = (tmp_path / "cache" / "plans").glob("*.json")
    entry.write_text("{not json")
    assert not _plan(spec).cache_hit
    json.loads(entry.read_text())  # rewritten
    assert _plan(spec).cache_hit
