"""A recurrent sequence classifier: a bidirectional LSTM layer followed by a GRU layer."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aivmm.models.zoo._builder import BATCH, FLOAT, GraphBuilder


@dataclasses.dataclass(frozen=True)
class LstmConfig:
    seq: int
    features: int
    hidden: int
    classes: int


LSTM = {
    "tiny": LstmConfig(seq=10, features=8, hidden=16, classes=4),
    # Speech-command sized: 128 frames of 80 filterbank features.
    "full": LstmConfig(seq=128, features=80, hidden=512, classes=35),
}


def lstm(size: str, seed: int) -> Any:
    c = LSTM[size]
    g = GraphBuilder("lstm", seed)
    x = g.input("sequence", FLOAT, [BATCH, c.seq, c.features])
    # The ONNX recurrent ops take time-major input; layout=1 is not implemented everywhere.
    steps = g.op("Transpose", [x], perm=[1, 0, 2])
    hid = c.hidden
    y, _, _ = g.op(
        "LSTM",
        [steps, g.weight((2, 4 * hid, c.features), c.features), g.weight((2, 4 * hid, hid), hid), g.bias((2, 8 * hid))],
        outputs=3,
        hidden_size=hid,
        direction="bidirectional",
    )
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.ints([0, 0, -1])])  # [T, B, 2H]
    _, last = g.op(
        "GRU",
        [y, g.weight((1, 3 * hid, 2 * hid), 2 * hid), g.weight((1, 3 * hid, hid), hid), g.bias((1, 6 * hid))],
        outputs=2,
        hidden_size=hid,
        linear_before_reset=1,
    )
    last = g.op("Squeeze", [last, g.ints([0], "axes")])  # [B, H]
    g.output(g.gemm(last, hid, c.classes), "logits", FLOAT, [BATCH, c.classes])
    return g.model(f"LSTM/GRU sequence classifier ({size}): bidirectional LSTM {hid} + GRU {hid}, {c.seq} steps")


def lstm_parameters(size: str) -> int:
    c = LSTM[size]
    h = c.hidden
    lstm_params = 2 * (4 * h * c.features + 4 * h * h + 8 * h)
    gru_params = 3 * h * 2 * h + 3 * h * h + 6 * h
    return lstm_params + gru_params + h * c.classes + c.classes


def lstm_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = LSTM[size]
    return {"sequence": rng.standard_normal((batch, c.seq, c.features), dtype=np.float32)}
