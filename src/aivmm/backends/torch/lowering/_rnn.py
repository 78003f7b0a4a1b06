"""LSTM, GRU and RNN with ONNX gate orders (LSTM i-o-f-c, GRU z-r-h), directions, initial states,
sequence_lens, clip, peepholes, linear_before_reset and both layouts.

When a node uses only what cuDNN-style fused kernels compute (default activations, no clip, no
peepholes, no sequence_lens; GRU with linear_before_reset=1), it runs as one ``torch.lstm`` /
``torch.gru`` call with the gates reordered at lowering time; otherwise as a Python loop over time
steps that follows the ONNX equations exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx

from aivmm.backends.torch.lowering._node import NodeContext, Value, same_device
from aivmm.backends.torch.lowering._registry import op

_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
_DEFAULT_ACTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
# Activations and how many of (alpha, beta) each consumes from activation_alpha / activation_beta.
_ACT_PARAMS = {
    "Sigmoid": 0,
    "Tanh": 0,
    "Relu": 0,
    "Softsign": 0,
    "Softplus": 0,
    "LeakyRelu": 1,
    "ThresholdedRelu": 1,
    "Elu": 1,
    "HardSigmoid": 2,
    "Affine": 2,
    "ScaledTanh": 2,
}
_ACT_DEFAULTS = {
    "LeakyRelu": (0.01, 0.0),
    "ThresholdedRelu": (1.0, 0.0),
    "Elu": (1.0, 0.0),
    "HardSigmoid": (0.2, 0.5),
    "Affine": (1.0, 0.0),
    "ScaledTanh": (1.0, 1.0),
}

Act = Callable[[torch.Tensor], torch.Tensor]


def _activation(name: str, alpha: float, beta: float) -> Act:
    table: dict[str, Act] = {
        "Sigmoid": torch.sigmoid,
        "Tanh": torch.tanh,
        "Relu": torch.relu,
        "Softsign": F.softsign,
        "Softplus": lambda x: torch.log1p(torch.exp(x)),
        "LeakyRelu": lambda x: F.leaky_relu(x, alpha),
        "ThresholdedRelu": lambda x: torch.where(x > alpha, x, torch.zeros_like(x)),
        "Elu": lambda x: F.elu(x, alpha),
        "HardSigmoid": lambda x: torch.clamp(alpha * x + beta, 0, 1),
        "Affine": lambda x: alpha * x + beta,
        "ScaledTanh": lambda x: alpha * torch.tanh(beta * x),
    }
    return table[name]


def _activations(n: NodeContext, dirs: int) -> list[tuple[str, float, float]]:
    names = n.attr("activations") or _DEFAULT_ACTS[n.op_type] * dirs
    alphas = list(n.attr("activation_alpha") or [])
    betas = list(n.attr("activation_beta") or [])
    out = []
    for name in names:
        canon = next((k for k in _ACT_PARAMS if k.lower() == name.lower()), None)
        if canon is None:
            raise n.fail(f"unknown activation {name!r}")
        alpha, beta = _ACT_DEFAULTS.get(canon, (0.0, 0.0))
        if _ACT_PARAMS[canon] >= 1 and alphas:
            alpha = float(alphas.pop(0))
        if _ACT_PARAMS[canon] >= 2 and betas:
            beta = float(betas.pop(0))
        out.append((canon, alpha, beta))
    return out


def _refuse_rnn(n: NodeContext) -> str | None:
    if n.attr("input_forget", 0):
        return "input_forget=1 (coupled input and forget gates) is not lowered"
    direction = n.attr("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        return f"unknown direction {direction!r}"
    names = n.attr("activations") or []
    for name in names:
        if not any(k.lower() == name.lower() for k in _ACT_PARAMS):
            return f"unknown activation {name!r}"
    needed = len(_DEFAULT_ACTS[n.op_type]) * (2 if direction == "bidirectional" else 1)
    if names and len(names) != needed:
        return f"{len(names)} activations given; {n.op_type} with direction {direction!r} needs {needed}"
    return None


def _reverse_in_lengths(x: torch.Tensor, lens: torch.Tensor | None) -> torch.Tensor:
    """Reverse each batch entry's first lens[b] steps along dim 0 (padding stays in place)."""
    if lens is None:
        return x.flip(0)
    seq = x.shape[0]
    t = torch.arange(seq, device=x.device).unsqueeze(1)
    lens = lens.to(x.device).to(torch.int64).unsqueeze(0)
    idx = torch.where(t < lens, lens - 1 - t, t)  # (seq, batch)
    idx = idx.reshape(idx.shape + (1,) * (x.dim() - 2)).expand_as(x)
    return torch.gather(x, 0, idx)


