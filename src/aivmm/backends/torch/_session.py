"""A model loaded on one torch device: eager, torch.compile'd, or replayed from CUDA graphs."""

from __future__ import annotations

import collections
import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from aivmm.backends._base import Config, Session
from aivmm.backends.torch._interop import to_output, to_tensor
from aivmm.backends.torch.lowering._node import keeping_host_copies
from aivmm.devices import Device
from aivmm.errors import ConfigError, ExecutionError, InputError, OutOfMemoryError
from aivmm.models import ModelSpec, TensorSpec

OUTPUT_KINDS = ("numpy", "native", "torch")


class _Fp32Math:
    """Holds torch's process-wide TF32 switches (cuDNN convolutions and cuBLAS matmuls) at what the
    running fp32 sessions asked for, and restores the user's setting when the last one leaves.

    fp32 in aivmm means IEEE fp32 unless the plan chose the ``tf32`` option (TF32 keeps 10 mantissa
    bits, which breaks fp32 tolerances on some models: the planner's accuracy check decides). The
    switches are global in torch, so sessions wanting the other mode wait until the current mode's
    runs have left; sessions wanting the same mode run concurrently.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._depth = 0
        self._mode = False
        self._saved = (True, False)

    @contextlib.contextmanager
    def __call__(self, tf32: bool) -> Iterator[None]:
        with self._cond:
            while self._depth and self._mode != tf32:
                self._cond.wait()
            if self._depth == 0:
                self._saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
                self._mode = tf32
            self._depth += 1
        try:
            yield
        finally:
            with self._cond:
                self._depth -= 1
                if self._depth == 0:
                    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = self._saved
                    self._cond.notify_all()


_FP32_MATH = _Fp32Math()
# Distinct input shapes kept as captured CUDA graphs (each holds its own static buffers).
MAX_CAPTURED_SHAPES = 8
_WARMUP_RUNS = 3


# A captured graph, its static inputs and outputs, and the pinned host buffers its replays copy from.
_Captured = tuple[Any, list[torch.Tensor], Sequence[torch.Tensor], list[torch.Tensor]]


class _CudaGraphRunner:
    """Captures the module once per input signature and replays it; one lock guards the buffers."""

    def __init__(self, fn: Callable[..., Sequence[torch.Tensor]], device: torch.device) -> None:
        self._fn = fn
        self._device = device
        self._graphs: collections.OrderedDict[tuple, _Captured] = collections.OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        key = tuple((tuple(t.shape), t.dtype, t.stride()) for t in inputs)
        with self._lock:
            entry = self._graphs.get(key)
            if entry is None:
                entry = self._capture(inputs)
                self._graphs[key] = entry
                while len(self._graphs) > MAX_CAPTURED_SHAPES:
                    self._graphs.popitem(last=False)
            else:
                self._graphs.move_to_end(key)
            graph, static_in, static_out, _ = entry
            for dst, src in zip(static_in, inputs):
                dst.copy_(src)
            graph.replay()
            # The next replay overwrites the static outputs: hand out copies.
            return [o.clone() for o in static_out]

    def _capture(self, inputs: Sequence[torch.Tensor]) -> _Captured:
        static_in = [t.clone() for t in inputs]
        stream = torch.cuda.Stream(device=self._device)
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            for _ in range(_WARMUP_RUNS):  # lets lazy initialisation (cuBLAS handles, autotuning) happen outside
                self._fn(*static_in)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), keeping_host_copies() as host_copies:
            static_out = self._fn(*static_in)
        return graph, static_in, static_out, host_copies  # host_copies: the pinned buffers replays copy from


class TorchSession(Session):
    def __init__(
        self,
        model: ModelSpec,
        device: Device,
        config: Config,
        module: torch.nn.Module,
        torch_device: torch.device,
        float_dtype: torch.dtype,
        notes: tuple[str, ...],
        arg_order: Sequence[str] | None = None,
    ) -> None:
        super().__init__(model, device, config)
        # The module's positional order (an ONNX graph's input order); the signature's when not given.
        self._args = [model.input(name) for name in arg_order] if arg_order else list(model.inputs)
        self.module = module
        self.torch_device = torch_device
        self.float_dtype = float_dtype
        self.channels_last = bool(config.options.get("channels_last", False))
        self.notes = notes
        # fp32 on a GPU runs under the TF32 switches the config asks for (IEEE unless tf32=True).
        self._fp32_math = (
            bool(config.options.get("tf32", False))
            if float_dtype == torch.float32 and torch_device.type == "cuda"
            else None
        )
        call: Callable[..., Any] = module
        mode = config.options.get("compile")
        if mode:
            if torch_device.type == "cuda":
                from aivmm.backends.torch._compile_cache import use_compile_cache

                use_compile_cache(device, torch)
            # dynamic=False: one static specialisation per input shape (the planner plans per batch
            # size, the batcher pads to preferred sizes); dynamic-shape kernels are slower and cannot
            # be captured as CUDA graphs per size.
            call = torch.compile(module, mode=None if mode == "default" else mode, dynamic=False)
        self._call = call
        # torch.compile's "reduce-overhead" replays CUDA graphs of its own: their outputs are overwritten
        # by the next run and its graph trees are not thread-safe, so runs are serialised and outputs copied.
        self._replay_lock = threading.Lock() if mode == "reduce-overhead" else None
        self._graphs = _CudaGraphRunner(self._forward, torch_device) if config.options.get("cuda_graphs") else None
        self._host_tier: Any = None  # aivmm.memory.PinnedHostTier once evicted to the host tier (CUDA)
        self.peak_base: int | None = None  # CUDA bytes allocated when the load began (set by the backend)

    def _forward(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self._replay_lock is not None:
            with self._replay_lock:
                torch.compiler.cudagraph_mark_step_begin()
                return [t.clone() for t in self._forward_unlocked(*inputs)]
        return self._forward_unlocked(*inputs)

    def _forward_unlocked(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        if self._fp32_math is not None:
            with _FP32_MATH(self._fp32_math), torch.inference_mode():
                return _as_list(self._call(*inputs), self.model.outputs)
        with torch.inference_mode():
            return _as_list(self._call(*inputs), self.model.outputs)

    def _run(self, feeds: Mapping[str, Any], output: str) -> dict[str, Any]:
        if output not in OUTPUT_KINDS:
            raise ConfigError(f"output={output!r}: expected one of {OUTPUT_KINDS}")
        missing = [s.name for s in self.model.inputs if s.name not in feeds]
        if missing:
            raise InputError(f"missing input(s) {missing}; the model takes {self.model.signature()}")
        try:
            tensors = [
                to_tensor(feeds[s.name], s, self.torch_device, self.float_dtype, self.channels_last) for s in self._args
            ]
            outs = self._graphs(*tensors) if self._graphs is not None else self._forward(*tensors)
        except (InputError, ConfigError):
            raise
        except torch.OutOfMemoryError as exc:
            raise OutOfMemoryError(f"{self.model.name!r} on {self.device.id}: {exc}") from exc
        except Exception as exc:
            raise ExecutionError(
                f"{self.model.name!r} failed on {self.config.label()}: {type(exc).__name__}: {exc}"
            ) from exc
        specs = list(self.model.outputs)
        result = {}
        for i, t in enumerate(outs):
            spec = specs[i] if i < len(specs) else None
            name = spec.name if spec is not None else f"output_{i}"
            result[name] = to_output(t, spec, output)
        return result

    def peak_memory(self) -> tuple[int, str] | None:
        if self.peak_base is None or self.torch_device.type != "cuda":
            return None
        return max(0, int(torch.cuda.max_memory_allocated(self.torch_device)) - self.peak_base), "torch.cuda"

    def offload_to_host(self) -> bool:
        """Park the weights in host memory and free the device's. CUDA: one pinned allocation, so the
        reload is a single DMA stream at the bus peak; other devices: an ordinary ``module.to("cpu")``."""
        if self.torch_device.type == "cpu":
            return False
        with self._lock:
            # captured graphs point at the old device addresses: capture again after the reload
            self._graphs = _CudaGraphRunner(self._forward, self.torch_device) if self._graphs is not None else None
            if self.torch_device.type == "cuda":
                from aivmm.memory import PinnedHostTier

                if self._host_tier is None:
                    self._host_tier = PinnedHostTier(self.module)
                self._host_tier.offload()
                torch.cuda.empty_cache()
            else:
                self.module.to("cpu")
        return True

    def reload_to_device(self) -> None:
        with self._lock:
            if self._host_tier is not None:
                self._host_tier.restore()
            else:
                self.module.to(self.torch_device)

    def _close(self) -> None:
        self._graphs = None
        self._host_tier = None
        self.module = None  # type: ignore[assignment]
        self._call = None  # type: ignore[assignment]
        if self.torch_device.type == "cuda":
            torch.cuda.empty_cache()


def _as_list(out: Any, specs: Sequence[TensorSpec]) -> list[torch.Tensor]:
    """Module results (a tensor, a sequence, or a mapping by output name) in model output order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, Mapping):
        names = [s.name for s in specs]
        if all(n in out for n in names):
            return [out[n] for n in names]
        return list(out.values())
    if hasattr(out, "to_tuple"):  # transformers' ModelOutput
        out = out.to_tuple()
    flat: list[torch.Tensor] = []
    for item in out:
        if isinstance(item, torch.Tensor):
            flat.append(item)
        elif isinstance(item, list | tuple):
            flat.extend(_as_list(item, ()))
        else:
            flat.append(torch.as_tensor(item))
    return flat
