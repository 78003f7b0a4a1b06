"""Scientific models: a PINN-style coordinate MLP and an FNO-style spectral operator."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aivmm.models.zoo._builder import BATCH, FLOAT, GraphBuilder


@dataclasses.dataclass(frozen=True)
class PinnConfig:
    coords: int  # (x, t) or (x, y, t)
    width: int
    layers: int  # hidden layers
    outputs: int


PINN = {
    "tiny": PinnConfig(coords=2, width=16, layers=3, outputs=1),
    "full": PinnConfig(coords=3, width=256, layers=8, outputs=3),
}


def pinn(size: str, seed: int) -> Any:
    c = PINN[size]
    g = GraphBuilder("pinn", seed)
    x = g.input("coords", FLOAT, [BATCH, c.coords])
    # A sine first layer (SIREN-style Fourier features), then tanh layers as in classic PINNs.
    h = g.op("Sin", [g.op("Mul", [g.gemm(x, c.coords, c.width), g.scalar(3.0)])])
    for _ in range(c.layers - 1):
        h = g.op("Tanh", [g.gemm(h, c.width, c.width)])
    g.output(g.gemm(h, c.width, c.outputs), "field", FLOAT, [BATCH, c.outputs])
    return g.model(f"PINN-style coordinate MLP ({size}): {c.coords} coordinates -> {c.layers} x {c.width} sin/tanh")


def pinn_parameters(size: str) -> int:
    c = PINN[size]
    return (
        (c.coords * c.width + c.width)
        + (c.layers - 1) * (c.width * c.width + c.width)
        + (c.width * c.outputs + c.outputs)
    )


def pinn_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"coords": rng.uniform(-1.0, 1.0, (batch, PINN[size].coords)).astype(np.float32)}


@dataclasses.dataclass(frozen=True)
class FnoConfig:
    points: int  # grid size
    width: int  # channels
    modes: int  # Fourier modes kept
    layers: int


FNO = {
    "tiny": FnoConfig(points=32, width=8, modes=4, layers=2),
    "full": FnoConfig(points=1024, width=64, modes=16, layers=4),
}


def _spectral(g: GraphBuilder, x: str, c: FnoConfig) -> str:
    """DFT -> keep the lowest modes -> complex channel mixing per mode -> zero-pad -> inverse DFT."""
    w = c.width
    xt = g.op("Unsqueeze", [g.op("Transpose", [x], perm=[0, 2, 1]), g.ints([-1], "axes")])  # [B, W, N, 1]
    spectrum = g.op("DFT", [xt], axis=2, onesided=0)  # [B, W, N, 2]
    low = g.op("Slice", [spectrum, g.ints([0]), g.ints([c.modes]), g.ints([2])])  # [B, W, k, 2]
    re, im = (
        g.op("Squeeze", [part, g.ints([-1], "axes")])
        for part in g.op("Split", [low, g.ints([1, 1], "split")], outputs=2, axis=-1)
    )
    scale = 1.0 / (w * w)
    wr = g.const((g.rng.uniform(0, scale, (w, w, c.modes))).astype(np.float32), "spec_re")
    wi = g.const((g.rng.uniform(0, scale, (w, w, c.modes))).astype(np.float32), "spec_im")

    def mix(a: str, b: str) -> str:
        return g.op("Einsum", [a, b], equation="bik,iok->bok")

    out_re = g.op("Sub", [mix(re, wr), mix(im, wi)])
    out_im = g.op("Add", [mix(re, wi), mix(im, wr)])
    axes = g.ints([-1], "axes")
    mixed = g.op("Concat", [g.op("Unsqueeze", [out_re, axes]), g.op("Unsqueeze", [out_im, axes])], axis=-1)
    padded = g.op("Pad", [mixed, g.ints([0, 0, 0, 0, 0, 0, c.points - c.modes, 0], "pads")])  # [B, W, N, 2]
    signal = g.op("DFT", [padded], axis=2, inverse=1, onesided=0)
    real = g.op("Squeeze", [g.op("Slice", [signal, g.ints([0]), g.ints([1]), g.ints([3])]), g.ints([-1], "axes")])
    return g.op("Transpose", [real], perm=[0, 2, 1])  # [B, N, W]


def fno(size: str, seed: int) -> Any:
    c = FNO[size]
    g = GraphBuilder("fno", seed)
    a = g.input("a", FLOAT, [BATCH, c.points, 1])
    x = g.linear(a, 1, c.width)  # lift [B, N, 1] -> [B, N, W]
    for _ in range(c.layers):
        x = g.op("Relu", [g.op("Add", [_spectral(g, x, c), g.linear(x, c.width, c.width)])])
    u = g.linear(g.op("Relu", [g.linear(x, c.width, 2 * c.width)]), 2 * c.width, 1)
    g.output(u, "u", FLOAT, [BATCH, c.points, 1])
    return g.model(
        f"FNO-style spectral operator ({size}): {c.layers} Fourier layers, {c.modes} modes, {c.points} points"
    )


def fno_parameters(size: str) -> int:
    c = FNO[size]
    w = c.width
    layer = 2 * w * w * c.modes + w * w + w
    # + the pads vector (8 int64): not counted, it is bookkeeping
    return (w + w) + c.layers * layer + (w * 2 * w + 2 * w) + (2 * w + 1)


def fno_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = FNO[size]
    grid = np.linspace(0, 2 * np.pi, c.points, dtype=np.float32)
    phase = rng.uniform(0, 2 * np.pi, (batch, 1)).astype(np.float32)
    return {"a": np.sin(grid[None, :] + phase)[..., None].astype(np.float32)}
