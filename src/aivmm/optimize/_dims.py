"""Sizes for the symbolic dimensions of a model's inputs, for generated inputs.

A dimension is a fixed size, a name shared by every input that uses it (``batch``,
``sequence_length``), an expression of names (``past_sequence_length + sequence_length``, as
Optimum writes for an attention mask), or an anonymous unknown (``?``, ``-1``, ``unk__N`` or an
empty name): each anonymous unknown is its own free size, never tied to another one.

Names are given sizes by role: the batch axis gets the batch, a past length 0 (a first request),
a sequence length the analysis's default, an image's height and width the model's metadata
(Ultralytics ``imgsz``, rounded to its ``stride``) or 224. Expressions are evaluated with a
minimal evaluator over ``+ - * // /`` and parentheses (``ast``, never ``eval``): no library
parses ONNX dim expressions, and they are never more than that.
"""

from __future__ import annotations

import ast
import dataclasses
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aivmm.models import Dim, ModelSpec, TensorSpec

DEFAULT_SEQUENCE = 128  # as the analysis assumes (aivmm.models._shapes), so figures and inputs agree
DEFAULT_IMAGE_SIDE = 224
DEFAULT_FREE = 8  # an unknown that is neither batch, sequence nor image side; probing grows it
_SEQUENCE_HINTS = ("seq", "sequence", "len", "length", "time", "token", "step", "frames", "positions")
_PAST_HINTS = ("past", "cache", "history")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")
_OPS: Mapping[type, Callable[[int, int], int]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.FloorDiv: operator.floordiv,
    ast.Div: operator.floordiv,
    ast.Mod: operator.mod,
}


@dataclasses.dataclass(frozen=True)
class Unknown:
    """An anonymous unknown dimension: ``input[axis]`` of one input, tied to nothing else."""

    input: str
    axis: int

    def __str__(self) -> str:
        return f"{self.input}[{self.axis}]"


Key = str | Unknown  # a symbol name or an anonymous unknown


def is_anonymous(dim: Dim) -> bool:
    if dim is None:
        return True
    if isinstance(dim, int):
        return dim < 0
    text = dim.strip()
    return text in ("", "?", "-1") or re.fullmatch(r"unk__\d+", text) is not None


@dataclasses.dataclass(frozen=True)
class Expression:
    """A dimension written as arithmetic over names; ``names`` are the symbols it reads."""

    text: str
    tree: Any
    names: tuple[str, ...]

    def evaluate(self, sizes: Mapping[Key, int]) -> int:
        def ev(node: Any) -> int:
            if isinstance(node, ast.Expression):
                return ev(node.body)
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                return int(node.value)
            if isinstance(node, ast.Name):
                return int(sizes[_unmangle(node.id)])
            if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
                return _OPS[type(node.op)](ev(node.left), ev(node.right))
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                return -ev(node.operand)
            raise ValueError(f"unsupported dimension expression {self.text!r}")

        return ev(self.tree)


def _mangle(name: str) -> str:
    return name.replace(".", "__dot__")


def _unmangle(name: str) -> str:
    return name.replace("__dot__", ".")


def parse(dim: str) -> str | Expression:
    """A bare name, or an Expression when ``dim`` is arithmetic over names and integers."""
    text = dim.strip()
    if _IDENT.fullmatch(text):
        return text
    try:
        tree = ast.parse(_IDENT.sub(lambda m: _mangle(m.group(0)), text), mode="eval")
    except SyntaxError:
        return text  # an odd name ("batch size"): a symbol like any other
    names = tuple(sorted({_unmangle(n.id) for n in ast.walk(tree) if isinstance(n, ast.Name)}))
    allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant, ast.USub, *_OPS)
    if not names or any(not isinstance(n, allowed) for n in ast.walk(tree)):
        return text
    return Expression(text, tree, names)


@dataclasses.dataclass(frozen=True)
class Role:
    """Why a free symbol got its size (shown in the plan's notes)."""

    size: int
    why: str
    free: bool  # a guess that probing may change (not the batch, not a metadata size)


def _image_axes(t: TensorSpec) -> bool:
    """A 4-d float input with 1, 3 or 4 channels on axis 1 (NCHW images)."""
    c = t.shape[1] if t.rank == 4 else None
    return t.rank == 4 and t.dtype.is_float and (c in (1, 3, 4) or (isinstance(c, str) and "channel" in c.lower()))


