"""The one exception tree of aivmm.

Every error aivmm raises derives from :class:`AivmmError`. SDK errors are wrapped with
``raise ... from exc`` so the cause stays visible; messages carry the context a user needs
(device, bytes asked and free, input name and expected shape). The server maps each class to
an HTTP and gRPC status in one table (``aivmm.serve._errors``), so the class chosen matters.

::

    AivmmError
    ├── ConfigError                  bad argument, constraint, budget string or environment value
    │   ├── SimulationSpecError      malformed AIVMM_SIMULATE file (names the file and the field)
    │   └── ClusterError             cannot join or use the Ray cluster (says which step failed)
    │       ├── ClusterUnreachableError  no Ray GCS answers at the address
    │       ├── ClusterAuthError         the GCS refused this process's token (or its lack of one)
    │       └── ClusterVersionError      the cluster runs another Ray or Python version
    ├── DeviceError
    │   ├── DeviceNotFoundError      unknown device id
    │   └── DeviceUnhealthyError     a device that failed and was taken out of service
    ├── ModelError
    │   ├── ModelLoadError           not a model, truncated, missing external data, self-contradicting graph
    │   ├── UnsupportedModelError    unknown opset or domain, an operator no backend can run
    │   └── ModelChangedError        the file changed on disk after deploy
    ├── InputError                   wrong input name, dtype, rank or shape; shows the signature
    │   └── ContextLengthError       prompt (+ max_new_tokens) longer than an LLM's context
    ├── BackendError
    │   ├── BackendUnavailableError  runtime not installed (names the extra) or cannot drive device
    │   ├── LoweringError            ONNX → torch lowering refused (names operator and opset)
    │   └── ExecutionError           the runtime failed while running
    ├── PlanningError
    │   ├── InfeasibleError          no candidate meets the constraints (best achievable figures)
    │   ├── FallbackError            strict mode refused a fallback
    │   └── AccuracyError            a transformed candidate broke the tolerance
    ├── ResourceError
    │   ├── OutOfMemoryError         device memory exhausted (bytes asked / free)
    │   └── ModelTooLargeError       larger than every budget and cannot be split
    └── ServingError
        ├── ModelNotFoundError       unknown model or version
        ├── ModelNotReadyError       model loading, draining or unloaded
        ├── ModelClosedError         execute after close
        ├── OverloadedError          bounded queue full: retry later
        ├── DeadlineExceededError    a request that cannot or did not meet its deadline
        └── PermissionDeniedError    control endpoint without the token, or a path outside the repo
"""

from __future__ import annotations


class AivmmError(Exception):
    """Base of every aivmm error."""


class ConfigError(AivmmError, ValueError):
    """An argument, constraint, budget or environment value is invalid."""


class SimulationSpecError(ConfigError):
    """A simulated-device specification is malformed."""

    def __init__(self, source: str, field: str, problem: str) -> None:
        self.source = source
        self.field = field
        super().__init__(f"{source}: field {field!r}: {problem}")


class ClusterError(ConfigError):
    """Joining or using the Ray cluster failed; the message says at which step."""


class ClusterUnreachableError(ClusterError, ConnectionError):
    """No Ray GCS answers at the address."""


class ClusterAuthError(ClusterError, PermissionError):
    """The Ray GCS refused this process's authentication token, or its lack of one."""


class ClusterVersionError(ClusterError):
    """The cluster runs another Ray or Python version than this process."""


class DeviceError(AivmmError):
    """A device problem."""


class DeviceNotFoundError(DeviceError, LookupError):
    """No device has the id that was asked for."""


class DeviceUnhealthyError(DeviceError):
    """A device failed and was taken out of service."""


class ModelError(AivmmError):
    """A model problem."""


class ModelLoadError(ModelError):
    """The file is not a model, is truncated, misses external data, or contradicts itself (weights
    whose data does not fit their dims, operators whose types or shapes cannot agree)."""


class UnsupportedModelError(ModelError):
    """The model uses an opset, domain or operator that cannot be handled."""


class ModelChangedError(ModelError):
    """The model file changed on disk after it was deployed."""


class InputError(AivmmError, ValueError):
    """Inputs do not match the model's signature."""


class ContextLengthError(InputError):
    """A prompt, or a prompt plus max_new_tokens, does not fit an LLM's context length."""


class BackendError(AivmmError):
    """A runtime problem."""


class BackendUnavailableError(BackendError):
    """A runtime is not installed or cannot drive the device."""


class LoweringError(BackendError):
    """The ONNX → torch lowering refused a model."""


class ExecutionError(BackendError):
    """The runtime failed while running a model."""


class PlanningError(AivmmError):
    """The planner could not produce an acceptable plan."""


class InfeasibleError(PlanningError):
    """No candidate meets the constraints."""


class FallbackError(PlanningError):
    """Strict mode refused to place work somewhere else than asked."""


class AccuracyError(PlanningError):
    """A transformed candidate broke the accuracy tolerance."""


class ResourceError(AivmmError):
    """Memory or another resource is exhausted."""


class OutOfMemoryError(ResourceError, MemoryError):
    """A device ran out of memory."""


class ModelTooLargeError(ResourceError):
    """A model is larger than every device budget and cannot be split."""


class ServingError(AivmmError):
    """A request could not be served."""


class ModelNotFoundError(ServingError, LookupError):
    """No such model or version."""


class ModelNotReadyError(ServingError):
    """The model is loading, draining or unloaded."""


class ModelClosedError(ServingError):
    """The model was closed."""


class OverloadedError(ServingError):
    """A bounded queue is full; retry later."""


class DeadlineExceededError(ServingError, TimeoutError):
    """A request missed, or can no longer meet, its deadline."""


class PermissionDeniedError(ServingError, PermissionError):
    """A control request without the token, or a path outside the repository."""


def missing_extra(module: str, extra: str) -> BackendUnavailableError:
    """The error for an optional dependency that is not installed."""
    return BackendUnavailableError(f'{module} is not installed: pip install "aivmm[{extra}]"')
