"""LLM generation on the CPU: aivmm against a raw ONNX Runtime IOBinding loop and onnxruntime-genai.

All three run the same Optimum ``text-generation-with-past`` export (the tiny random Llama with GQA
and GPT-2 of ``tests/_llm_models.py``) in one process, in interleaved rounds so machine noise hits
them alike. Time per output token is the decode part of a greedy generation (prefill excluded) of
``--tokens`` tokens after a ``--prompt``-token prompt; the report gives medians over the rounds and
the ratios of the per-round figures. The raw loop is written here by hand: IOBinding on
preallocated ping-pong KV buffers, argmax in numpy, nothing else. onnxruntime-genai loads the same
ONNX file through a genai_config.json written for it. Then 1, 4 and 16 concurrent streams of
``generate`` (threads) give aggregate tokens/s through aivmm's continuous batching.

aivmm runs decode shapes that recur on fixed-shape sessions (built in the background, see
``aivmm.llm._runners.FixedShapes``): the measured rounds follow a warm-up round (and each stream
count a warm-up load) after which those are built, as in a server that has been running;
``aivmm_symbolic`` is the same model and scheduler with every step on the symbolic session.
The stream loads run as planned (``streams``) and with the other way of using the cores
(``streams_one_scheduler``: the same model deployed with one scheduler, when the plan spreads the
rows over one scheduler per core; ``streams_whole`` when it splits each step into row groups;
``streams_split`` when it runs steps whole; ``--no-split-compare`` skips that).

    python benchmarks/llm_cpu.py [--rounds 7] [--tokens 128] [--streams 1,4,16] [--duration 4]
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

import numpy as np

import aivmm

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
import _llm_models


def raw_iobinding_loop(
    session: Any, layout: Any, prompt: list[int], tokens: int, *, pybind: bool = False
) -> tuple[float, list[int]]:
    """Greedy generation with ONNX Runtime IOBinding on preallocated buffers; seconds of the decode steps.

    ``pybind``: call the pybind IOBinding/session objects the public wrappers hold (what aivmm does),
    skipping the wrappers' per-call device object and capture checks.
    """
    lay = layout
    ctx = len(prompt) + tokens + 1
    n = lay.kv_heads * ctx * lay.head_dim
    bufs = [[np.zeros(n, np.float32) for _ in range(2 * lay.layers)] for _ in range(2)]
    past = [x for pair in zip(lay.past_key_names, lay.past_value_names, strict=True) for x in pair]
    present = [x for pair in zip(lay.present_key_names, lay.present_value_names, strict=True) for x in pair]
    logits = np.empty(ctx * lay.vocab_size, np.float32)
    ones = np.ones(ctx, np.int64)
    io = session.io_binding()
    if pybind:
        from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

        dev = OrtDevice.make("cpu", 0)._get_c_device()
        cio, csess = io._iobinding, session._sess

        class _Fast:
            def bind_input(self, n: str, _t: str, _i: int, dt: Any, shape: Any, ptr: int) -> None:
                cio.bind_input(n, dev, dt, shape, ptr)

            def bind_output(self, n: str, _t: str, _i: int, dt: Any, shape: Any, ptr: int) -> None:
                cio.bind_output(n, dev, dt, shape, ptr)

        io = _Fast()

    def step(ids: np.ndarray, pos: np.ndarray, past_len: int, cur: int) -> None:
        s = ids.shape[1]
        io.bind_input("input_ids", "cpu", 0, np.int64, ids.shape, ids.ctypes.data)
        io.bind_input("position_ids", "cpu", 0, np.int64, pos.shape, pos.ctypes.data)
        io.bind_input("attention_mask", "cpu", 0, np.int64, (1, past_len + s), ones.ctypes.data)
        ps, qs = (1, lay.kv_heads, past_len, lay.head_dim), (1, lay.kv_heads, past_len + s, lay.head_dim)
        for name, b in zip(past, bufs[cur], strict=True):
            io.bind_input(name, "cpu", 0, np.float32, ps, b.ctypes.data)
        for name, b in zip(present, bufs[cur ^ 1], strict=True):
            io.bind_output(name, "cpu", 0, np.float32, qs, b.ctypes.data)
        io.bind_output("logits", "cpu", 0, np.float32, (1, s, lay.vocab_size), logits.ctypes.data)
        if pybind:
            csess.run_with_iobinding(cio, None)
        else:
            session.run_with_iobinding(io)

    p = len(prompt)
    step(np.array([prompt], np.int64), np.arange(p, dtype=np.int64)[None], 0, 0)
    out = [int(logits[(p - 1) * lay.vocab_size : p * lay.vocab_size].argmax())]
    ids = np.empty((1, 1), np.int64)
    pos = np.empty((1, 1), np.int64)
    cur = 1
    t0 = time.perf_counter()
    for i in range(tokens - 1):
        ids[0, 0] = out[-1]
        pos[0, 0] = p + i
        step(ids, pos, p + i, cur)
        cur ^= 1
        out.append(int(logits[: lay.vocab_size].argmax()))
    return time.perf_counter() - t0, out


def raw_static_loop(session: Any, layout: Any, prompt: list[int], tokens: int) -> tuple[float, list[int]]:
    """The best raw loop found: a fixed-length past (mask hides unused slots), bound once; each step
    copies the token the graph appended at slot M into its slot. Seconds of the decode steps."""
    from onnxruntime.capi.onnxruntime_inference_collection import OrtDevice

    lay = layout
    dev = OrtDevice.make("cpu", 0)._get_c_device()
    cio, csess = session.io_binding()._iobinding, session._sess
    p = len(prompt)
    m = -(-(p + tokens + 1) // 32) * 32
    kv, hd = lay.kv_heads, lay.head_dim
    past_names = [x for pair in zip(lay.past_key_names, lay.past_value_names, strict=True) for x in pair]
    present_names = [x for pair in zip(lay.present_key_names, lay.present_value_names, strict=True) for x in pair]
    past = [np.zeros((1, kv, m, hd), np.float32) for _ in past_names]
    present = [np.zeros((1, kv, m + 1, hd), np.float32) for _ in past_names]
    feeds = {
        "input_ids": np.array([prompt], np.int64),
        "attention_mask": np.ones((1, p), np.int64),
        "position_ids": np.arange(p, dtype=np.int64)[None],
        **{n: np.zeros((1, kv, 0, hd), np.float32) for n in past_names},
    }
    out = session.run(None, feeds)
    for j in range(len(past)):
        past[j][:, :, :p] = out[1 + j]
    toks = [int(out[0][0, -1].argmax())]
    logits = np.empty((1, 1, lay.vocab_size), np.float32)
    mask = np.zeros((1, m + 1), np.int64)
    mask[0, :p] = 1
    mask[0, m] = 1
    ids = np.zeros((1, 1), np.int64)
    pos = np.zeros((1, 1), np.int64)
    cio.bind_input("input_ids", dev, np.int64, (1, 1), ids.ctypes.data)
    cio.bind_input("position_ids", dev, np.int64, (1, 1), pos.ctypes.data)
    cio.bind_input("attention_mask", dev, np.int64, (1, m + 1), mask.ctypes.data)
    for n, b in zip(past_names, past, strict=True):
        cio.bind_input(n, dev, np.float32, b.shape, b.ctypes.data)
    for n, b in zip(present_names, present, strict=True):
        cio.bind_output(n, dev, np.float32, b.shape, b.ctypes.data)
    cio.bind_output("logits", dev, np.float32, logits.shape, logits.ctypes.data)
    n = p
    t0 = time.perf_counter()
    for _ in range(tokens - 1):
        ids[0, 0] = toks[-1]
        pos[0, 0] = n
        csess.run_with_iobinding(cio, None)
        for dst, src in zip(past, present, strict=True):
            dst[0, :, n] = src[0, :, m]
        mask[0, n] = 1
        n += 1
        toks.append(int(logits[0, 0].argmax()))
    return time.perf_counter() - t0, toks


def genai_loop(model: Any, prompt: list[int], tokens: int) -> tuple[float, list[int]]:
    import onnxruntime_genai as og

    params = og.GeneratorParams(model)
    params.set_search_options(max_length=len(prompt) + tokens, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(prompt)  # runs the prefill
    gen.generate_next_token()
    t0 = time.perf_counter()
    for _ in range(tokens - 1):
        gen.generate_next_token()
    dt = time.perf_counter() - t0
    return dt, [int(t) for t in gen.get_sequence(0)[len(prompt) :]]


def one_model(kind: str, folder: pathlib.Path, args: argparse.Namespace, tmp: pathlib.Path) -> dict[str, Any]:
    import onnxruntime_genai as og

    prompt = [int(t) for t in np.random.default_rng(0).integers(3, 500, args.prompt)]
    n = args.tokens
    vmm = aivmm.VMM()
    llm = vmm.deploy(folder, batching={"max_batch_size": max(args.streams)})  # the planner picks the runner
    session = llm._runner.session  # the same ORT session (same options) the raw loop drives directly
    genai = og.Model(str(_llm_models.write_genai_config(folder, tmp / f"genai-{kind}")))
    rounds: dict[str, list[float]] = {
        "raw": [],
        "raw_pybind": [],
        "raw_static": [],
        "aivmm": [],
        "aivmm_symbolic": [],
        "genai": [],
    }
    same = True
    fixed = llm._runner.fixed  # fixed-shape decode sessions, built for shapes that recur
    for rnd in range(args.rounds + 1):  # the first round warms up and is dropped
        if rnd == 1 and fixed is not None:
            fixed.wait_idle(120)  # the shapes the warm-up round hit: what a server in use has
        dt, raw_ids = raw_iobinding_loop(session, llm.info.kv, prompt, n)
        rounds["raw"].append(dt / (n - 1))
        dt, _ = raw_iobinding_loop(session, llm.info.kv, prompt, n, pybind=True)
        rounds["raw_pybind"].append(dt / (n - 1))
        dt, static_ids = raw_static_loop(session, llm.info.kv, prompt, n)
        rounds["raw_static"].append(dt / (n - 1))
        g = llm.generate(prompt, max_new_tokens=n, ignore_eos=True)
        rounds["aivmm"].append((g.total_s - g.ttft_s) / (n - 1))
        llm._runner.fixed = None  # the same session and scheduler, every step on the symbolic session
        try:
            g0 = llm.generate(prompt, max_new_tokens=n, ignore_eos=True)
        finally:
            llm._runner.fixed = fixed
        rounds["aivmm_symbolic"].append((g0.total_s - g0.ttft_s) / (n - 1))
        same = same and g0.token_ids == g.token_ids
        dt, genai_ids = genai_loop(genai, prompt, n)
        rounds["genai"].append(dt / (n - 1))
        same = same and list(g.token_ids) == raw_ids == genai_ids == static_ids
    med = {k: statistics.median(v[1:]) * 1e3 for k, v in rounds.items()}
    ratio_raw = statistics.median(a / r for a, r in zip(rounds["aivmm"][1:], rounds["raw"][1:], strict=True))
    ratio_pybind = statistics.median(a / r for a, r in zip(rounds["aivmm"][1:], rounds["raw_pybind"][1:], strict=True))
    ratio_static = statistics.median(a / r for a, r in zip(rounds["aivmm"][1:], rounds["raw_static"][1:], strict=True))
    ratio_genai = statistics.median(a / r for a, r in zip(rounds["aivmm"][1:], rounds["genai"][1:], strict=True))
    ratio_sym_genai = statistics.median(
        a / r for a, r in zip(rounds["aivmm_symbolic"][1:], rounds["genai"][1:], strict=True)
    )
    from aivmm.llm._bench import closed_loop

    split = llm.generation_plan.split
    runner = llm._runner
    # the other choice for comparison, in the same run: when the plan spreads rows over schedulers,
    # the same model deployed with one scheduler and whole steps; when it splits steps into row
    # groups, steps whole; when it runs them whole, row groups from 2 rows (if there are cores)
    other: tuple[str, Any] | None = None
    if args.split_compare and split is not None and split.groups > 1:
        if split.schedulers > 1:
            one = vmm.deploy(
                folder,
                name="one-scheduler",
                batching={"max_batch_size": max(args.streams), "decode_schedulers": 1, "split_decode_rows": 0},
            )
            other = ("one_scheduler", one)
        else:
            other = ("whole", None) if split.min_rows is not None else ("split", 2)
    loads: dict[str, dict[str, Any]] = {"streams": {}}
    if other is not None:
        loads[f"streams_{other[0]}"] = {}
    for c in args.streams:
        for key in loads:
            model = llm
            if key != "streams" and other is not None:
                if other[0] == "one_scheduler":
                    model = other[1]
                else:
                    runner.split_rows(split.groups, other[1])
            try:
                # a warm-up load first: the shapes of c rows recur, and their sessions are built meanwhile
                closed_loop(model, c, min(2.0, args.duration), prompt_tokens=args.prompt, new_tokens=n)
                for r_ in getattr(model, "_runners", [model._runner]):
                    if getattr(r_, "fixed", None) is not None:
                        r_.fixed.wait_idle(120)
                r = closed_loop(model, c, args.duration, prompt_tokens=args.prompt, new_tokens=n)
            finally:
                if split is not None and split.groups > 1 and split.schedulers == 1:
                    runner.split_rows(split.groups, split.min_rows)
            loads[key][str(c)] = {
                "tokens_per_s": round(r.tokens_per_s, 1),
                "requests": r.requests,
                "errors": r.errors,
                "tpot_p50_ms": round(r.pct(r.tpot_s, 50), 4),
                "ttft_p50_ms": round(r.pct(r.ttft_s, 50), 3),
            }
    for streams in loads.values():
        base = streams[str(args.streams[0])]["tokens_per_s"]
        for v in streams.values():
            v["x_of_first"] = round(v["tokens_per_s"] / base, 2) if base else None
    shapes = sorted(f"{b}x{m}" for b, m in fixed.ready) if fixed is not None else []
    vmm.close()
    return {
        "runner": llm.generation_plan.chosen.label,
        "ms_per_token_median": {k: round(v, 4) for k, v in med.items()},
        "aivmm_over_raw_iobinding": round(ratio_raw, 3),
        "aivmm_over_raw_pybind_iobinding": round(ratio_pybind, 3),
        "aivmm_over_raw_static_iobinding": round(ratio_static, 3),
        "aivmm_over_genai": round(ratio_genai, 3),
        "aivmm_symbolic_only_over_genai": round(ratio_sym_genai, 3),
        "fixed_shape_sessions": shapes,
        "same_tokens_all_three": same,
        "split": None if split is None else split.to_json(),
        **loads,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--duration", type=float, default=4.0)
    ap.add_argument("--models", default="llama,gpt2")
    ap.add_argument("--out", type=pathlib.Path, default=None, help="write the JSON here too")
    ap.add_argument(
        "--no-split-compare",
        dest="split_compare",
        action="store_false",
        help="do not also load the model with the other split-decode choice (whole steps if the plan splits)",
    )
    args = ap.parse_args()
    args.streams = [int(s) for s in args.streams.split(",")]
    builders = {"llama": _llm_models.build_tiny_llama, "gpt2": _llm_models.build_tiny_gpt2}
    import onnxruntime

    report: dict[str, Any] = {
        "command": "python benchmarks/llm_cpu.py " + " ".join(sys.argv[1:]),
        "machine": {
            "cpu": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "models": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.models.split(","):
            report["models"][kind] = one_model(kind, builders[kind](), args, pathlib.Path(tmp))
            print(kind, json.dumps(report["models"][kind]), flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
