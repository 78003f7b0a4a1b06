"""Tensor interop: validate feeds against a signature and move arrays between frameworks without copies.

Frameworks are recognised by the module of the array's type, so a caller's torch / cupy / jax tensor is
handled without aivmm ever importing a framework the caller has not already imported. A copy happens
only where the data must cross a device boundary, and the functions say so in their names
(:func:`to_numpy` copies a CUDA tensor to the host; :func:`host_view` refuses to).

``validate_feeds`` is on the hot path of every request: it reads ``dtype`` and ``shape`` attributes and
never converts an array.
"""

from __future__ import annotations

import enum
import sys
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from aivmm.dtypes import DType
from aivmm.errors import ConfigError, InputError
from aivmm.models import ModelSpec, TensorSpec


class Framework(enum.Enum):
    NUMPY = "numpy"
    TORCH = "torch"
    CUPY = "cupy"
    JAX = "jax"
    DLPACK = "dlpack"  # any other object exporting __dlpack__


# DLPack device types (dlpack.h DLDeviceType) that aivmm names.
DLPACK_CPU = 1
DLPACK_CUDA = 2
DLPACK_CUDA_HOST = 3  # pinned host memory: readable as host memory
DLPACK_ROCM = 10
_HOST_DLPACK = (DLPACK_CPU, DLPACK_CUDA_HOST)

OUTPUT_KINDS = ("numpy", "torch", "cupy", "jax", "native")


def framework_of(x: Any) -> Framework | None:
    """The framework an array belongs to, from its type's module; None for plain Python values."""
    cls = type(x)
    if cls is np.ndarray or isinstance(x, np.ndarray):
        return Framework.NUMPY
    root = cls.__module__.partition(".")[0]
    if root == "torch":
        return Framework.TORCH
    if root == "cupy":
        return Framework.CUPY
    if root in ("jax", "jaxlib"):
        return Framework.JAX
    if hasattr(x, "__dlpack__"):
        return Framework.DLPACK
    return None


def dlpack_device(x: Any) -> tuple[int, int]:
    """``(DLPack device type, index)`` of an array; numpy and plain values are ``(1, 0)`` (CPU)."""
    if type(x) is np.ndarray:
        return (DLPACK_CPU, 0)
    fn = getattr(x, "__dlpack_device__", None)
    if fn is None:
        return (DLPACK_CPU, 0)
    kind, index = fn()
    return (int(kind), int(index))


def is_host(x: Any) -> bool:
    """True when the array's memory is readable by the CPU without a copy."""
    return dlpack_device(x)[0] in _HOST_DLPACK


# --- dtypes and shapes without conversion -----------------------------------------------------------

_TORCH_DTYPES: dict[str, DType] = {
    "torch.float32": DType.FLOAT32,
    "torch.float16": DType.FLOAT16,
    "torch.bfloat16": DType.BFLOAT16,
    "torch.float64": DType.FLOAT64,
    "torch.int8": DType.INT8,
    "torch.int16": DType.INT16,
    "torch.int32": DType.INT32,
    "torch.int64": DType.INT64,
    "torch.uint8": DType.UINT8,
    "torch.uint16": DType.UINT16,
    "torch.uint32": DType.UINT32,
    "torch.uint64": DType.UINT64,
    "torch.bool": DType.BOOL,
}
_NP_DTYPES: dict[np.dtype, DType] = {}


def _np_dtype(dt: np.dtype) -> DType:
    hit = _NP_DTYPES.get(dt)
    if hit is None:
        hit = DType.from_numpy(dt)
        _NP_DTYPES[dt] = hit
    return hit


def dtype_of(x: Any) -> DType:
    """The element type of an array of any supported framework, read from its attributes."""
    dt = x.dtype
    if isinstance(dt, np.dtype):
        return _np_dtype(dt)
    text = str(dt)
    hit = _TORCH_DTYPES.get(text)
    if hit is not None:
        return hit
    try:
        return _np_dtype(np.dtype(dt))  # cupy and jax dtypes are numpy dtypes or convertible ones
    except (TypeError, ConfigError) as exc:
        raise InputError(f"unsupported element type {text!r}") from exc


def _as_array(value: Any, ts: TensorSpec) -> Any:
    """Arrays pass through; Python lists and scalars become numpy arrays of the input's element type
    (they carry no dtype of their own and no memory to share)."""
    if hasattr(value, "dtype") and hasattr(value, "shape"):
        return value
    if hasattr(value, "__dlpack__"):
        return from_dlpack(value)
    try:
        return np.asarray(value, dtype=ts.dtype.to_numpy())
    except (TypeError, ValueError) as exc:
        raise InputError(f"cannot read {type(value).__name__} as {ts.describe()}: {exc}") from exc


