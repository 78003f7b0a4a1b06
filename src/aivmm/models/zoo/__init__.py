"""The built-in model zoo: realistic models of every category, built locally with deterministic
weights (no downloads), cached on disk, each with sample inputs.

Every model has a ``tiny`` size (builds and runs in milliseconds: for tests and demos) and a
``full`` size (the real architecture's shape and parameter count: for benchmarks). Every input
has the symbolic batch dimension ``batch`` first. Files are cached under
``$AIVMM_CACHE_DIR/zoo`` (default ``~/.cache/aivmm/zoo``) and rebuilt when a builder's version
changes.

>>> from aivmm.models import zoo
>>> path = zoo.build("resnet50")                # tiny by default
>>> feeds = zoo.sample_inputs("resnet50", batch=4)
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import pathlib
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from aivmm._lazy import load
from aivmm.errors import ConfigError
from aivmm.models._spec import Category

SIZES = ("tiny", "full")
# Bump when the shared builder changes every model's bytes; each entry has its own version too.
BUILDER_VERSION = 1
_SEED = 0


@dataclasses.dataclass(frozen=True)
class ZooInfo:
    name: str
    categories: tuple[Category, ...]  # the categories load() must find, primary first
    subtype: str  # the LLM subtype for transformers, else ""
    description: str
    version: int
    builder: str  # "module:function" inside aivmm.models.zoo
    sample: str  # "module:function" producing sample inputs
    parameters: str  # "module:function" giving the parameter count by the architecture's formula

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "categories": [c.value for c in self.categories],
            "subtype": self.subtype,
            "description": self.description,
            "version": self.version,
        }


_ENTRIES: dict[str, ZooInfo] = {
    info.name: info
    for info in (
        ZooInfo(
            "resnet50",
            (Category.CNN,),
            "",
            "ResNet-50-class image classifier (bottleneck residual CNN)",
            1,
            "_vision:resnet",
            "_vision:resnet_inputs",
            "_vision:resnet_parameters",
        ),
        ZooInfo(
            "bert-base",
            (Category.TRANSFORMER,),
            "encoder-llm",
            "BERT-base-class text encoder (input_ids + attention_mask)",
            1,
            "_language:bert",
            "_language:bert_inputs",
            "_language:bert_parameters",
        ),
        ZooInfo(
            "gpt2",
            (Category.TRANSFORMER,),
            "causal-decoder-llm",
            "GPT-2-class causal language model (causal mask, tied LM head)",
            1,
            "_language:gpt2",
            "_language:gpt2_inputs",
            "_language:gpt2_parameters",
        ),
        ZooInfo(
            "lstm",
            (Category.RNN,),
            "",
            "bidirectional LSTM + GRU sequence classifier",
            1,
            "_sequence:lstm",
            "_sequence:lstm_inputs",
            "_sequence:lstm_parameters",
        ),
        ZooInfo(
            "dlrm",
            (Category.RECOMMENDER,),
            "",
            "DLRM-class recommender (embedding tables, bottom/top MLPs, dot interaction)",
            1,
            "_recsys:dlrm",
            "_recsys:dlrm_inputs",
            "_recsys:dlrm_parameters",
        ),
        ZooInfo(
            "pinn",
            (Category.SCIENTIFIC,),
            "",
            "physics-informed coordinate MLP (sin/tanh)",
            1,
            "_science:pinn",
            "_science:pinn_inputs",
            "_science:pinn_parameters",
        ),
        ZooInfo(
            "fno",
            (Category.SCIENTIFIC,),
            "",
            "Fourier neural operator (DFT spectral convolution)",
            1,
            "_science:fno",
            "_science:fno_inputs",
            "_science:fno_parameters",
        ),
        ZooInfo(
            "crnn",
            (Category.CNN, Category.RNN),
            "",
            "CRNN text recogniser (conv stack + bidirectional GRU)",
            1,
            "_vision:crnn",
            "_vision:crnn_inputs",
            "_vision:crnn_parameters",
        ),
    )
}
_DEFAULT = "resnet50"


def names() -> list[str]:
    return list(_ENTRIES)


def default_model() -> str:
    """The model ``aivmm run`` uses when none is given (build it with its default, tiny size)."""
    return _DEFAULT


def info(name: str) -> ZooInfo:
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ConfigError(f"unknown zoo model {name!r}; the zoo has {', '.join(_ENTRIES)}") from None


def cache_dir() -> pathlib.Path:
    from aivmm._storage import cache_dir as root

    return root("zoo", create=False)


def path(name: str, size: str = "tiny") -> pathlib.Path:
    """Where ``build(name, size)`` caches the model (the file may not exist yet).

    The name carries the builder versions and a digest of the builder's source, so a changed
    builder never serves a stale file, even when someone forgot to bump a version.
    """
    entry = info(name)
    _check_size(size)
    return cache_dir() / f"{name}-{size}-v{BUILDER_VERSION}.{entry.version}-{_source_digest(entry)}.onnx"


@functools.cache
def _source_digest(entry: ZooInfo) -> str:
    digest = hashlib.sha256(f"{BUILDER_VERSION}.{entry.version}".encode())
    here = pathlib.Path(__file__).parent
    for module in sorted({"_builder", entry.builder.partition(":")[0]}):
        try:
            digest.update((here / f"{module}.py").read_bytes())
        except OSError:  # installed without sources: the versions alone key the cache
            digest.update(module.encode())
    return digest.hexdigest()[:10]


def build(name: str, size: str = "tiny", *, force: bool = False) -> pathlib.Path:
    """The cached ONNX file of a zoo model, built first if absent, stale, or ``force``."""
    target = path(name, size)
    if target.is_file() and not force:
        return target
    model = _resolve(info(name).builder)(size, _SEED)
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save(model, target)
    for stale in target.parent.glob(f"{name}-{size}-v*.onnx"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def proto(name: str, size: str = "tiny") -> Any:
    """The model as an in-memory ``onnx.ModelProto`` (built fresh, not cached)."""
    _check_size(size)
    return _resolve(info(name).builder)(size, _SEED)


def sample_inputs(name: str, size: str = "tiny", batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid inputs for the model (token ids within the vocabulary, categorical ids within the tables)."""
    entry = info(name)
    _check_size(size)
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConfigError(f"batch must be a positive integer, not {batch!r}")
    return _resolve(entry.sample)(size, batch, np.random.default_rng(seed))


