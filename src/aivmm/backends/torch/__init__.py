"""The PyTorch backend: native ``nn.Module`` / ``ExportedProgram`` models, and ONNX models lowered
to torch.fx by aivmm's own lowering, on CPU, CUDA, ROCm, Intel XPU and Apple MPS."""

from aivmm.backends.torch._backend import TorchBackend

__all__ = ["TorchBackend"]
