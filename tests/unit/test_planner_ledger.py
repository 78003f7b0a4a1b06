"""The planner against the memory ledger, and the measured session handed to the runtime.

Real ONNX Runtime sessions throughout; the second device is the simulated backend's GPU (its
sessions run on ONNX Runtime's CPU provider) because this machine has none.
"""

from __future__ import annotations

import collections
import pathlib

import numpy as np
import onnx
import pytest
from _planner_models import cpu, mlp, sim_gpu

import aivmm
from aivmm.backends import Backend
from aivmm.errors import FallbackError
from aivmm.memory import Ledger
from aivmm.models import load
from aivmm.planner import Bench, RejectReason, identity, plan


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


class _Spy:
    """Backend.load calls per configuration label, and protobuf parses of one file's bytes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, path: pathlib.Path) -> None:
        self.loads: collections.Counter[str] = collections.Counter()
        self.parses = 0
        data = path.read_bytes()
        load_, parse_ = Backend.load, onnx.ModelProto.ParseFromString

        def spy_load(backend, model, device, config):
            self.loads[config.label()] += 1
            return load_(backend, model, device, config)

        def spy_parse(proto, blob):
            self.parses += blob == data
            return parse_(proto, blob)

        monkeypatch.setattr(Backend, "load", spy_load)
        monkeypatch.setattr(onnx.ModelProto, "ParseFromString", spy_parse)


def test_deploy_parses_once_measures_each_config_once_and_the_engine_adopts_the_winner(tmp_path, monkeypatch):
    path = mlp(tmp_path / "mlp.onnx")
    spy = _Spy(monkeypatch, path)
    with aivmm.VMM([cpu()]) as v:
        model = v.deploy(path, backend="onnxruntime", measure=True)
        chosen = model.plan.chosen.config.label()
        assert spy.parses == 1, "the loader's parse is shared by input generation, checks and loads"
        assert spy.loads[chosen] == 1, spy.loads  # measured once, raced and served by that same session
        assert max(spy.loads.values()) == 1  # the race reused every measured session too
        replica = model.handle.replicas[0]
        assert [m.kind for m in replica.loads] == ["load-adopted"]
        # Only the served replica holds memory: the losers' reservations were released.
        assert [e.key for e in v.engine.ledger.entries()] == [replica.key]
        assert model.execute(np.ones((2, 32), np.float32))["y"].shape == (2, 10)
        model.close()
        assert v.engine.ledger.entries() == []
        # A plan-cache hit measures nothing: one parse (the analysis) and one session (the engine's).
        spy.loads.clear()
        spy.parses = 0
        again = v.deploy(path, backend="onnxruntime", name="again")
        assert again.plan.cache_hit and spy.parses == 1 and sum(spy.loads.values()) == 1


def test_a_device_full_of_another_model_is_left_out_with_the_reason_and_strict_refuses(tmp_path):
    big = mlp(tmp_path / "big.onnx", d=256, h=1024)  # ~1.0 MiB of weights
    small = mlp(tmp_path / "small.onnx", d=64, h=512)  # ~0.15 MiB
    with aivmm.VMM([cpu(), sim_gpu()], memory_budget={"nvidia:0": "1.2MiB"}) as v:
        v.deploy(big, device="nvidia:0", name="big", measure=False)
        assert v.engine.ledger.free("nvidia:0") < 0.2 * 2**20
        model = v.deploy(small, {"prefer": ["gpu"]}, measure=False)
        assert model.plan.chosen.config.device == "cpu:0"
        full = [r.detail for c in model.plan.rejected for r in c.rejections if r.reason is RejectReason.DEVICE_FULL]
        assert full and all("big#0@nvidia:0" in d and "free in the memory ledger" in d for d in full)
        assert any("nvidia:0 left out for lack of free memory" in f for f in model.plan.fallbacks)
        assert "device-full" in model.plan.explain()
        with pytest.raises(FallbackError, match="nvidia:0 left out for lack of free memory"):
            v.deploy(small, {"prefer": ["gpu"]}, measure=False, strict=True, name="strict")
        # Pinned there, the model still goes there: loading it evicts the idle one (overcommit).
        pinned = v.deploy(small, device="nvidia:0", measure=False, name="pinned")
        assert pinned.plan.chosen.config.device == "nvidia:0"
        assert any("evicts idle models" in n for n in pinned.plan.chosen.notes)
        assert v.get("big").handle.replicas[0].eviction_count == 1
        # Plans shaped by what else is resident are not cached: only big's own plan was stored.
        assert len(list((tmp_path / "cache" / "plans").glob("*.json"))) == 1


def test_measuring_reserves_in_the_ledger_and_the_bench_keeps_only_the_winner(tmp_path):
    spec = load(mlp(tmp_path / "mlp.onnx"))
    ledger = Ledger({"cpu:0": 64 * 2**20})
    seen: list[int] = []
    original = Bench.open

    def watching(self, *args, **kwargs):
        session = original(self, *args, **kwargs)
        seen.append(len(ledger.entries("cpu:0")))
        return session

    bench = Bench(ledger)
    bench.open = watching.__get__(bench)  # type: ignore[method-assign]
    p = plan(spec, [cpu()], backends=("onnxruntime",), budget_s=0.2, top_k=3, ledger=ledger, bench=bench)
    assert seen and max(seen) >= 2  # sessions measured so far stay open (and reserved) for the race
    assert len(bench) == 1 and bench.get(identity(p.chosen)) is not None
    (entry,) = ledger.entries()
    held = bench.take(identity(p.chosen))
    assert held is not None and held.ledger_key == entry.key and not held.session.closed
    held.close(ledger)
    assert ledger.entries() == [] and held.session.closed


def test_a_budget_for_one_session_at_a_time_still_plans_and_is_never_exceeded(tmp_path):
    from aivmm.memory import estimate

    spec = load(mlp(tmp_path / "mlp.onnx"))
    need = estimate(spec).total
    ledger = Ledger({"cpu:0": need + need // 2})  # room for one measured session, not two
    with Bench(ledger) as bench:
        p = plan(spec, [cpu()], backends=("onnxruntime",), budget_s=0.2, top_k=3, ledger=ledger, bench=bench)
        assert p.chosen.measurement is not None
        assert ledger.peak("cpu:0") <= ledger.capacity("cpu:0")
        assert len(bench) <= 1
    assert ledger.entries() == []


def test_a_replan_switches_to_the_session_it_measured(tmp_path, monkeypatch):
    path = mlp(tmp_path / "mlp.onnx")
    with aivmm.VMM([cpu()]) as v:
        model = v.deploy(path, backend="openvino", measure=False)
        # Re-planned under another pin, so the plan must move (to ONNX Runtime) and switch.
        model._options = model._options.replace(backend="onnxruntime")
        spy = _Spy(monkeypatch, path)
        new = model.replan(np.ones((3, 32), np.float32)).result(timeout=120)
        assert new.chosen.config.backend == "onnxruntime" and model.plan is new
        assert spy.loads[new.chosen.config.label()] == 1  # measured, then served by that same session
        assert [m.kind for m in model.handle.replicas[0].loads] == ["load-adopted"]
        assert [e.key for e in v.engine.ledger.entries()] == [model.handle.replicas[0].key]


def test_a_fast_start_upgrade_adopts_the_session_it_measured(tmp_path, monkeypatch):
    import time

    path = mlp(tmp_path / "mlp.onnx")
    with aivmm.VMM([cpu()]) as v:
        spy = _Spy(monkeypatch, path)
        model = v.deploy(path, backend="onnxruntime", fast_start=True)
        quick = model.plan
        assert quick.upgrade is not None
        measured = quick.upgrade.result(timeout=120)
        deadline = time.monotonic() + 30
        while model.plan is quick and time.monotonic() < deadline:
            time.sleep(0.02)
        assert model.plan is measured and spy.parses == 1  # the parse is kept until the upgrade is done
        label = measured.chosen.config.label()
        if measured.chosen.config != quick.chosen.config:  # switched: to the session it measured
            assert spy.loads[label] == 1
            assert [m.kind for m in model.handle.replicas[0].loads] == ["load-adopted"]
        else:  # kept the quick placement: the engine's load and the measurement's
            assert spy.loads[label] == 2
        assert [e.key for e in v.engine.ledger.entries()] == [model.handle.replicas[0].key]


def test_external_weights_are_read_without_parsing_the_graph_again(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from aivmm.backends import Config, registry

    src = onnx.load(str(mlp(tmp_path / "inline.onnx")))
    path = tmp_path / "external.onnx"
    onnx.save(
        src, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin", size_threshold=0
    )
    spec = load(path)
    assert spec.external_data
    spy = _Spy(monkeypatch, path)
    x = np.ones((2, 32), np.float32)
    out = {}
    for backend in ("torch", "onnxruntime"):
        with registry.get(backend).load(spec, cpu(), Config(backend, "cpu:0")) as session:
            out[backend] = session.run({"x": x})["y"]
    np.testing.assert_allclose(out["torch"], out["onnxruntime"], rtol=1e-5, atol=1e-5)
    assert spy.parses == 0  # the loader's parse served the checks, the torch lowering and its weights
