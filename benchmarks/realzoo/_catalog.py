"""The zoo's entries: where each model comes from, what it is, and the inputs it accepts."""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from realzoo import _hf, _recipes, _torchmods

_TORCH = ("torch", "onnx")
_HF = ("torch", "onnx", "transformers", "optimum", "optimum-onnx")
_QUANT = ("onnxruntime", "onnx")


@dataclasses.dataclass(frozen=True)
class Feed:
    """One input: its shape for the hand count, its dtype, and how to fill it.

    Integers are drawn from ``[low, high)`` (ids stay inside their embedding table); ``value``
    fixes every element (a sample rate, a mask of ones, a zero initial state).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = 0.0
    high: float = 1.0
    value: float | None = None

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.value is not None:
            return np.full(self.shape, self.value, dtype=self.dtype)
        if np.issubdtype(np.dtype(self.dtype), np.integer):
            return rng.integers(int(self.low), int(self.high), size=self.shape, dtype=self.dtype)
        return rng.uniform(self.low, self.high, size=self.shape).astype(self.dtype)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One zoo model.

    ``kind`` is what the model is, in words; ``categories`` the aivmm categories the analysis must
    find (``Category`` values, primary first); ``source`` where it comes from (a wheel's
    ``package==version:member``, a transformers class, a torch module); ``fast`` marks the models
    cheap enough to fetch, build and run in CI; ``metadata`` what the model's authors say about
    its inputs (Ultralytics ``imgsz``/``stride``, PP-OCR's image shapes).
    """

    name: str
    kind: str
    categories: tuple[str, ...]
    source: str
    fast: bool
    build: Callable[[pathlib.Path], dict[str, object]] = dataclasses.field(repr=False, compare=False)
    inputs: tuple[Feed, ...] = ()
    packages: tuple[str, ...] = ()
    recipe: int = 3
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict, compare=False)
    subtype: str = ""  # what the analysis must name it: "detector", "causal-decoder-llm", "audio", ...

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "categories": list(self.categories),
            "source": self.source,
            "fast": self.fast,
            "inputs": [f.to_json() for f in self.inputs],
            "metadata": self.metadata,
            "subtype": self.subtype,
        }


def _wheel(
    name: str,
    kind: str,
    categories: tuple[str, ...],
    package: str,
    version: str,
    member: str,
    fast: bool,
    inputs: tuple[Feed, ...],
    subtype: str = "",
    **metadata: Any,
) -> Entry:
    return Entry(
        name,
        kind,
        categories,
        f"wheel {package}=={version}: {member}",
        fast,
        _recipes.wheel_member(package, version, member),
        inputs,
        (),
        1,
        metadata,
        subtype,
    )


def _image(name: str, size: int, batch: int = 1, channels: int = 3) -> Feed:
    return Feed(name, (batch, channels, size, size))


_RAPIDOCR = ("rapidocr-onnxruntime", "1.4.4")
_SILERO = ("silero-vad", "6.2.3")
_DDDDOCR = ("ddddocr", "1.6.1")  # a 76 MB wheel: not in the CI subset
_SILERO_STATE = Feed("state", (2, 1, 128), value=0.0)
_BERT_FEEDS = (
    Feed("input_ids", (1, 16), "int64", 0, 30522),
    Feed("attention_mask", (1, 16), "int64", value=1),
    Feed("token_type_ids", (1, 16), "int64", 0, 2),
)