def _rnn_loop(
    kind: str,
    x: torch.Tensor,
    w: torch.Tensor,
    r: torch.Tensor,
    b: torch.Tensor | None,
    lens: torch.Tensor | None,
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    p: torch.Tensor | None,
    hidden: int,
    direction: str,
    acts: list[tuple[str, float, float]],
    clip: float | None,
    linear_before_reset: bool,
    layout: int,
) -> tuple[torch.Tensor, ...]:
    x, w, r, b, h0, c0, p = same_device(x, w, r, b, h0, c0, p)
    if layout == 1:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    gates = _GATES[kind]
    dirs = 2 if direction == "bidirectional" else 1
    per_dir = len(acts) // dirs
    funcs = [_activation(*a) for a in acts]
    ys, hs, cs = [], [], []
    for d in range(dirs):
        reverse = direction == "reverse" or d == 1
        own = funcs[d * per_dir : (d + 1) * per_dir]  # _refuse_rnn checked there is one per gate function
        f = own[0]
        g = own[1] if len(own) > 1 else f  # RNN has f alone, GRU f and g, LSTM f, g and h
        h_act = own[2] if len(own) > 2 else g
        bias = b[d] if b is not None else torch.zeros(2 * gates * hidden, dtype=x.dtype, device=x.device)
        wb, rb = bias[: gates * hidden], bias[gates * hidden :]
        h = h0[d] if h0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        c = c0[d] if c0 is not None else torch.zeros(batch, hidden, dtype=x.dtype, device=x.device)
        xs = _reverse_in_lengths(x, lens) if reverse else x
        xw = xs @ w[d].t() + wb
        rt = r[d].t()
        outs = []
        for t in range(seq):
            if kind == "LSTM":
                z = xw[t] + h @ rt + rb
                if clip is not None:
                    z = z.clamp(-clip, clip)
                zi, zo, zf, zc = z.chunk(4, dim=-1)
                if p is not None:
                    pi, po, pf = p[d].chunk(3)
                    zi, zf = zi + pi * c, zf + pf * c
                i_g, f_g, c_g = f(zi), f(zf), g(zc)
                c_new = f_g * c + i_g * c_g
                if p is not None:
                    zo = zo + po * c_new
                h_new = f(zo) * h_act(c_new)
            elif kind == "GRU":
                xz, xr, xh = xw[t].chunk(3, dim=-1)
                rz_w, rr_w, rh_w = rt.chunk(3, dim=-1)
                rbz, rbr, rbh = rb.chunk(3)
                pre_z, pre_r = xz + h @ rz_w + rbz, xr + h @ rr_w + rbr
                if clip is not None:
                    pre_z, pre_r = pre_z.clamp(-clip, clip), pre_r.clamp(-clip, clip)
                z_g, r_g = f(pre_z), f(pre_r)
                pre_h = xh + r_g * (h @ rh_w + rbh) if linear_before_reset else xh + (r_g * h) @ rh_w + rbh
                if clip is not None:
                    pre_h = pre_h.clamp(-clip, clip)
                h_new = (1 - z_g) * g(pre_h) + z_g * h
                c_new = c
            else:
                pre = xw[t] + h @ rt + rb
                if clip is not None:
                    pre = pre.clamp(-clip, clip)
                h_new = f(pre)
                c_new = c
            if lens is not None:
                live = (t < lens.to(x.device)).unsqueeze(1)
                h = torch.where(live, h_new, h)
                c = torch.where(live, c_new, c)
                outs.append(torch.where(live, h_new, torch.zeros_like(h_new)))
            else:
                h, c = h_new, c_new
                outs.append(h_new)
        y = torch.stack(outs) if outs else x.new_zeros((0, batch, hidden))
        ys.append(_reverse_in_lengths(y, lens) if reverse else y)
        hs.append(h)
        cs.append(c)
    y_all = torch.stack(ys, dim=1)  # (seq, dirs, batch, hidden)
    h_all, c_all = torch.stack(hs), torch.stack(cs)
    if layout == 1:
        return y_all.permute(2, 0, 1, 3), h_all.transpose(0, 1), c_all.transpose(0, 1)
    return y_all, h_all, c_all


