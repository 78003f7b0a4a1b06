"""Model loading, analysis and categorisation, and the built-in zoo."""

from aivmm.models._spec import Category, CategoryScore, ModelFormat, ModelSpec, TensorSpec

__all__ = ["Category", "CategoryScore", "ModelFormat", "ModelSpec", "TensorSpec"]
