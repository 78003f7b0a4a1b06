"""Shared test configuration."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


_OWN_CACHE: str | None = None


def pytest_configure(config: pytest.Config) -> None:
    # Each test session gets its own aivmm cache (zoo builds, plans, figures, optimised models), so
    # results never depend on what an earlier run or the developer's own use left in ~/.cache/aivmm.
    global _OWN_CACHE
    if "AIVMM_CACHE_DIR" not in os.environ:
        _OWN_CACHE = tempfile.mkdtemp(prefix="aivmm-test-cache-")
        os.environ["AIVMM_CACHE_DIR"] = _OWN_CACHE


def pytest_unconfigure(config: pytest.Config) -> None:
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
        os.environ.pop("AIVMM_CACHE_DIR", None)


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (run on the device machine)")
    for item in items:
        # Markers, not keywords: keywords also hold directory names (a checkout in a folder named gpu).
        if item.get_closest_marker("gpu") or item.get_closest_marker("multigpu"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES


@pytest.fixture(scope="session")
def tiny_llama_dir() -> pathlib.Path:
    """A tiny random Llama (GQA) exported by Optimum with past, plus tokenizer and configs (cached)."""
    from _llm_models import build_tiny_llama

    return build_tiny_llama()


@pytest.fixture(scope="session")
def tiny_gpt2_dir() -> pathlib.Path:
    """A tiny random GPT-2 exported by Optimum with past, plus tokenizer and configs (cached)."""
    from _llm_models import build_tiny_gpt2

    return build_tiny_gpt2()
