"""Lowerings of the ``aivmm.fused`` operators that ``_fuse`` puts in place of op-by-op patterns."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._fuse import FUSED_DOMAIN
from aivmm.backends.torch.lowering._node import NodeContext, Value, same_device
from aivmm.backends.torch.lowering._registry import op


def _transposed(w: torch.Tensor) -> torch.Tensor:
    return w.t().contiguous()


@op("Linear", domain=FUSED_DOMAIN)
def _lower_linear(n: NodeContext) -> Value:
    weight = n.call(_transposed, n.input(1))  # folded now: F.linear wants [out, in]
    return n.call(F.linear, n.input(0), weight, n.input(2))


@op("Gelu", domain=FUSED_DOMAIN)
def _lower_gelu(n: NodeContext) -> Value:
    return n.call(F.gelu, n.input(0))


def _attention(
    q: torch.Tensor, k_t: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
) -> torch.Tensor:
    q, k_t, v, mask = same_device(q, k_t, v, mask)
    if mask is not None and mask.dtype != q.dtype and mask.is_floating_point():
        mask = mask.to(q.dtype)
    return F.scaled_dot_product_attention(q, k_t.transpose(-1, -2), v, attn_mask=mask, scale=scale)


@op("Attention", domain=FUSED_DOMAIN)
def _lower_attention(n: NodeContext) -> Value:
    mask = n.input(3) if n.has_input(3) else None
    return n.call(_attention, n.input(0), n.input(1), n.input(2), mask, float(n.attr("scale")))
