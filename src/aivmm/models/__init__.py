"""Model loading, analysis and categorisation, and the built-in zoo (``aivmm.models.zoo``).

Importing this package imports neither onnx nor torch: the front ends load them when a model
of their format is loaded.
"""

from aivmm.models._hints import CategoryHints, category_hints
from aivmm.models._load import load
from aivmm.models._parsed import onnx_model, onnx_model_with_weights, release_parsed
from aivmm.models._shapes import parse_shape_arg
from aivmm.models._spec import Category, CategoryScore, Dim, ModelFormat, ModelSpec, TensorSpec, ValueKind

__all__ = [
    "Category",
    "CategoryHints",
    "CategoryScore",
    "Dim",
    "ModelFormat",
    "ModelSpec",
    "TensorSpec",
    "ValueKind",
    "category_hints",
    "load",
    "onnx_model",
    "onnx_model_with_weights",
    "parse_shape_arg",
    "release_parsed",
]
