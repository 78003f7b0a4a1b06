"""Find the KV-cache layout of a decoder ONNX graph (Optimum with-past / merged, ONNX Runtime GenAI).

The layout is read from the graph's inputs and outputs (names, the KV dims, the dtype) and, where
present, from ``genai_config.json`` (ONNX Runtime GenAI names its inputs there) and ``config.json``
(the context length). A graph without per-layer past inputs and present outputs is not a decoder
with a KV cache: :func:`detect` returns None and :func:`require` says what is missing.
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any

from aivmm.errors import UnsupportedModelError
from aivmm.llm._types import KVLayout, KVStyle

_PAST_RE = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")
_PRESENT_RE = re.compile(r"^present\.(\d+)\.(key|value)$")
_DTYPES = {1: "float32", 10: "float16", 16: "bfloat16"}
DEFAULT_CONTEXT = 2048


def model_file(path: pathlib.Path) -> pathlib.Path:
    """The decoder ONNX file of a path: the file itself, or the one a directory holds."""
    if path.is_file():
        return path
    genai = _read_json(path / "genai_config.json")
    if genai:
        name = genai.get("model", {}).get("decoder", {}).get("filename")
        if name and (path / name).is_file():
            return path / name
    for name in ("model.onnx", "decoder_model_merged.onnx", "decoder_with_past_model.onnx"):
        if (path / name).is_file():
            return path / name
    onnx_files = sorted(path.glob("*.onnx"))
    if len(onnx_files) == 1:
        return onnx_files[0]
    raise UnsupportedModelError(f"{path}: no decoder ONNX file (model.onnx, decoder_model_merged.onnx) found")


def _read_json(path: pathlib.Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _dims(value_info: Any) -> list[int | str]:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


def detect(path: str | pathlib.Path, graph: Any | None = None) -> KVLayout | None:
    """The KV layout of the decoder at ``path`` (file or directory), or None if it has no KV cache."""
    p = pathlib.Path(path)
    file = model_file(p)
    folder = file.parent
    if graph is None:
        import onnx

        graph = onnx.load(str(file), load_external_data=False).graph
    inputs = {i.name: i for i in graph.input}
    outputs = {o.name: o for o in graph.output}
    genai = _read_json(folder / "genai_config.json").get("model", {})
    dec = genai.get("decoder", {}) if isinstance(genai, dict) else {}
    gin, gout = dec.get("inputs", {}), dec.get("outputs", {})
    if gin.get("past_key_names") and gout.get("present_key_names"):
        style, source = KVStyle.GENAI, str(folder / "genai_config.json")
        layers = int(dec.get("num_hidden_layers", 0))
        pk = tuple(gin["past_key_names"] % i for i in range(layers))
        pv = tuple(gin["past_value_names"] % i for i in range(layers))
        qk = tuple(gout["present_key_names"] % i for i in range(layers))
        qv = tuple(gout["present_value_names"] % i for i in range(layers))
        names = {
            "input_ids": gin.get("input_ids", "input_ids"),
            "attention_mask": gin.get("attention_mask", "attention_mask"),
            "position_ids": gin.get("position_ids", "position_ids"),
            "logits": gout.get("logits", "logits"),
        }
    else:
        past: dict[int, dict[str, str]] = {}
        for name in inputs:
            m = _PAST_RE.match(name)
            if m:
                past.setdefault(int(m.group(1)), {})[m.group(2)] = name
        present: dict[int, dict[str, str]] = {}
        for name in outputs:
            m = _PRESENT_RE.match(name)
            if m:
                present.setdefault(int(m.group(1)), {})[m.group(2)] = name
        if not past or sorted(past) != sorted(present) or sorted(past) != list(range(len(past))):
            return None
        if any(len(v) != 2 for v in (*past.values(), *present.values())):
            return None
        layers = len(past)
        pk = tuple(past[i]["key"] for i in range(layers))
        pv = tuple(past[i]["value"] for i in range(layers))
        qk = tuple(present[i]["key"] for i in range(layers))
        qv = tuple(present[i]["value"] for i in range(layers))
        style = KVStyle.OPTIMUM_MERGED if "use_cache_branch" in inputs else KVStyle.OPTIMUM_WITH_PAST
        source = "graph"
        names = {
            "input_ids": "input_ids",
            "attention_mask": "attention_mask",
            "position_ids": "position_ids",
            "logits": "logits",
        }
    for n in (*pk, *pv):
        if n not in inputs:
            raise UnsupportedModelError(f"{file}: KV input {n!r} named by {source} is not a graph input")
    for n in (*qk, *qv, names["logits"]):
        if n not in outputs:
            raise UnsupportedModelError(f"{file}: output {n!r} named by {source} is not a graph output")
    if names["input_ids"] not in inputs:
        raise UnsupportedModelError(f"{file}: decoder without an {names['input_ids']!r} input")
    kv_dims = _dims(inputs[pk[0]])
    if len(kv_dims) != 4 or not isinstance(kv_dims[1], int) or not isinstance(kv_dims[3], int) or not kv_dims[1]:
        kv_heads = int(dec.get("num_key_value_heads", 0))
        head_dim = int(dec.get("head_size", 0))
        if len(kv_dims) != 4 or not kv_heads or not head_dim:
            raise UnsupportedModelError(
                f"{file}: KV input {pk[0]!r} has dims {kv_dims}; expected [batch, kv_heads, past, head_dim]"
            )
    else:
        kv_heads, head_dim = int(kv_dims[1]), int(kv_dims[3])
    elem = inputs[pk[0]].type.tensor_type.elem_type
    if elem not in _DTYPES:
        raise UnsupportedModelError(f"{file}: KV input {pk[0]!r} has ONNX element type {elem}; expected a float")
    logits_dims = _dims(outputs[names["logits"]])
    cfg = _read_json(folder / "config.json")
    vocab = logits_dims[-1] if logits_dims and isinstance(logits_dims[-1], int) and logits_dims[-1] else 0
    vocab = int(vocab or cfg.get("vocab_size") or genai.get("vocab_size") or 0)
    return KVLayout(
        style=style,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype=_DTYPES[elem],
        context_length=context_length(folder, genai),
        past_key_names=pk,
        past_value_names=pv,
        present_key_names=qk,
        present_value_names=qv,
        input_ids=names["input_ids"],
        attention_mask=names["attention_mask"] if names["attention_mask"] in inputs else None,
        position_ids=names["position_ids"] if names["position_ids"] in inputs else None,
        use_cache_branch="use_cache_branch" if "use_cache_branch" in inputs else None,
        logits=names["logits"],
        vocab_size=vocab,
        source=source,
    )


def context_length(folder: pathlib.Path, genai: dict[str, Any] | None = None) -> int:
    """The longest sequence the model was configured for (config.json, genai_config.json)."""
    if genai and genai.get("context_length"):
        return int(genai["context_length"])
    cfg = _read_json(folder / "config.json")
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        if isinstance(cfg.get(key), int) and cfg[key] > 0:
            return int(cfg[key])
    tok = _read_json(folder / "tokenizer_config.json").get("model_max_length")
    if isinstance(tok, int) and 0 < tok < 10**7:
        return tok
    return DEFAULT_CONTEXT


def require(path: str | pathlib.Path) -> KVLayout:
    """The KV layout, or UnsupportedModelError when the model has no KV-cache inputs and outputs."""
    layout = detect(path)
    if layout is None:
        raise UnsupportedModelError(
            f"{path}: not a decoder with a KV cache (no past_key_values.N.key/value inputs with matching"
            " present.N.key/value outputs, and no genai_config.json naming them); it cannot generate"
        )
    return layout
