"""A DLRM-class recommender: embedding tables for categorical features, bottom and top MLPs, and the
pairwise dot-product feature interaction."""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np

from aivmm.models.zoo._builder import BATCH, FLOAT, INT64, GraphBuilder


@dataclasses.dataclass(frozen=True)
class DlrmConfig:
    dense: int
    rows: tuple[int, ...]  # one embedding table per categorical feature
    dim: int
    bottom: tuple[int, ...]  # hidden widths; the last bottom layer outputs `dim`
    top: tuple[int, ...]


DLRM = {
    "tiny": DlrmConfig(dense=13, rows=(100, 50, 200, 80), dim=8, bottom=(16,), top=(16,)),
    # Criteo-shaped: 13 dense and 26 categorical features; tables capped near 1M rows in total so the
    # model stays a few hundred MB.
    "full": DlrmConfig(dense=13, rows=(100_000,) * 8 + (10_000,) * 18, dim=64, bottom=(512, 256), top=(512, 256)),
}


def _mlp(g: GraphBuilder, x: str, sizes: tuple[int, ...], last_relu: bool) -> str:
    for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        x = g.gemm(x, fan_in, fan_out)
        if i < len(sizes) - 2 or last_relu:
            x = g.op("Relu", [x])
    return x


def dlrm(size: str, seed: int) -> Any:
    c = DLRM[size]
    g = GraphBuilder("dlrm", seed)
    dense = g.input("dense", FLOAT, [BATCH, c.dense])
    bottom = _mlp(g, dense, (c.dense, *c.bottom, c.dim), last_relu=True)  # [B, D]
    features = [g.op("Unsqueeze", [bottom, g.ints([1], "axes")])]
    for i, rows in enumerate(c.rows):
        ids = g.input(f"cat_{i}", INT64, [BATCH])
        table = g.const(g.rng.uniform(-0.05, 0.05, (rows, c.dim)).astype(np.float32), f"emb_{i}")
        features.append(g.op("Unsqueeze", [g.op("Gather", [table, ids]), g.ints([1], "axes")]))
    n = len(features)
    z = g.op("Concat", features, axis=1)  # [B, n, D]
    # Pairwise dot products of all features; keep the strict lower triangle (each pair once).
    dots = g.op("Reshape", [g.op("MatMul", [z, g.op("Transpose", [z], perm=[0, 2, 1])]), g.ints([0, n * n])])
    li, lj = np.tril_indices(n, -1)
    pairs = g.op("Gather", [dots, g.ints(list(li * n + lj), "pairs")], axis=1)
    top_in = g.op("Concat", [bottom, pairs], axis=1)
    logit = _mlp(g, top_in, (c.dim + len(li), *c.top, 1), last_relu=False)
    g.output(g.op("Sigmoid", [logit]), "probability", FLOAT, [BATCH, 1])
    return g.model(f"DLRM-class recommender ({size}): {len(c.rows)} embedding tables x {c.dim}, dot interaction")


def dlrm_parameters(size: str) -> int:
    c = DLRM[size]
    n = len(c.rows) + 1
    pairs = n * (n - 1) // 2

    def mlp(sizes: tuple[int, ...]) -> int:
        return sum(a * b + b for a, b in itertools.pairwise(sizes))

    return sum(c.rows) * c.dim + mlp((c.dense, *c.bottom, c.dim)) + mlp((c.dim + pairs, *c.top, 1))


def dlrm_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = DLRM[size]
    feeds: dict[str, np.ndarray] = {"dense": rng.standard_normal((batch, c.dense), dtype=np.float32)}
    for i, rows in enumerate(c.rows):
        feeds[f"cat_{i}"] = rng.integers(0, rows, (batch,), dtype=np.int64)
    return feeds
