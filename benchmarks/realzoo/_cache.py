"""Where zoo models live on disk, and building each one once even when several processes ask.

A model's folder name carries everything that changes its bytes (the recipe version and the
versions of the packages that build it), so upgrading torch or a wheel builds a fresh copy
instead of reusing a stale one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata

ENV = "AIVMM_REALZOO_CACHE"


def root() -> pathlib.Path:
    where = os.environ.get(ENV) or os.path.join(os.path.expanduser("~"), ".cache", "aivmm-realzoo")
    path = pathlib.Path(where)
    path.mkdir(parents=True, exist_ok=True)
    return path


def version_of(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "absent"


def key(name: str, recipe: int, packages: tuple[str, ...], extra: str = "") -> str:
    versions = ",".join(f"{p}={version_of(p)}" for p in sorted(packages))
    digest = hashlib.sha256(f"{name}|{recipe}|{versions}|{extra}".encode()).hexdigest()[:12]
    return f"{name}-{digest}"


@contextlib.contextmanager
def _locked(folder: pathlib.Path) -> Iterator[None]:
    lock = folder.with_name(folder.name + ".lock")
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def cached(
    folder: pathlib.Path, build: Callable[[pathlib.Path], dict[str, object]], force: bool = False
) -> pathlib.Path:
    """``folder/model.onnx``, built by ``build(tmp)`` (which writes model.onnx and returns metadata) once.

    The build writes into a temporary sibling renamed into place, so a crash never leaves half a
    model where a later run would take it for a finished one.
    """
    model = folder / "model.onnx"
    with _locked(folder):
        if model.exists() and not force:
            return model
        if folder.exists():
            shutil.rmtree(folder)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
        try:
            meta = build(tmp)
            if not (tmp / "model.onnx").exists():
                raise RuntimeError(f"the recipe for {folder.name} wrote no model.onnx")
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
            os.replace(tmp, folder)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def meta(folder: pathlib.Path) -> dict[str, object]:
    path = folder / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}
