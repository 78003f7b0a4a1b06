"""plan() end to end on real runtimes (ONNX Runtime, OpenVINO) and the simulated backend."""

from __future__ import annotations

import json
import logging

import pytest
from _planner_models import cpu, embedding, mlp, sim_gpu, strings

from aivmm.errors import ConfigError, DeviceNotFoundError, FallbackError, InfeasibleError
from aivmm.models import load
from aivmm.planner import Constraints, Plan, RejectReason, plan

ORT = ("onnxruntime",)
FAST = {"budget_s": 0.2, "top_k": 4}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def spec(tmp_path):
    return load(mlp(tmp_path / "mlp.onnx"))


def _reasons(p: Plan) -> set[RejectReason]:
    return {r.reason for c in p.rejected for r in c.rejections}


def test_measured_plan_explains_itself(spec):
    p = plan(spec, [cpu()], backends=ORT, **FAST)
    c = p.chosen
    assert c.config.backend == "onnxruntime" and c.config.device == "cpu:0"
    assert c.measurement is not None and c.measurement.runs >= 5
    assert c.measurement.p99_ms >= c.measurement.p50_ms > 0
    assert c.accuracy is not None and c.accuracy["ok"]
    data = json.loads(json.dumps(p.to_json()))
    for key in ("chosen", "alternatives", "rejected", "fallbacks", "planning_seconds", "cache_hit"):
        assert key in data
    for key in (
        "backend",
        "device",
        "precision",
        "options",
        "latency_ms",
        "latency_ms_predicted",
        "latency_ms_measured",
        "p99_ms",
        "memory_bytes",
        "energy_j",
    ):
        assert key in data["chosen"]
    assert data["chosen"]["precision"] == "fp32"
    # the default precision policy is exact: every lowered candidate is kept as rejected, with why
    not_allowed = [c for c in p.rejected if any(r.reason is RejectReason.PRECISION_NOT_ALLOWED for r in c.rejections)]
    assert {c.precision.value for c in not_allowed} >= {"fp16", "int8"}
    text = p.explain()
    assert "onnxruntime@cpu:0" in text and "rejected" in text and "why:" in text


def test_chosen_is_the_fastest_measured_feasible(spec):
    p = plan(spec, [cpu()], backends=ORT, **FAST)
    measured = [c for c in p.ranked() if c.measurement is not None]
    assert len(measured) >= 2
    assert p.chosen.measurement.p50_ms == min(c.measurement.p50_ms for c in measured)


def test_int8_policy_offers_quantised_candidates_checked_for_accuracy(spec):
    p = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, budget_s=1.0, top_k=6)
    int8 = [c for c in p.ranked() if c.precision.value == "int8" and c.measurement is not None]
    assert int8, p.explain()
    assert {c.transform for c in int8} <= {"int8-dynamic", "int8-static"}
    assert all(c.accuracy is not None and c.accuracy["ok"] for c in int8)
    assert all(c.model.quantized_operators for c in int8)  # the backend loads the quantised file


def test_a_tolerance_too_tight_rejects_lowered_precision_with_its_error(spec):
    p = plan(spec, [cpu()], {"precision": "int8", "tolerance": 1e-9}, backends=ORT, budget_s=1.0, top_k=6)
    acc = [c for c in p.rejected if any(r.reason is RejectReason.ACCURACY for r in c.rejections)]
    measured = [c for c in acc if c.measurement is not None]
    assert measured and all("max abs error" in str(c.rejections[-1]) for c in measured)
    # the ones outside the top-k were never run: rejected as unverified, not silently kept
    assert all("unverified" in str(c.rejections[-1]) for c in acc if c.measurement is None)
    assert p.chosen.precision.value == "fp32"


def test_measure_false_plans_from_predictions_and_keeps_fp32(spec):
    p = plan(spec, [cpu()], {"precision": "int8"}, backends=ORT, measure=False)
    assert not p.measured and p.chosen.measurement is None and p.chosen.prediction is not None
    assert all(c.precision.value == "fp32" and not c.transform for c in p.ranked())
    assert RejectReason.ACCURACY in _reasons(p)


