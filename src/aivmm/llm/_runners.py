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
        from aivmm.backends.ort import cpu_session

        try:
            # Spinning pool threads would take the cores from the threads that consume the tokens (a
            # server's event loop forwarding every token ran 3-4x slower with them, measured by
            # benchmarks/serve_llm.py); a decode step is too short for the saved wake-up to matter.
            self.session = cpu_session(path, graph_optimization_level="all", threads=threads, allow_spinning=False)
        except BackendUnavailableError:
            raise
        except Exception as exc:
            raise BackendUnavailableError(f"onnxruntime could not load {path}: {exc}") from exc
        self.layout = layout
        self.kv_dtype = np.dtype(layout.dtype)
        out_types = {o.name: o.type for o in self.session.get_outputs()}
        self.logits_dtype = np.dtype(np.float16 if "float16" in out_types[layout.logits] else np.float32)
        self._io = self.session.io_binding()
        # The public IOBinding/InferenceSession wrappers re-create a device object and run WebGPU
        # capture checks on every call: about a tenth of a tiny model's step. The pybind objects they
        # wrap take the same arguments, so the step uses those when this onnxruntime has them.
        self._bind_in, self._bind_out, self._run = self._fast_calls()
        self._bound: tuple[Any, ...] = ()
        self._bound_kv: tuple[Any, ...] = ()
        self._last: tuple[Any, ...] = (None,) * 6
        self._past = [n for pair in zip(layout.past_key_names, layout.past_value_names, strict=True) for n in pair]
        self._present = [
            n for pair in zip(layout.present_key_names, layout.present_value_names, strict=True) for n in pair
        ]
        self._branch = np.ones(1, dtype=np.bool_)  # merged exports: always the with-past branch
        self._branch_ptr = self._branch.ctypes.data

    def _fast_calls(self) -> tuple[Any, Any, Any]:
        io, sess = self._io, self.session
        try:
            from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

            cio, csess = io._iobinding, sess._sess
            dev = OrtDevice.make("cpu", 0)._get_c_device()
        except (ImportError, AttributeError):
            return (
                lambda n, dt, shape, ptr: io.bind_input(n, "cpu", 0, dt, shape, ptr),
                lambda n, dt, shape, ptr: io.bind_output(n, "cpu", 0, dt, shape, ptr),
                lambda: sess.run_with_iobinding(io),
            )
        return (
            lambda n, dt, shape, ptr: cio.bind_input(n, dev, dt, shape, ptr),
            lambda n, dt, shape, ptr: cio.bind_output(n, dev, dt, shape, ptr),
            lambda: csess.run_with_iobinding(cio, None),
        )

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
        if (
            ids is self._last[0]
            and pos is self._last[1]
            and mask is self._last[2]
            and past_ptrs is self._last[3]
            and present_ptrs is self._last[4]
            and logits is self._last[5]
        ):
            # the same buffer objects as the last step (a static past): every binding still holds
            self._run_checked(batch, past_len, seq)
            return
        self._last = (ids, pos, mask, past_ptrs, present_ptrs, logits)
        bind_in, bind_out = self._bind_in, self._bind_out
        lay = self.layout
        dt = self.kv_dtype
        # With a static past (StaticBatchKV) every input and output keeps its buffer and shape from
        # one decode step to the next (the runtime reads and writes the memory at run time): then
        # nothing is bound again. Ids, positions and logits keep theirs in the ping-pong layout too.
        key = (batch, seq, ids.ctypes.data, None if pos is None else pos.ctypes.data, logits.ctypes.data)
        if key != self._bound:
            bind_in(lay.input_ids, np.int64, (batch, seq), key[2])
            if lay.position_ids is not None and pos is not None:
                bind_in(lay.position_ids, np.int64, (batch, seq), key[3])
            if lay.use_cache_branch is not None:
                bind_in(lay.use_cache_branch, np.bool_, (1,), self._branch_ptr)
            bind_out(lay.logits, self.logits_dtype, (batch, seq, lay.vocab_size), key[4])
            self._bound = key
        kv_key = (batch, past_len, seq, None if mask is None else mask.ctypes.data, past_ptrs, present_ptrs)
        if kv_key != self._bound_kv:
            if lay.attention_mask is not None and mask is not None:
                bind_in(lay.attention_mask, np.int64, (batch, past_len + seq), kv_key[3])
            ps = (batch, lay.kv_heads, past_len, lay.head_dim)
            qs = (batch, lay.kv_heads, past_len + seq, lay.head_dim)
            for name, ptr in zip(self._past, past_ptrs, strict=True):
                bind_in(name, dt, ps, ptr)
            for name, ptr in zip(self._present, present_ptrs, strict=True):
                bind_out(name, dt, qs, ptr)
            self._bound_kv = kv_key
        self._run_checked(batch, past_len, seq)

    def _run_checked(self, batch: int, past_len: int, seq: int) -> None:
        try:
            self._run()
        except Exception as exc:
            self._last = (None,) * 6  # bind everything again next time
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
        # its own request: the scheduler thread may be inside the generation request right now
        try:
            res = self._compiled.create_infer_request().infer(feeds)
        except Exception as exc:
            raise ExecutionError(f"OpenVINO failed: {exc}") from exc
        return {out.get_any_name(): np.array(res[out]) for out in self._compiled.outputs}


def _torch_runner(path: pathlib.Path, layout: KVLayout, *, threads: int | None = None) -> Any:
    from aivmm.llm._torch_runner import TorchRunner

    return TorchRunner(path, layout, threads=threads)


RUNNERS: dict[str, Any] = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner, "torch": _torch_runner}
