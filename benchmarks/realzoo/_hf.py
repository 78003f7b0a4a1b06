"""Real ``transformers`` architectures at small widths with random weights, exported by Optimum.

Small configs keep CI fast while the graphs stay what Optimum emits for the full models (same
ops, same masks, same tied weights). Each recipe returns the torch module's own parameter count
(``model.parameters()`` yields a tied tensor once), which the hand counts check against.
"""

from __future__ import annotations

import pathlib
import shutil
import tempfile
import warnings
from typing import Any


def trained_like(model: Any) -> Any:
    """Every weight made distinct, as training leaves them.

    A freshly initialised model holds many equal tensors (zero biases, unit LayerNorm and
    BatchNorm scales); exporters store equal constants once, so its file would hold fewer weights
    than the architecture has. Small noise on every parameter and running statistic keeps the
    export what a trained checkpoint's would be.
    """
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=generator))
        for name, b in model.named_buffers():
            if b.dtype.is_floating_point and name.endswith(("running_mean", "running_var")):
                b.copy_(torch.rand(b.shape, generator=generator) + (0.5 if name.endswith("var") else -0.5))
    return model.eval()


def export(
    model: Any,
    task: str,
    out: pathlib.Path,
    opset: int = 18,
    pick: str = "model.onnx",
    extra: dict[str, Any] | None = None,
) -> dict[str, object]:
    import torch
    from optimum.exporters.onnx import main_export

    trained_like(model)
    work = pathlib.Path(tempfile.mkdtemp(prefix="realzoo-hf-"))
    try:
        model.save_pretrained(work / "src")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            main_export(
                str(work / "src"),
                output=work / "out",
                task=task,
                opset=opset,
                no_post_process=True,
                do_validation=False,
                device="cpu",
                **(extra or {}),
            )
        shutil.move(str(work / "out" / pick), out / "model.onnx")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "architecture": type(model).__name__,
        "config": model.config.to_diff_dict(),
        "task": task,
        "torch_parameters": sum(p.numel() for p in model.parameters()),
        "batchnorm_channels": sum(m.num_features for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)),
    }


def _seeded() -> None:
    import torch

    torch.manual_seed(0)


def bert(out: pathlib.Path) -> dict[str, object]:
    from transformers import BertConfig, BertModel

    _seeded()
    cfg = BertConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, intermediate_size=512)
    return export(BertModel(cfg).eval(), "feature-extraction", out)


def gpt2(out: pathlib.Path) -> dict[str, object]:
    from transformers import GPT2Config, GPT2LMHeadModel

    _seeded()
    cfg = GPT2Config(n_embd=128, n_layer=2, n_head=4, n_positions=256)
    return export(GPT2LMHeadModel(cfg).eval(), "text-generation", out)


def vit(out: pathlib.Path) -> dict[str, object]:
    from transformers import ViTConfig, ViTForImageClassification

    _seeded()
    cfg = ViTConfig(
        image_size=96,
        patch_size=16,
        hidden_size=192,
        num_hidden_layers=4,
        num_attention_heads=3,
        intermediate_size=768,
        num_labels=10,
    )
    return export(ViTForImageClassification(cfg).eval(), "image-classification", out)


def resnet(out: pathlib.Path) -> dict[str, object]:
    from transformers import ResNetConfig, ResNetForImageClassification

    _seeded()
    cfg = ResNetConfig(
        embedding_size=32, hidden_sizes=[32, 64, 128, 256], depths=[1, 1, 1, 1], layer_type="basic", num_labels=10
    )
    return export(ResNetForImageClassification(cfg).eval(), "image-classification", out)


def convnext(out: pathlib.Path) -> dict[str, object]:
    from transformers import ConvNextConfig, ConvNextForImageClassification

    _seeded()
    cfg = ConvNextConfig(hidden_sizes=[24, 48, 96, 192], depths=[1, 1, 2, 1], num_labels=10, image_size=96)
    return export(ConvNextForImageClassification(cfg).eval(), "image-classification", out)


def mobilenet_v2(out: pathlib.Path) -> dict[str, object]:
    from transformers import MobileNetV2Config, MobileNetV2ForImageClassification

    _seeded()
    cfg = MobileNetV2Config(depth_multiplier=0.35, image_size=96, num_labels=10)
    return export(MobileNetV2ForImageClassification(cfg).eval(), "image-classification", out)


def whisper_encoder(out: pathlib.Path) -> dict[str, object]:
    import torch
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    _seeded()
    cfg = WhisperConfig(
        d_model=128,
        encoder_layers=2,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=512,
        decoder_ffn_dim=512,
        num_mel_bins=80,
        max_source_positions=100,
        max_target_positions=64,
        vocab_size=1000,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        decoder_start_token_id=1,
    )
    model = trained_like(WhisperForConditionalGeneration(cfg))
    # Optimum's dummy audio is 3000 frames (the full model's 30 s); this width takes 200, so the
    # encoder is exported by torch.onnx directly, as Optimum would with the right length.
    encoder = model.model.encoder
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            encoder,
            (torch.randn(1, 80, 200),),
            str(out / "model.onnx"),
            dynamo=False,
            input_names=["input_features"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_features": {0: "batch_size"}},
            opset_version=17,
        )
    return {
        "architecture": "WhisperEncoder",
        "config": cfg.to_diff_dict(),
        "torch_parameters": sum(p.numel() for p in encoder.parameters()),
    }
