"""Bounded profiling and the energy counters it reads."""

from __future__ import annotations

import pytest
from _planner_models import cpu, mlp, sim_gpu

from aivmm.backends import registry
from aivmm.backends._base import Config
from aivmm.errors import ConfigError
from aivmm.models import load
from aivmm.optimize import sample_inputs
from aivmm.planner.profile import Budget, profile
from aivmm.telemetry import energy_counter


def _rapl(root, packages=1, value=1_000_000):
    for i in range(packages):
        zone = root / f"intel-rapl:{i}"
        zone.mkdir(parents=True)
        (zone / "energy_uj").write_text(f"{value}\n")
        (zone / "max_energy_range_uj").write_text("262143328850\n")
        sub = root / f"intel-rapl:{i}:0"  # a sub-zone (core): counted inside its package, not twice
        sub.mkdir()
        (sub / "energy_uj").write_text("5\n")
    return root


def test_profile_is_bounded_and_reports_percentiles(tmp_path):
    spec = load(mlp(tmp_path / "m.onnx"))
    feeds = sample_inputs(spec)
    m, outputs = profile(
        registry.get("onnxruntime"),
        spec,
        cpu(),
        Config("onnxruntime", "cpu:0"),
        feeds,
        Budget(seconds=10.0, warmup_runs=2, min_runs=3, max_runs=7),
        rapl_root=str(tmp_path / "x"),
    )
    assert m.runs == 7  # max_runs stops it long before the 10 s budget
    assert m.warmup_runs == 2
    assert 0 < m.p50_ms <= m.p99_ms
    assert m.energy_j is None and "RAPL" in m.energy_source
    assert m.memory_source in ("vmhwm", "rss-delta")
    assert len(outputs) == 1 and outputs[0].shape == (1, 10)


def test_profile_reads_rapl_energy(tmp_path):
    spec = load(mlp(tmp_path / "m.onnx"))
    root = _rapl(tmp_path / "powercap")
    m, _ = profile(
        registry.get("onnxruntime"),
        spec,
        cpu(),
        Config("onnxruntime", "cpu:0"),
        sample_inputs(spec),
        Budget(seconds=0.05, warmup_runs=1, min_runs=2, max_runs=5),
        rapl_root=str(root),
    )
    assert m.energy_source == "rapl" and m.energy_j == 0.0  # the fake counter did not move


def test_rapl_counter_sums_packages_and_handles_wraparound(tmp_path):
    root = _rapl(tmp_path / "powercap", packages=2, value=262143328000)
    meter, why = energy_counter(cpu(), rapl_root=str(root))
    assert meter is not None and why == ""
    (root / "intel-rapl:0" / "energy_uj").write_text("1000\n")  # wrapped: +1850 uj
    (root / "intel-rapl:1" / "energy_uj").write_text("262143330000\n")  # +2000 uj
    assert meter.read_j() == pytest.approx((1850 + 2000) / 1e6)


def test_energy_counters_say_why_not(tmp_path):
    meter, why = energy_counter(cpu(), rapl_root=str(tmp_path))
    assert meter is None and "no RAPL zones" in why
    meter, why = energy_counter(sim_gpu())
    assert meter is None and "simulated" in why


@pytest.mark.parametrize(
    "kwargs", [{"seconds": 0}, {"min_runs": 0}, {"min_runs": 5, "max_runs": 2}, {"warmup_runs": -1}]
)
def test_bad_budget(kwargs):
    with pytest.raises(ConfigError):
        Budget(**kwargs)


def test_race_interleaves_finalists_one_at_a_time(tmp_path):
    from aivmm.planner.profile import race_rounds

    spec = load(mlp(tmp_path / "m.onnx"))
    ort = registry.get("onnxruntime")
    entries = [
        (ort, spec, cpu(), Config("onnxruntime", "cpu:0", options={"graph_optimization_level": level}))
        for level in ("all", "basic")
    ]
    budget = Budget(seconds=1e-3, warmup_runs=1, min_runs=2, max_runs=8)
    r = race_rounds(entries, sample_inputs(spec), budget, block=4, max_extensions=0)
    assert [len(x) for x in r.rounds] == [2, 2]  # min_runs rounds each, bounded by the budget
    assert [len(c) for c in r.calls] == [6, 6]  # per round: one warm-up call, three timed
    assert [len(w) for w in r.warmup] == [3, 3]  # the session warm-up and each turn's first call
    assert all(t > 0 for ts in r.calls for t in ts) and r.extended == 0


def test_race_goes_on_while_the_leaders_are_within_the_noise_margin(tmp_path):
    from aivmm.planner.profile import race_rounds

    spec = load(mlp(tmp_path / "m.onnx"))
    ort = registry.get("onnxruntime")
    same = Config("onnxruntime", "cpu:0", options={"graph_optimization_level": "all"})
    budget = Budget(seconds=1e-3, warmup_runs=1, min_runs=2, max_runs=8)
    # The same configuration twice: medians within any margin, so the race is lengthened to its cap.
    r = race_rounds([(ort, spec, cpu(), same)] * 2, sample_inputs(spec), budget, block=4, margin=10.0, max_extensions=2)
    assert r.extended == 2 and len(r.rounds[0]) > 2


def test_only_a_backend_with_an_allocator_peak_answers_peak_memory(tmp_path):
    """torch keeps one on CUDA (tests/gpu); on the CPU no session has one, so the planner measures
    the process's peak resident memory (test_profile_is_bounded_and_reports_percentiles)."""
    spec = load(mlp(tmp_path / "m.onnx"))
    for name in ("onnxruntime", "torch"):
        with registry.get(name).load(spec, cpu(), Config(name, "cpu:0")) as session:
            assert session.peak_memory() is None
