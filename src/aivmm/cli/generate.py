"""``aivmm generate MODEL "prompt"``: deploy a decoder and stream the generated text."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a decoder ONNX file or model directory (model.onnx + tokenizer.json)")
    parser.add_argument("prompt", help="the prompt text")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: generation_config.json")
    parser.add_argument("--temperature", type=float, default=None, help="0 = greedy (default: generation_config)")
    parser.add_argument("--top-p", type=float, default=None)
    parser.add_argument("--top-k", type=int, default=None)
    parser.add_argument("--repetition-penalty", type=float, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep generating past EOS")
    parser.add_argument("--chat", action="store_true", help="send the prompt as a user message (chat template)")
    parser.add_argument("--backend", default=None, help="pin the runner (onnxruntime, openvino)")
    parser.add_argument("--no-measure", action="store_true", help="do not measure candidate runners")
    parser.add_argument("--explain", action="store_true", help="print the generation plan to stderr first")
    parser.add_argument("--json", action="store_true", help="print the finished generation as JSON (no streaming)")


def run(args: argparse.Namespace) -> int:
    import aivmm

    params = aivmm.SamplingParams(
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        top_k=args.top_k,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        stop=tuple(args.stop),
        ignore_eos=args.ignore_eos,
    )
    with aivmm.VMM() as vmm:
        llm = vmm.deploy(args.model, backend=args.backend, measure=not args.no_measure)
        if not isinstance(llm, aivmm.DeployedLLM):
            raise aivmm.errors.UnsupportedModelError(f"{args.model} is not a decoder with a KV cache")
        if args.explain:
            print(llm.generation_plan.explain(), file=sys.stderr)
        prompt = llm.chat_prompt([{"role": "user", "content": args.prompt}]) if args.chat else args.prompt
        if args.json:
            gen = llm.generate(prompt, params)
            data = dataclasses.asdict(gen)
            data["finish_reason"] = gen.finish_reason.value
            print(json.dumps(data, indent=2))
            return 0
        t0 = time.perf_counter()
        first = None
        n = 0
        reason = None
        for ev in llm.stream(prompt, params):
            if first is None:
                first = time.perf_counter() - t0
            n += 1
            sys.stdout.write(ev.text)
            sys.stdout.flush()
            reason = ev.finish_reason
        total = time.perf_counter() - t0
        sys.stdout.write("\n")
        rate = (n - 1) / (total - first) if first is not None and n > 1 and total > first else 0.0
        print(
            f"[{n} tokens, finish {reason.value if reason else '?'}, TTFT {1e3 * (first or 0):.1f} ms, "
            f"{rate:.1f} tokens/s after the first]",
            file=sys.stderr,
        )
    return 0
