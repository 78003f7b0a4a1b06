"""Fixtures for the backend suites: tiny models on disk, the host CPU, and the (backend, device) cases.

Cases are every registered backend that is available here × every discovered device it drives, so a new
backend (the torch one, a plugin) joins the contract suite by registering, with no edit here.
"""

from __future__ import annotations

import dataclasses
import pathlib

import _backend_models as _models
import pytest

from aivmm.backends import registry
from aivmm.devices._types import Device
from aivmm.models._spec import ModelSpec


@dataclasses.dataclass(frozen=True)
class Case:
    backend: str
    device: Device

    @property
    def id(self) -> str:
        return f"{self.backend}@{self.device.id}"


def _devices() -> tuple[Device, ...]:
    try:
        from aivmm.devices import discover
    except ImportError:
        return (_models.host_cpu(),)
    found = tuple(discover())
    return found or (_models.host_cpu(),)


def _cases() -> list[Case]:
    devices = _devices()
    cases = []
    for entry in registry.entries():
        if not entry.available:
            continue
        backend = registry.get(entry.name)
        cases.extend(Case(entry.name, d) for d in devices if backend.drives(d))
    return cases


CASES = _cases()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", CASES, ids=[c.id for c in CASES])


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    root = tmp_path_factory.mktemp("models")
    for name, build in _models.BUILDERS.items():
        build(root / f"{name}.onnx")
    _models.custom_op(root / "custom_op.onnx")
    _models.qdq(root / "qdq.onnx")
    return root


@pytest.fixture(scope="session")
def specs(model_dir: pathlib.Path) -> dict[str, ModelSpec]:
    return {p.stem: _models.spec_of(p) for p in sorted(model_dir.glob("*.onnx"))}


@pytest.fixture(scope="session")
def cpu() -> Device:
    return _models.host_cpu()


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # Compiled-model and engine caches go to a temporary directory, never the user's.
    monkeypatch.setenv("AIVMM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "aivmm-cache"))
