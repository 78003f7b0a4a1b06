"""The PyTorch runner: an HF transformers model (a directory, or a module in memory) generating
with its KV cache resident on the model's device.

The decode batch's KV lives in preallocated device tensors in the model's dtype (``_torch_kv``),
written in place by each step; the next ids are chosen on the device and only they cross to the
host (the logits stay there until a sampled row asks for its row). Prefill runs the model on a
transformers ``DynamicCache`` (seeded with reused prefix blocks) and hands its present KV, a set
of device tensors, to the batch and the prefix cache. On CUDA a decode step is captured as a CUDA
graph per (rows bucket, window) on first use and replayed afterwards. The scheduler drives it
through ``DeviceScheduler``: the same admission, batching, ledger accounting and prefix reuse as
the ONNX runners, without a host copy of the cache.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import pathlib
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm.errors import BackendUnavailableError, ExecutionError, UnsupportedModelError, missing_extra
from aivmm.llm._layout import context_length
from aivmm.llm._types import KVLayout, KVStyle

if TYPE_CHECKING:
    from aivmm.llm._torch_kv import DeviceBatchKV

WEIGHT_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)


def is_hf_dir(path: pathlib.Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file() and any((path / w).is_file() for w in WEIGHT_FILES)


def weights_bytes(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))


def hf_layout(folder: pathlib.Path) -> KVLayout:
    """The KV layout an HF causal LM config describes (the cache aivmm allocates for it)."""
    return config_layout(json.loads((folder / "config.json").read_text()), folder)


def config_layout(cfg: Mapping[str, Any], folder: pathlib.Path) -> KVLayout:
    """The KV layout of a config.json mapping (``folder`` holds it, for the context length)."""
    layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head"))
    hidden = cfg.get("hidden_size", cfg.get("n_embd"))
    if not (isinstance(layers, int) and isinstance(heads, int) and isinstance(hidden, int)):
        raise UnsupportedModelError(f"{folder}/config.json names no layers/heads/hidden size of a decoder")
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    names = tuple(f"layer.{i}" for i in range(layers))
    return KVLayout(
        style=KVStyle.TRANSFORMERS,
        layers=layers,
        kv_heads=kv_heads,
        head_dim=head_dim,
        dtype="float32",
        context_length=context_length(folder),
        past_key_names=names,
        past_value_names=names,
        present_key_names=names,
        present_value_names=names,
        position_ids="position_ids",
        vocab_size=int(cfg.get("vocab_size", 0)),
        source=str(folder / "config.json"),
    )


class TorchRunner:
    """transformers ``AutoModelForCausalLM`` under ``torch.inference_mode`` on its placement's device
    and dtype (fp32 on a CPU, half precision on a GPU), KV resident there."""

    backend = "torch"
    device_resident = True  # the scheduler drives it through DeviceScheduler

    def __init__(
        self,
        folder: pathlib.Path,
        layout: KVLayout,
        *,
        threads: int | None = None,
        device: Any = None,
        cuda_graphs: bool | None = None,
        model: Any = None,
    ) -> None:
        try:
            import torch
            import transformers

            from aivmm.backends.torch import placement
        except ImportError as exc:
            raise missing_extra("torch/transformers", "torch") from exc
        cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
        self.placement = place = placement(device, cfg.get("torch_dtype") or cfg.get("dtype"))
        self.precision = place.precision
        self.device = place.device_id
        try:
            if model is None:
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    str(folder), dtype=place.dtype, attn_implementation="sdpa"
                )
            self.model = model.to(device=place.torch_device, dtype=place.dtype).eval()
        except Exception as exc:
            raise BackendUnavailableError(f"transformers could not load {folder} on {place.device_id}: {exc}") from exc
        self._torch = torch
        self._dynamic_cache = transformers.DynamicCache
        self.layout = dataclasses.replace(layout, dtype=place.dtype_name)
        self.logits_dtype = np.dtype(np.float32)
        # CUDA graphs: on by default where the step runs on CUDA; nowhere else
        self.graphs = bool(place.cuda if cuda_graphs is None else (cuda_graphs and place.cuda))
        self.graphs_note = _graphs_note(place.cuda, cuda_graphs, self.graphs)
        # eager steps over the rows bucket a graph would be captured for (padding rows included):
        # what a graph replays, checkable where there is no CUDA
        self.pad_rows = False
        self._pool: Any = None
        self.captures = 0  # graphs captured (a figure for tests and the plan)
        params = inspect.signature(self.model.forward).parameters
        self._keep: dict[str, Any] = {"logits_to_keep": 1} if "logits_to_keep" in params else {}

    # -- the scheduler's calls -------------------------------------------------------------------
    def new_batch(self, max_batch: int, row_tokens: int) -> DeviceBatchKV:
        from aivmm.llm._torch_kv import DeviceBatchKV

        p = self.placement
        return DeviceBatchKV(self.layout, max_batch, row_tokens, p.torch_device, p.dtype)

    def prefill(
        self, rows: Sequence[Sequence[int]], past: Sequence[Any] | None, past_len: int
    ) -> tuple[list[Any], Any]:
        """Run ``rows`` of prompt tokens (left-padded to the longest) after ``past`` (a reused
        prefix or earlier chunk, [1, kv_heads, past_len, head_dim] per layer/kv; one row only);
        returns the present KV ([rows, kv_heads, past_len + longest, head_dim] per layer/kv, device
        tensors) and the last position's logits [rows, vocab] on the device."""
        torch, dev = self._torch, self.placement.torch_device
        k, p = len(rows), max(len(r) for r in rows)
        ids = torch.zeros((k, p), dtype=torch.long)
        pos = torch.zeros((k, p), dtype=torch.long)
        mask = torch.zeros((k, past_len + p), dtype=torch.long)
        mask[:, :past_len] = 1
        for i, r in enumerate(rows):
            n = len(r)
            ids[i, p - n :] = torch.tensor(list(r), dtype=torch.long)  # left padding, masked out
            pos[i, p - n :] = torch.arange(past_len, past_len + n)
            mask[i, past_len + p - n :] = 1
        cache = self._dynamic_cache()
        for i in range(self.layout.layers if past else 0):
            assert past is not None
            cache.update(past[2 * i], past[2 * i + 1], i)
        try:
            with torch.inference_mode():
                out = self.model(
                    input_ids=ids.to(dev),
                    attention_mask=mask.to(dev),
                    position_ids=pos.to(dev),
                    past_key_values=cache,
                    use_cache=True,
                    **self._keep,
                )
        except Exception as exc:
            raise ExecutionError(
                f"transformers failed in a prefill (rows {k}, past {past_len}, tokens {p}): {exc}"
            ) from exc
        present = []
        for layer in out.past_key_values.layers:
            present += [layer.keys, layer.values]
        return present, out.logits[:, -1].float()

    def decode(self, store: DeviceBatchKV) -> None:
        """One decode step of the batch: each row's KV written at its slot, logits and the greedy
        next ids written on the device, positions and masks moved on (no host synchronisation)."""
        b, m = store.rows, store.length
        if not self.graphs:
            self._step(store, min(store.max_batch, 1 << (b - 1).bit_length()) if self.pad_rows else b, m)
            return
        bb = min(store.max_batch, 1 << (b - 1).bit_length())
        graph = store.graphs.get((bb, m))
        if graph is None:
            graph = store.graphs[(bb, m)] = self._capture(store, bb, m)
        graph.replay()

    def host_ids(self, store: DeviceBatchKV) -> list[int]:
        """The ids the last step chose (the one copy to the host per step)."""
        return store.ids[: store.rows].tolist()

    def row_logits(self, store: DeviceBatchKV, row: int) -> np.ndarray:
        return store.logits[row].cpu().numpy()

    def host_row(self, logits: Any) -> np.ndarray:
        return logits.float().cpu().numpy()

    def greedy(self, logits: Any) -> int:
        return int(logits.argmax())

    def join_blocks(self, blocks: Sequence[Any]) -> list[Any]:
        """Prefix blocks ([2*layers, kv_heads, block, head_dim] each) as a past per layer/kv."""
        whole = self._torch.cat(list(blocks), dim=2)
        return [whole[j : j + 1] for j in range(whole.shape[0])]

    def stack_blocks(self, parts: Sequence[Any]) -> Any:
        return self._torch.stack(list(parts))

    # -- the step and its graphs -------------------------------------------------------------------
    def _step(self, store: DeviceBatchKV, rows: int, m: int) -> None:
        from aivmm.llm._torch_kv import SlotCache

        torch = self._torch
        with torch.inference_mode():
            out = self.model(
                input_ids=store.ids[:rows].view(rows, 1),
                position_ids=store.pos[:rows].view(rows, 1),
                attention_mask=store.mask[:rows, :, :, :m],
                past_key_values=SlotCache(store, rows, m),
                cache_position=store.cache_position,
                use_cache=True,
                **self._keep,
            )
            logits = out.logits[:, -1]
            store.logits[:rows].copy_(logits)
            store.ids[:rows].copy_(logits.argmax(-1))
            pos = store.pos[:rows]
            pos.add_(1).clamp_(max=store.row_tokens - 1)  # a graph's padding rows stay in their row
            store.mask[:rows, 0, 0].scatter_(1, pos.view(rows, 1), 0.0)

    def _capture(self, store: DeviceBatchKV, rows: int, m: int) -> Any:
        """A CUDA graph of one decode step of ``rows`` rows over window ``m`` (a step warms up on a
        side stream first; the state it moves is put back, so capturing changes nothing)."""
        torch = self._torch
        state = (store.ids, store.pos, store.mask, store.logits)
        saved = [t.clone() for t in state]
        side = torch.cuda.Stream(device=self.placement.torch_device)
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(store, rows, m)
                for t, s in zip(state, saved, strict=True):
                    t.copy_(s)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()  # one pool: graphs replay one at a time
        graph = torch.cuda.CUDAGraph()
        # thread_local: other models' scheduler threads may allocate or launch on this GPU meanwhile
        with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
            self._step(store, rows, m)
        for t, s in zip(state, saved, strict=True):
            t.copy_(s)
        self.captures += 1
        return graph

    def _sync(self) -> None:
        if self.placement.cuda:
            self._torch.cuda.synchronize(self.placement.torch_device)

    # -- the generation planner's figures ---------------------------------------------------------
    def measure_steps(
        self, *, prompt_tokens: int, past_lengths: Sequence[int], repeats: int = 7, batch: int = 1
    ) -> tuple[float, tuple[tuple[int, float], ...], float | None]:
        """Median prefill ms at ``prompt_tokens``; median decode ms per step at each past length
        (as the scheduler runs it: this runner's device store, graphs when on); with ``batch`` > 1
        the step of ``batch`` rows at the middle past length. Each timing waits for the device."""
        ctx = max(prompt_tokens, *past_lengths) + repeats + 2
        store = self.new_batch(max(1, batch), ctx)
        prompt = [1] * prompt_tokens

        def prefill_ms() -> float:
            t = time.perf_counter()
            self.prefill([prompt], None, 0)
            self._sync()
            return (time.perf_counter() - t) * 1e3

        def steps_ms(past: int, rows: int, n: int) -> float:
            store.keep([])
            one = [self._torch.zeros((1, self.layout.kv_heads, past, self.layout.head_dim),
                                     dtype=self.placement.dtype, device=self.placement.torch_device)]  # fmt: skip
            for _ in range(rows):
                store.add(one * (2 * self.layout.layers), past, 1)
            times = []
            for _ in range(n + 1):
                t = time.perf_counter()
                self.decode(store)
                self.host_ids(store)  # the step's one synchronisation, as in the scheduler
                store.advanced()
                times.append((time.perf_counter() - t) * 1e3)
            return statistics.median(times[1:])

        prefill_ms()
        prefill = statistics.median(prefill_ms() for _ in range(3))
        decode = tuple((past, steps_ms(past, 1, repeats)) for past in past_lengths)
        batched = steps_ms(past_lengths[len(past_lengths) // 2], batch, max(5, repeats // 2)) if batch > 1 else None
        store.graphs.clear()
        return prefill, decode, batched

    def execute(self, feeds: dict[str, Any]) -> dict[str, Any]:
        raise UnsupportedModelError("execute() runs ONNX decoders; an HF directory generates only (generate/stream)")

    def close(self) -> None:
        self._pool = None
        if self.placement.cuda:
            self._torch.cuda.empty_cache()


def _graphs_note(cuda: bool, asked: bool | None, on: bool) -> str:
    if on:
        return "CUDA graphs on: one decode-step graph per (rows bucket, past window), captured on first use"
    if not cuda:
        return "CUDA graphs off: the model does not run on CUDA" + (" (asked for)" if asked else "")
    return "CUDA graphs off (cuda_graphs=False): every decode step launches its kernels"
