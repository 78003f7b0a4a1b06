"""The backend registry: built-ins, the ``aivmm.backends`` entry-point group of installed dists, and
register()/unregister() at run time. Plugins here are real distributions: a ``.dist-info`` with an
``entry_points.txt`` on ``sys.path``, which is what ``pip install`` leaves behind."""

from __future__ import annotations

import logging
import pathlib
import sys
import textwrap

import _backend_models as _models
import numpy as np
import pytest

from aivmm.backends import Backend, BackendInfo, Config, Support, registry
from aivmm.devices import Device, DeviceKind, Vendor
from aivmm.errors import BackendUnavailableError, ConfigError

PLUGIN = textwrap.dedent("""
    from aivmm.backends import Backend, BackendInfo, Support
    from aivmm.models import ModelFormat


    class EchoBackend(Backend):
        name = "echo-plugin"
        extra = "echo"

        def available(self):
            return Support.yes()

        def info(self):
            return BackendInfo(self.name, frozenset({ModelFormat.ONNX}), frozenset(), frozenset())

        def drives(self, device):
            return Support.no("echo drives nothing")

        def _load(self, model, device, config):
            raise NotImplementedError
""")


def install_dist(root: pathlib.Path, dist: str, entry_points: dict[str, str], module: str | None = None) -> None:
    """Lay out an installed distribution the way pip does (module + dist-info with entry points)."""
    info = root / f"{dist}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[aivmm.backends]\n{lines}\n")
    if module is not None:
        (root / f"{dist}.py").write_text(module)


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    monkeypatch.undo()
    registry.refresh()


def test_builtins_are_listed_with_reasons():
    entries = {e.name: e for e in registry.entries()}
    assert {"onnxruntime", "openvino", "torch", "simulated"} <= set(entries)
    assert entries["onnxruntime"].available.ok
    for entry in entries.values():
        assert entry.available.ok or entry.available.reasons, f"{entry.name} unavailable without a reason"


def test_installed_plugin_is_found_through_its_entry_point(plugin_path):
    install_dist(plugin_path, "aivmm_echo_plugin", {"echo-plugin": "aivmm_echo_plugin:EchoBackend"}, PLUGIN)
    assert "echo-plugin" not in registry.names()  # not seen until the group is re-read
    registry.refresh()
    assert "echo-plugin" in registry.names()
    backend = registry.get("echo-plugin")
    assert isinstance(backend, Backend) and backend.name == "echo-plugin"
    entry = next(e for e in registry.entries() if e.name == "echo-plugin")
    assert entry.target == "aivmm_echo_plugin:EchoBackend" and entry.available.ok


def test_broken_plugin_is_listed_as_unavailable_with_why(plugin_path):
    install_dist(plugin_path, "aivmm_broken_plugin", {"broken-plugin": "aivmm_missing_module:Nope"})
    registry.refresh()
    entry = next(e for e in registry.entries() if e.name == "broken-plugin")
    assert not entry.available
    assert "cannot be imported" in entry.available.reasons[0]
    with pytest.raises(BackendUnavailableError, match="aivmm_missing_module"):
        registry.get("broken-plugin")


def test_plugin_cannot_shadow_a_builtin(plugin_path, caplog):
    install_dist(plugin_path, "aivmm_shadow_plugin", {"onnxruntime": "aivmm_shadow_plugin:Fake"}, "class Fake: ...\n")
    with caplog.at_level(logging.WARNING, logger="aivmm.backends.registry"):
        registry.refresh()
    assert any("already registered" in r.message for r in caplog.records)
    assert type(registry.get("onnxruntime")).__name__ == "OrtBackend"


class _Inline(Backend):
    name = "inline-test"
    extra = "none"

    def available(self) -> Support:
        return Support.no("inline-test is never available")

    def info(self) -> BackendInfo:
        return BackendInfo(self.name, frozenset(), frozenset(), frozenset())

    def drives(self, device):  # pragma: no cover - unavailable
        return Support.no("nothing")

    def _load(self, model, device, config):  # pragma: no cover - unavailable
        raise NotImplementedError


def test_register_and_unregister_at_run_time():
    registry.register("inline-test", _Inline)
    try:
        with pytest.raises(ConfigError, match="already registered"):
            registry.register("inline-test", _Inline)
        assert isinstance(registry.get("inline-test"), _Inline)
        registry.refresh()  # a refresh keeps names registered at run time
        entry = next(e for e in registry.entries() if e.name == "inline-test")
        assert not entry.available and entry.available.reasons == ("inline-test is never available",)
        assert registry.available() == [b for b in registry.available() if b.name != "inline-test"]
    finally:
        registry.unregister("inline-test")
    assert "inline-test" not in registry.names()
    with pytest.raises(BackendUnavailableError, match="unknown backend 'inline-test'"):
        registry.get("inline-test")


def test_register_refuses_bad_targets_and_builtin_removal():
    with pytest.raises(ConfigError, match="module:Class"):
        registry.register("bad-target", "no_colon_here")
    with pytest.raises(ConfigError, match="not a Backend subclass"):
        registry.register("bad-class", dict)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="built-in"):
        registry.unregister("onnxruntime")
    registry.register("not-a-backend", "collections:OrderedDict")
    try:
        with pytest.raises(BackendUnavailableError, match=r"not an aivmm\.backends\.Backend subclass"):
            registry.get("not-a-backend")
    finally:
        registry.unregister("not-a-backend")