_ENTRIES = [
    # --- ONNX files from PyPI wheels -----------------------------------------------------------
    _wheel(
        "yolov8n-nudenet",
        "YOLOv8n detector exported by Ultralytics 8.2.46 (imgsz 320, stride 32)",
        ("cnn",),
        "nudenet",
        "3.4.2",
        "nudenet/320n.onnx",
        True,
        (_image("images", 320),),
        imgsz=(320, 320),
        stride=32,
        subtype="detector",
    ),
    _wheel(
        "ppocr-det",
        "PP-OCRv4 mobile text detector (DBNet), Paddle -> ONNX",
        ("cnn",),
        *_RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
        True,
        (Feed("x", (1, 3, 320, 320), low=-1.0, high=1.0),),
        divisor=32,
        limit_side_len=736,
        subtype="segmentation",
    ),
    _wheel(
        "ppocr-cls",
        "PP-OCR mobile v2 text-direction classifier (0/180 degrees)",
        ("cnn",),
        *_RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
        True,
        (Feed("x", (1, 3, 48, 192), low=-1.0, high=1.0),),
        cls_image_shape=(3, 48, 192),
    ),
    _wheel(
        "ppocr-rec",
        "PP-OCRv4 mobile recogniser (SVTR-LCNet, CTC head over 6625 characters)",
        ("cnn", "transformer"),
        *_RAPIDOCR,
        "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
        True,
        (Feed("x", (1, 3, 48, 320), low=-1.0, high=1.0),),
        rec_img_shape=(3, 48, 320),
        subtype="ocr-recognizer",
    ),
    _wheel(
        "silero-vad",
        "Silero VAD v5 (STFT conv, encoder, LSTM; If on the sample rate)",
        ("rnn", "cnn"),
        *_SILERO,
        "silero_vad/data/silero_vad.onnx",
        True,
        (Feed("input", (1, 512), low=-1.0, high=1.0), _SILERO_STATE, Feed("sr", (), "int64", value=16000)),
        samples_per_chunk={"16000": 512, "8000": 256},
        subtype="audio",
    ),
    _wheel(
        "silero-vad-ifless",
        "Silero VAD v5, opset-18 export without If (GRU-like cell as Gemm)",
        ("cnn",),
        *_SILERO,
        "silero_vad/data/silero_vad_op18_ifless.onnx",
        False,
        (Feed("input", (1, 512), low=-1.0, high=1.0), Feed("sr", (), "int64", value=16000), _SILERO_STATE),
    ),
    _wheel(
        "ddddocr-crnn",
        "ddddocr CRNN captcha/text recogniser (convs, LSTM, 8210-way CTC head)",
        ("cnn", "rnn"),
        *_DDDDOCR,
        "ddddocr/common.onnx",
        False,
        (Feed("input1", (1, 1, 64, 160), low=-1.0, high=1.0),),
        height=64,
        subtype="ocr-recognizer",
    ),
    _wheel(
        "ddddocr-crnn-int8",
        "ddddocr's older CRNN, dynamically quantised (ConvInteger, MatMulInteger, DynamicQuantizeLSTM)",
        ("cnn", "rnn"),
        *_DDDDOCR,
        "ddddocr/common_old.onnx",
        False,
        (Feed("input1", (1, 1, 64, 160), low=-1.0, high=1.0),),
        height=64,
        subtype="ocr-recognizer",
    ),
    _wheel(
        "ddddocr-det",
        "ddddocr text/character detector (YOLOX-style, 416 x 416, [1, 3549, 6] boxes)",
        ("cnn",),
        *_DDDDOCR,
        "ddddocr/common_det.onnx",
        False,
        (_image("images", 416),),
        subtype="detector",
        imgsz=(416, 416),
    ),
    # --- transformers architectures, random weights, exported by Optimum ------------------------
    Entry(
        "bert",
        "BertModel (2 layers, hidden 128, vocab 30522)",
        ("transformer",),
        "transformers BertModel",
        True,
        _hf.bert,
        _BERT_FEEDS,
        _HF,
        subtype="encoder-llm",
    ),
    Entry(
        "gpt2",
        "GPT2LMHeadModel (2 layers, n_embd 128, LM head tied to wte)",
        ("transformer",),
        "transformers GPT2LMHeadModel",
        True,
        _hf.gpt2,
        (
            Feed("input_ids", (1, 16), "int64", 0, 50257),
            Feed("attention_mask", (1, 16), "int64", value=1),
            Feed("position_ids", (1, 16), "int64", 0, 16),
        ),
        _HF,
        subtype="causal-decoder-llm",
    ),
    Entry(
        "vit",
        "ViTForImageClassification (96 px, patch 16, 4 layers, hidden 192)",
        ("transformer",),
        "transformers ViTForImageClassification",
        False,
        _hf.vit,
        (_image("pixel_values", 96),),
        _HF,
    ),
    Entry(
        "resnet",
        "ResNetForImageClassification (basic blocks, [32, 64, 128, 256])",
        ("cnn",),
        "transformers ResNetForImageClassification",
        True,
        _hf.resnet,
        (_image("pixel_values", 96),),
        _HF,
    ),
    Entry(
        "convnext",
        "ConvNextForImageClassification ([24, 48, 96, 192], depths 1-1-2-1)",
        ("cnn",),
        "transformers ConvNextForImageClassification",
        False,
        _hf.convnext,
        (_image("pixel_values", 96),),
        _HF,
    ),
    Entry(
        "mobilenet-v2",
        "MobileNetV2ForImageClassification (depth multiplier 0.35)",
        ("cnn",),
        "transformers MobileNetV2ForImageClassification",
        False,
        _hf.mobilenet_v2,
        (_image("pixel_values", 96),),
        _HF,
    ),
    Entry(
        "whisper-encoder",
        "Whisper encoder (2 layers, d_model 128, 80 mel bins, 200 frames)",
        ("transformer",),
        "transformers WhisperForConditionalGeneration (encoder_model.onnx)",
        False,
        _hf.whisper_encoder,
        (Feed("input_features", (1, 80, 200), low=-1.0, high=1.0),),
        _HF,
        subtype="audio",
    ),
    # --- torch modules exported by torch.onnx --------------------------------------------------
    Entry(
        "lstm-tagger",
        "2-layer nn.LSTM over filterbank frames + per-frame classifier",
        ("rnn",),
        "torch nn.LSTM",
        True,
        _torchmods.lstm_tagger,
        (Feed("features", (1, 50, 40)),),
        _TORCH,
    ),
    Entry(
        "gru-bidirectional",
        "bidirectional nn.GRU text classifier over token embeddings",
        ("rnn",),
        "torch nn.GRU",
        True,
        _torchmods.gru_bidirectional,
        (Feed("ids", (1, 32), "int64", 0, 5000),),
        _TORCH,
    ),
    Entry(
        "loop-grucell",
        "GRU cell stepped in a TorchScript for-loop (ONNX Loop)",
        ("rnn",),
        "torch.jit.script GRU cell",
        True,
        _torchmods.loop_gru_cell,
        (Feed("x", (20, 1, 24)),),
        _TORCH,
    ),
    Entry(
        "scan-rnn",
        "Elman RNN as an ONNX Scan (the tf2onnx form of Keras RNNs)",
        ("rnn",),
        "onnx.helper Scan",
        True,
        _recipes.scan_rnn,
        (Feed("x", (1, 20, 32)), Feed("h0", (1, 64), value=0.0)),
        ("onnx",),
    ),
    Entry(
        "dlrm",
        "DLRM: bottom MLP, 4 sum-pooled nn.EmbeddingBag, dot interaction, top MLP",
        ("recommender",),
        "torch nn.EmbeddingBag + MLP",
        True,
        _torchmods.dlrm,
        (Feed("dense", (2, 13)), Feed("sparse", (2, 4, 3), "int64", 0, 500)),
        _TORCH,
    ),
    Entry(
        "fno1d",
        "1-D Fourier neural operator (truncated DFT as matmuls, complex weights as einsum)",
        ("scientific",),
        "torch FNO1d",
        True,
        _torchmods.fno1d,
        (Feed("u", (1, 128, 2)),),
        _TORCH,
    ),
    Entry(
        "pinn",
        "physics-informed MLP (x, t) -> u, 4 tanh layers of 64",
        ("scientific",),
        "torch nn.Sequential",
        True,
        _torchmods.pinn,
        (Feed("xt", (256, 2)),),
        _TORCH,
    ),
    # --- int8 by onnxruntime.quantization ------------------------------------------------------
    Entry(
        "resnet-int8-qdq",
        "resnet, quantize_static QDQ (QuantizeLinear/DequantizeLinear pairs)",
        ("cnn",),
        "onnxruntime.quantization quantize_static(QDQ) of resnet",
        True,
        _recipes.quantized("resnet", "qdq"),
        (_image("pixel_values", 96),),
        _HF + _QUANT,
    ),
    Entry(
        "mobilenet-v2-int8-qop",
        "mobilenet-v2, quantize_static QOperator (QLinearConv, QLinearMatMul)",
        ("cnn",),
        "onnxruntime.quantization quantize_static(QOperator) of mobilenet-v2",
        False,
        _recipes.quantized("mobilenet-v2", "qoperator"),
        (_image("pixel_values", 96),),
        _HF + _QUANT,
    ),
    Entry(
        "bert-int8-dynamic",
        "bert, quantize_dynamic (DynamicQuantizeLinear + MatMulInteger)",
        ("transformer",),
        "onnxruntime.quantization quantize_dynamic of bert",
        True,
        _recipes.quantized("bert", "dynamic"),
        _BERT_FEEDS,
        _HF + _QUANT,
        subtype="encoder-llm",
    ),
    Entry(
        "bert-int8-qop",
        "bert, quantize_static QOperator (QLinearMatMul, QGemm, QLinearAdd)",
        ("transformer",),
        "onnxruntime.quantization quantize_static(QOperator) of bert",
        False,
        _recipes.quantized("bert", "qoperator"),
        _BERT_FEEDS,
        _HF + _QUANT,
        subtype="encoder-llm",
    ),
    Entry(
        "bert-ort-fused",
        "bert through onnxruntime.transformers.optimizer (Attention, SkipLayerNormalization, BiasGelu)",
        ("transformer",),
        "onnxruntime.transformers optimize_model(bert) of bert",
        True,
        _recipes.ort_fused("bert", "bert", 2, 128),
        _BERT_FEEDS,
        _HF + _QUANT,
        subtype="encoder-llm",
    ),
    Entry(
        "bert-ort-mha",
        "bert through the ORT optimiser with MultiHeadAttention (Q, K, V projected outside the op)",
        ("transformer",),
        "onnxruntime.transformers optimize_model(bert, use_multi_head_attention) of bert",
        True,
        _recipes.ort_fused("bert", "bert", 2, 128, multi_head=True),
        _BERT_FEEDS,
        _HF + _QUANT,
        subtype="encoder-llm",
    ),
    Entry(
        "resnet-int8-dynamic",
        "resnet, quantize_dynamic (ConvInteger + MatMulInteger)",
        ("cnn",),
        "onnxruntime.quantization quantize_dynamic of resnet",
        False,
        _recipes.quantized("resnet", "dynamic"),
        (_image("pixel_values", 96),),
        _HF + _QUANT,
    ),
]

CATALOG: dict[str, Entry] = {e.name: e for e in _ENTRIES}
if len(CATALOG) != len(_ENTRIES):
    raise RuntimeError("duplicate real-zoo entry names")