_Fast = Callable[[Any], "dict[str, Any] | None"]
_FAST: dict[int, _Fast] = {}


def _no_fast_path(inputs: Any) -> None:
    return None


def _compile(spec: ModelSpec) -> _Fast:
    """A checker specialised to one signature for the common case (numpy arrays that fit), cached per spec.

    It answers None for anything else, which sends the call to the general path: that path is the
    specification and builds the error messages (tests/backends/test_tensors_property.py holds them equal).
    """
    # (name, dtype, rank, fixed (axis, size) pairs, symbolic (axis, name) pairs) per input
    checks: list[tuple[str, np.dtype, int, tuple[tuple[int, int], ...], tuple[tuple[int, str], ...]]] = []
    for ts in spec.inputs:
        if ts.dtype in (DType.STRING, DType.BFLOAT16) or not ts.is_tensor:
            checks = []  # object / bit-carrier dtypes and sequences or optionals take the general path
            break
        fixed = tuple((axis, d) for axis, d in enumerate(ts.shape) if isinstance(d, int) and d >= 0)
        symbols = tuple((axis, d) for axis, d in enumerate(ts.shape) if isinstance(d, str) and d)
        checks.append((ts.name, ts.dtype.to_numpy(), len(ts.shape), fixed, symbols))
    ndarray = np.ndarray
    fast: _Fast
    if not checks:
        fast = _no_fast_path
    elif len(checks) == 1:
        name, dtype, rank, fixed, symbols = checks[0]
        # A symbol repeated within the one input ("batch" twice) must have one size: pairs of axes to compare.
        first_axis: dict[str, int] = {}
        same = tuple(
            (first_axis.setdefault(sym, axis), axis)
            for axis, sym in symbols
            if first_axis.setdefault(sym, axis) != axis
        )

        def fast(inputs: Any) -> dict[str, Any] | None:
            if type(inputs) is dict:
                if len(inputs) != 1:
                    return None
                value = inputs.get(name)
            elif type(inputs) is ndarray:
                value = inputs
            else:
                return None
            if type(value) is not ndarray:
                return None
            dt = value.dtype
            if dt is not dtype and dt != dtype:
                return None
            shape = value.shape
            if len(shape) != rank:
                return None
            for axis, size in fixed:
                if shape[axis] != size:
                    return None
            for a, b in same:
                if shape[a] != shape[b]:
                    return None
            # A one-entry dict holding the right input already is the answer, in model order.
            return inputs if value is not inputs else {name: value}
    else:
        count = len(checks)
        plan = tuple(checks)

        def fast(inputs: Any) -> dict[str, Any] | None:
            if type(inputs) is not dict or len(inputs) != count:
                return None
            out = {}
            sizes: dict[str, int] = {}
            for name, dtype, rank, fixed, symbols in plan:
                value = inputs.get(name)
                if type(value) is not ndarray:
                    return None
                dt = value.dtype
                if dt is not dtype and dt != dtype:
                    return None
                shape = value.shape
                if len(shape) != rank:
                    return None
                for axis, size in fixed:
                    if shape[axis] != size:
                        return None
                for axis, symbol in symbols:
                    if sizes.setdefault(symbol, shape[axis]) != shape[axis]:
                        return None
                out[name] = value
            return out

    _FAST[id(spec)] = fast
    weakref.finalize(spec, _FAST.pop, id(spec), None)  # ids are reused after a spec is collected
    return fast


