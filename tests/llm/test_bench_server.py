"""`aivmm bench URL --llm`: the LLM closed loop against a real `aivmm serve` through the openai client."""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import pytest

from aivmm.cli.main import main

pytest.importorskip("openai")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "e2e"))
from _serve_process import running_server


def test_bench_llm_against_a_server(
    tiny_gpt2_dir: pathlib.Path, tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(tiny_gpt2_dir, repo / "gpt2", ignore=shutil.ignore_patterns("hf"))
    args = ["--model-repository", str(repo), "--no-measure", "--grpc-port", "-1"]
    with running_server(args, tmp_path / "server.err") as server:
        rc = main(
            [
                "bench",
                f"http://{server.http}",
                "--llm",
                "--model",
                "gpt2",
                "--concurrency",
                "1,2",
                "--duration",
                "0.6",
                "--warmup",
                "0.1",
                "--max-new-tokens",
                "6",
                "--json",
            ]
        )
        assert rc == 0, server.stderr()
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "llm" and "OpenAI" in data["target"]
    for r in data["results"]:
        assert r["requests"] > 0 and r["errors"] == 0 and r["tokens"] == 6 * r["requests"]
        assert r["ttft_ms"]["p50"] > 0 and r["tpot_ms"]["p50"] > 0