def test_unknown_device_and_backend_fail_before_work(spec):
    with pytest.raises(DeviceNotFoundError, match="nvidia:7"):
        plan(spec, [cpu()], device="nvidia:7")
    with pytest.raises(ConfigError, match="unknown backend"):
        plan(spec, [cpu()], backend="tensorflow")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"constraints": {"exclude": ["cpu"]}}, "exclude every device"),
        ({"constraints": {"max_latency_ms": -1}}, "positive"),
        ({"constraints": {"bogus": 1}}, "unknown constraint"),
        ({"budget_s": 0}, "budget_s"),
        ({"top_k": 0}, "top_k"),
        ({"device": "cpu:0", "constraints": {"exclude": ["cpu:0"]}}, "exclude"),
    ],
)
def test_bad_input_is_a_config_error(spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan(spec, [cpu()], **kwargs)


def test_tolerance_without_possible_reference_input_is_a_config_error(tmp_path):
    spec = load(strings(tmp_path / "s.onnx"))
    with pytest.raises(ConfigError, match="tolerance"):
        plan(spec, [cpu()], {"tolerance": 0.1, "precision": "fp16"}, measure=False)


def test_integer_models_get_valid_generated_inputs(tmp_path):
    spec = load(embedding(tmp_path / "e.onnx", vocab=40))
    p = plan(spec, [cpu()], backends=ORT, **FAST)
    assert p.chosen.measurement is not None


def test_infeasible_names_the_best_achievable_figure(spec):
    with pytest.raises(InfeasibleError) as info:
        plan(spec, [cpu()], {"max_latency_ms": 1e-6, "max_memory_bytes": 1}, backends=ORT, **FAST)
    msg = str(info.value)
    assert "max_latency_ms" in msg and "best achievable p50" in msg and "onnxruntime@cpu:0" in msg
    assert "max_memory_bytes" in msg


def test_power_limit_on_a_device_without_a_power_figure_is_infeasible_with_reason(spec):
    with pytest.raises(InfeasibleError, match=r"max_power_w.*not measurable"):
        plan(spec, [cpu()], {"max_power_w": 50}, backends=ORT, **FAST)


def test_simulated_gpu_is_preferred_when_asked(spec):
    gpu = sim_gpu()
    p = plan(spec, [cpu(), gpu], {"prefer": ["gpu"]}, backends=("onnxruntime", "simulated"), **FAST)
    assert p.chosen.config.device == "nvidia:0"
    assert any(c.config.device == "cpu:0" for c in p.alternatives)


def test_excluded_hardware_is_kept_as_rejected(spec):
    p = plan(spec, [cpu(), sim_gpu()], {"exclude": ["nvidia"]}, backends=("onnxruntime", "simulated"), **FAST)
    assert p.chosen.config.device == "cpu:0"
    assert RejectReason.EXCLUDED_BY_USER in _reasons(p)


def test_a_model_too_large_for_the_device_is_rejected(spec):
    tiny = sim_gpu(memory=1024)
    p = plan(spec, [cpu(), tiny], backends=("onnxruntime", "simulated"), **FAST)
    assert p.chosen.config.device == "cpu:0"
    assert any(
        r.reason is RejectReason.DOES_NOT_FIT for c in p.rejected for r in c.rejections if c.config.device == "nvidia:0"
    )


def test_pin_that_cannot_run_falls_back_and_says_so(spec, caplog):
    with caplog.at_level(logging.WARNING):
        p = plan(
            spec,
            [cpu(), sim_gpu()],
            backend="openvino",
            device="nvidia:0",
            backends=("onnxruntime", "openvino", "simulated"),
            **FAST,
        )
    assert p.fallbacks and "nvidia:0" in p.fallbacks[0] and "placed on" in p.fallbacks[0]
    assert any("cannot run" in r.message for r in caplog.records)


def test_strict_pin_refuses_the_fallback(spec):
    with pytest.raises(FallbackError, match="openvino"):
        plan(
            spec,
            [cpu(), sim_gpu()],
            backend="openvino",
            device="nvidia:0",
            strict=True,
            backends=("onnxruntime", "openvino", "simulated"),
            **FAST,
        )


def test_honoured_pin_rejects_the_others_as_not_pinned(spec):
    p = plan(spec, [cpu(), sim_gpu()], device="nvidia:0", backends=("onnxruntime", "simulated"), **FAST)
    assert p.chosen.config.device == "nvidia:0" and not p.fallbacks
    assert RejectReason.NOT_PINNED in _reasons(p)


def test_openvino_and_onnxruntime_both_measured(spec):
    p = plan(spec, [cpu()], backends=("onnxruntime", "openvino"), budget_s=0.6, top_k=4)
    measured = {c.config.backend for c in p.ranked() if c.measurement is not None}
    assert measured == {"onnxruntime", "openvino"}


def test_throughput_objective_ranks_by_throughput(spec):
    p = plan(spec, [cpu()], Constraints(objective="throughput", batch_size=4), backends=ORT, **FAST)
    measured = [c for c in p.ranked() if c.measurement is not None]
    assert p.chosen.measurement.batch_size == 4
    assert p.chosen.measurement.throughput == max(c.measurement.throughput for c in measured)


def test_fast_start_returns_a_ready_candidate_and_upgrades(spec):
    p = plan(spec, [cpu()], backends=ORT, fast_start=True, **FAST)
    assert not p.measured and p.upgrade is not None
    assert p.chosen.precision.value == "fp32" and not p.chosen.transform
    better = p.upgrade.result(timeout=120)
    assert better.measured and better.chosen.measurement is not None and better.upgrade is None


def test_compiling_options_are_not_ready_for_fast_start_nor_measured_within_the_load_budget(spec):
    p = plan(spec, [cpu()], backends=("torch",), fast_start=True, **FAST)
    assert not p.chosen.config.options.get("compile")
    pruned = [c for c in p.rejected if any(r.reason is RejectReason.PRUNED for r in c.rejections)]
    assert pruned and all(c.config.options.get("compile") or c.config.options.get("cuda_graphs") for c in pruned)
    measured = p.upgrade.result(timeout=300)
    compiled = [c for c in measured.ranked() if c.config.options.get("compile")]
    assert compiled and all(c.measurement is None and "predicted load" in " ".join(c.notes) for c in compiled)
    assert measured.chosen.measurement is not None and not measured.chosen.config.options.get("compile")


def test_a_torch_module_is_checked_against_its_own_fp32_run():
    torch = pytest.importorskip("torch")
    module = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)).eval()
    spec = load(module, example_inputs=(torch.randn(1, 8),))
    p = plan(spec, [cpu()], backends=("onnxruntime", "torch"), budget_s=0.2, top_k=2)
    assert p.chosen.config.backend == "torch" and p.chosen.accuracy["ok"]
    assert any("accuracy reference" in n for n in p.notes)
    assert any("does not run torch-module models" in str(r) for c in p.rejected for r in c.rejections)


def test_replicas_share_the_chosen_model_file(spec):
    p = plan(
        spec,
        [cpu(), sim_gpu(0), sim_gpu(1)],
        {"precision": "int8"},
        backends=("onnxruntime", "simulated"),
        measure=False,
    )
    reps = p.replicas(4)
    assert reps[0] is p.chosen and len(reps) == 4
    assert all(c.transform == p.chosen.transform for c in reps)
    assert len({c.config.device for c in reps[:3]}) == 3  # spread over the devices first
