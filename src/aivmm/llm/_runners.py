"""Step runners: run one forward step of a decoder on buffers the KV store owns.

A runner gets the token ids, positions and attention mask of a step, pointers to the past KV (one
buffer per layer and key/value, laid out [batch, kv_heads, past, head_dim]) and the buffers its
present KV and logits must be written to. The ONNX Runtime runner binds them all with IOBinding,
so the cache never passes through a per-step numpy copy; the OpenVINO runner shares the input
buffers with OpenVINO tensors and copies the present out (OpenVINO allocates its outputs).
"""

from __future__ import annotations

import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from aivmm.errors import BackendUnavailableError, ExecutionError, OutOfMemoryError, missing_extra
from aivmm.llm._split import NEVER, RowGroups
from aivmm.llm._types import KVLayout


class _Binding:
    """One ONNX Runtime session's IOBinding and what is bound to it, re-bound only on change."""

    __slots__ = ("_bind_in", "_bind_out", "_bound", "_bound_kv", "_last", "_run", "session", "steps")

    def __init__(self, session: Any) -> None:
        self.session = session
        # The public IOBinding/InferenceSession wrappers re-create a device object and run WebGPU
        # capture checks on every call: about a tenth of a tiny model's step. The pybind objects they
        # wrap take the same arguments, so the step uses those when this onnxruntime has them.
        self._bind_in, self._bind_out, self._run = _fast_calls(session)
        self._bound: tuple[Any, ...] = ()
        self._bound_kv: tuple[Any, ...] = ()
        self._last: tuple[Any, ...] = (None,) * 6
        self.steps = 0  # runs on this session (a figure for tests and the plan)

    def run(
        self,
        r: OrtRunner,
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
        last = self._last
        if (
            ids is last[0]
            and pos is last[1]
            and mask is last[2]
            and past_ptrs is last[3]
            and present_ptrs is last[4]
            and logits is last[5]
        ):
            # the same buffer objects as the last step (a static past): every binding still holds
            self._run_checked(batch, past_len, seq)
            return
        self._last = (ids, pos, mask, past_ptrs, present_ptrs, logits)
        bind_in, bind_out = self._bind_in, self._bind_out
        lay = r.layout
        dt = r.kv_dtype
        # With a static past (StaticBatchKV) every input and output keeps its buffer and shape from
        # one decode step to the next (the runtime reads and writes the memory at run time): then
        # nothing is bound again. Ids, positions and logits keep theirs in the ping-pong layout too.
        key = (batch, seq, ids.ctypes.data, None if pos is None else pos.ctypes.data, logits.ctypes.data)
        if key != self._bound:
            bind_in(lay.input_ids, np.int64, (batch, seq), key[2])
            if lay.position_ids is not None and pos is not None:
                bind_in(lay.position_ids, np.int64, (batch, seq), key[3])
            if lay.use_cache_branch is not None:
                bind_in(lay.use_cache_branch, np.bool_, (1,), r.branch_ptr)
            bind_out(lay.logits, r.logits_dtype, (batch, seq, lay.vocab_size), key[4])
            self._bound = key
        kv_key = (batch, past_len, seq, None if mask is None else mask.ctypes.data, past_ptrs, present_ptrs)
        if kv_key != self._bound_kv:
            if lay.attention_mask is not None and mask is not None:
                bind_in(lay.attention_mask, np.int64, (batch, past_len + seq), kv_key[3])
            ps = (batch, lay.kv_heads, past_len, lay.head_dim)
            qs = (batch, lay.kv_heads, past_len + seq, lay.head_dim)
            for name, ptr in zip(r.past_names, past_ptrs, strict=True):
                bind_in(name, dt, ps, ptr)
            for name, ptr in zip(r.present_names, present_ptrs, strict=True):
                bind_out(name, dt, qs, ptr)
            self._bound_kv = kv_key
        self._run_checked(batch, past_len, seq)

    def _run_checked(self, batch: int, past_len: int, seq: int) -> None:
        self.steps += 1
        try:
            self._run()
        except Exception as exc:
            self._last = (None,) * 6  # bind everything again next time
            raise ExecutionError(
                f"onnxruntime failed in a generation step (batch {batch}, past {past_len}, new {seq}): {exc}"
            ) from exc


def _fast_calls(sess: Any) -> tuple[Any, Any, Any]:
    io = sess.io_binding()
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


class OrtRunner:
    """ONNX Runtime on the CPU through IOBinding on aivmm-owned buffers."""

    backend = "onnxruntime"

    def __init__(self, path: pathlib.Path, layout: KVLayout, *, threads: int | None = None) -> None:
        self.path = path
        self.threads = threads
        try:
            self.session = self._load()
        except BackendUnavailableError:
            raise
        except Exception as exc:
            raise BackendUnavailableError(f"onnxruntime could not load {path}: {exc}") from exc
        self.layout = layout
        self.kv_dtype = np.dtype(layout.dtype)
        out_types = {o.name: o.type for o in self.session.get_outputs()}
        self.logits_dtype = np.dtype(np.float16 if "float16" in out_types[layout.logits] else np.float32)
        self.past_names = [n for pair in zip(layout.past_key_names, layout.past_value_names, strict=True) for n in pair]
        self.present_names = [
            n for pair in zip(layout.present_key_names, layout.present_value_names, strict=True) for n in pair
        ]
        self._branch = np.ones(1, dtype=np.bool_)  # merged exports: always the with-past branch
        self.branch_ptr = self._branch.ctypes.data
        self._main = _Binding(self.session)
        self.fixed: FixedShapes | None = None
        self.split: RowGroups | None = None  # decode steps run as concurrent row groups (split_rows)
        self._group_main: list[_Binding] = []  # group g's binding of the symbolic session
        self._group_fixed: dict[tuple[int, int, int], _Binding] = {}  # (rows, past, g) on fixed sessions
        self._group_ready: Any = None  # the fixed.ready the dict above was checked against

    def clone(self) -> OrtRunner:
        """Another runner of the same model and settings: its own session (a copy of the weights) for
        a second scheduler thread (IOBindings must not be shared between threads)."""
        return OrtRunner(self.path, self.layout, threads=self.threads)

    def _load(self, dims: Sequence[tuple[str, int]] = ()) -> Any:
        from aivmm.backends.ort import cpu_session

        # Spinning pool threads would take the cores from the threads that consume the tokens (a
        # server's event loop forwarding every token ran 3-4x slower with them, measured by
        # benchmarks/serve_llm.py); a decode step is too short for the saved wake-up to matter.
        return cpu_session(
            self.path, graph_optimization_level="all", threads=self.threads, allow_spinning=False, free_dims=dims
        )

    def specialise(self, max_sessions: int, reserve: Any = None, release: Any = None) -> str:
        """Run recurring decode shapes on sessions built for exactly that shape; returns why or why not."""
        dims = _dim_names(self.session, self.layout)
        if isinstance(dims, str):
            return dims
        self.fixed = FixedShapes(self, dims, max_sessions, reserve, release)
        return (
            f"fixed-shape decode sessions: a (batch, past) shape that recurs runs on an onnxruntime session "
            f"built for it, which folds the graph's shape arithmetic (at most {max_sessions}, built in the "
            f"background after {FixedShapes.AFTER_STEPS} steps at that shape, each charged to the ledger)"
        )

    def split_rows(self, groups: int, min_rows: int | None) -> None:
        """Run decode steps of at least ``min_rows`` rows as ``groups`` row groups at once (one per
        core, see :class:`RowGroups`); ``min_rows`` None: run every step whole (the worker threads
        stay for the next call, :meth:`close` stops them)."""
        if min_rows is None or groups < 2:
            if self.split is not None:
                self.split.min_rows = NEVER
            return
        if self.split is None or self.split.groups != groups:
            if self.split is not None:
                self.split.close()
            self.split = RowGroups(self, groups, min_rows)
        self.split.min_rows = max(groups, min_rows)

    def group_binding(self, g: int, rows: int, past: int) -> _Binding:
        """The binding row group ``g`` of a split step runs on: its own IOBinding of the fixed-shape
        session for (rows, past) when one is built, else of the symbolic session."""
        fixed = self.fixed
        if fixed is not None:
            ready = fixed.ready
            if ready is not self._group_ready:  # sessions came or went: drop bindings of gone ones
                live = {id(b.session) for b in ready.values()}
                self._group_fixed = {k: b for k, b in self._group_fixed.items() if id(b.session) in live}
                self._group_ready = ready
            shared = ready.get((rows, past))
            if shared is None:
                fixed.seen(rows, past)  # two equal groups count a step twice: built sooner, as used more
            else:
                shared.steps += 1  # the session is in use (the least used one is dropped first)
                key = (rows, past, g)
                b = self._group_fixed.get(key)
                if b is None or b.session is not shared.session:
                    b = self._group_fixed[key] = _Binding(shared.session)
                return b
        while len(self._group_main) <= g:
            self._group_main.append(_Binding(self.session))
        return self._group_main[g]

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
        split = self.split
        if split is not None and split.wants(batch, seq):
            split.run(batch, past_len, ids, pos, mask, past_ptrs, present_ptrs, logits)
            return
        fixed = self.fixed
        if fixed is not None and seq == 1:
            b = fixed.ready.get((batch, past_len))
            if b is None:
                fixed.seen(batch, past_len)
            else:
                b.run(self, batch, past_len, seq, ids, pos, mask, past_ptrs, present_ptrs, logits)
                return
        self._main.run(self, batch, past_len, seq, ids, pos, mask, past_ptrs, present_ptrs, logits)

    def close(self) -> None:
        if self.split is not None:
            self.split.close()
        if self.fixed is not None:
            self.fixed.close()
        self._group_fixed = {}

    def execute(self, feeds: dict[str, Any]) -> dict[str, Any]:
        names = [o.name for o in self.session.get_outputs()]
        try:
            return dict(zip(names, self.session.run(names, feeds), strict=True))
        except Exception as exc:
            raise ExecutionError(f"onnxruntime failed: {exc}") from exc


def _dim_names(session: Any, lay: KVLayout) -> tuple[str, str, str, str | None] | str:
    """The graph's names for batch, new tokens, past and total length, or why they cannot be fixed."""
    shapes = {i.name: i.shape for i in session.get_inputs()}
    ids, past = shapes.get(lay.input_ids), shapes.get(lay.past_key_names[0] if lay.past_key_names else "")
    if not ids or not past or len(ids) != 2 or len(past) != 4:
        return "no fixed-shape decode sessions: the inputs do not have the [batch, tokens] / 4-d past shapes"
    total = shapes.get(lay.attention_mask or "")
    names = (ids[0], ids[1], past[2], total[1] if total and len(total) == 2 else None)
    if not all(isinstance(n, str) and n for n in names[:3]) or len(set(names[:3])) != 3:
        return f"no fixed-shape decode sessions: the graph does not name its batch/tokens/past dimensions ({names[:3]})"
    return names


class FixedShapes:
    """Decode sessions specialised to one (batch, past) shape, built in the background.

    A decoder export leaves batch, new tokens and past length symbolic, so every step ONNX Runtime
    runs the graph's shape arithmetic (Shape/Gather/Unsqueeze/Concat chains, a third of a small
    model's nodes) and sizes every intermediate anew. With the static past (StaticBatchKV) a decode
    step keeps its shape for up to BUCKET steps and the same shapes recur from request to request,
    so a session with those dimensions fixed (``add_free_dimension_override_by_name``) lets ORT fold
    all of it: measured 0.45-0.6x the step of the symbolic session on the tiny Llama and GPT-2 at
    batch 1, 4 and 16 (``benchmarks/llm_cpu.py`` and BENCHMARKS.md). Building one takes a tenth of
    a second or more and holds the GIL in parts (the running stream sees pauses of a few ms to tens
    of ms), so sessions are built only for shapes that recur, one at a time, at most
    ``max_sessions`` (the least used dropped), each charged to the ledger as a copy of the
    weights (ORT pre-packs the weights per session).
    """

    AFTER_STEPS = 32  # symbolic steps at one shape before a session for it is built

    def __init__(
        self, runner: OrtRunner, dims: tuple[str, str, str, str | None], max_sessions: int, reserve: Any, release: Any
    ) -> None:
        self._runner = runner
        self._dims = dims
        self.max_sessions = max_sessions
        self._reserve, self._release = reserve, release
        self.ready: dict[tuple[int, int], _Binding] = {}  # replaced whole by the builder, read lock-free
        self._counts: dict[tuple[int, int], int] = {}
        self._queued: set[tuple[int, int]] = set()
        self._queue: list[tuple[int, int]] = []
        self._cv = threading.Condition()
        self._stop = False
        self._thread: threading.Thread | None = None
        self.failed: dict[tuple[int, int], str] = {}
        self._busy = False

    def charge(self, reserve: Any, release: Any) -> None:
        """Charge every session built from now on: ``reserve(shape) -> bool``, ``release(shape)``."""
        self._reserve, self._release = reserve, release

    def seen(self, batch: int, past: int) -> None:
        key = (batch, past)
        n = self._counts.get(key, 0) + 1
        self._counts[key] = n
        if n >= self.AFTER_STEPS and key not in self._queued:
            self.request(key)

    def request(self, key: tuple[int, int]) -> None:
        """Build a session for ``key`` (batch, past) in the background."""
        with self._cv:
            if self._stop or key in self._queued:
                return
            self._queued.add(key)
            self._queue.append(key)
            if self._thread is None:
                self._thread = threading.Thread(target=self._build_loop, name="aivmm-llm-shapes", daemon=True)
                self._thread.start()
            self._cv.notify()

    def wait_idle(self, timeout_s: float) -> bool:
        """True once every requested session is built or failed (for tests and benchmarks)."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while self._queue or self._busy:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def _build_loop(self) -> None:
        while True:
            with self._cv:
                while not (self._stop or self._queue):
                    self._cv.wait()
                if self._stop:
                    return
                key = self._queue.pop(0)
                self._busy = True
            try:
                self._build(key)
            except Exception as exc:  # a shape that will not build stays on the symbolic session
                self.failed[key] = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            finally:
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()

    def _build(self, key: tuple[int, int]) -> None:
        batch, past = key
        b, s, p, t = self._dims
        dims = [(b, batch), (s, 1), (p, past)] + ([(t, past + 1)] if t is not None else [])
        ready = dict(self.ready)
        while len(ready) >= self.max_sessions:
            old = min(ready, key=lambda k: ready[k].steps)  # the least used one goes
            del ready[old]
            self.ready = dict(ready)
            if self._release is not None:
                self._release(old)
            # it may come back, but only after recurring for longer than a new shape must
            self._counts[old] = -4 * self.AFTER_STEPS
            with self._cv:
                self._queued.discard(old)
        if self._reserve is not None and not self._reserve(key):
            raise OutOfMemoryError(f"no room in the ledger for a session of shape {key}")
        try:
            binding = _Binding(self._runner._load(dims))
        except Exception:
            if self._release is not None:
                self._release(key)
            raise
        ready[key] = binding
        self.ready = ready

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(10.0)
        if self._release is not None:
            for key in list(self.ready):
                self._release(key)
        self.ready = {}


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


def _torch_runner(path: pathlib.Path, layout: KVLayout, *, threads: int | None = None, **kw: Any) -> Any:
    from aivmm.llm._torch_runner import TorchRunner

    return TorchRunner(path, layout, threads=threads, **kw)  # kw: device, cuda_graphs, model


RUNNERS: dict[str, Any] = {"onnxruntime": OrtRunner, "openvino": OpenVinoRunner, "torch": _torch_runner}
