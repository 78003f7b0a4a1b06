"""The ONNX Attention operator (opset 23 on): 3-D or 4-D Q/K/V, grouped heads, boolean or additive
masks, causal masking aligned to the end of a KV cache, past/present key-value caches, non-padded KV
lengths, softcap, sliding windows and the four qk_matmul_output modes.

Without a mask, cache, softcap, window or extra output it is one ``F.scaled_dot_product_attention``
call; otherwise the ONNX equations run as written, including the rule that a fully masked query row
yields zeros (``scaled_dot_product_attention`` would give NaN there).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from aivmm.backends.torch.lowering._node import ONNX_TO_TORCH, NodeContext, Value, same_device
from aivmm.backends.torch.lowering._registry import op


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    b, s, h = t.shape
    return t.reshape(b, s, heads, h // heads).transpose(1, 2)


def _allowed(
    q_len: int, kv_len: int, offset: torch.Tensor | int, device: torch.device, left: int, right: int, causal: bool
) -> torch.Tensor:
    """Which keys each query may see: (q, kv), or (batch, 1, q, kv) for a per-batch offset."""
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    pos = i + offset.to(device).reshape(-1, 1, 1, 1) if isinstance(offset, torch.Tensor) else i + offset
    diff = pos - j
    ok = torch.ones_like(diff, dtype=torch.bool)
    if causal:
        ok &= diff >= 0
    if left >= 0:
        ok &= diff <= left
    if right >= 0:
        ok &= -diff <= right
    return ok


def _attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    past_k: torch.Tensor | None,
    past_v: torch.Tensor | None,
    nonpad: torch.Tensor | None,
    p: dict,
) -> tuple[torch.Tensor, ...]:
    q, k, v, mask, past_k, past_v, nonpad = same_device(q, k, v, mask, past_k, past_v, nonpad)
    rank3 = q.dim() == 3
    if rank3:
        q, k, v = _split_heads(q, p["q_heads"]), _split_heads(k, p["kv_heads"]), _split_heads(v, p["kv_heads"])
    scale = p["scale"] if p["scale"] is not None else 1.0 / math.sqrt(q.shape[-1])
    present_k = torch.cat([past_k, k], dim=2) if past_k is not None else k
    present_v = torch.cat([past_v, v], dim=2) if past_v is not None else v
    q_len, kv_len = q.shape[2], present_k.shape[2]
    if p["fast"]:
        y = F.scaled_dot_product_attention(
            q, present_k, present_v, is_causal=p["causal"], scale=scale, enable_gqa=q.shape[1] != present_k.shape[1]
        )
        return _merge(y, rank3), present_k, present_v
    dtype = q.dtype
    bias = torch.zeros((q_len, kv_len), dtype=dtype, device=q.device)
    if mask is not None:
        if mask.shape[-1] < kv_len:  # a mask shorter than the cache covers its start; the rest is masked
            pad = kv_len - mask.shape[-1]
            mask = F.pad(mask, [0, pad], value=False if mask.dtype == torch.bool else -math.inf)
        if mask.dtype == torch.bool:
            mask = torch.where(
                mask,
                torch.zeros((), dtype=dtype, device=q.device),
                torch.full((), -math.inf, dtype=dtype, device=q.device),
            )
        bias = bias + mask.to(dtype)
    windowed = p["left"] >= 0 or p["right"] >= 0
    if p["causal"] or windowed:
        offset: torch.Tensor | int
        if past_k is None and nonpad is not None:
            offset = nonpad.to(torch.int64) - q_len
        else:
            offset = past_k.shape[2] if past_k is not None else 0
        ok = _allowed(q_len, kv_len, offset, q.device, p["left"], p["right"], p["causal"])
        bias = bias + torch.where(ok, 0.0, -math.inf).to(dtype)
    if nonpad is not None:
        keep = torch.arange(kv_len, device=q.device).reshape(1, kv_len) < nonpad.to(q.device).reshape(-1, 1)
        bias = bias + torch.where(keep, 0.0, -math.inf).to(dtype).reshape(-1, 1, 1, kv_len)
    kk, vv = present_k, present_v
    if q.shape[1] != kk.shape[1]:
        reps = q.shape[1] // kk.shape[1]
        kk, vv = kk.repeat_interleave(reps, dim=1), vv.repeat_interleave(reps, dim=1)
    root = math.sqrt(scale)
    qk = torch.matmul(q * root, (kk * root).transpose(-1, -2))
    if p["softcap"]:
        qk = torch.tanh(qk / p["softcap"]) * p["softcap"]
    scores = qk + bias
    extra = qk if p["mode"] in (0, 1) else scores
    work = scores.to(p["softmax_dtype"]) if p["softmax_dtype"] is not None else scores
    peak = work.amax(dim=-1, keepdim=True)
    safe = torch.where(torch.isneginf(peak), torch.zeros_like(peak), peak)
    e = torch.exp(work - safe)
    total = e.sum(dim=-1, keepdim=True)
    probs = e / torch.where(total == 0, torch.ones_like(total), total)
    dead = torch.isneginf(bias.amax(dim=-1, keepdim=True))  # a fully masked row gives zeros
    probs = torch.where(dead, torch.zeros_like(probs), probs)
    if p["mode"] == 3:
        extra = probs
    y = torch.matmul(probs.to(dtype), vv)
    return _merge(y, rank3), present_k, present_v, extra.to(dtype)


def _merge(y: torch.Tensor, rank3: bool) -> torch.Tensor:
    if not rank3:
        return y
    b, h, s, d = y.shape
    return y.transpose(1, 2).reshape(b, s, h * d)


@op("Attention", since=23)
def _lower_attention(n: NodeContext) -> list[Value]:
    precision = n.attr("softmax_precision")
    params = {
        "scale": None if n.attr("scale") is None else float(n.attr("scale")),
        "causal": bool(n.attr("is_causal", 0)),
        "q_heads": n.attr("q_num_heads"),
        "kv_heads": n.attr("kv_num_heads"),
        "softcap": float(n.attr("softcap", 0.0) or 0.0),
        "mode": int(n.attr("qk_matmul_output_mode", 0)),
        "left": int(n.attr("left_window_size", -1)),
        "right": int(n.attr("right_window_size", -1)),
        "softmax_dtype": ONNX_TO_TORCH.get(precision) if precision else None,
    }
    inputs = [n.input(i) if n.has_input(i) else None for i in range(7)]
    simple = (
        all(x is None for x in inputs[3:])
        and not params["softcap"]
        and params["left"] < 0
        and params["right"] < 0
        and not n.output_used(3)
        and params["softmax_dtype"] is None
    )
    params["fast"] = simple
    outs = n.call_multi(_attention, 3 if simple else 4, *inputs, params)
    if simple and n.output_used(3):
        raise n.fail("internal: qk output requested on the fast path")
    return outs


def _rotary(
    x: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor | None,
    interleaved: bool,
    rotary_dim: int,
    heads: int,
) -> torch.Tensor:
    x, cos, sin, positions = same_device(x, cos, sin, positions)
    shape = x.shape
    t = x.transpose(1, 2) if x.dim() == 4 else x.reshape(shape[0], shape[1], heads, shape[2] // heads)
    dim = rotary_dim or t.shape[-1]
    rot, rest = t[..., :dim], t[..., dim:]
    if positions is not None:
        cos, sin = cos[positions.to(torch.int64)], sin[positions.to(torch.int64)]
    cos, sin = cos.unsqueeze(2).to(x.dtype), sin.unsqueeze(2).to(x.dtype)  # [batch, seq, 1, dim/2]
    x1, x2 = (rot[..., 0::2], rot[..., 1::2]) if interleaved else rot.chunk(2, dim=-1)
    real, imag = cos * x1 - sin * x2, sin * x1 + cos * x2
    rotated = torch.stack((real, imag), dim=-1).reshape(rot.shape) if interleaved else torch.cat((real, imag), -1)
    out = torch.cat((rotated, rest), dim=-1)
    return out.transpose(1, 2) if x.dim() == 4 else out.reshape(shape)


@op("RotaryEmbedding", since=23)
def _lower_rotary(n: NodeContext) -> Value:
    return n.call(
        _rotary,
        n.input(0),
        n.input(1),
        n.input(2),
        n.input(3) if n.has_input(3) else None,
        bool(n.attr("interleaved", 0)),
        int(n.attr("rotary_embedding_dim", 0)),
        int(n.attr("num_heads", 0)),
    )
