"""Step runners: run one forward step of a decoder on buffers the KV store owns.

A runner gets the token ids, positions and attention mask of a step, pointers to the past KV (one
buffer per layer and key/value, laid out [batch, kv_heads, past, head_dim]) and the buffers its
present KV and logits must be written to. The ONNX Runtime runner binds them all with IOBinding,
so the cache never passes through a per-step numpy copy; the OpenVINO runner shares the input
buffers with OpenVINO tensors and copies the present out (OpenVINO allocates its outputs).
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from aivmm.errors import BackendUnavailableError, ExecutionError, missing_extra
from aivmm.llm._types import KVLayout


class OrtRunner:
    """ONNX Runtime on the CPU through IOBinding on aivmm-owned buffers."""

    backend = "onnxruntime"

    def __init__(self, path: pathlib.Path, layout: KVLayout, *, threads: int | None = None) -> None:
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise missing_extra("onnxruntime", "onnxruntime") from exc
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            so.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise BackendUnavailableError(f"onnxruntime could not load {path}: {exc}") from exc
        self.layout = layout
        self.kv_dtype = np.dtype(layout.dtype)
        out_types = {o.name: o.type for o in self.session.get_outputs()}
        self.logits_dtype = np.dtype(np.float16 if "float16" in out_types[layout.logits] else np.float32)
        self._io = self.session.io_binding()
        self._past = [n for pair in zip(layout.past_key_names, layout.past_value_names, strict=True) for n in pair]
        self._present = [
            n for pair in zip(layout.present_key_names, layout.present_value_names, strict=True) for n in pair
        ]
        self._branch = np.ones(1, dtype=np.bool_)  # merged exports: always the with-past branch
        self._branch_ptr = self._branch.ctypes.data

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
        io = self._io
        lay = self.layout
        dt = self.kv_dtype
        io.bind_input(lay.input_ids, "cpu", 0, np.int64, (batch, seq), ids.ctypes.data)
        if lay.position_ids is not None and pos is not None:
            io.bind_input(lay.position_ids, "cpu", 0, np.int64, (batch, seq), pos.ctypes.data)
        if lay.attention_mask is not None and mask is not None:
            io.bind_input(lay.attention_mask, "cpu", 0, np.int64, (batch, past_len + seq), mask.ctypes.data)
        if lay.use_cache_branch is not None:
            io.bind_input(lay.use_cache_branch, "cpu", 0, np.bool_, (1,), self._branch_ptr)
        ps = (batch, lay.kv_heads, past_len, lay.head_dim)
        qs = (batch, lay.kv_heads, past_len + seq, lay.head_dim)
        for name, ptr in zip(self._past, past_ptrs, strict=True):
            io.bind_input(name, "cpu", 0, dt, ps, ptr)
        for name, ptr in zip(self._present, present_ptrs, strict=True):
            io.bind_output(name, "cpu", 0, dt, qs, ptr)
        io.bind_output(lay.logits, "cpu", 0, self.logits_dtype, (batch, seq, lay.vocab_size), logits.ctypes.data)
        try:
            self.session.run_with_iobinding(io)
        except Exception as exc:
            raise ExecutionError(
                f"onnxruntime failed in a generation step (batch {batch}, past {past_len}, new {seq}): {exc}"
            ) from exc

    def execute(self, feeds: dict[str, Any]) -> dict[str, Any]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        except Exception as exc:
            raise ExecutionError(f"onnxruntime failed: {exc}") from exc


class OpenVinoRunner:
    """OpenVINO on the CPU, f32 pinned (it would otherwise infer in bf16 on CPUs that have it)."""

    backend = "openvino"

    def __init__(self, path: pathlib.Path, layout: KVLayout, *, threads: int | None = None) -> None:
        try:
            import openvino as ov
        except ImportError as exc:
            raise missing_extra("openvino", "openvino") from exc
        core = ov.Core()
        cfg: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            cfg["INFERENCE_NUM_THREADS"] = threads
        try:
            self._compiled = core.compile_model(str(path), "CPU", cfg)
        except Exception as exc:
            raise BackendUnavailableError(f"OpenVINO could not compile {path}: {exc}") from exc
        self._ov = ov
        self._req = self._compiled.create_infer_request()
        self.layout = layout
        self.kv_dtype = np.dtype(layout.dtype)
        self.logits_dtype = np.dtype(np.float32)
        self._past = [n for pair in zip(layout.past_key_names, layout.past_value_names, strict=True) for n in pair]
        self._present = [
            n for pair in zip(layout.present_key_names, layout.present_value_names, strict=True) for n in pair
        ]
        self._bufs: dict[int, np.ndarray] = {}

    def register(self, flat: np.ndarray) -> None:
        """Make a KV buffer known so pointers passed to :meth:`run` map back to arrays."""
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
        lay = self.layout
        ps = (batch, lay.kv_heads, past_len, lay.head_dim)
        qs = (batch, lay.kv_heads, past_len + seq, lay.head_dim)
        n_past = int(np.prod(ps))
        feeds: dict[str, Any] = {lay.input_ids: ids}
        if lay.position_ids is not None and pos is not None:
            feeds[lay.position_ids] = pos
        if lay.attention_mask is not None and mask is not None:
            feeds[lay.attention_mask] = mask
        if lay.use_cache_branch is not None:
            feeds[lay.use_cache_branch] = np.ones(1, dtype=np.bool_)
        for name, ptr in zip(self._past, past_ptrs, strict=True):
            feeds[name] = self._bufs[ptr][:n_past].reshape(ps)
        try:
            res = self._req.infer(feeds, share_inputs=True)
        except Exception as exc:
            raise ExecutionError(
                f"OpenVINO failed in a generation step (batch {batch}, past {past_len}): {exc}"
            ) from exc
        n_present = int(np.prod(qs))
        for name, ptr in zip(self._present, present_ptrs, strict=True):
            np.copyto(self._bufs[ptr][:n_present].reshape(qs), res[name])
        np.copyto(logits[: batch * seq * lay.vocab_size].reshape(batch, seq, lay.vocab_size), res[lay.logits])

    def execute(self, feeds: dict[str, Any]) -> dict[str, Any]:
        res = self._req.infer(feeds)
        return {out.get_any_name(): np.array(res[out]) for out in self._compiled.outputs}


RUNNERS = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner}