def _fused(
    kind: str,
    x: torch.Tensor,
    params: list[torch.Tensor],
    h0: torch.Tensor | None,
    c0: torch.Tensor | None,
    hidden: int,
    bidirectional: bool,
    layout: int,
) -> tuple[torch.Tensor, ...]:
    dirs = 2 if bidirectional else 1
    x, h0, c0 = same_device(x, h0, c0)
    params = [t.to(x.device) for t in params]
    if layout == 1:
        x = x.transpose(0, 1)
        h0 = None if h0 is None else h0.transpose(0, 1)
        c0 = None if c0 is None else c0.transpose(0, 1)
    seq, batch = x.shape[0], x.shape[1]
    zeros = x.new_zeros((dirs, batch, hidden))
    h0 = zeros if h0 is None else h0.contiguous()
    if kind == "LSTM":
        c0 = zeros if c0 is None else c0.contiguous()
        y, h, c = torch.lstm(x, (h0, c0), params, True, 1, 0.0, False, bidirectional, False)
    else:
        y, h = torch.gru(x, h0, params, True, 1, 0.0, False, bidirectional, False)
        c = h
    y = y.reshape(seq, batch, dirs, hidden).permute(0, 2, 1, 3)
    if layout == 1:
        return y.permute(2, 0, 1, 3), h.transpose(0, 1), c.transpose(0, 1)
    return y, h, c


def _torch_params(kind: str, w: torch.Tensor, r: torch.Tensor, b: torch.Tensor | None, hidden: int) -> list:
    """ONNX weights as torch's flat list (w_ih, w_hh, b_ih, b_hh per direction), gates reordered."""
    gates = _GATES[kind]
    # ONNX LSTM i,o,f,c -> torch i,f,g,o ; ONNX GRU z,r,h -> torch r,z,n
    order = [0, 2, 3, 1] if kind == "LSTM" else [1, 0, 2]

    def reorder(t: torch.Tensor) -> torch.Tensor:
        chunks = t.split(hidden, dim=0)
        return torch.cat([chunks[i] for i in order], dim=0).contiguous()

    params = []
    for d in range(w.shape[0]):
        bias = b[d] if b is not None else torch.zeros(2 * gates * hidden, dtype=w.dtype)
        params += [reorder(w[d]), reorder(r[d]), reorder(bias[: gates * hidden]), reorder(bias[gates * hidden :])]
    return params


@op("LSTM", "GRU", "RNN", since=7, refuse=_refuse_rnn)
def _lower_rnn(n: NodeContext) -> list[Value]:
    kind = n.op_type
    direction = n.attr("direction", "forward")
    dirs = 2 if direction == "bidirectional" else 1
    hidden = int(n.attr("hidden_size"))
    layout = int(n.attr("layout", 0))
    clip = n.attr("clip")
    acts = _activations(n, dirs)
    lbr = bool(n.attr("linear_before_reset", 0))
    x, w, r, b = n.input(0), n.input(1), n.input(2), n.input(3)
    lens = n.input(4)
    h0 = n.input(5)
    c0 = n.input(6) if kind == "LSTM" else None
    p = n.input(7) if kind == "LSTM" else None
    if isinstance(p, torch.Tensor) and not bool(p.any()):
        p = None  # all-zero peepholes change nothing
    default_acts = all(a[0] == d for a, d in zip(acts, _DEFAULT_ACTS[kind] * dirs))
    fusable = (
        kind in ("LSTM", "GRU")
        and default_acts
        and clip is None
        and p is None
        and lens is None
        and (kind == "LSTM" or lbr)
        and direction != "reverse"
    )
    if fusable and isinstance(w, torch.Tensor) and isinstance(r, torch.Tensor) and not isinstance(b, fx.Node):
        params = _torch_params(kind, w, r, b, hidden)  # folded now: the weights are constants
        outs = n.call_multi(_fused, 3, kind, x, params, h0, c0, hidden, dirs == 2, layout)
    else:
        outs = n.call_multi(
            _rnn_loop,
            3,
            kind,
            x,
            w,
            r,
            b,
            lens,
            h0,
            c0,
            p,
            hidden,
            direction,
            acts,
            None if clip is None else float(clip),
            lbr,
            layout,
        )
    return outs[: 3 if kind == "LSTM" else 2]
