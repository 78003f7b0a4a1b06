"""aivmm's analysis on models nobody here wrote: categories with evidence, and weights and MACs
within 5% of a hand count (``realzoo._hand``: torch parameters and per-layer formulas, or figures
measured on the arrays ONNX Runtime produced) for every zoo model."""

from __future__ import annotations

import os

import pytest

import realzoo
from aivmm.models import ModelSpec, load

# CI analyses the fast entries (its time budget); AIVMM_REALZOO_ALL=1 takes every entry, as
# benchmarks/realzoo_report.py does (it fails on a ratio outside 5% too).
NAMES = [e.name for e in realzoo.entries(fast=None if os.environ.get("AIVMM_REALZOO_ALL") == "1" else True)]


@pytest.fixture(scope="module")
def specs() -> dict[str, ModelSpec]:
    return {}


def _spec(specs: dict[str, ModelSpec], name: str) -> ModelSpec:
    if name not in specs:
        specs[name] = load(realzoo.path(name), shapes=realzoo.shapes(name))
    return specs[name]


@pytest.mark.parametrize("name", NAMES)
def test_weights_and_macs_within_5_percent_of_the_hand_count(specs: dict[str, ModelSpec], name: str) -> None:
    spec, hand = _spec(specs, name), realzoo.hand(name)
    assert spec.parameters == pytest.approx(hand.parameters, rel=0.05), hand.how
    assert spec.macs == pytest.approx(hand.macs, rel=0.05), hand.how
    # FLOPs: 2 per MAC plus the elementwise work, which is never more than the MACs in these models
    assert 2 * hand.macs * 0.95 <= spec.flops <= 3 * hand.macs, spec.per_operator_flops


@pytest.mark.parametrize("name", NAMES)
def test_categories_have_evidence(specs: dict[str, ModelSpec], name: str) -> None:
    entry, spec = realzoo.get(name), _spec(specs, name)
    found = [c.category.value for c in spec.categories]
    assert found[0] == entry.categories[0], spec.categories
    assert set(entry.categories) <= set(found), spec.categories
    assert all(c.evidence for c in spec.categories)
    if entry.subtype:
        scored = {c.subtype for c in spec.categories}
        assert entry.subtype in scored, spec.categories


def test_tied_lm_head_counts_once(specs: dict[str, ModelSpec]) -> None:
    spec = _spec(specs, "gpt2")
    torch_count = realzoo.meta("gpt2")["torch_parameters"]
    assert abs(spec.parameters - torch_count) <= 16  # the file stores wte and its transpose


def test_control_flow_says_how_it_was_counted(specs: dict[str, ModelSpec]) -> None:
    silero = _spec(specs, "silero-vad")
    assert any("upper bound" in w and "If" in w for w in silero.warnings), silero.warnings
    assert any("taken one counted" in w for w in silero.warnings), silero.warnings
    for name in ("loop-grucell", "scan-rnn", "dlrm"):
        spec = _spec(specs, name)
        assert not any(w.startswith("Loop:") for w in spec.warnings), (name, spec.warnings)
    assert set(_spec(specs, "loop-grucell").control_flow) == {"Loop"}
    assert set(_spec(specs, "scan-rnn").control_flow) == {"Scan"}


def test_quantized_ops_are_counted(specs: dict[str, ModelSpec]) -> None:
    expected = {
        "resnet-int8-qdq": {"QuantizeLinear", "DequantizeLinear"},
        "bert-int8-dynamic": {"MatMulInteger", "DynamicQuantizeLinear"},
        "mobilenet-v2-int8-qop": {"QLinearConv", "QGemm"},
        "resnet-int8-dynamic": {"ConvInteger"},
        "ddddocr-crnn-int8": {"ConvInteger", "MatMulInteger", "DynamicQuantizeLSTM"},
        "bert-int8-qop": {"QLinearMatMul", "QLinearAdd", "QLinearSoftmax"},
    }
    for name, ops in ((n, o) for n, o in expected.items() if n in NAMES):
        spec = _spec(specs, name)
        assert ops <= set(spec.quantized_operators), (name, spec.quantized_operators)
        assert ops - {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"} <= set(spec.per_operator_flops)
        assert not any("not counted" in w for w in spec.warnings), (name, spec.warnings)


@pytest.mark.parametrize(("name", "op"), [("bert-ort-fused", "Attention"), ("bert-ort-mha", "MultiHeadAttention")])
def test_fused_attention_counts_as_the_unfused_model(specs: dict[str, ModelSpec], name: str, op: str) -> None:
    fused, plain = _spec(specs, name), _spec(specs, "bert")
    assert op in fused.per_operator_flops
    assert fused.macs == plain.macs
