"""Tiny random-weight decoder LLMs for tests: a Llama with grouped-query attention and a GPT-2.

Each builder makes a real transformers model (random weights, fixed seed), exports it with Optimum
``text-generation-with-past`` and writes next to ``model.onnx`` what a deployable LLM directory
has: ``config.json``, ``generation_config.json``, a ``tokenizer.json`` trained in-process with the
``tokenizers`` library (vocabulary size equal to the model's) and a ``tokenizer_config.json`` with a
jinja chat template. The PyTorch weights stay in ``<dir>/hf`` so tests can compare with HF
``generate``. Builds are cached under ``~/.cache/aivmm-tests/`` keyed by the library versions.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

VOCAB_SIZE = 512
CONTEXT = 256
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
_BUILDER_VERSION = "1"

# A fixed training text: varied enough that byte-level BPE reaches VOCAB_SIZE merges.
_TEXT = (
    """
The quick brown fox jumps over the lazy dog. A virtual machine manager places models on devices.
Large language models generate one token at a time, reusing the keys and values of earlier tokens.
Hello world! How are you today? I am fine, thank you. The weather is nice and the sky is blue.
Once upon a time there was a little robot who liked to count numbers: one two three four five six
seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen.
Continuous batching lets requests join and leave between decode steps; paged attention splits the
cache into blocks. Tokenizers turn text into integers and back again, byte by byte when needed.
Python, Rust, C++, Go and Java are programming languages. Matrices multiply rows by columns.
Memory bandwidth bounds decoding, compute bounds prefill. Streams of tokens arrive as they come.
"""
    * 4
    + " ".join(f"word{i} item{i * 7 % 101} value{i * 13 % 97}" for i in range(400))
)


def _versions_key(kind: str) -> str:
    import onnx
    import optimum
    import tokenizers
    import torch
    import transformers

    parts = [
        kind,
        _BUILDER_VERSION,
        torch.__version__,
        transformers.__version__,
        tokenizers.__version__,
        onnx.__version__,
        getattr(optimum, "__version__", "?"),
    ]
    return kind + "-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TEXT], trainer=trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    if tok.get_vocab_size() != VOCAB_SIZE:
        raise RuntimeError(f"tokenizer vocabulary {tok.get_vocab_size()} != {VOCAB_SIZE}")
    return tok


def _write_tokenizer(out: pathlib.Path) -> dict[str, int]:
    tok = _train_tokenizer()
    tok.save(str(out / "tokenizer.json"))
    ids = {t: tok.token_to_id(t) for t in (PAD, BOS, EOS)}
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "bos_token": BOS,
                "eos_token": EOS,
                "pad_token": PAD,
                "add_bos_token": False,
                "model_max_length": CONTEXT,
                "chat_template": CHAT_TEMPLATE,
                "tokenizer_class": "PreTrainedTokenizerFast",
            },
            indent=1,
        )
    )
    return ids


def _save_hf(model: Any, ids: dict[str, int], out: pathlib.Path) -> pathlib.Path:
    """``<out>/hf``: the PyTorch weights, configs and tokenizer files (an HF directory)."""
    from transformers import GenerationConfig

    hf = out / "hf"
    model.generation_config = GenerationConfig(
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        max_new_tokens=32,
        do_sample=False,
    )
    model.save_pretrained(hf)
    shutil.copy(out / "tokenizer.json", hf / "tokenizer.json")
    shutil.copy(out / "tokenizer_config.json", hf / "tokenizer_config.json")
    return hf


def _export(model: Any, ids: dict[str, int], out: pathlib.Path) -> None:
    from optimum.exporters.onnx import main_export

    hf = _save_hf(model, ids, out)
    main_export(str(hf), output=str(out), task="text-generation-with-past", do_validation=False)
    # main_export copies config.json / generation_config.json; tokenizer files are ours, keep them.
    if not (out / "model.onnx").is_file():
        raise RuntimeError(f"Optimum export wrote no model.onnx in {out}: {sorted(os.listdir(out))}")


def _llama(ids: dict[str, int]) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(cfg)


def _gpt2(ids: dict[str, int]) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=VOCAB_SIZE,
        n_embd=64,
        n_layer=2,
        n_head=4,
        n_positions=CONTEXT,
        bos_token_id=ids[BOS],
        eos_token_id=ids[EOS],
        pad_token_id=ids[PAD],
    )
    return GPT2LMHeadModel(cfg)


def _build(kind: str, make: Callable[[dict[str, int]], Any], dirpath: str | os.PathLike[str] | None) -> pathlib.Path:
    import torch

    if dirpath is None:
        root = pathlib.Path(os.environ.get("AIVMM_TEST_MODELS", pathlib.Path.home() / ".cache" / "aivmm-tests"))
        final = root / _versions_key(kind)
    else:
        final = pathlib.Path(dirpath)
    if (final / "model.onnx").is_file() and (final / "hf" / "config.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=final.parent))
    try:
        ids = _write_tokenizer(tmp)
        torch.manual_seed(0)
        model = make(ids).eval()
        _export(model, ids, tmp)
        if final.exists():  # another process finished first, or a partial dir from a crash
            if (final / "model.onnx").is_file():
                return final
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def build_tiny_llama(dirpath: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """A 2-layer Llama (4 heads, 2 KV heads, vocab 512) exported with past; returns the directory."""
    return _build("tiny-llama", _llama, dirpath)


def build_tiny_gpt2(dirpath: str | os.PathLike[str] | None = None) -> pathlib.Path:
    """A 2-layer GPT-2 (4 heads, vocab 512) exported with past; returns the directory."""
    return _build("tiny-gpt2", _gpt2, dirpath)


def write_genai_config(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """A copy of an exported directory with the genai_config.json ONNX Runtime GenAI needs to load it.

    The ONNX file and tokenizer are linked, not copied; the config names the Optimum export's inputs
    and outputs (the layout ``onnxruntime_genai`` calls a decoder with separate past and present).
    """
    src, out = pathlib.Path(model_dir), pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.onnx", "tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        if (src / name).exists() and not (out / name).exists():
            os.symlink((src / name).resolve(), out / name)
    cfg = json.loads((src / "config.json").read_text())
    llama = cfg["model_type"] == "llama"
    heads = cfg["num_attention_heads"] if llama else cfg["n_head"]
    hidden = cfg["hidden_size"] if llama else cfg["n_embd"]
    genai = {
        "model": {
            "type": "llama",  # genai's decoder-only model class; its "gpt2" class expects other input names
            "bos_token_id": cfg["bos_token_id"],
            "eos_token_id": cfg["eos_token_id"],
            "pad_token_id": cfg["pad_token_id"],
            "vocab_size": cfg["vocab_size"],
            "context_length": cfg["max_position_embeddings"] if llama else cfg["n_positions"],
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": "model.onnx",
                "head_size": hidden // heads,
                "hidden_size": hidden,
                "num_attention_heads": heads,
                "num_key_value_heads": cfg.get("num_key_value_heads", heads),
                "num_hidden_layers": cfg["num_hidden_layers"] if llama else cfg["n_layer"],
                "inputs": {
                    "input_ids": "input_ids",
                    "attention_mask": "attention_mask",
                    "position_ids": "position_ids",
                    "past_key_names": "past_key_values.%d.key",
                    "past_value_names": "past_key_values.%d.value",
                },
                "outputs": {
                    "logits": "logits",
                    "present_key_names": "present.%d.key",
                    "present_value_names": "present.%d.value",
                },
            },
        },
        "search": {
            "do_sample": False,
            "max_length": cfg["max_position_embeddings"] if llama else cfg["n_positions"],
            "min_length": 0,
            "num_beams": 1,
            "num_return_sequences": 1,
            "past_present_share_buffer": False,
            "repetition_penalty": 1.0,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
        },
    }
    (out / "genai_config.json").write_text(json.dumps(genai, indent=1))
    return out


def write_merged(model_dir: str | os.PathLike[str], out_dir: str | os.PathLike[str]) -> pathlib.Path:
    """A directory holding ``decoder_model_merged.onnx``: Optimum's merged layout (``use_cache_branch``).

    Optimum 2.x exports one with-past graph; its ``merge_decoders`` joins two graphs under an If on
    ``use_cache_branch``. Both branches are the with-past graph here (it also runs the prompt, at
    past length 0), which is the merged layout's interface with the export this module makes.
    """
    from optimum.onnx import merge_decoders

    src, out = pathlib.Path(model_dir), pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    merged = out / "decoder_model_merged.onnx"
    if not merged.is_file():
        merge_decoders(src / "model.onnx", src / "model.onnx", save_path=str(merged), strict=False)
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json", "generation_config.json"):
        if not (out / name).exists():
            shutil.copy(src / name, out / name)
    return out


def build_tiny_hf(kind: str, dirpath: str | os.PathLike[str]) -> pathlib.Path:
    """The same tiny model's HF directory alone (``kind`` "llama" or "gpt2"; no Optimum, no ONNX:
    what the GPU tests and benchmarks/llm_gpu.py build on a machine without Optimum)."""
    import torch

    out = pathlib.Path(dirpath)
    if (out / "hf" / "config.json").is_file():
        return out / "hf"
    out.mkdir(parents=True, exist_ok=True)
    ids = _write_tokenizer(out)
    torch.manual_seed(0)
    return _save_hf({"llama": _llama, "gpt2": _gpt2}[kind](ids).eval(), ids, out)
