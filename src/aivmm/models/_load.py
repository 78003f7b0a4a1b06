"""``load()``: one entry point for ONNX files and PyTorch modules / exported programs."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from aivmm.errors import ConfigError, ModelLoadError, missing_extra
from aivmm.models._spec import ModelSpec


def load(
    path_or_module: str | os.PathLike[str] | Any,
    *,
    shapes: Mapping[str, Sequence[int]] | None = None,
    example_inputs: Any = None,
    name: str | None = None,
) -> ModelSpec:
    """Load and analyse a model.

    ``path_or_module`` is an ONNX file (external data beside it is found, never read), a
    ``torch.nn.Module`` (``example_inputs`` required: a tensor, a tuple of tensors or a dict of
    keyword tensors) or a ``torch.export.ExportedProgram``. ``shapes`` binds symbolic input
    dimensions (``{"input": (8, 3, 224, 224)}``) for the FLOPs and memory figures; dimensions left
    unbound are assumed and listed in ``ModelSpec.warnings``.
    """
    if name is not None and (not isinstance(name, str) or not name.strip()):
        raise ConfigError(f"model name must be a non-empty string, not {name!r}")
    if isinstance(path_or_module, str | os.PathLike):
        if example_inputs is not None:
            raise ConfigError("example_inputs applies to PyTorch models; an ONNX file takes shapes=")
        try:
            import onnx  # noqa: F401
        except ImportError:
            raise missing_extra("onnx", "onnx") from None
        from aivmm.models._onnx_loader import load_onnx

        return load_onnx(path_or_module, shapes=shapes, name=name)
    if _is_torch(path_or_module):
        from aivmm.models._torch_loader import load_torch

        return load_torch(path_or_module, shapes=shapes, example_inputs=example_inputs, name=name)
    raise ModelLoadError(
        f"cannot load a {type(path_or_module).__name__}: expected an ONNX file path, a torch.nn.Module "
        f"or a torch.export.ExportedProgram"
    )


def _is_torch(obj: Any) -> bool:
    torch = sys.modules.get("torch")  # a torch object implies torch is already imported
    if torch is None:
        return False
    from torch.export import ExportedProgram

    return isinstance(obj, torch.nn.Module | ExportedProgram)