def validate_feeds(spec: ModelSpec, inputs: Any) -> dict[str, Any]:
    """Check inputs against the model signature and return them as ``{name: array}`` in model order.

    ``inputs`` is a mapping of input name to array (numpy, torch, cupy, jax or any DLPack object) or,
    for a one-input model, a single array. Arrays are returned as given, never converted; Python lists
    and scalars become numpy arrays. Any mismatch raises :class:`InputError` showing the signature.
    A dict that already holds exactly the model's one input is returned itself (no new dict per request).
    """
    checked = (_FAST.get(id(spec)) or _compile(spec))(inputs)
    if checked is not None:
        return checked
    specs = spec.inputs
    if not isinstance(inputs, Mapping):
        if len(specs) != 1:
            raise InputError(
                f"model {spec.name!r} has {len(specs)} inputs ({', '.join(s.name for s in specs)}): pass a dict "
                f"of name -> array; signature: {spec.signature()}"
            )
        inputs = {specs[0].name: inputs}
    if len(inputs) != len(specs) or any(s.name not in inputs for s in specs):
        expected = [s.name for s in specs]
        unknown = [k for k in inputs if k not in expected]
        missing = [n for n in expected if n not in inputs]
        parts = []
        if unknown:
            parts.append(f"unknown input(s) {unknown}")
        if missing:
            parts.append(f"missing input(s) {missing}")
        raise InputError(f"{'; '.join(parts)} for model {spec.name!r}; signature: {spec.signature()}")
    out: dict[str, Any] = {}
    symbols: dict[str, tuple[int, str]] = {}
    for ts in specs:
        value = inputs[ts.name]
        if ts.is_tensor:
            value = _as_array(value, ts)
            _check_one(spec, ts, value, symbols)
        else:
            value = _container(spec, ts, value)
        out[ts.name] = value
    return out


def _container(spec: ModelSpec, ts: TensorSpec, value: Any) -> Any:
    """A sequence input as a list of arrays, an optional one as None or its value; each tensor checked
    for its element type and declared dims (sizes named by a symbol may differ from tensor to tensor)."""
    if value is None:
        if ts.kind.is_optional:
            return None
        raise InputError(
            f"input {ts.name!r} of model {spec.name!r} is not optional, got None; signature: {spec.signature()}"
        )
    if not ts.kind.is_sequence:
        value = _as_array(value, ts)
        _check_one(spec, ts, value, {})
        return value
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, (list, tuple)):
        raise InputError(
            f"input {ts.name!r} of model {spec.name!r} is a sequence: pass a list of arrays, "
            f"got {type(value).__name__}; signature: {spec.signature()}"
        )
    items = [_as_array(item, ts) for item in value]
    for item in items:
        _check_one(spec, ts, item, {})
    return items


def _check_one(spec: ModelSpec, ts: TensorSpec, value: Any, symbols: dict[str, tuple[int, str]]) -> None:
    dtype = dtype_of(value)
    if dtype is not ts.dtype:
        raise InputError(
            f"input {ts.name!r} of model {spec.name!r} has dtype {dtype.value}, expected {ts.dtype.value}; "
            f"signature: {spec.signature()}"
        )
    if not ts.ranked:
        return
    shape = tuple(value.shape)
    if len(shape) != len(ts.shape):
        raise InputError(
            f"input {ts.name!r} of model {spec.name!r} has rank {len(shape)} (shape {list(shape)}), expected "
            f"rank {len(ts.shape)} ({ts.describe()}); signature: {spec.signature()}"
        )
    for axis, (got, want) in enumerate(zip(shape, ts.shape)):
        if isinstance(want, int) and want >= 0:
            if got != want:
                raise InputError(
                    f"input {ts.name!r} of model {spec.name!r} has shape {list(shape)}: dimension {axis} is "
                    f"{got}, expected {want} ({ts.describe()}); signature: {spec.signature()}"
                )
        elif isinstance(want, str) and want:
            # The same symbolic dimension must have the same size in every input (a shared batch).
            seen = symbols.get(want)
            if seen is None:
                symbols[want] = (int(got), ts.name)
            elif seen[0] != got:
                raise InputError(
                    f"dimension {want!r} is {seen[0]} in input {seen[1]!r} but {got} in input {ts.name!r} "
                    f"of model {spec.name!r}; signature: {spec.signature()}"
                )


# --- conversions ---------------------------------------------------------------------------------


def host_view(x: Any) -> np.ndarray:
    """A numpy array over a host-resident tensor's memory, never a copy; raises for device memory.

    Torch tensors that require grad are detached (same memory). bfloat16 torch tensors are viewed as
    their uint16 bits, the carrier numpy has for bfloat16.
    """
    if type(x) is np.ndarray:
        return x
    fw = framework_of(x)
    if fw is Framework.NUMPY:
        return np.asarray(x)
    if not is_host(x):
        kind, index = dlpack_device(x)
        raise InputError(
            f"a {type(x).__module__}.{type(x).__name__} on DLPack device ({kind}, {index}) is not in host memory; "
            "use to_numpy() to copy it, or run on a session of that device"
        )
    if fw is Framework.TORCH:
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            torch = sys.modules["torch"]
            t = t.view(getattr(torch, "uint16", torch.int16))
        return t.numpy()  # shares memory; raises for conjugated or non-CPU tensors
    if fw is Framework.JAX:
        return np.asarray(x)  # jax CPU arrays expose their buffer through __array__ without a copy
    if hasattr(x, "__dlpack__"):
        return np.from_dlpack(x)
    return np.asarray(x)


