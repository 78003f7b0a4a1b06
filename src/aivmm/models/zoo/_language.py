"""Transformer language models: a BERT-base-class encoder and a GPT-2-class causal decoder."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from aivmm.models.zoo._builder import BATCH, FLOAT, INT64, GraphBuilder


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    vocab: int
    hidden: int
    layers: int
    heads: int
    ffn: int
    seq: int
    positions: int  # rows of the position table


BERT = {
    "tiny": TransformerConfig(vocab=1000, hidden=64, layers=2, heads=2, ffn=256, seq=16, positions=64),
    "full": TransformerConfig(vocab=30522, hidden=768, layers=12, heads=12, ffn=3072, seq=128, positions=512),
}
GPT2 = {
    "tiny": TransformerConfig(vocab=1000, hidden=64, layers=2, heads=2, ffn=256, seq=16, positions=64),
    "full": TransformerConfig(vocab=50257, hidden=768, layers=12, heads=12, ffn=3072, seq=128, positions=1024),
}


def _embedding(g: GraphBuilder, rows: int, width: int, prefix: str) -> str:
    return g.const(g.rng.standard_normal((rows, width), dtype=np.float32) * np.float32(0.02), prefix)


def _heads(g: GraphBuilder, x: str, c: TransformerConfig, perm: list[int]) -> str:
    d = c.hidden // c.heads
    return g.op("Transpose", [g.op("Reshape", [x, g.ints([0, c.seq, c.heads, d])])], perm=perm)


def _attention(
    g: GraphBuilder, q: str, k: str, v: str, c: TransformerConfig, mask: str | None, causal: str | None
) -> str:
    """Scaled dot-product attention over [B, S, H] projections; returns [B, S, H] before the output proj."""
    qh = _heads(g, q, c, [0, 2, 1, 3])
    kt = _heads(g, k, c, [0, 2, 3, 1])  # K already transposed for Q K^T
    vh = _heads(g, v, c, [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [qh, kt]), g.scalar(1.0 / math.sqrt(c.hidden // c.heads))])
    if mask is not None:
        scores = g.op("Add", [scores, mask])
    if causal is not None:
        scores = g.op("Where", [causal, scores, g.scalar(-1e4)])
    ctx = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), vh])
    return g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), g.ints([0, c.seq, c.hidden])])


def bert(size: str, seed: int) -> Any:
    c = BERT[size]
    g = GraphBuilder("bert-base", seed)
    ids = g.input("input_ids", INT64, [BATCH, c.seq])
    mask_in = g.input("attention_mask", INT64, [BATCH, c.seq])
    words = g.op("Gather", [_embedding(g, c.vocab, c.hidden, "word_embeddings"), ids])
    pos = g.op(
        "Gather",
        [_embedding(g, c.positions, c.hidden, "position_embeddings"), g.ints(list(range(c.seq)), "position_ids")],
    )
    types = g.op(
        "Gather",
        [_embedding(g, 2, c.hidden, "token_type_embeddings"), g.const(np.asarray(0, dtype=np.int64), "token_type")],
    )
    x = g.layer_norm(g.op("Add", [g.op("Add", [words, pos]), types]), c.hidden)
    # Padding mask: 0 where attended, -10000 where padded, broadcast over heads and queries.
    m = g.op("Unsqueeze", [g.op("Cast", [mask_in], to=FLOAT), g.ints([1, 2], "axes")])
    mask = g.op("Mul", [g.op("Sub", [g.scalar(1.0), m]), g.scalar(-10000.0)])
    h = c.hidden
    for _ in range(c.layers):
        ctx = _attention(g, g.linear(x, h, h), g.linear(x, h, h), g.linear(x, h, h), c, mask, None)
        x = g.layer_norm(g.op("Add", [g.linear(ctx, h, h), x]), h)
        ff = g.linear(g.gelu(g.linear(x, h, c.ffn)), c.ffn, h)
        x = g.layer_norm(g.op("Add", [ff, x]), h)
    g.output(x, "last_hidden_state", FLOAT, [BATCH, c.seq, h])
    cls = g.op("Gather", [x, g.const(np.asarray(0, dtype=np.int64), "cls")], axis=1)
    g.output(g.op("Tanh", [g.gemm(cls, h, h)]), "pooler_output", FLOAT, [BATCH, h])
    return g.model(f"BERT-class encoder ({size}): {c.layers} layers, hidden {h}, {c.heads} heads, seq {c.seq}")


def bert_parameters(size: str) -> int:
    c = BERT[size]
    h = c.hidden
    embeddings = (c.vocab + c.positions + 2) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * c.ffn + c.ffn) + (c.ffn * h + h) + 2 * h
    return embeddings + c.layers * layer + h * h + h


def gpt2(size: str, seed: int) -> Any:
    c = GPT2[size]
    g = GraphBuilder("gpt2", seed)
    ids = g.input("input_ids", INT64, [BATCH, c.seq])
    wte = _embedding(g, c.vocab, c.hidden, "wte")
    pos = g.op("Gather", [_embedding(g, c.positions, c.hidden, "wpe"), g.ints(list(range(c.seq)), "position_ids")])
    x = g.op("Add", [g.op("Gather", [wte, ids]), pos])
    causal = g.const(np.tril(np.ones((c.seq, c.seq), dtype=bool))[None, None], "causal_mask")
    h = c.hidden
    for _ in range(c.layers):
        qkv = g.linear(g.layer_norm(x, h), h, 3 * h)
        q, k, v = g.op("Split", [qkv, g.ints([h, h, h], "split")], outputs=3, axis=-1)
        x = g.op("Add", [x, g.linear(_attention(g, q, k, v, c, None, causal), h, h)])
        x = g.op("Add", [x, g.linear(_gelu_tanh(g, g.linear(g.layer_norm(x, h), h, c.ffn)), c.ffn, h)])
    x = g.layer_norm(x, h)
    # The LM head is tied to the token embedding, as in GPT-2.
    logits = g.op("MatMul", [x, g.op("Transpose", [wte], perm=[1, 0])])
    g.output(logits, "logits", FLOAT, [BATCH, c.seq, c.vocab])
    return g.model(f"GPT-2-class causal decoder ({size}): {c.layers} layers, hidden {h}, seq {c.seq}, tied LM head")


def _gelu_tanh(g: GraphBuilder, x: str) -> str:
    """GPT-2's tanh GELU approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))."""
    cube = g.op("Mul", [g.op("Mul", [g.op("Mul", [x, x]), x]), g.scalar(0.044715)])
    inner = g.op("Mul", [g.op("Add", [x, cube]), g.scalar(math.sqrt(2.0 / math.pi))])
    return g.op("Mul", [g.op("Mul", [x, g.op("Add", [g.op("Tanh", [inner]), g.scalar(1.0)])]), g.scalar(0.5)])


def gpt2_parameters(size: str) -> int:
    c = GPT2[size]
    h = c.hidden
    layer = 2 * h + (3 * h * h + 3 * h) + (h * h + h) + 2 * h + (h * c.ffn + c.ffn) + (c.ffn * h + h)
    # + the causal mask constant (seq x seq booleans): a stored tensor, hence counted.
    return (c.vocab + c.positions) * h + c.layers * layer + 2 * h + c.seq * c.seq


def token_inputs(config: TransformerConfig, batch: int, rng: np.random.Generator, mask: bool) -> dict[str, np.ndarray]:
    feeds = {"input_ids": rng.integers(0, config.vocab, (batch, config.seq), dtype=np.int64)}
    if mask:
        attention = np.ones((batch, config.seq), dtype=np.int64)
        # Pad the tail of every other sequence, so masking is exercised.
        attention[1::2, config.seq * 3 // 4 :] = 0
        feeds["attention_mask"] = attention
    return feeds


def bert_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return token_inputs(BERT[size], batch, rng, mask=True)


def gpt2_inputs(size: str, batch: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return token_inputs(GPT2[size], batch, rng, mask=False)
