"""The LLM parts of the CLI: analyze names the KV layout, generate streams text, bench has an LLM mode."""

from __future__ import annotations

import json
import pathlib

import pytest

from aivmm.cli.main import main


def test_analyze_names_the_kv_layout(tiny_llama_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", str(tiny_llama_dir)]) == 0
    out = capsys.readouterr().out
    assert "kv cache:        optimum-with-past: 2 layers, 2 kv heads x 16, float32, context 256, 512 B/token" in out
    assert main(["analyze", str(tiny_llama_dir / "model.onnx"), "--json"]) == 0
    kv = json.loads(capsys.readouterr().out)["kv_cache"]
    assert (kv["layers"], kv["kv_heads"], kv["head_dim"], kv["bytes_per_token"]) == (2, 2, 16, 512)


def test_generate_streams_text(tiny_gpt2_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["generate", str(tiny_gpt2_dir), "Hello world", "--max-new-tokens", "6", "--ignore-eos", "--no-measure"]
    assert main(args) == 0
    streamed = capsys.readouterr()
    assert "[6 tokens, finish length" in streamed.err
    assert main([*args, "--json"]) == 0
    gen = json.loads(capsys.readouterr().out)
    assert len(gen["token_ids"]) == 6 and gen["finish_reason"] == "length"
    assert streamed.out.rstrip("\n") == gen["text"]


def test_bench_llm_mode(tiny_llama_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "bench",
        str(tiny_llama_dir),
        "--concurrency",
        "1,2",
        "--duration",
        "0.5",
        "--warmup",
        "0.1",
        "--no-measure",
        "--max-new-tokens",
        "8",
        "--json",
    ]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["mode"] == "llm" and [r["concurrency"] for r in data["results"]] == [1, 2]
    for r in data["results"]:
        assert r["requests"] > 0 and r["errors"] == 0 and r["tokens"] == 8 * r["requests"]
        assert 0 < r["ttft_ms"]["p50"] <= r["ttft_ms"]["p99"] and r["tpot_ms"]["p50"] > 0


def test_plan_shows_the_generation_plan(tiny_gpt2_dir: pathlib.Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(tiny_gpt2_dir), "--backend", "onnxruntime", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "llm" and data["kv_cache"]["bytes_per_token"] == 1024 and data["measured"]
    labels = [c["label"] for c in data["candidates"]]
    assert labels == ["onnxruntime@cpu:0/fp32", "onnxruntime@cpu:0/fp32[threads=1]"]
    for c in data["candidates"]:  # each candidate's prefill and decode step costs
        assert c["prefill_ms"] > 0 and len(c["decode_ms"]) == 3 and c["batched"]["batch"] == 16
    assert data["chosen"]["label"] in labels and data["reasons"][0].startswith("backend pinned to onnxruntime")
    assert any(r.startswith("lowest cost of a 32-token prompt") for r in data["reasons"])
    assert any(n.startswith("fixed-shape decode sessions") for n in data["notes"])
    split = data["split"]  # whether decode steps split across cores, with what was measured
    assert (
        split["cores"] >= 1
        and split["reason"] in data["reasons"]
        and split["reason"].startswith(("decode steps", "decode rows"))
    )
    assert main(["plan", str(tiny_gpt2_dir / "model.onnx"), "--no-measure"]) == 0
    out = capsys.readouterr().out
    assert "decoder LLM, kv cache optimum-with-past: 2 layers, 4 kv heads x 16" in out
    assert "(not measured)" in out and "generation on onnxruntime@cpu:0/fp32" in out
