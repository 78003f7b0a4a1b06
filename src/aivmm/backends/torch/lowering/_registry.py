"""The operator table: (domain, op_type) -> how to lower it, and what it refuses.

Each lowering is registered by the operator-family modules (``_math``, ``_nn``, ...) with the
lowest opset it implements. ``refuse`` is a static check (attributes and opset only, no tensors)
so that ``TorchBackend.check`` can turn a model away before anything loads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aivmm.backends.torch.lowering._node import NodeContext

DEFAULT_DOMAIN = ""

Build = Callable[["NodeContext"], Any]
Refuse = Callable[["NodeContext"], "str | None"]


@dataclasses.dataclass(frozen=True)
class OpLowering:
    op_type: str
    domain: str
    since: int  # lowest opset of the domain this lowering follows
    build: Build
    refuse: Refuse | None = None


_TABLE: dict[tuple[str, str], OpLowering] = {}


def op(
    *op_types: str, since: int = 1, domain: str = DEFAULT_DOMAIN, refuse: Refuse | None = None
) -> Callable[[Build], Build]:
    """Register ``build`` as the lowering of each of ``op_types``."""

    def deco(build: Build) -> Build:
        for op_type in op_types:
            key = (domain, op_type)
            if key in _TABLE:
                raise RuntimeError(f"duplicate lowering for {domain or 'ai.onnx'}::{op_type}")
            _TABLE[key] = OpLowering(op_type, domain, since, build, refuse)
        return build

    return deco


def lookup(domain: str, op_type: str) -> OpLowering | None:
    _ensure_loaded()
    return _TABLE.get((_norm_domain(domain), op_type))


def supported() -> dict[str, int]:
    """Every supported ``domain::op`` (ai.onnx ops bare) with its lowest opset."""
    _ensure_loaded()
    return {(f"{d}::{t}" if d else t): o.since for (d, t), o in sorted(_TABLE.items())}


def _norm_domain(domain: str) -> str:
    return DEFAULT_DOMAIN if domain in ("", "ai.onnx") else domain


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if _loaded:
        return
    # Importing the family modules fills the table (their decorators run at import).
    from aivmm.backends.torch.lowering import (  # noqa: F401
        _activations,
        _attention,
        _control,
        _elementwise,
        _fused,
        _nn,
        _pool,
        _quant,
        _reduce,
        _resize,
        _rnn,
        _shape,
        _signal,
    )

    _loaded = True