# A third-party runtime as a vendor would ship it: onnx's reference evaluator behind the Backend
# interface, for a simulated accelerator (hardware these machines lack). It describes itself only
# through its BackendInfo; nothing in aivmm names it.
ACME = textwrap.dedent("""
    import logging

    import numpy as np
    import onnx
    from onnx.reference import ReferenceEvaluator

    from aivmm.backends import Backend, BackendInfo, OptionEffect, Session, Support
    from aivmm.devices import DeviceKind
    from aivmm.dtypes import Precision
    from aivmm.models import ModelFormat

    __version__ = "1.0"


    class AcmeSession(Session):
        def __init__(self, model, device, config):
            super().__init__(model, device, config)
            checked = config.options.get("check_shapes", False)
            self._ref = ReferenceEvaluator(onnx.load(str(model.source)), check_shape_annotations=checked)
            self._names = [t.name for t in model.outputs]
            logging.getLogger("acme").warning("acme compiled %s", model.name)

        def _run(self, feeds, output):
            return dict(zip(self._names, (np.asarray(o) for o in self._ref.run(None, dict(feeds)))))


    class AcmeBackend(Backend):
        name = "acme"
        extra = "acme"

        def available(self):
            return Support.yes()

        def info(self):
            return BackendInfo(
                self.name, frozenset({ModelFormat.ONNX}), frozenset(DeviceKind), frozenset({Precision.FP32}),
                options={"check_shapes": (False, True)}, versions={"acme": __version__}, call_overhead_ms=0.1,
                effects={"check_shapes": {True: OptionEffect(compute=1.2)}}, loggers=("acme",),
            )

        def drives(self, device):
            return Support.yes() if device.simulated else Support.no("acme drives its own accelerator only")

        def _load(self, model, device, config):
            return AcmeSession(model, device, config)
""")


@pytest.fixture
def acme(plugin_path, monkeypatch):
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(plugin_path / "cache"))
    install_dist(plugin_path, "aivmm_acme_plugin", {"acme": "aivmm_acme_plugin:AcmeBackend"}, ACME)
    registry.refresh()
    yield plugin_path
    sys.modules.pop("aivmm_acme_plugin", None)


def _accelerator() -> Device:
    # Simulated: the stock 'simulated' backend (ONNX Runtime underneath) spends 3 ms a call on it,
    # so the plugin, which adds no device time, is the fastest runtime for it.
    return Device(
        id="acme:0",
        kind=DeviceKind.NPU,
        vendor=Vendor.OTHER,
        name="acme accelerator",
        memory_total_bytes=2**30,
        memory_free_bytes=2**30,
        runtimes=("acme", "simulated"),
        properties={"simulated_latency_ms": 3.0},
        simulated=True,
        source="simulated",
    )


def test_entry_point_backend_is_planned_measured_chosen_and_cached(acme, caplog):
    import aivmm_acme_plugin

    caplog.set_level(logging.INFO)
    from aivmm import VMM
    from aivmm.planner import plan

    model = _models.mlp(acme / "mlp.onnx")
    vmm = VMM([_accelerator()])
    try:
        first = vmm.deploy(str(model), {"precision": "fp32"}, name="first")
        ranked = first.plan.ranked()
        acme_cands = [c for c in ranked if c.config.backend == "acme"]
        # Enumerated from its BackendInfo (both option values) and measured like any built-in.
        assert {c.config.options["check_shapes"] for c in acme_cands} == {True, False}
        assert all(c.measurement is not None for c in acme_cands)
        others = [c for c in ranked if c.config.backend == "simulated" and c.measurement is not None]
        assert others, [c.label for c in ranked]
        chosen = first.plan.chosen
        assert chosen.config.backend == "acme" and not first.plan.cache_hit
        assert chosen.measurement.p50_ms < min(c.measurement.p50_ms for c in others)
        feeds = _models.random_inputs(first.spec, batch=2)
        got = first.execute(feeds)
        want = (
            registry.get("onnxruntime")
            .load(first.spec, _models.host_cpu(), Config("onnxruntime", _models.host_cpu().id))
            .run(feeds)
        )
        for name in want:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)

        again = vmm.deploy(str(model), {"precision": "fp32"}, name="again")
        assert again.plan.cache_hit and again.plan.chosen.config == chosen.config
        # Its logger (BackendInfo.loggers) was captured while measuring, as the built-ins' are.
        quiet = [r for r in caplog.records if r.name == "aivmm.planner._quiet" and "acme compiled" in r.getMessage()]
        assert len(quiet) >= 2
        # Only loads outside measurement reach the root logger (at most one per deploy).
        assert len([r for r in caplog.records if r.name == "acme"]) <= 2
    finally:
        vmm.close()
    # The cache key holds the versions the plugin states: a new release plans again.
    spec = first.spec
    assert plan(spec, [_accelerator()], {"precision": "fp32"}, measure=False).cache_hit is False
    assert plan(spec, [_accelerator()], {"precision": "fp32"}, measure=False).cache_hit is True
    aivmm_acme_plugin.__version__ = "2.0"
    assert plan(spec, [_accelerator()], {"precision": "fp32"}, measure=False).cache_hit is False
