"""Options for shared CPU cores (``BackendInfo.shared_cores``): ONNX Runtime's threads stop spinning
when other sessions share the cores, in the planner's race and beside other models, and the plan says
why. The session measured is the one served, so the measurement and execution use the same setting.
"""

from __future__ import annotations

import pytest
from _planner_models import cpu, mlp

from aivmm.backends import registry
from aivmm.memory import Ledger
from aivmm.models import load
from aivmm.planner import Bench, identity, plan

ORT = ("onnxruntime",)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


def _spinning_notes(c):
    return [n for n in c.notes if n.startswith("allow_spinning=False")]


def test_onnxruntime_says_its_cpu_sessions_stop_spinning_when_cores_are_shared():
    info = registry.get("onnxruntime").info()
    assert dict(info.shared_cores) == {"allow_spinning": False}
    with pytest.raises(TypeError):
        info.shared_cores["allow_spinning"] = True  # type: ignore[index]


def test_a_measured_plan_races_and_serves_the_session_without_spinning(tmp_path):
    spec = load(mlp(tmp_path / "mlp.onnx"))
    bench = Bench(None)
    p = plan(spec, [cpu()], backends=ORT, budget_s=0.2, top_k=2, bench=bench)
    assert p.chosen.config.options["allow_spinning"] is False
    (why,) = _spinning_notes(p.chosen)
    assert "finalist race" in why
    assert "allow_spinning=False: other sessions share the cores" in p.explain()
    held = bench.take(identity(p.chosen))
    assert held is not None
    so = held.session._sess.get_session_options()  # the adopted session: measured as it will serve
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    held.close(None)


def test_an_unmeasured_plan_keeps_spinning_alone_and_stops_beside_other_models(tmp_path):
    spec = load(mlp(tmp_path / "mlp.onnx"))
    alone = plan(spec, [cpu()], backends=ORT, measure=False)
    assert "allow_spinning" not in alone.chosen.config.options and not _spinning_notes(alone.chosen)
    ledger = Ledger({"cpu:0": 2**30})
    assert ledger.try_reserve("other-model", "cpu:0", 2**20)
    shared = plan(spec, [cpu()], backends=ORT, measure=False, ledger=ledger)
    assert shared.chosen.config.options["allow_spinning"] is False
    (why,) = _spinning_notes(shared.chosen)
    assert "1 other model(s) held on cpu:0" in why and "other-model" in why
