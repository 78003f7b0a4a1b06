"""Planner rules that GPU planning relies on, checked on the CPU with real ONNX Runtime sessions:
the first run on an accelerator happens in a worker process (here a CPU stands in for it, and a
worker that aborts stands in for a device-side assert), and a wider precision policy measures every
candidate the fp32-only policy would."""

from __future__ import annotations

import pytest
from _planner_models import cpu, mlp

from aivmm.devices._types import DeviceKind
from aivmm.errors import InfeasibleError
from aivmm.models import load
from aivmm.planner import _isolation, _planner, plan

ORT = ("onnxruntime",)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def spec(tmp_path):
    return load(mlp(tmp_path / "mlp.onnx"))


@pytest.fixture
def isolated_cpu(monkeypatch):
    monkeypatch.setattr(_planner, "ISOLATED_KINDS", frozenset({DeviceKind.CPU}))


def test_first_run_passes_in_a_worker_then_measuring_goes_on_here(spec, isolated_cpu):
    p = plan(spec, [cpu()], backends=ORT, top_k=2, budget_s=0.2)
    assert any("isolated in a worker process" in n and "passed" in n for n in p.notes)
    assert p.chosen.measurement is not None


def test_a_candidate_whose_worker_dies_is_rejected_with_the_reason(spec, isolated_cpu, monkeypatch):
    monkeypatch.setenv(_isolation.FAULT_ENV, "abort")
    with pytest.raises(InfeasibleError, match=r"isolated worker process .*died with signal 6"):
        plan(spec, [cpu()], backends=ORT, top_k=1, budget_s=0.2)
    # this process is untouched: the same model plans and runs here once the fault is gone
    monkeypatch.delenv(_isolation.FAULT_ENV)
    assert plan(spec, [cpu()], backends=ORT, top_k=1, budget_s=0.2, cache=False).chosen.measurement is not None


def test_a_wider_precision_policy_measures_what_fp32_only_would(spec):
    measured = {}
    for policy in ("fp32", "fp16"):
        p = plan(spec, [cpu()], {"precision": policy}, backends=ORT, top_k=2, budget_s=0.2)
        measured[policy] = {c.label for c in (*p.ranked(), *p.rejected) if c.measurement is not None}
    assert measured["fp32"] and measured["fp32"] <= measured["fp16"]
