"""validate_feeds: the compiled numpy fast path must agree with the general path (the specification)."""

from __future__ import annotations

import types

import numpy as np
import pytest

from aivmm.backends import tensors
from aivmm.dtypes import DType
from aivmm.errors import InputError
from aivmm.models._spec import ModelFormat, ModelSpec, TensorSpec

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies
given, settings = hypothesis.given, hypothesis.settings

_DIMS = st.one_of(st.integers(1, 3), st.sampled_from(["batch", "seq"]), st.none())


@settings(max_examples=150, deadline=None)
@given(
    dims=st.lists(st.lists(_DIMS, min_size=0, max_size=3), min_size=1, max_size=3),
    shapes=st.lists(st.lists(st.integers(1, 3), min_size=0, max_size=3), min_size=1, max_size=3),
    dtypes=st.lists(st.sampled_from([np.float32, np.int64, np.float64]), min_size=3, max_size=3),
)
def test_fast_path_agrees_with_the_general_path(dims, shapes, dtypes):
    # A read-only mapping is not a dict: it takes the general path, which is the specification.
    spec = ModelSpec(
        name="h",
        format=ModelFormat.ONNX,
        outputs=(),
        inputs=tuple(
            TensorSpec(f"i{k}", DType.FLOAT32 if k % 2 == 0 else DType.INT64, tuple(d)) for k, d in enumerate(dims)
        ),
    )
    feeds = {f"i{k}": np.zeros(tuple(s), dtypes[k]) for k, s in enumerate(shapes)}

    def outcome(value):
        try:
            return {k: id(v) for k, v in tensors.validate_feeds(spec, value).items()}
        except InputError as exc:
            return ("error", str(exc))

    fast, general = outcome(feeds), outcome(types.MappingProxyType(feeds))
    assert type(fast) is type(general)
    if isinstance(fast, dict):
        assert list(fast) == [t.name for t in spec.inputs] and fast == general
