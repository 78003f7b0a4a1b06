"""Workload categories from structural facts, each with a confidence and its evidence.

The rules run on :class:`Facts`, which both the ONNX and the PyTorch front ends fill, so one rule
set categorises every format. Several categories may hold at once (a CRNN is a CNN and an RNN);
the list is ordered by confidence.
"""

from __future__ import annotations

import dataclasses

from aivmm.models._spec import Category, CategoryScore

CAUSAL_DECODER_LLM = "causal-decoder-llm"
ENCODER_LLM = "encoder-llm"


@dataclasses.dataclass
class Facts:
    """What the front ends found in a graph; each list holds evidence sentences."""

    convolutions: int = 0
    attention_blocks: int = 0  # MatMul -> Softmax -> MatMul chains
    fused_attention: int = 0  # Attention / MultiHeadAttention / SDPA ops
    layer_norms: int = 0
    causal_evidence: list[str] = dataclasses.field(default_factory=list)
    recurrent_ops: dict[str, int] = dataclasses.field(default_factory=dict)  # LSTM/GRU/RNN -> count
    loop_recurrences: int = 0  # Loop/Scan bodies with a matmul and a sigmoid/tanh
    unrolled_recurrences: int = 0  # a weight shared by >= 3 matmuls with sigmoid/tanh around
    token_inputs: list[str] = dataclasses.field(default_factory=list)  # integer [batch, seq] inputs
    embedding_tables: dict[str, int] = dataclasses.field(default_factory=dict)  # table -> rows, gathered by input ids
    embedding_bags: int = 0  # gathers followed by a sum/mean pooling
    index_inputs: set[str] = dataclasses.field(default_factory=set)  # graph inputs feeding embedding gathers
    dense_layers: int = 0  # Gemm / MatMul with a weight operand
    interactions: int = 0  # activation x activation products outside attention (feature crosses)
    spectral_ops: dict[str, int] = dataclasses.field(default_factory=dict)
    periodic_activations: int = 0  # Sin / Cos
    tanh_activations: int = 0
    coordinate_inputs: list[str] = dataclasses.field(default_factory=list)  # float [batch, <=4] inputs
    float_inputs: int = 0
    top_ops: list[str] = dataclasses.field(default_factory=list)
    # what the model serves, (subtype, evidence): "detector", "ocr-recognizer", "segmentation", "audio"
    workload: list[tuple[str, str]] = dataclasses.field(default_factory=list)