def _hinted(name: str, hints: Sequence[str]) -> bool:
    low = name.lower()
    return any(h in low for h in hints)


def roles(spec: ModelSpec, batch: int, metadata: Mapping[str, Any]) -> tuple[dict[Key, Role], dict[str, Expression]]:
    """A size for every free symbol and anonymous unknown, and the expressions to evaluate."""
    out: dict[Key, Role] = {}
    exprs: dict[str, Expression] = {}
    imgsz: tuple[int, int] | None = metadata.get("imgsz")
    stride: int | None = metadata.get("stride")
    pending: list[tuple[Key, int, TensorSpec]] = []
    for t in spec.inputs:
        for axis, dim in enumerate(t.shape):
            if isinstance(dim, int) and dim >= 0:
                continue
            if is_anonymous(dim):
                pending.append((Unknown(t.name, axis), axis, t))
                continue
            assert isinstance(dim, str)
            parsed = parse(dim)
            if isinstance(parsed, Expression):
                exprs[dim] = parsed
                for n in parsed.names:
                    pending.append((n, -1, t))
            else:
                pending.append((parsed, axis, t))
    for key, axis, t in pending:
        if key in out:
            continue
        name = key if isinstance(key, str) else ""
        batch_named = bool(name) and ("batch" in name.lower() or name.lower() in ("n", "b", "bs", "batchsize"))
        if batch_named or (
            spec.batch_dim is not None
            and axis == spec.batch_dim
            and (isinstance(key, Unknown) or t.shape[axis] == key)
            and not _hinted(name, _PAST_HINTS)
        ):
            out[key] = Role(batch, "the batch size", free=False)
        elif (
            isinstance(key, Unknown)
            and not (axis >= 2 and _image_axes(t))
            and t.rank > 0
            and (axis == 0 or axis < t.rank - 1)
        ):
            # Leading and middle unknowns are batch-like ([?, 3, ...], a state's [2, ?, 128]); the last
            # one is the length that probing may have to grow.
            out[key] = Role(batch, "a leading or middle unknown, sized as the batch", free=False)
        elif name and "channel" in name.lower() and axis == 1 and _image_axes(t):
            out[key] = Role(3, "3 colour channels", free=False)
        elif name and _hinted(name, _PAST_HINTS):
            out[key] = Role(0, "a past length of 0 (a first request: nothing cached yet)", free=True)
        elif axis >= 2 and _image_axes(t):
            if imgsz is not None:
                out[key] = Role(imgsz[axis - 2], f"the model's metadata imgsz={list(imgsz)}", free=False)
            else:
                side = DEFAULT_IMAGE_SIDE if stride is None else -(-DEFAULT_IMAGE_SIDE // stride) * stride
                out[key] = Role(
                    side,
                    "an image side of the usual size"
                    + (f", a multiple of the metadata stride {stride}" if stride else ""),
                    free=True,
                )
        elif name and _hinted(name, _SEQUENCE_HINTS):
            out[key] = Role(DEFAULT_SEQUENCE, "a sequence length of the analysis's default", free=True)
        else:
            out[key] = Role(DEFAULT_FREE, "a small size for an unknown dimension", free=True)
    return out, exprs


def key_of(t: TensorSpec, axis: int) -> Key | None:
    dim = t.shape[axis]
    if isinstance(dim, int) and dim >= 0:
        return None
    if is_anonymous(dim):
        return Unknown(t.name, axis)
    assert isinstance(dim, str)
    parsed = parse(dim)
    return parsed if isinstance(parsed, str) else None


def shape_of(t: TensorSpec, sizes: Mapping[Key, int], exprs: Mapping[str, Expression]) -> tuple[int, ...]:
    dims: list[int] = []
    for axis, dim in enumerate(t.shape):
        if isinstance(dim, int) and dim >= 0:
            dims.append(dim)
            continue
        key = key_of(t, axis)
        if key is not None:
            dims.append(int(sizes[key]))
        else:
            assert isinstance(dim, str)
            dims.append(max(0, exprs[dim].evaluate(sizes)))
    return tuple(dims)
