"""Property tests: whatever a user or a config file passes as constraints, the parser either
accepts it or raises a documented aivmm error (ConfigError) naming the problem; nothing else."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from aivmm.errors import AivmmError, ConfigError
from aivmm.planner.constraints import Constraints, HardwareSelector, constraint_table, parse_bytes

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

FIELDS = [row.name for row in constraint_table()]

# Anything JSON, YAML or a careless caller can produce, plus values close to the valid ones.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=8),
    st.sampled_from(
        [
            "50",
            "99",
            "fp16",
            "int8",
            "latency",
            "throughput",
            "gpu",
            "nvidia:0",
            "cpu:0,amd",
            "512MiB",
            "1.5GB",
            "-1",
            "nan",
            "inf",
            "1e9",
            "intel-gpu",
            "bf16",
            " EXACT ",
        ]
    ),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def _accepts_or_config_error(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
    try:
        return fn(*args, **kwargs)
    except ConfigError:
        return None
    except AivmmError as exc:  # documented, but the parser should say ConfigError
        pytest.fail(f"{fn.__name__} raised {type(exc).__name__} instead of ConfigError: {exc}")


@FAST
@given(st.dictionaries(st.sampled_from(FIELDS), values, max_size=5))
def test_constraints_kwargs_never_crash(kwargs: dict) -> None:
    c = _accepts_or_config_error(Constraints, **kwargs)
    if c is not None:
        # Accepted values are normalised: what to_json says is what from_mapping rebuilds.
        assert Constraints.from_mapping(c.to_json()) == c


@FAST
@given(
    st.one_of(st.none(), st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=12)), values, max_size=5))
)
def test_from_mapping_never_crashes(data: dict | None) -> None:
    c = _accepts_or_config_error(Constraints.from_mapping, data)
    if c is not None and data:
        assert set(data) <= set(FIELDS)


@FAST
@given(
    st.dictionaries(st.text(min_size=1, max_size=12).filter(lambda k: k not in FIELDS), values, min_size=1, max_size=3)
)
def test_from_mapping_names_unknown_keys(data: dict) -> None:
    with pytest.raises(ConfigError) as info:
        Constraints.from_mapping(data)
    assert repr(sorted(data)[0]) in str(info.value)


@FAST
@given(
    st.one_of(
        st.text(max_size=30),
        st.integers(min_value=-(2**80), max_value=2**80),
        st.binary(max_size=10),
        st.floats(allow_nan=True),
        st.none(),
        st.booleans(),
    )
)
def test_parse_bytes_never_crashes(text: object) -> None:
    n = _accepts_or_config_error(parse_bytes, text)
    if n is not None:
        assert isinstance(n, int) and n >= 0


@FAST
@given(
    st.integers(min_value=0, max_value=10**6),
    st.sampled_from(
        [("", 1), ("B", 1), ("KiB", 2**10), ("MiB", 2**20), ("GiB", 2**30), ("kb", 10**3), ("GB", 10**9), ("T", 10**12)]
    ),
    st.sampled_from(["", " "]),
)
def test_parse_bytes_units(n: int, unit: tuple[str, int], space: str) -> None:
    assert parse_bytes(f"{n}{space}{unit[0]}") == n * unit[1]


@FAST
@given(st.floats(min_value=0, max_value=1e6, allow_nan=False), st.sampled_from(["MiB", "GB"]))
def test_parse_bytes_fractions(x: float, unit: str) -> None:
    text = f"{x:.3f}{unit}"
    mult = 2**20 if unit == "MiB" else 10**9
    assert math.isclose(parse_bytes(text), float(f"{x:.3f}") * mult, rel_tol=1e-9, abs_tol=1.0)


@FAST
@given(
    st.one_of(
        st.text(max_size=25),
        st.sampled_from(
            ["gpu", "NVIDIA:0", " cpu ", "intel-npu:1", "amd:x", ":0", "nvidia:", "intel-gpu", "npu", "apple"]
        ),
    )
)
def test_hardware_selector_parse(text: str) -> None:
    sel = _accepts_or_config_error(HardwareSelector.parse, text)
    if sel is not None:
        assert sel.text == sel.text.strip().lower() and sel.text
        assert HardwareSelector.parse(sel.text) == sel  # canonical form parses to itself


@FAST
@given(st.one_of(st.integers(), st.none(), st.binary(max_size=4), st.lists(st.text(max_size=3), max_size=2)))
def test_hardware_selector_rejects_non_text(value: object) -> None:
    assume(not isinstance(value, str))
    with pytest.raises(ConfigError):
        HardwareSelector.parse(value)  # type: ignore[arg-type]