def expected_parameters(name: str, size: str = "tiny") -> int:
    """The parameter count by the architecture's formula, computed without building the graph."""
    entry = info(name)
    _check_size(size)
    return int(_resolve(entry.parameters)(size))


def _check_size(size: str) -> None:
    if size not in SIZES:
        raise ConfigError(f"unknown zoo size {size!r}; expected one of {', '.join(SIZES)}")


def _resolve(ref: str) -> Callable[..., Any]:
    fn: Callable[..., Any] = load(f"aivmm.models.zoo.{ref}")  # "module:function" under the zoo
    return fn


def _atomic_save(model: Any, target: pathlib.Path) -> None:
    """Write beside the target then rename: a reader never sees a half-written file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            _write(model, fh)
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _write(model: Any, fh: Any) -> None:
    """Serialise ``model`` as its graph skeleton followed by one message per weight.

    Protobuf merges concatenated messages (repeated fields append), so the bytes equal a single
    serialisation; serialising a 500 MB ModelProto in one call is several times slower than in
    pieces with the protobuf runtime onnx uses.
    """
    import onnx

    head = onnx.ModelProto()
    _copy_fields(model, head, skip="graph")
    _copy_fields(model.graph, head.graph, skip="initializer")
    fh.write(head.SerializeToString())
    for tensor in model.graph.initializer:
        piece = onnx.ModelProto()
        piece.graph.initializer.append(tensor)
        fh.write(piece.SerializeToString())


def _copy_fields(source: Any, target: Any, skip: str) -> None:
    for field, value in source.ListFields():
        if field.name == skip:
            continue
        if isinstance(value, Sequence) and not isinstance(value, str | bytes):  # a repeated field
            getattr(target, field.name).extend(value)
        elif field.message_type is not None:
            getattr(target, field.name).CopyFrom(value)
        else:
            setattr(target, field.name, value)


__all__ = [
    "SIZES",
    "ZooInfo",
    "build",
    "cache_dir",
    "default_model",
    "expected_parameters",
    "info",
    "names",
    "path",
    "proto",
    "sample_inputs",
]