def to_numpy(x: Any) -> np.ndarray:
    """A numpy array for any supported tensor: a view for host memory, a device-to-host copy otherwise."""
    if type(x) is np.ndarray:
        return x
    if is_host(x):
        return host_view(x)
    fw = framework_of(x)
    if fw is Framework.TORCH:
        return x.detach().cpu().numpy()
    if fw is Framework.CUPY:
        return sys.modules["cupy"].asnumpy(x)
    if fw is Framework.JAX:
        return np.asarray(x)
    kind, index = dlpack_device(x)
    raise InputError(
        f"cannot copy a {type(x).__name__} from DLPack device ({kind}, {index}) to the host: import its "
        "framework (torch, cupy or jax) and pass its tensor"
    )


def from_dlpack(x: Any, framework: str = "numpy") -> Any:
    """Import any ``__dlpack__`` object into ``framework`` ("numpy", "torch", "cupy" or "jax") without a copy."""
    if framework == "numpy":
        if not is_host(x):
            raise InputError("numpy can only import host memory through DLPack; use framework='torch' or 'cupy'")
        return np.from_dlpack(x)
    module = _framework_module(framework)
    if framework == "jax":
        return module.dlpack.from_dlpack(x)
    return module.from_dlpack(x)


def _framework_module(name: str) -> Any:
    """Import a framework the caller asked for by name (the one place aivmm imports one on request)."""
    import importlib

    if name not in ("torch", "cupy", "jax"):
        raise ConfigError(f"unknown output framework {name!r}; expected one of {list(OUTPUT_KINDS)}")
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ConfigError(f"output={name!r} was asked but {name} is not installed") from exc


def convert_outputs(outputs: dict[str, Any], output: str) -> dict[str, Any]:
    """Convert numpy outputs to the caller's framework: numpy / native as is, torch without a copy."""
    if output == "numpy" or output == "native":
        return outputs
    if output == "torch":
        torch = _framework_module("torch")
        return {
            k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in outputs.items()
        }
    if output == "cupy":
        cupy = _framework_module("cupy")
        return {k: cupy.asarray(v) for k, v in outputs.items()}  # host-to-device copy: cupy lives on the GPU
    if output == "jax":
        jnp = _framework_module("jax").numpy
        return {k: jnp.asarray(v) for k, v in outputs.items()}
    raise ConfigError(f"unknown output kind {output!r}; expected one of {list(OUTPUT_KINDS)}")


def check_output_kind(output: str) -> None:
    if output not in OUTPUT_KINDS:
        raise ConfigError(f"unknown output kind {output!r}; expected one of {list(OUTPUT_KINDS)}")


# --- pinned host staging (GPU) -------------------------------------------------------------------


class PinnedStaging:
    """A reusable page-locked host buffer for host-to-device copies (needs torch with CUDA).

    Copies from pageable memory go through a driver bounce buffer and cannot overlap compute; staging
    through one pinned buffer, grown only when a larger tensor comes, makes ``non_blocking`` copies real
    without pinning per request (pinning is a costly system call).
    """

    def __init__(self) -> None:
        self._buffer: Any = None
        self._lock = threading.Lock()

    @property
    def capacity_bytes(self) -> int:
        return 0 if self._buffer is None else int(self._buffer.numel())

    def to_device(self, array: Any, device: str) -> Any:
        """Copy a host array (numpy or CPU torch) to ``device`` ("cuda:0") through the pinned buffer.

        The returned tensor is on the device; the copy is ordered on the current CUDA stream, so work on
        that stream sees the data. The buffer is reused only after that copy completes.
        """
        torch = _framework_module("torch")
        if not torch.cuda.is_available():
            raise ConfigError("pinned staging needs a CUDA device (torch.cuda.is_available() is False)")
        src = torch.from_numpy(np.ascontiguousarray(array)) if isinstance(array, np.ndarray) else array
        nbytes = src.numel() * src.element_size()
        with self._lock:
            if self._buffer is None or self._buffer.numel() < nbytes:
                self._buffer = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=True)
            staged = self._buffer[:nbytes].view(src.dtype).view(src.shape)
            staged.copy_(src)
            out = staged.to(device, non_blocking=True)
            # The pinned buffer is reused by the next call: wait for this copy before giving it back.
            torch.cuda.current_stream(out.device).synchronize()
        return out
