"""The PyTorch backend: native ``nn.Module`` / ``ExportedProgram`` models, and ONNX models lowered
to torch.fx by aivmm's own lowering, on CPU, CUDA, ROCm, Intel XPU and Apple MPS."""

from aivmm.backends.torch._backend import TorchBackend
from aivmm.backends.torch._placement import TorchPlacement, placement, supports

__all__ = ["TorchBackend", "TorchPlacement", "placement", "supports"]
