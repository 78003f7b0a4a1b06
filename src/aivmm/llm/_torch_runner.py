"""The PyTorch step runner: an HF transformers directory (config.json + weights) generating on
aivmm's KV buffers.

The past KV passed to the model is a set of zero-copy torch views of aivmm's buffers (wrapped in a
transformers ``DynamicCache``); the model's present KV and logits are copied back into the buffers
the scheduler gave, so the same batching, accounting and prefix reuse serve ONNX and PyTorch.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from aivmm.errors import BackendUnavailableError, ExecutionError, UnsupportedModelError, missing_extra
from aivmm.llm._layout import context_length
from aivmm.llm._types import KVLayout, KVStyle

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def is_hf_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES)


def weights_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))


def hf_layout(folder: pathlib.Path) -> KVLayout:
    """The KV layout an HF causal LM config describes (the cache aivmm allocates for it)."""
    cfg = json.loads((folder / "config.json").read_text())
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)):
        raise UnsupportedModelError(f"{folder}/config.json names no layers/heads/hidden size of a decoder")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    names = tuple(f"layer.{i}" for i in range(layers))
    return KVLayout(
        style=KVStyle.TRANSFORMERS,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype="float32",
        context_length=context_length(folder),
        past_key_names=names,
        past_value_names=names,
        present_key_names=names,
        present_value_names=names,
        position_ids="position_ids",
        vocab_size=int(cfg.get("vocab_size", 0)),
        source=str(folder / "config.json"),
    )


class TorchRunner:
    """transformers ``AutoModelForCausalLM`` on the CPU, fp32, under ``torch.inference_mode``."""

    backend = "torch"

    def __init__(self, folder: pathlib.Path, layout: KVLayout, *, threads: int | None = None) -> None:
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise missing_extra("torch/transformers", "torch") from exc
        try:
            self.model = transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        except Exception as exc:
            raise BackendUnavailableError(f"transformers could not load {folder}: {exc}") from exc
        self._torch = torch
        self._cache_cls = transformers.DynamicCache
        self.layout = layout
        self.kv_dtype = np.dtype(np.float32)
        self.logits_dtype = np.dtype(np.float32)
        self._bufs: dict[int, np.ndarray] = {}

    def register(self, flat: np.ndarray) -> None:
        self._bufs[flat.ctypes.data] = flat

    def run(
        self,
        batch: int,
        past_len: int,
        seq: int,
        ids: np.ndarray,
        pos: np.ndarray | None,
        mask: np.ndarray | None,
        past_ptrs: Sequence[int],
        present_ptrs: Sequence[int],
        logits: np.ndarray,
    ) -> None:
        torch, lay = self._torch, self.layout
        ps = (batch, lay.kv_heads, past_len, lay.head_dim)
        n = batch * lay.kv_heads * past_len * lay.head_dim
        t = torch.from_numpy
        cache = self._cache_cls()
        if past_len:
            for i in range(lay.layers):
                k = t(self._bufs[past_ptrs[2 * i]][:n].reshape(ps))
                v = t(self._bufs[past_ptrs[2 * i + 1]][:n].reshape(ps))
                cache.update(k, v, i)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=t(ids),
                    attention_mask=None if mask is None else t(mask),
                    position_ids=None if pos is None else t(pos),
                    past_key_values=cache,
                    use_cache=True,
                )
        except Exception as exc:
            raise ExecutionError(
                f"transformers failed in a generation step (batch {batch}, past {past_len}): {exc}"
            ) from exc
        np.copyto(logits[: batch * seq * lay.vocab_size].reshape(batch, seq, lay.vocab_size), out.logits.numpy())
        qs = (batch, lay.kv_heads, past_len + seq, lay.head_dim)
        m = batch * lay.kv_heads * (past_len + seq) * lay.head_dim
        present = out.past_key_values
        for i in range(lay.layers):
            layer = present.layers[i]
            np.copyto(self._bufs[present_ptrs[2 * i]][:m].reshape(qs), layer.keys.numpy())
            np.copyto(self._bufs[present_ptrs[2 * i + 1]][:m].reshape(qs), layer.values.numpy())

    def execute(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise UnsupportedModelError("execute() runs ONNX decoders; an HF directory generates only (generate/stream)")
