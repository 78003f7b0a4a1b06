"""aivmm — an AI virtual machine manager.

::

    import aivmm
    vmm = aivmm.VMM()                       # discovers hardware
    model = vmm.deploy("model.onnx")        # plans and places the model, says why in model.plan
    outputs = model.execute(input_array)

Importing aivmm touches no hardware, reads no environment and imports no runtime: the names below
are resolved on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from aivmm._version import __version__

if TYPE_CHECKING:
    from aivmm.devices import Device, DeviceKind, Vendor, discover
    from aivmm.dtypes import DType, Precision
    from aivmm.llm import DeployedLLM, FinishReason, Generation, SamplingParams, TokenEvent
    from aivmm.options import DeployOptions
    from aivmm.planner.constraints import Constraints, Objective, PrecisionPolicy
    from aivmm.vmm import VMM, DeployedModel

_LAZY = {
    "Constraints": "aivmm.planner.constraints",
    "DType": "aivmm.dtypes",
    "DeployedLLM": "aivmm.llm",
    "DeployOptions": "aivmm.options",
    "DeployedModel": "aivmm.vmm",
    "Device": "aivmm.devices",
    "DeviceKind": "aivmm.devices",
    "FinishReason": "aivmm.llm",
    "Generation": "aivmm.llm",
    "Objective": "aivmm.planner.constraints",
    "Precision": "aivmm.dtypes",
    "PrecisionPolicy": "aivmm.planner.constraints",
    "SamplingParams": "aivmm.llm",
    "TokenEvent": "aivmm.llm",
    "VMM": "aivmm.vmm",
    "Vendor": "aivmm.devices",
    "discover": "aivmm.devices",
    "errors": "aivmm.errors",
}

__all__ = [
    "VMM",
    "Constraints",
    "DType",
    "DeployOptions",
    "DeployedLLM",
    "DeployedModel",
    "Device",
    "DeviceKind",
    "FinishReason",
    "Generation",
    "Objective",
    "Precision",
    "PrecisionPolicy",
    "SamplingParams",
    "TokenEvent",
    "Vendor",
    "__version__",
    "discover",
    "errors",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'aivmm' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "errors" else getattr(mod, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
