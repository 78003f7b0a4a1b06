"""Hand counts: every zoo model's weights and MACs, worked out without aivmm, for the shapes in
the catalog (batch 1 unless the entry says otherwise).

Where the model is a torch module, weights are the module's own ``parameters()`` (a tied tensor
once), adjusted by what the export is known to do (a folded BatchNorm keeps one bias per channel
of its two parameters; an output the export does not compute drops its head), and MACs are the
textbook formulas per layer from the config. Where the model is a wheel's file, the figures are
literals measured by ``_reference`` (formulas applied to the arrays ONNX Runtime or
``onnx.reference`` actually produced) and, where its authors publish one, checked against it.
A MAC is one multiply-accumulate; analysis FLOPs are about twice the MACs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Hand:
    parameters: int
    macs: int
    how: str


def _bert(meta: dict[str, Any]) -> Hand:
    s, h, i, layers = 16, 128, 512, 2
    macs = layers * (4 * s * h * h + 2 * s * h * i + 2 * s * s * h)
    pooler = h * h + h
    return Hand(
        int(meta["torch_parameters"]) - pooler,
        macs,
        "torch parameters - pooler (feature-extraction exports last_hidden_state only); "
        "MACs L(4sh^2 + 2shi + 2s^2h), s=16 h=128 i=512 L=2",
    )


def _gpt2(meta: dict[str, Any]) -> Hand:
    s, h, vocab, layers = 16, 128, 50257, 2
    return Hand(
        int(meta["torch_parameters"]),
        layers * (12 * s * h * h + 2 * s * s * h) + s * h * vocab,
        "torch parameters (lm_head tied to wte: once); MACs L(12sh^2 + 2s^2h) + shV, s=16 h=128 V=50257",
    )


def _vit(meta: dict[str, Any]) -> Hand:
    patches, tokens, h, i, layers, labels, patch = 36, 37, 192, 768, 4, 10, 16
    macs = patches * h * 3 * patch * patch + layers * (4 * tokens * h * h + 2 * tokens * h * i + 2 * tokens**2 * h)
    return Hand(
        int(meta["torch_parameters"]),
        macs + h * labels,
        "torch parameters; MACs patch conv 36*192*768 + L(4th^2 + 2thi + 2t^2h) + classifier on [CLS], t=37",
    )


def _whisper(meta: dict[str, Any]) -> Hand:
    frames, d, ffn, layers, mels = 200, 128, 512, 2, 80
    s = frames // 2
    convs = frames * d * mels * 3 + s * d * d * 3
    return Hand(
        int(meta["torch_parameters"]),
        convs + layers * (4 * s * d * d + 2 * s * d * ffn + 2 * s * s * d),
        "encoder torch parameters; MACs conv1 (k3) + conv2 (k3, stride 2) + L(4sd^2 + 2sdf + 2s^2d), s=100",
    )


def _cnn(macs: int) -> Callable[[dict[str, Any]], Hand]:
    def hand(meta: dict[str, Any]) -> Hand:
        return Hand(
            int(meta["torch_parameters"]) - int(meta.get("batchnorm_channels", 0)),
            macs,
            "torch parameters - one per BatchNorm channel (folded into the conv: 2 parameters -> 1 bias); "
            "MACs measured by _reference.runtime_macs (out elements x Cin/g x k per conv, x K per matmul)",
        )

    return hand


def _literal(parameters: int, macs: int, how: str) -> Callable[[dict[str, Any]], Hand]:
    return lambda meta: Hand(parameters, macs, how)


def _lstm_tagger(meta: dict[str, Any]) -> Hand:
    t, i, h, c = 50, 40, 128, 12
    return Hand(
        int(meta["torch_parameters"]),
        t * (4 * h * (i + h) + 4 * h * (h + h)) + t * h * c,
        "torch parameters; MACs T(4H(I+H) + 4H(2H)) + T*H*C, T=50 I=40 H=128 C=12",
    )


def _gru(meta: dict[str, Any]) -> Hand:
    t, i, h, c = 32, 64, 96, 4
    return Hand(
        int(meta["torch_parameters"]),
        2 * t * 3 * h * (i + h) + 2 * h * c,
        "torch parameters; MACs 2 directions x T x 3H(I+H) + 2H*C, T=32 I=64 H=96",
    )


def _loop_grucell(meta: dict[str, Any]) -> Hand:
    t, i, h, c = 20, 24, 48, 6
    return Hand(
        int(meta["torch_parameters"]), t * (i * 3 * h + h * 3 * h) + h * c, "T(I*3H + H*3H) + H*C, T=20 (Loop trips)"
    )


def _scan_rnn(meta: dict[str, Any]) -> Hand:
    t, f, h, c = 20, 32, 64, 8
    return Hand(f * h + h * h + h + h * c, t * (f * h + h * h) + h * c, "W, R, b, head; MACs T(FH + H^2) + HC")


def _dlrm(meta: dict[str, Any]) -> Hand:
    batch, features, dim = 2, 5, 32
    per = 13 * 64 + 64 * 32 + (32 + 10) * 64 + 64 * 1 + features * features * dim
    return Hand(int(meta["torch_parameters"]), batch * per, "bottom + top MLP + bmm interaction 5x5x32, batch 2")


def _fno(meta: dict[str, Any]) -> Hand:
    n, w, modes = 128, 32, 12
    block = 2 * w * n * modes + 4 * w * w * modes + 2 * w * modes * n + w * w * n
    return Hand(
        int(meta["torch_parameters"]) + 4 * n * modes,
        n * 2 * w + 2 * block + n * w * 64 + n * 64,
        "torch parameters + the 4 cos/sin bases once (the exporter stores the second block's equal copies once); "
        "MACs lift + 2 x (forward DFT, 4 einsums over modes, inverse DFT, 1x1 conv) + projection",
    )


def _pinn(meta: dict[str, Any]) -> Hand:
    batch = 256
    return Hand(int(meta["torch_parameters"]), batch * (2 * 64 + 3 * 64 * 64 + 64), "batch 256 x (2*64 + 3*64^2 + 64)")


HAND: dict[str, Callable[[dict[str, Any]], Hand]] = {
    "yolov8n-nudenet": _literal(
        3_009_158,
        1_012_627_200,
        "Ultralytics' YOLOv8n (fused) has 3,151,904 parameters for 80 classes; nudenet's 18 classes shrink the "
        "three class branches by 142,746 (c3 = 64 not 80, 18 outputs). MACs measured by runtime_macs; "
        "Ultralytics' 8.7 GFLOPs at 640 (80 classes) gives 1.0875 G at 320, minus 80.4 M for the smaller class "
        "branches = 1.007 G (0.6% below: 8.7 is rounded)",
    ),
    "ppocr-det": _literal(1_171_733, 575_567_744, "distinct_weights and runtime_macs (ConvTranspose included)"),
    "ppocr-cls": _literal(133_629, 16_315_376, "distinct_weights and runtime_macs at 3x48x192"),
    "ppocr-rec": _literal(2_690_231, 702_469_440, "distinct_weights and runtime_macs at 3x48x320"),
    "silero-vad": _literal(
        545_283,
        594_432,
        "upper bound: sr is an input, so the costlier If branch (8 kHz path on 512 samples) counts; that branch "
        "measured by reference_macs on silero-vad-ifless (same layers, no If inside); the 16 kHz branch actually "
        "taken at sr=16000 is 563,968 MACs",
    ),
    "silero-vad-ifless": _literal(545_670, 594_432, "reference_macs with sr=8000 (the costlier branch)"),
    "ddddocr-crnn": _literal(13_520_259, 569_118_720, "distinct_weights and runtime_macs at 1x1x64x160"),
    "ddddocr-crnn-int8": _literal(
        13_520_265,
        569_118_720,
        "distinct_weights; runtime_macs (ConvInteger, MatMulInteger, DynamicQuantizeLSTM with its W [D, I, 4H]): "
        "the same MACs as the fp32 ddddocr-crnn",
    ),
    "ddddocr-det": _literal(5_024_206, 3_179_352_384, "distinct_weights and runtime_macs at 416 x 416"),
    "bert": _bert,
    "gpt2": _gpt2,
    "vit": _vit,
    "resnet": _cnn(46_230_016),
    "convnext": _cnn(17_366_592),
    "mobilenet-v2": _cnn(10_666_928),
    "whisper-encoder": _whisper,
    "lstm-tagger": _lstm_tagger,
    "gru-bidirectional": _gru,
    "loop-grucell": _loop_grucell,
    "scan-rnn": _scan_rnn,
    "dlrm": _dlrm,
    "fno1d": _fno,
    "pinn": _pinn,
}
# int8 and fused versions store the same weights (int8 where quantised) and do the same MACs.
for _derived, _base in {
    "resnet-int8-qdq": "resnet",
    "mobilenet-v2-int8-qop": "mobilenet-v2",
    "bert-int8-dynamic": "bert",
    "bert-int8-qop": "bert",
    "resnet-int8-dynamic": "resnet",
    "bert-ort-fused": "bert",
    "bert-ort-mha": "bert",
}.items():
    HAND[_derived] = (lambda base: lambda meta: HAND[base](meta["base_meta"]))(_base)


def hand(name: str, meta: dict[str, Any]) -> Hand:
    return HAND[name](meta)
