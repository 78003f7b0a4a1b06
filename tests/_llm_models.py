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


def _export(model: Any, ids: dict[str, int], out: pathlib.Path) -> None:
    from optimum.exporters.onnx import main_export
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
