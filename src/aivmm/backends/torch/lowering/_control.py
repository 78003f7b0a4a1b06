"""If, Loop and Scan: each subgraph becomes a child GraphModule, run by a small module that
executes eagerly (data-dependent control flow stays out of the traced graph).

A subgraph reads values of the enclosing graph by name; those become extra arguments (captures)
passed after the operator's own inputs.
"""

from __future__ import annotations

import onnx
import torch
from torch import fx, nn

from aivmm.backends.torch.lowering._builder import lower_subgraph
from aivmm.backends.torch.lowering._node import NodeContext, Value

# A Loop without a trip count or a condition input would never end; this bound keeps it finite.
_MAX_LOOP_ITERATIONS = 2**31 - 1


def _truth(value: torch.Tensor) -> bool:
    return bool(value.reshape(-1)[0].item())


class IfModule(nn.Module):
    def __init__(self, then_gm: fx.GraphModule, else_gm: fx.GraphModule, n_then: int) -> None:
        super().__init__()
        self.then_branch = then_gm
        self.else_branch = else_gm
        self.n_then = n_then

    def forward(self, cond: torch.Tensor, *captures: torch.Tensor) -> tuple:
        if _truth(cond):
            return self.then_branch(*captures[: self.n_then])
        return self.else_branch(*captures[self.n_then :])


class LoopModule(nn.Module):
    def __init__(self, body: fx.GraphModule, n_carried: int) -> None:
        super().__init__()
        self.body = body
        self.n_carried = n_carried

    def forward(self, trip: torch.Tensor | None, cond: torch.Tensor | None, *rest: torch.Tensor) -> tuple:
        carried = list(rest[: self.n_carried])
        captures = rest[self.n_carried :]
        limit = int(trip.reshape(-1)[0].item()) if trip is not None else _MAX_LOOP_ITERATIONS
        keep_going = _truth(cond) if cond is not None else True
        cond_t = torch.tensor(keep_going)
        scans: list[list[torch.Tensor]] | None = None
        i = 0
        while i < limit and keep_going:
            outs = self.body(torch.tensor(i, dtype=torch.int64), cond_t, *carried, *captures)
            cond_t = outs[0]
            keep_going = _truth(cond_t)
            carried = list(outs[1 : 1 + self.n_carried])
            step_scans = outs[1 + self.n_carried :]
            if scans is None:
                scans = [[] for _ in step_scans]
            for acc, v in zip(scans, step_scans):
                acc.append(v)
            i += 1
        stacked = [torch.stack(acc) for acc in scans] if scans else []
        return (*carried, *stacked)


class ScanModule(nn.Module):
    def __init__(
        self,
        body: fx.GraphModule,
        n_state: int,
        n_scan_in: int,
        in_axes: list[int],
        in_dirs: list[int],
        out_axes: list[int],
        out_dirs: list[int],
    ) -> None:
        super().__init__()
        self.body = body
        self.n_state, self.n_scan_in = n_state, n_scan_in
        self.in_axes, self.in_dirs, self.out_axes, self.out_dirs = in_axes, in_dirs, out_axes, out_dirs

    def forward(self, *args: torch.Tensor) -> tuple:
        state = list(args[: self.n_state])
        scan_in = args[self.n_state : self.n_state + self.n_scan_in]
        captures = args[self.n_state + self.n_scan_in :]
        axes = [a + t.dim() if a < 0 else a for a, t in zip(self.in_axes, scan_in)]
        steps = scan_in[0].shape[axes[0]]
        collected: list[list[torch.Tensor]] = []
        for t in range(steps):
            slices = [x.select(ax, steps - 1 - t if rev else t) for x, ax, rev in zip(scan_in, axes, self.in_dirs)]
            outs = self.body(*state, *slices, *captures)
            state = list(outs[: self.n_state])
            if not collected:
                collected = [[] for _ in outs[self.n_state :]]
            for acc, v in zip(collected, outs[self.n_state :]):
                acc.append(v)
        results = []
        for k, acc in enumerate(collected):
            if self.out_dirs[k]:
                acc = acc[::-1]
            axis = self.out_axes[k]
            axis = axis + acc[0].dim() + 1 if axis < 0 else axis
            results.append(torch.stack(acc, dim=axis))
        return (*state, *results)


def _capture_values(n: NodeContext, names: list[str]) -> list[Value]:
    assert n.builder is not None
    return [n.builder.value(name) for name in names]


def _lower_if(n: NodeContext) -> list[Value]:
    cond = n.input(0)
    if isinstance(cond, torch.Tensor):
        # The condition is known now: inline the chosen branch instead of keeping both.
        return _inline_branch(n, n.graph_attr("then_branch" if _truth(cond) else "else_branch"))
    then_gm, then_caps = lower_subgraph(n, n.graph_attr("then_branch"))
    else_gm, else_caps = lower_subgraph(n, n.graph_attr("else_branch"))
    assert n.builder is not None
    args = (cond, *_capture_values(n, then_caps), *_capture_values(n, else_caps))
    return n.builder.call_module(IfModule(then_gm, else_gm, len(then_caps)), args, n.n_outputs, "if_")


def _inline_branch(n: NodeContext, graph: onnx.GraphProto) -> list[Value]:
    assert n.builder is not None
    b = n.builder
    saved = dict(b.env)
    for init in graph.initializer:
        from aivmm.backends.torch.lowering._node import tensor_from_proto

        b.env[init.name] = tensor_from_proto(init)
    b.lower_nodes(graph.node)
    outs = [b.env[o.name] for o in graph.output]
    # Names local to the branch must not leak into the enclosing scope.
    b.env.clear()
    b.env.update(saved)
    return outs


def _lower_loop(n: NodeContext) -> list[Value]:
    body = n.graph_attr("body")
    gm, caps = lower_subgraph(n, body)
    n_carried = n.n_inputs - 2
    assert n.builder is not None
    args = (n.input(0), n.input(1), *[n.input(i) for i in range(2, n.n_inputs)], *_capture_values(n, caps))
    return n.builder.call_module(LoopModule(gm, n_carried), args, n.n_outputs, "loop_")


def _lower_scan(n: NodeContext) -> list[Value]:
    body = n.graph_attr("body")
    gm, caps = lower_subgraph(n, body)
    n_scan_in = int(n.attr("num_scan_inputs"))
    n_state = n.n_inputs - n_scan_in
    n_scan_out = n.n_outputs - n_state
    in_axes = [int(a) for a in n.attr("scan_input_axes", [0] * n_scan_in)]
    in_dirs = [int(a) for a in n.attr("scan_input_directions", [0] * n_scan_in)]
    out_axes = [int(a) for a in n.attr("scan_output_axes", [0] * n_scan_out)]
    out_dirs = [int(a) for a in n.attr("scan_output_directions", [0] * n_scan_out)]
    assert n.builder is not None
    args = (*n.inputs(), *_capture_values(n, caps))
    module = ScanModule(gm, n_state, n_scan_in, in_axes, in_dirs, out_axes, out_dirs)
    return n.builder.call_module(module, args, n.n_outputs, "scan_")


def _register() -> None:
    from aivmm.backends.torch.lowering._registry import op

    op("If", since=1)(_lower_if)
    op("Loop", since=1)(_lower_loop)
    op("Scan", since=9)(_lower_scan)


_register()
