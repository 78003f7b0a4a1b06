"""Convolutional models: a ResNet-50-class classifier and a CRNN (conv + GRU) text recogniser."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from aivmm.models.zoo._builder import BATCH, FLOAT, GraphBuilder


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    image: int
    stem: int  # stem conv width
    stem_kernel: int
    stem_pool: bool
    widths: tuple[int, ...]  # bottleneck widths per stage (outputs are 4x)
    blocks: tuple[int, ...]
    classes: int


RESNET = {
    "tiny": ResNetConfig(32, 16, 3, False, (16, 32), (1, 1), 10),
    # The ResNet-50 topology: 7x7/2 stem, max-pool, bottleneck stages of 3, 4, 6, 3 blocks.
    "full": ResNetConfig(224, 64, 7, True, (64, 128, 256, 512), (3, 4, 6, 3), 1000),
}
EXPANSION = 4


def _conv(g: GraphBuilder, x: str, cin: int, cout: int, k: int, stride: int = 1, relu: bool = True) -> str:
    # Batch norm folded into the conv's weight and bias, as inference exports do.
    w = g.weight((cout, cin, k, k), prefix="conv_w")
    y = g.op("Conv", [x, w, g.bias(cout, "conv_b")], kernel_shape=[k, k], strides=[stride, stride], pads=[k // 2] * 4)
    return g.op("Relu", [y]) if relu else y


def resnet(size: str, seed: int) -> Any:
    c = RESNET[size]
    g = GraphBuilder("resnet50", seed)
    x = g.input("input", FLOAT, [BATCH, 3, c.image, c.image])
    x = _conv(g, x, 3, c.stem, c.stem_kernel, 2 if c.stem_pool else 1)
    if c.stem_pool:
        x = g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    cin = c.stem
    for stage, (width, blocks) in enumerate(zip(c.widths, c.blocks)):
        for block in range(blocks):
            stride = 2 if block == 0 and stage > 0 else 1
            cout = width * EXPANSION
            y = _conv(g, x, cin, width, 1)
            y = _conv(g, y, width, width, 3, stride)
            y = _conv(g, y, width, cout, 1, relu=False)
            shortcut = _conv(g, x, cin, cout, 1, stride, relu=False) if block == 0 else x
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            cin = cout
    x = g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    g.output(g.gemm(x, cin, c.classes), "logits", FLOAT, [BATCH, c.classes])
    return g.model(f"ResNet-50-class CNN ({size}): bottleneck stages {c.blocks}, {c.image}x{c.image} RGB input")


def resnet_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = RESNET[size]
    return {"input": rng.standard_normal((batch, 3, c.image, c.image), dtype=np.float32)}


def resnet_parameters(size: str) -> int:
    """The parameter count by formula (independent of the graph), for tests and docs."""
    c = RESNET[size]
    total = 3 * c.stem * c.stem_kernel**2 + c.stem
    cin = c.stem
    for width, blocks in zip(c.widths, c.blocks):
        for block in range(blocks):
            cout = width * EXPANSION
            total += cin * width + width + width * width * 9 + width + width * cout + cout
            if block == 0:
                total += cin * cout + cout
            cin = cout
    return total + cin * c.classes + c.classes


@dataclasses.dataclass(frozen=True)
class CrnnConfig:
    height: int
    width: int
    channels: tuple[int, ...]  # conv widths; each conv is followed by a 2x2 max-pool
    hidden: int
    classes: int


CRNN = {
    "tiny": CrnnConfig(16, 32, (8, 16), 16, 11),
    "full": CrnnConfig(32, 128, (64, 128, 256), 256, 37),
}


def crnn(size: str, seed: int) -> Any:
    c = CRNN[size]
    g = GraphBuilder("crnn", seed)
    x = g.input("image", FLOAT, [BATCH, 1, c.height, c.width])
    cin, h, w = 1, c.height, c.width
    for cout in c.channels:
        x = _conv(g, x, cin, cout, 3)
        x = g.op("MaxPool", [x], kernel_shape=[2, 2], strides=[2, 2])
        cin, h, w = cout, h // 2, w // 2
    # Columns become time steps: [B, C, H, W] -> [W, B, C*H].
    seq = g.op("Reshape", [g.op("Transpose", [x], perm=[3, 0, 1, 2]), g.ints([0, 0, -1])])
    features, hid = cin * h, c.hidden
    y, _ = g.op(
        "GRU",
        [seq, g.weight((2, 3 * hid, features), features), g.weight((2, 3 * hid, hid), hid), g.bias((2, 6 * hid))],
        outputs=2,
        hidden_size=hid,
        direction="bidirectional",
        linear_before_reset=1,
    )
    # [T, 2, B, H] -> [T, B, 2H] -> per-step class scores -> [B, T, classes]
    y = g.op("Reshape", [g.op("Transpose", [y], perm=[0, 2, 1, 3]), g.ints([0, 0, -1])])
    scores = g.linear(y, 2 * hid, c.classes)
    out = g.op("LogSoftmax", [g.op("Transpose", [scores], perm=[1, 0, 2])], axis=-1)
    g.output(out, "log_probs", FLOAT, [BATCH, w, c.classes])
    return g.model(f"CRNN text recogniser ({size}): {len(c.channels)} conv blocks + bidirectional GRU")


def crnn_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    c = CRNN[size]
    return {"image": rng.random((batch, 1, c.height, c.width), dtype=np.float32)}


def crnn_parameters(size: str) -> int:
    c = CRNN[size]
    total, cin, h = 0, 1, c.height
    for cout in c.channels:
        total += cin * cout * 9 + cout
        cin, h = cout, h // 2
    features, hid = cin * h, c.hidden
    gru = 2 * (3 * hid * features + 3 * hid * hid + 6 * hid)  # bidirectional
    return total + gru + 2 * hid * c.classes + c.classes
