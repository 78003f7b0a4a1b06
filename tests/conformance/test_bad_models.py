"""Broken real models get one clear line at deploy, never a crash or a traceback later.

The corpus (``_bad_models``) is made from real models of the real-model zoo: BERT exported by
Optimum from a transformers architecture with random weights, and Silero VAD (If, LSTM) and the
PP-OCR direction classifier (CNN) as their PyPI wheels ship them. Each is truncated, bit-flipped,
edited wrongly (dims, weights, dangling inputs, types, node order), given an unknown opset or
operator, or separated from its external weights, then goes through ``VMM.deploy`` (and, when it
deploys, ``execute``); a few go through the ``aivmm`` CLI.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

_HERE = pathlib.Path(__file__).resolve().parent
for _extra in (str(_HERE.parents[1] / "benchmarks"), str(_HERE)):  # realzoo, and the corpus beside this file
    if _extra not in sys.path:
        sys.path.insert(0, _extra)

import _bad_models  # noqa: E402

import realzoo  # noqa: E402
from aivmm.errors import AivmmError, InfeasibleError  # noqa: E402
from aivmm.vmm import VMM  # noqa: E402

SOURCES = ("bert", "silero-vad", "ppocr-cls")
NAMES = [
    f"{label}-{m}"
    for label in SOURCES
    for m in (
        *(f"truncated-{f:g}" for f in _bad_models.TRUNCATIONS),
        *(f"bitflip-{s}" for s in _bad_models.BIT_FLIP_SEEDS),
        *(n for n in _bad_models.STRUCTURAL if label in _bad_models.ONLY_FOR.get(n, (label,))),
        "external-missing",
        "external-short",
        "external-escape",
        "external-absolute",
    )
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, _bad_models.Mutant]:
    root = tmp_path_factory.mktemp("bad-models")
    out: dict[str, _bad_models.Mutant] = {}
    for label in SOURCES:
        for mutant in _bad_models.build(realzoo.path(label), root / label, label):
            out[mutant.name] = mutant
    return out


@pytest.fixture(scope="module")
def vmm() -> Iterator[VMM]:
    v = VMM()
    try:
        yield v
    finally:
        v.close()


def _one_clear_line(exc: AivmmError, says: str) -> None:
    """One line says what is wrong. The planner's InfeasibleError may add one indented line per
    candidate under it (which failed on which input, and why): detail, never a runtime's log."""
    text = str(exc)
    lines = text.splitlines()
    assert lines and lines[0].strip(), f"{type(exc).__name__} with an empty message"
    detail = lines[1:]
    assert not detail or (isinstance(exc, InfeasibleError) and all(ln.startswith("  ") for ln in detail)), (
        f"{type(exc).__name__} message spans {len(lines)} lines:\n{text[:2000]}"
    )
    assert "Traceback" not in text
    if says:
        assert re.search(says, lines[0]), f"{type(exc).__name__}: {lines[0][:500]!r} does not say {says!r}"


def test_corpus_is_deterministic_and_complete(corpus: dict[str, _bad_models.Mutant], tmp_path: pathlib.Path) -> None:
    assert sorted(corpus) == sorted(NAMES)
    again = {m.name: m.path.read_bytes() for m in _bad_models.build(realzoo.path("silero-vad"), tmp_path, "silero-vad")}
    assert all(corpus[n].path.read_bytes() == data for n, data in again.items())
    assert len(set(again.values())) == len(again)  # every mutation changed something


@pytest.mark.parametrize("name", NAMES)
def test_deploy_says_what_is_wrong(name: str, corpus: dict[str, _bad_models.Mutant], vmm: VMM) -> None:
    mutant = corpus[name]
    label = next(s for s in SOURCES if name.startswith(f"{s}-"))
    try:
        # A model expected to deploy (a flip inside weight bytes) is not measured: it is valid ONNX,
        # and its run below is the check; measuring it would only time garbage numbers.
        deployed = vmm.deploy(mutant.path, name=name, measure=bool(mutant.expected))
    except AivmmError as exc:
        if mutant.expected:
            assert isinstance(exc, mutant.expected), f"{name}: {type(exc).__name__}: {exc}"
        else:
            assert isinstance(exc, _bad_models.DEPLOY_ERRORS), f"{name}: {type(exc).__name__}: {exc}"
        _one_clear_line(exc, mutant.says)
        return
    assert not mutant.expected, (
        f"{name} deployed on {deployed.plan.chosen.config.label()}; expected {[e.__name__ for e in mutant.expected]}"
    )
    try:
        with deployed:
            out = deployed.execute(realzoo.sample_inputs(label))
        assert out
    except AivmmError as exc:  # a defined error is fine at run for a valid-but-altered model; nothing else
        _one_clear_line(exc, "")


CLI_CASES = [  # each costs a fresh interpreter importing torch: a few, one per error class
    ("analyze", "bert-truncated-0.5", r"truncated"),
    ("run", "silero-vad-weight-dtype", r"invalid ONNX model"),
    ("run", "ppocr-cls-custom-op", r"com\.example\.unshipped"),
    # Valid ONNX that every candidate fails on: before the planner refused, torch.compile's 30-line
    # log reached the terminal here. Now: the summary, then one indented line per candidate.
    ("run", "bert-input-rank", r"no candidate ran 'bert-input-rank'"),
]


@pytest.mark.parametrize(("command", "name", "says"), CLI_CASES)
def test_cli_exits_with_one_error_line(
    command: str, name: str, says: str, corpus: dict[str, _bad_models.Mutant]
) -> None:
    argv = [sys.executable, "-m", "aivmm", command, str(corpus[name].path)]
    if command == "run":
        argv.append("--random")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env, check=False)
    lines = proc.stderr.splitlines()
    assert proc.returncode not in (0, 1), f"exit {proc.returncode} (1 would be an uncaught exception)"
    assert "Traceback" not in proc.stderr
    assert lines and lines[0].startswith(f"aivmm {command}: error: ") and re.search(says, lines[0]), proc.stderr[:3000]
    detail_allowed = says.startswith("no candidate")  # the planner's per-candidate lines, indented
    assert len(lines) == 1 or (detail_allowed and all(ln.startswith("  ") for ln in lines[1:])), (
        f"{len(lines)} lines on stderr:\n{proc.stderr[:3000]}"
    )
