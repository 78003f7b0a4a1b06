"""LLM generation on torch (issue 18, GPU targets): aivmm's device-resident path against HF ``generate``.

In one process, interleaved rounds, medians over rounds:

* tiny Llama (GQA) and GPT-2 (``tests/_llm_models.py``, HF directories built here: no Optimum needed):
  time per output token of HF ``generate`` (eager, greedy, the same prompt and number of tokens, EOS
  off so both produce every token), aivmm with eager decode steps and aivmm with CUDA graphs; whether
  the greedy tokens are the same;
* a Llama-2-7B-shaped model (``LlamaConfig`` hidden 4096, 32 layers, 32 heads, intermediate 11008,
  vocab 32000; random fp16 weights made on the GPU, deployed from memory: ``vmm.deploy(model)``):
  batch-1 ms per token (HF eager and aivmm with graphs), 1 and ``--streams`` concurrent closed-loop
  streams' tokens/s and their ratio, and the HBM floor (weight bytes / measured device copy bandwidth,
  read + write counted).

Time per token is the decode part of a generation: (total - time to first token) / (tokens - 1) for
aivmm; for HF, (generate(N) - generate(1)) / (N - 1) in the same round. Every timing on CUDA ends with
the device synchronised (aivmm: its per-step host copy of the chosen ids).

    python benchmarks/llm_gpu.py --out benchmarks/results/llm_gpu.json          # on the GPU machine
    python benchmarks/llm_gpu.py --device cpu --big-layers 2 --big-hidden 256   # a CPU smoke run

``benchmarks/gpu/run_issue18.sh`` runs it on the device machine (with the carried wheels).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import statistics
import sys
import tempfile
import time
from typing import Any

import aivmm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import _llm_models


def _sync(torch: Any, cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def hf_per_token(torch: Any, model: Any, ids: list[int], n: int, cuda: bool) -> tuple[float, list[int]]:
    """ms per decode token of HF generate (greedy, eager) and its tokens."""
    dev = next(model.parameters()).device
    x = torch.tensor([ids], device=dev)
    mask = torch.ones_like(x)

    def run(k: int) -> tuple[float, Any]:
        _sync(torch, cuda)
        t = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=mask, max_new_tokens=k, do_sample=False)
        _sync(torch, cuda)
        return time.perf_counter() - t, out

    t1, _ = run(1)
    tn, out = run(n)
    return (tn - t1) / (n - 1) * 1e3, [int(t) for t in out[0, len(ids) :]]


def aivmm_per_token(llm: Any, ids: list[int], n: int) -> tuple[float, list[int]]:
    g = llm.generate(ids, max_new_tokens=n, ignore_eos=True)
    return (g.total_s - g.ttft_s) / (g.completion_tokens - 1) * 1e3, list(g.token_ids)


def _no_eos(model: Any) -> None:
    """HF stops at EOS; aivmm is told ignore_eos: take EOS away from HF so both make every token."""
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0


def tiny(args: argparse.Namespace, torch: Any, vmm: aivmm.VMM, dev: str, cuda: bool) -> dict[str, Any]:
    import transformers

    out: dict[str, Any] = {}
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="llm-gpu-"))
    for kind in ("llama", "gpt2"):
        folder = _llm_models.build_tiny_hf(kind, tmp / kind)
        dtype = torch.float16 if cuda else torch.float32
        hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(_torch_dev(torch, cuda)).eval()
        _no_eos(hf)
        variants: dict[str, Any] = {}
        for graphs in (False, True) if cuda else (False,):
            opts: dict[str, Any] = {"cuda_graphs": graphs} if cuda else {}
            variants["aivmm_graphs" if graphs else "aivmm_eager"] = vmm.deploy(
                folder, name=f"{kind}-{graphs}", device=dev, batching=opts or None
            )
        ids = [(7 * j) % 400 + 5 for j in range(args.prompt)]
        times: dict[str, list[float]] = {"hf_eager": []} | {k: [] for k in variants}
        tokens: dict[str, list[int]] = {}
        for rnd in range(args.rounds + 1):  # round 0 warms up (graph captures, allocator, kernels)
            ms, toks = hf_per_token(torch, hf, ids, args.tokens, cuda)
            if rnd:
                times["hf_eager"].append(ms)
            tokens["hf_eager"] = toks
            for name, llm in variants.items():
                ms, toks = aivmm_per_token(llm, ids, args.tokens)
                if rnd:
                    times[name].append(ms)
                tokens[name] = toks
        med = {k: statistics.median(v) for k, v in times.items()}
        out[kind] = {
            "ms_per_token": {k: round(v, 4) for k, v in med.items()},
            "ms_per_token_rounds": {k: [round(x, 4) for x in v] for k, v in times.items()},
            "ratio_vs_hf": {k: round(v / med["hf_eager"], 3) for k, v in med.items() if k != "hf_eager"},
            "tokens_equal_hf": {k: tokens[k] == tokens["hf_eager"] for k in variants},
            "first_divergence": {k: _diverge(tokens[k], tokens["hf_eager"]) for k in variants},
            "plan": next(iter(variants.values())).generation_plan.explain(),
        }
        for llm in variants.values():
            llm.close()
        del hf
    return out


def _diverge(a: list[int], b: list[int]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


def _torch_dev(torch: Any, cuda: bool) -> Any:
    return torch.device("cuda", 0) if cuda else torch.device("cpu")


def copy_bandwidth(torch: Any, cuda: bool) -> float:
    """Bytes per second a device-to-device copy moves (read + write), median of 10."""
    n = (1 << 30) if cuda else (1 << 26)
    a = torch.empty(n, dtype=torch.uint8, device=_torch_dev(torch, cuda))
    b = torch.empty_like(a)
    b.copy_(a)
    times = []
    for _ in range(10):
        _sync(torch, cuda)
        t = time.perf_counter()
        b.copy_(a)
        _sync(torch, cuda)
        times.append(time.perf_counter() - t)
    return 2 * n / statistics.median(times)


def big(args: argparse.Namespace, torch: Any, vmm: aivmm.VMM, dev: str, cuda: bool) -> dict[str, Any]:
    import transformers

    hidden = args.big_hidden
    cfg = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=hidden,
        intermediate_size=hidden * 11008 // 4096,
        num_hidden_layers=args.big_layers,
        num_attention_heads=max(1, hidden // 128),
        num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    dtype = torch.float16 if cuda else torch.float32
    t0 = time.perf_counter()
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(_torch_dev(torch, cuda)), torch.no_grad():  # random weights made where they run
            model = transformers.LlamaForCausalLM(cfg).eval()
    finally:
        torch.set_default_dtype(old)
    _no_eos(model)
    made_s = time.perf_counter() - t0
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    bw = copy_bandwidth(torch, cuda)
    rows = args.streams
    per_row = args.prompt + args.tokens + 32
    t0 = time.perf_counter()
    llm = vmm.deploy(
        model,
        name="llama2-7b-shape",
        device=dev,
        batching={"max_batch_size": rows, "kv_cache_tokens": rows * per_row, "prefix_cache_blocks": 0},
    )
    deploy_s = time.perf_counter() - t0
    label = "aivmm_graphs" if llm._runner.graphs else "aivmm_eager"
    ids = [(11 * j) % 31000 + 3 for j in range(args.prompt)]
    hf_ms, aivmm_ms = [], []
    same = None
    for rnd in range(args.rounds + 1):
        ms, toks = aivmm_per_token(llm, ids, args.tokens)
        if rnd:
            aivmm_ms.append(ms)
        if rnd < args.hf_rounds + 1:
            hms, htoks = hf_per_token(torch, model, ids, args.tokens, cuda)
            if rnd:
                hf_ms.append(hms)
            same = htoks == toks
    from aivmm.llm import closed_loop

    closed_loop(llm, rows, args.duration / 2, prompt_tokens=args.prompt, new_tokens=args.tokens)  # warm-up
    loads = {}
    for c in (1, rows):
        r = closed_loop(llm, c, args.duration, prompt_tokens=args.prompt, new_tokens=args.tokens)
        loads[c] = r.to_json()
    one = loads[1]["tokens_per_s"]
    out = {
        "config": {"hidden": hidden, "layers": args.big_layers, "vocab": 32000, "dtype": str(dtype)},
        "weights_bytes": weights,
        "made_s": round(made_s, 2),
        "deploy_s": round(deploy_s, 2),
        "copy_bandwidth_gbps": round(bw / 1e9, 1),
        "hbm_floor_ms": round(weights / bw * 1e3, 3),
        "batch1_ms_per_token": {label: round(statistics.median(aivmm_ms), 4)},
        "batch1_rounds": [round(x, 4) for x in aivmm_ms],
        "tokens_equal_hf": same,
        "streams": loads,
        "streams_ratio": round(loads[rows]["tokens_per_s"] / one, 2) if one else None,
        "plan": llm.generation_plan.explain(),
        "captures": getattr(llm._runner, "captures", None),
    }
    if hf_ms:
        out["batch1_ms_per_token"]["hf_eager"] = round(statistics.median(hf_ms), 4)
    llm.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--hf-rounds", type=int, default=2, help="rounds of HF generate on the big model")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of each closed-loop stream load")
    ap.add_argument("--big-layers", type=int, default=32)
    ap.add_argument("--big-hidden", type=int, default=4096)
    ap.add_argument("--skip-big", action="store_true")
    ap.add_argument("--skip-tiny", action="store_true")
    ap.add_argument("--device", default=None, help="aivmm device id (default: the first GPU, else the CPU)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch
    import transformers

    vmm = aivmm.VMM()
    devs = {d.id: d for d in vmm.devices}
    gpu = next((d.id for d in vmm.devices if d.kind.value == "gpu" and not d.simulated), None)
    dev = args.device or gpu or next(d.id for d in vmm.devices if d.kind.value == "cpu")
    if dev == "cpu":
        dev = next(d.id for d in vmm.devices if d.kind.value == "cpu")
    cuda = devs[dev].kind.value == "gpu"
    report: dict[str, Any] = {
        "machine": platform.node(),
        "device": devs[dev].name,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "args": vars(args),
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    sections = [("tiny", tiny)] * (not args.skip_tiny) + [("big", big)] * (not args.skip_big)
    try:
        for name, run in sections:
            try:
                report[name] = run(args, torch, vmm, dev, cuda)
            except Exception as exc:  # one section's failure still leaves the other's figures
                import traceback

                report[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            print(json.dumps({name: report[name]}, indent=1), flush=True)
    finally:
        vmm.close()
    text = json.dumps(report, indent=1)
    if args.out:
        pathlib.Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
