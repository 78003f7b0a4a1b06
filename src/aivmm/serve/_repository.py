"""Where models come from: a Triton-style directory, flat ``.onnx`` files, or the built-in zoo.

Layouts accepted in one directory, side by side::

    DIR/<model>/<version>/model.onnx   (+ DIR/<model>/config.pbtxt and/or config.json)
    DIR/<name>.onnx                    (version "1")
    DIR/<model>/{model.onnx, config.json, tokenizer.json, ...}
                                       an LLM: a Hugging Face / Optimum export as it is (version "1";
                                       its config.json is the model's, so only config.pbtxt is read)
    DIR/<model>/<version>/{model.onnx, config.json, ...}
                                       versions of an LLM export (DIR/<model>/config.json is aivmm's)

An LLM version's "file" is its export directory: ``VMM.deploy`` takes the directory and returns
a DeployedLLM.

Security: a name from a client is one path component of safe characters; every file it resolves
to must lie inside the repository after symlinks are followed. Anything else is a
PermissionDeniedError, never a read outside the directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import re

from aivmm.errors import ConfigError, ModelNotFoundError, PermissionDeniedError
from aivmm.serve import _model_config
from aivmm.serve._model_config import ModelConfig

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}$")


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """A model the repository can load: its versions (number -> file) and its config."""

    name: str
    versions: tuple[tuple[int, pathlib.Path], ...]
    config: ModelConfig

    def file(self, version: int) -> pathlib.Path:
        for v, path in self.versions:
            if v == version:
                return path
        raise ModelNotFoundError(
            f"model {self.name!r} has no version {version}; versions: {[v for v, _ in self.versions]}"
        )

    @property
    def llm(self) -> bool:
        """Its versions are LLM export directories (deployed as DeployedLLM)."""
        return any(path.is_dir() for _, path in self.versions)

    def selected(self) -> list[int]:
        """The versions the config's version policy serves."""
        return self.config.versions.select([v for v, _ in self.versions])


class Repository:
    """A model repository directory (``root``), or the built-in zoo when ``root`` is None."""

    def __init__(self, root: str | os.PathLike[str] | None, *, zoo_size: str = "tiny") -> None:
        if zoo_size not in ("tiny", "full"):
            raise ConfigError(f"zoo size must be 'tiny' or 'full', got {zoo_size!r}")
        self.zoo_size = zoo_size
        if root is None:
            self.root: pathlib.Path | None = None
        else:
            path = pathlib.Path(root)
            if not path.is_dir():
                raise ConfigError(f"model repository {str(path)!r} is not a directory")
            self.root = path.resolve()

    @property
    def label(self) -> str:
        return str(self.root) if self.root is not None else f"<built-in zoo, {self.zoo_size}>"

    def names(self) -> list[str]:
        """Every model name the repository holds, whether or not it loads cleanly."""
        if self.root is None:
            from aivmm.models import zoo

            return sorted(zoo.names())
        found: set[str] = set()
        for entry in self.root.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and _NAME.match(entry.name):
                found.add(entry.name)
            elif entry.suffix == ".onnx" and entry.is_file() and _NAME.match(entry.stem):
                found.add(entry.stem)
        return sorted(found)

    def source(self, name: str) -> ModelSource:
        """Resolve a client-given model name; refuses anything that could leave the repository."""
        check_name(name)
        if self.root is None:
            return self._zoo_source(name)
        model_dir = self.root / name
        flat = self.root / f"{name}.onnx"
        if model_dir.is_dir():
            self._inside(model_dir, name)
            if is_export(model_dir):
                config = _model_config.read(model_dir, name, aivmm_json=False)
                return ModelSource(name, ((1, self._inside(model_dir, name)),), config)
            llm = any(is_export(e) for e in model_dir.iterdir() if e.is_dir() and e.name.isdigit())
            config = _model_config.read(model_dir, name, llm=llm)
            versions = []
            for entry in model_dir.iterdir():
                if entry.is_dir() and entry.name.isdigit() and int(entry.name) > 0:
                    path = entry / config.filename
                    if is_export(entry):
                        versions.append((int(entry.name), self._inside(entry, name)))
                    elif path.is_file():
                        versions.append((int(entry.name), self._inside(path, name)))
            if not versions:
                raise ModelNotFoundError(
                    f"model {name!r}: no version directory with {config.filename} in {model_dir} "
                    f"(expected {model_dir}/<version>/{config.filename})"
                )
            return ModelSource(name, tuple(sorted(versions)), config)
        if flat.is_file():
            return ModelSource(name, ((1, self._inside(flat, name)),), ModelConfig(name=name))
        raise ModelNotFoundError(f"no model {name!r} in repository {self.label}; models: {self.names() or 'none'}")

    def _inside(self, path: pathlib.Path, name: str) -> pathlib.Path:
        assert self.root is not None
        real = path.resolve()
        if not real.is_relative_to(self.root):
            raise PermissionDeniedError(
                f"model {name!r}: {path} resolves to {real}, outside the repository {self.root}"
            )
        return real

    def _zoo_source(self, name: str) -> ModelSource:
        from aivmm.models import zoo

        if name not in zoo.names():
            raise ModelNotFoundError(f"no model {name!r} in the built-in zoo; models: {sorted(zoo.names())}")
        path = pathlib.Path(zoo.build(name, self.zoo_size))
        return ModelSource(name, ((1, path),), ModelConfig(name=name, sources=("zoo",)))


def is_export(directory: pathlib.Path) -> bool:
    """A Hugging Face style export: an ONNX file next to a transformers ``config.json``."""
    cfg = directory / "config.json"
    if not cfg.is_file() or not any(directory.glob("*.onnx")):
        return False
    try:
        doc = json.loads(cfg.read_text(errors="replace"))
    except ValueError:
        return False
    return isinstance(doc, dict) and ("model_type" in doc or "architectures" in doc)


def check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name) or ".." in name:
        raise PermissionDeniedError(
            f"model name {name!r} is not allowed: use letters, digits, '_', '-' and '.', no path separators"
        )