def categorize(f: Facts) -> tuple[CategoryScore, ...]:
    scores: list[CategoryScore] = []
    attention = f.attention_blocks + f.fused_attention
    recurrent = sum(f.recurrent_ops.values())

    if attention:
        evidence = []
        if f.attention_blocks:
            evidence.append(f"{f.attention_blocks} attention block(s): MatMul -> Softmax -> MatMul")
        if f.fused_attention:
            evidence.append(f"{f.fused_attention} fused attention op(s)")
        if f.layer_norms:
            evidence.append(f"{f.layer_norms} layer normalisation(s)")
        subtype = ""
        embedded = bool(f.embedding_tables) and bool(f.token_inputs)
        if f.causal_evidence:
            evidence.extend(f.causal_evidence)
            if embedded:
                subtype = CAUSAL_DECODER_LLM
        elif embedded:
            subtype = ENCODER_LLM
            evidence.append("no causal mask")
        if embedded:
            evidence.append(
                f"token-id input(s) {', '.join(f.token_inputs)} feeding embedding table(s) "
                f"{_tables(f.embedding_tables)}"
            )
        conf = min(0.98, 0.75 + 0.03 * attention + (0.05 if f.layer_norms else 0))
        scores.append(CategoryScore(Category.TRANSFORMER, conf, tuple(evidence), subtype))

    if f.convolutions:
        # One or two convs in front of attention are a patch-embedding stem, not a CNN workload.
        stem_only = bool(attention) and f.convolutions <= 2
        conf = 0.3 if stem_only else min(0.97, 0.6 + 0.02 * f.convolutions)
        what = "a convolutional stem" if stem_only else "a convolution stack"
        scores.append(CategoryScore(Category.CNN, conf, (f"{f.convolutions} convolution layer(s): {what}",)))

    if recurrent:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(f.recurrent_ops.items()))
        scores.append(CategoryScore(Category.RNN, 0.95, (f"recurrent op(s): {ops}",)))
    elif f.loop_recurrences:
        scores.append(
            CategoryScore(
                Category.RNN,
                0.75,
                (f"{f.loop_recurrences} Loop/Scan body(ies) with a matmul and a sigmoid/tanh state update",),
            )
        )
    elif f.unrolled_recurrences and not attention:
        scores.append(
            CategoryScore(
                Category.RNN,
                0.6,
                (f"{f.unrolled_recurrences} weight(s) reused by 3+ matmuls with sigmoid/tanh: an unrolled recurrence",),
            )
        )

    tables = len(f.embedding_tables)
    if tables and f.dense_layers >= 2 and not attention and (tables >= 2 or (f.embedding_bags and not recurrent)):
        evidence = [
            f"{tables} embedding table(s) {_tables(f.embedding_tables)} gathered by "
            f"{len(f.index_inputs)} categorical input(s)",
            f"{f.dense_layers} dense layer(s) (MLP)",
        ]
        if f.embedding_bags:
            evidence.append(f"{f.embedding_bags} pooled embedding bag(s)")
        if f.interactions:
            evidence.append(f"{f.interactions} feature interaction product(s)")
        conf = min(0.95, 0.6 + 0.05 * tables + (0.1 if f.interactions else 0))
        scores.append(CategoryScore(Category.RECOMMENDER, conf, tuple(evidence)))

    if f.spectral_ops:
        ops = ", ".join(f"{n} {op}" for op, n in sorted(f.spectral_ops.items()))
        scores.append(CategoryScore(Category.SCIENTIFIC, 0.9, (f"spectral transform(s): {ops}",)))
    elif (
        f.coordinate_inputs
        and len(f.coordinate_inputs) == f.float_inputs
        and (f.periodic_activations or f.tanh_activations)
        and f.dense_layers >= 2
        and not (attention or f.convolutions or recurrent or tables or f.unrolled_recurrences)
    ):
        acts = f.periodic_activations + f.tanh_activations
        scores.append(
            CategoryScore(
                Category.SCIENTIFIC,
                0.8,
                (
                    f"coordinate input(s) {', '.join(f.coordinate_inputs)} (a few features per sample)",
                    f"MLP of {f.dense_layers} dense layer(s) with {acts} sin/tanh activation(s): "
                    "a PINN-style field model",
                ),
            )
        )

    scores = _with_workload(scores, f.workload)
    if not scores:
        top = ", ".join(f.top_ops[:5]) or "no operators"
        scores.append(CategoryScore(Category.OTHER, 0.5, (f"no known workload pattern; most frequent ops: {top}",)))
    return tuple(sorted(scores, key=lambda s: -s.confidence))


_VISION_TASKS = frozenset({"detector", "ocr-recognizer", "segmentation"})


def _with_workload(scores: list[CategoryScore], workload: list[tuple[str, str]]) -> list[CategoryScore]:
    """What the model serves as the subtype of the category that does the work, with the evidence.

    A detector, OCR recogniser or segmentation map is the CNN's task; audio goes to the most
    confident structural category (the RNN of a VAD, the transformer of a speech encoder).
    """
    out = list(scores)
    for subtype, evidence in workload:
        wanted = (Category.CNN,) if subtype in _VISION_TASKS else (Category.RNN, Category.TRANSFORMER, Category.CNN)
        targets = sorted((i for i, s in enumerate(out) if s.category in wanted), key=lambda i: -out[i].confidence)
        if not targets:
            continue
        i = targets[0]
        s = out[i]
        out[i] = dataclasses.replace(s, subtype=s.subtype or subtype, evidence=(*s.evidence, f"{subtype}: {evidence}"))
    return out


def _tables(tables: dict[str, int]) -> str:
    shown = ", ".join(f"{name} ({rows} rows)" for name, rows in list(tables.items())[:4])
    return shown + (", ..." if len(tables) > 4 else "")
