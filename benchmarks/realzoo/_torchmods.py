"""Real torch modules (``nn.LSTM``, ``nn.GRU``, ``nn.EmbeddingBag``, ``torch.fft``) exported with
``torch.onnx`` (the TorchScript exporter: the dynamo one needs onnxscript, not installed here).

Sizes are the small end of what these architectures are used at, so builds take seconds.
"""

from __future__ import annotations

import pathlib
import warnings
from typing import Any


def _export(
    module: Any,
    args: tuple[Any, ...],
    out: pathlib.Path,
    inputs: list[str],
    outputs: list[str],
    dynamic: dict[str, dict[int, str]],
    opset: int = 17,
) -> dict[str, object]:
    import torch

    module.eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            args,
            str(out / "model.onnx"),
            dynamo=False,
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=dynamic,
            opset_version=opset,
        )
    return {"architecture": type(module).__name__, "torch_parameters": sum(p.numel() for p in module.parameters())}


def lstm_tagger(out: pathlib.Path) -> dict[str, object]:
    """A 2-layer LSTM over 40-band filterbank frames with a per-frame classifier (speech-command style)."""
    import torch
    from torch import nn

    class LSTMTagger(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(40, 128, num_layers=2, batch_first=True)
            self.head = nn.Linear(128, 12)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.lstm(x)[0])

    torch.manual_seed(0)
    return _export(
        LSTMTagger(), (torch.randn(1, 50, 40),), out, ["features"], ["logits"], {"features": {0: "batch", 1: "frames"}}
    )


def gru_bidirectional(out: pathlib.Path) -> dict[str, object]:
    """A bidirectional GRU encoder over embeddings of token ids with a pooled classifier."""
    import torch
    from torch import nn

    class GRUClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5000, 64)
            self.gru = nn.GRU(64, 96, batch_first=True, bidirectional=True)
            self.head = nn.Linear(192, 4)

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.gru(self.embed(ids))[0].mean(dim=1))

    torch.manual_seed(0)
    return _export(
        GRUClassifier(),
        (torch.randint(0, 5000, (1, 32)),),
        out,
        ["ids"],
        ["logits"],
        {"ids": {0: "batch", 1: "sequence"}},
    )


