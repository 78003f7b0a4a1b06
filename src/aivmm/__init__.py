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

from typing import TYPE_CHECKING

from aivmm._lazy import LazyExports
from aivmm._version import __version__

if TYPE_CHECKING:
    from aivmm.devices import Device, DeviceKind, Vendor, discover
    from aivmm.dtypes import DType, Precision
    from aivmm.llm import DeployedLLM, FinishReason, Generation, SamplingParams, TokenEvent
    from aivmm.options import DeployOptions
    from aivmm.planner.constraints import Constraints, Objective, PrecisionPolicy
    from aivmm.vmm import VMM, DeployedModel

_LAZY = {
    "Constraints": "aivmm.planner.constraints:Constraints",
    "DType": "aivmm.dtypes:DType",
    "DeployedLLM": "aivmm.llm:DeployedLLM",
    "DeployOptions": "aivmm.options:DeployOptions",
    "DeployedModel": "aivmm.vmm:DeployedModel",
    "Device": "aivmm.devices:Device",
    "DeviceKind": "aivmm.devices:DeviceKind",
    "FinishReason": "aivmm.llm:FinishReason",
    "Generation": "aivmm.llm:Generation",
    "Objective": "aivmm.planner.constraints:Objective",
    "Precision": "aivmm.dtypes:Precision",
    "PrecisionPolicy": "aivmm.planner.constraints:PrecisionPolicy",
    "SamplingParams": "aivmm.llm:SamplingParams",
    "TokenEvent": "aivmm.llm:TokenEvent",
    "VMM": "aivmm.vmm:VMM",
    "Vendor": "aivmm.devices:Vendor",
    "discover": "aivmm.devices:discover",
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


__getattr__ = LazyExports(__name__, _LAZY)


def __dir__() -> list[str]:
    return __all__
