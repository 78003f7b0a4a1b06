"""Layering: no package imports another package's private modules or names; lazy tables resolve.

The rule. Each directory under ``src/aivmm`` is a package (``devices``, ``models``, ``backends``,
``planner`` …); the top-level modules (``vmm.py``, ``errors.py``, ``dtypes.py``, ``onnx_backend.py``
…) form the core package ``aivmm``. Code in one package may import another package only through
its public face: the package itself (``from aivmm.devices import Device``) or a public module of it
(``aivmm.planner.constraints``, ``aivmm.backends.tensors``). A path part or an imported name that
starts with ``_`` is private to its package. The core's private helper modules ``aivmm._lazy``,
``aivmm._storage``, ``aivmm._version``, ``aivmm._onnx_reference`` and ``aivmm._conformance`` belong
to the core package ``aivmm`` and may be imported by any package. Inside one package (its
subpackages included, e.g. ``models/zoo`` → ``models._spec``) private imports are free.

Checked by parsing every file with ``ast``: module-level and function-local ``import`` /
``from … import`` statements, and ``importlib.import_module("…")`` / ``"module:attr"`` targets
given as string literals. If a package needs something another package keeps private, export it
from that package's ``__init__`` (lazily, through :mod:`aivmm._lazy`, where it is heavy or would
close an import cycle).

Also here: every deferred package name goes through :class:`aivmm._lazy.LazyExports` and resolves
to a name of the package's ``__all__``; the two plugin registries (backends, device probes) are one
:class:`aivmm._lazy.LazyTable` and behave alike (duplicates refused, run-time names kept across a
refresh, built-ins not removable).
"""

from __future__ import annotations

import ast
import importlib
import pathlib

import pytest

import aivmm
from aivmm._lazy import LazyExports

SRC = pathlib.Path(aivmm.__file__).parent
CORE_SHARED = {"aivmm._lazy", "aivmm._storage", "aivmm._version", "aivmm._onnx_reference", "aivmm._conformance"}
PACKAGES = sorted(p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists())


def _package_of(path: pathlib.Path) -> str:
    parts = path.relative_to(SRC).parts
    return parts[0] if len(parts) > 1 else "aivmm"


def _target_package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PACKAGES else "aivmm"


def _imports(tree: ast.AST) -> list[tuple[int, str, str | None]]:
    """(line, module, imported name or None) for every import the file makes."""
    out: list[tuple[int, str, str | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.lineno, node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((node.lineno, a.name, None) for a in node.names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if called == "import_module" and isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                out.append((node.lineno, arg.value, None))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("aivmm."):
            module, sep, attr = node.value.partition(":")
            if sep and module.replace(".", "").replace("_", "").isalnum():  # a "module:attr" lazy target
                out.append((node.lineno, module, attr.split(".")[0]))
    return out


def _offences(path: pathlib.Path, text: str | None = None) -> list[str]:
    mine = _package_of(path)
    rel = path.relative_to(SRC.parent)
    out = []
    source = path.read_text() if text is None else text
    for line, module, name in _imports(ast.parse(source, str(path))):
        parts = module.split(".")
        if parts[0] != "aivmm" or module in CORE_SHARED or _target_package(module) == mine:
            continue
        private = [p for p in parts[1:] if p.startswith("_")]
        if name is not None and name.startswith("_") and not name.startswith("__"):
            private.append(name)
        if private:
            shown = f"{module}:{name}" if name else module
            out.append(f"{rel}:{line}: {mine} imports {shown} (private to {_target_package(module)})")
    return out


def test_no_package_imports_another_packages_private_parts() -> None:
    offences = [o for path in sorted(SRC.rglob("*.py")) for o in _offences(path)]
    assert not offences, "private cross-package imports:\n" + "\n".join(offences)


def test_the_checker_catches_each_form(tmp_path: pathlib.Path) -> None:
    # the checker itself must be able to fail: every form of private import is reported
    src = (
        "from aivmm.models._spec import ModelSpec\n"
        "import aivmm.memory._ledger\n"
        "from aivmm.optimize import _probe\n"
        "def f():\n"
        "    from aivmm.devices._types import Device\n"
        "    importlib.import_module('aivmm.serve._http')\n"
        "T = {'x': 'aivmm.runtime._engine:Engine'}\n"
        "from aivmm.models import ModelSpec\n"
        "from aivmm._storage import cache_root\n"
        "from aivmm.planner._plan import Plan\n"
    )
    fake = SRC / "planner" / "_layering_probe.py"  # a path inside planner, never written
    offences = _offences(fake, src)
    assert [int(o.split(":")[1]) for o in offences] == [1, 2, 3, 5, 6, 7], offences
    assert "planner imports aivmm.models._spec:ModelSpec (private to models)" in offences[0]


@pytest.mark.parametrize("package", ["aivmm", *(f"aivmm.{p}" for p in PACKAGES)])
def test_lazy_tables_resolve_to_exported_names(package: str) -> None:
    module = importlib.import_module(package)
    hook = module.__dict__.get("__getattr__")
    if hook is None:
        return  # an eager package: nothing deferred
    assert isinstance(hook, LazyExports), f"{package} defers names without aivmm._lazy"
    exported = set(module.__all__)
    for name, target in hook.table.items():
        assert name in exported, f"{package}: lazy name {name!r} is not in __all__"
        assert ":" in target or name == "errors", f"{package}: {name!r} -> {target!r} is not 'module:attr'"
        if name in {"ServerMetrics", "device_rows"}:
            pytest.importorskip("prometheus_client")
        assert getattr(module, name) is not None
    with pytest.raises(AttributeError, match="no attribute"):
        module.__getattr__("surely_not_a_name")


@pytest.mark.parametrize(
    ("registry_module", "target"),
    [
        ("aivmm.backends.registry", "aivmm.backends.simulated:SimulatedBackend"),
        ("aivmm.devices._registry", "aivmm.devices._cpu:probe"),
    ],
)
def test_both_plugin_registries_behave_as_one_lazy_table(registry_module: str, target: str) -> None:
    from aivmm.errors import ConfigError

    registry = importlib.import_module(registry_module)
    builtin = registry.names()[0]
    registry.register("layering-test", target)
    try:
        registry.refresh()  # re-reading entry points keeps names registered at run time
        assert "layering-test" in registry.names()
        with pytest.raises(ConfigError, match="already registered"):
            registry.register("layering-test", target)
        with pytest.raises(ConfigError, match="must be 'module:"):
            registry.register("layering-bad", "no_colon_here")
        with pytest.raises(ConfigError, match="built-in"):
            registry.unregister(builtin)
    finally:
        registry.unregister("layering-test")
    assert "layering-test" not in registry.names()