def dlrm(out: pathlib.Path) -> dict[str, object]:
    """DLRM (Naumov et al. 2019): bottom MLP on dense features, sum-pooled embedding bags for the
    categorical ones, pairwise dot-product interaction, top MLP."""
    import torch
    from torch import nn

    tables = (1000, 2000, 500, 3000)

    class DLRM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bottom = nn.Sequential(nn.Linear(13, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU())
            self.bags = nn.ModuleList(nn.EmbeddingBag(rows, 32, mode="sum") for rows in tables)
            pairs = (len(tables) + 1) * len(tables) // 2
            self.top = nn.Sequential(nn.Linear(32 + pairs, 64), nn.ReLU(), nn.Linear(64, 1), nn.Sigmoid())

        def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
            x = self.bottom(dense)
            # sparse: [batch, tables, ids per bag]; a fixed bag size exports without offsets
            feats = [x] + [bag(sparse[:, i, :]) for i, bag in enumerate(self.bags)]
            z = torch.stack(feats, dim=1)
            inter = torch.bmm(z, z.transpose(1, 2))
            rows, cols = torch.triu_indices(len(feats), len(feats), offset=1)
            return self.top(torch.cat([x, inter[:, rows, cols]], dim=1))

    torch.manual_seed(0)
    sparse = torch.stack([torch.randint(0, r, (2, 3)) for r in tables], dim=1)
    return _export(
        DLRM(),
        (torch.randn(2, 13), sparse),
        out,
        ["dense", "sparse"],
        ["ctr"],
        {"dense": {0: "batch"}, "sparse": {0: "batch"}},
    )


def fno1d(out: pathlib.Path) -> dict[str, object]:
    """A 1-D Fourier neural operator (Li et al. 2021): lift, 2 spectral blocks, project.

    Each spectral block takes the lowest ``modes`` Fourier coefficients, multiplies them by a
    complex weight per (in, out) channel pair and transforms back, plus a pointwise conv. The
    TorchScript exporter has no ``fft_rfft``, so the truncated transform is written as products
    with cos/sin bases (buffers): exactly the truncated DFT, and how exportable FNOs are written.
    The bases are constants of the graph, so they count as weights (``torch_buffers``).
    """
    import math

    import torch
    from torch import nn

    width, modes, points = 32, 12, 128

    class SpectralConv1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            scale = 1 / (width * width)
            self.w_re = nn.Parameter(scale * torch.randn(width, width, modes))
            self.w_im = nn.Parameter(scale * torch.randn(width, width, modes))
            angle = 2 * math.pi * torch.outer(torch.arange(points), torch.arange(modes)) / points  # [n, k]
            self.register_buffer("cos", torch.cos(angle))
            self.register_buffer("sin", torch.sin(angle))
            # inverse of a real signal's spectrum: X_0 once, the other kept modes twice, over N
            gain = torch.full((modes,), 2.0 / points)
            gain[0] = 1.0 / points
            self.register_buffer("icos", (torch.cos(angle) * gain).T.contiguous())  # [k, n]
            self.register_buffer("isin", (torch.sin(angle) * gain).T.contiguous())

        cos: torch.Tensor
        sin: torch.Tensor
        icos: torch.Tensor
        isin: torch.Tensor

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [b, width, points]
            re, im = x @ self.cos, -(x @ self.sin)  # [b, width, modes]
            out_re = torch.einsum("bix,iox->box", re, self.w_re) - torch.einsum("bix,iox->box", im, self.w_im)
            out_im = torch.einsum("bix,iox->box", re, self.w_im) + torch.einsum("bix,iox->box", im, self.w_re)
            return out_re @ self.icos - out_im @ self.isin

    class FNO1d(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lift = nn.Linear(2, width)
            self.spectral = nn.ModuleList(SpectralConv1d() for _ in range(2))
            self.pointwise = nn.ModuleList(nn.Conv1d(width, width, 1) for _ in range(2))
            self.project = nn.Sequential(nn.Linear(width, 64), nn.GELU(), nn.Linear(64, 1))

        def forward(self, u: torch.Tensor) -> torch.Tensor:  # u: [b, points, (value, coordinate)]
            x = self.lift(u).permute(0, 2, 1)
            for spectral, pointwise in zip(self.spectral, self.pointwise):
                x = torch.nn.functional.gelu(spectral(x) + pointwise(x))
            return self.project(x.permute(0, 2, 1))

    torch.manual_seed(0)
    module = FNO1d()
    meta = _export(module, (torch.randn(1, points, 2),), out, ["u"], ["v"], {"u": {0: "batch"}}, opset=17)
    meta["torch_buffers"] = sum(b.numel() for b in module.buffers())
    return meta


def pinn(out: pathlib.Path) -> dict[str, object]:
    """A physics-informed network for a 1-D heat equation: (x, t) -> u, 4 hidden tanh layers."""
    import torch
    from torch import nn

    layers: list[nn.Module] = [nn.Linear(2, 64), nn.Tanh()]
    for _ in range(3):
        layers += [nn.Linear(64, 64), nn.Tanh()]
    layers.append(nn.Linear(64, 1))
    torch.manual_seed(0)
    return _export(nn.Sequential(*layers), (torch.rand(256, 2),), out, ["xt"], ["u"], {"xt": {0: "batch"}})


def loop_gru_cell(out: pathlib.Path) -> dict[str, object]:
    """A scripted decoder-style loop: a GRU cell stepped over time in a TorchScript ``for``,
    which torch.onnx exports as an ONNX ``Loop`` whose trip count is the input's time dimension."""
    import torch
    from torch import nn

    class Stepper(nn.Module):
        # The GRU cell equations written out (r, z gates and the candidate): torch.onnx cannot
        # export a scripted nn.GRUCell, and this is the cell's own formula.
        def __init__(self) -> None:
            super().__init__()
            self.ih = nn.Linear(24, 3 * 48)
            self.hh = nn.Linear(48, 3 * 48)
            self.head = nn.Linear(48, 6)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [time, batch, 24]
            h = torch.zeros(x.size(1), 48)
            for t in range(x.size(0)):
                gi = self.ih(x[t])
                gh = self.hh(h)
                r = torch.sigmoid(gi[:, :48] + gh[:, :48])
                z = torch.sigmoid(gi[:, 48:96] + gh[:, 48:96])
                n = torch.tanh(gi[:, 96:] + r * gh[:, 96:])
                h = (1 - z) * n + z * h
            return self.head(h)

    torch.manual_seed(0)
    module = torch.jit.script(Stepper())
    return _export(module, (torch.randn(20, 1, 24),), out, ["x"], ["logits"], {"x": {0: "time", 1: "batch"}})
