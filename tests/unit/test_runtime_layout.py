"""The engine's parts talk through public names only (issue 16): checked on the source, by AST."""

from __future__ import annotations

import ast
import pathlib

import pytest

import aivmm
from aivmm.runtime import Engine
from aivmm.runtime._toy import simulated_device

SRC = pathlib.Path(aivmm.__file__).parent
RUNTIME = SRC / "runtime"
# Names a runtime object is held under elsewhere (``self._engine``, ``vmm.engine``, ``handle``...).
RUNTIME_ROLES = (
    "engine",
    "handle",
    "dispatcher",
    "residency",
    "loader",
    "fleet",
    "catalog",
    "failover",
    "replica",
    "executor",
    "ledger",
)
# The parts Engine composes, each a class with a documented public API.
PARTS = {
    "_engine.py": "Engine",
    "_fleet.py": "DeviceFleet",
    "_catalog.py": "ModelCatalog",
    "_dispatch.py": "Dispatcher",
    "_loading.py": "ModelLoader",
    "_failover.py": "Failover",
    "_residency.py": "ResidencyManager",
    "_executor.py": "DeviceExecutor",
    "_handle.py": "ModelHandle",
    "_request.py": "RequestOptions",
}


def _private_accesses(path: pathlib.Path) -> list[tuple[int, str, ast.expr]]:
    """``x._name`` where ``x`` is not ``self``/``cls``: reaching into another object."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if (
            isinstance(node, ast.Attribute)
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        ):
            found.append((node.lineno, ast.unparse(node), node.value))
    return found


def _holder(value: ast.expr) -> str:
    """The last name in ``a.b.c`` (``c``), what the accessed object is called where it is used."""
    if isinstance(value, ast.Attribute):
        return value.attr
    if isinstance(value, ast.Name):
        return value.id
    return ""


def test_runtime_modules_use_only_public_names_of_each_other():
    offences = [
        f"{p.name}:{line} {text}" for p in sorted(RUNTIME.glob("*.py")) for line, text, _ in _private_accesses(p)
    ]
    assert offences == []


def test_no_package_reaches_into_runtime_objects():
    offences = []
    for path in sorted(SRC.rglob("*.py")):
        if RUNTIME in path.parents:
            continue
        for line, text, value in _private_accesses(path):
            if any(role in _holder(value).lower() for role in RUNTIME_ROLES):
                offences.append(f"{path.relative_to(SRC)}:{line} {text}")
    assert offences == []


def test_the_check_catches_a_private_call_through_an_attribute(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("class H:\n    def infer(self):\n        return self._engine._infer(self)\n")
    ((line, text, value),) = _private_accesses(bad)
    assert (line, text, _holder(value)) == (3, "self._engine._infer", "_engine")


@pytest.mark.parametrize(("module", "cls"), sorted(PARTS.items()))
def test_each_part_documents_its_public_api(module, cls):
    tree = ast.parse((RUNTIME / module).read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls]
    undocumented = [
        m.name
        for m in node.body
        if isinstance(m, ast.FunctionDef | ast.AsyncFunctionDef)
        and not m.name.startswith("_")
        and not ast.get_docstring(m)
    ]
    assert ast.get_docstring(node) and undocumented == []


def test_engine_is_a_facade_over_its_parts(tmp_path):
    dev = simulated_device("nvidia:0")
    with Engine([dev], work_dir=tmp_path) as engine:
        assert engine.dispatcher.request_observers is engine.request_observers
        assert engine.residency.ledger is engine.ledger
        assert [d.id for d in engine.fleet.devices] == ["nvidia:0"]
        assert engine.catalog.names() == engine.models() == []
    tree = ast.parse((RUNTIME / "_engine.py").read_text())
    (node,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Engine"]
    methods = [m for m in node.body if isinstance(m, ast.FunctionDef)]
    assert len(methods) <= 16 and all(len(m.body) <= 25 for m in methods)
