"""``plan()``: enumerate, predict, measure the promising few, check accuracy, apply constraints, choose.

Order of work (cheap first, so bad input fails before anything runs): validate arguments →
plan cache → enumerate candidates with rejection reasons → roofline prediction → measure the
top-k (diverse: the best of each backend/device/precision/pass group first) one at a time →
accuracy against the fp32 reference → constraints → rank by preference then objective.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import logging
import math
import pathlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from aivmm import optimize
from aivmm.backends import registry
from aivmm.devices import Device, DeviceKind
from aivmm.dtypes import Precision
from aivmm.errors import (
    AivmmError,
    ConfigError,
    DeviceNotFoundError,
    FallbackError,
    InfeasibleError,
)
from aivmm.models import ModelSpec
from aivmm.optimize import file_sha256
from aivmm.options import DeployOptions, coerce_options
from aivmm.planner import _cache, _calibration, _isolation, _quiet
from aivmm.planner._bench import Bench
from aivmm.planner._cost import backend_info, predict
from aivmm.planner._enumerate import analysed, enumerate_candidates, onnx_path, variant_key
from aivmm.planner._figures import Capability, capability
from aivmm.planner._plan import Plan
from aivmm.planner._values import Candidate, RejectReason
from aivmm.planner.constraints import Bound, Constraints, Objective, PrecisionPolicy
from aivmm.planner.profile import NOISE_MARGIN, Budget, profile, race_rounds

if TYPE_CHECKING:  # aivmm.memory imports the planner's constraints: imported when first used here
    from aivmm.memory import Ledger

log = logging.getLogger(__name__)

DEFAULT_TOP_K = 8
# After each candidate is measured alone, the best few are raced against each other, interleaved.
# Measured one after another, a candidate timed while another process was busy can look several
# times slower than it is (seen at 4x on a shared 2-core machine), so the race is not limited to
# near-equals: the FINALISTS best by screening are all re-timed side by side.
FINALISTS = DEFAULT_TOP_K  # every measured candidate not hopelessly slower: screening noise reached 5x
RACE_MIN_ROUNDS = 6
# When every measured candidate failed, this many more (best predicted first) are tried before the
# plan gives up: enough to reach a runtime the top-k missed, bounded because failures cost loads.
RETRY_AFTER_FAILURES = 3
# A candidate screened this many times slower than the best is not raced: a slow finalist takes
# most of the race's time. Screening noise on a busy 2-core machine reaches ~5x (seen: ORT 1.1 ms
# then 22 ms in one plan), so the best of each backend is raced up to a wider factor.
RACE_FACTOR = 5.0
RACE_FACTOR_BACKEND = 20.0
DEFAULT_SECONDS_PER_CANDIDATE = 0.5
# Candidates predicted to take longer than this to load (compilation) are not measured while
# planning unless budget_s is larger; they stay as predicted alternatives, ranked after measured ones.
MAX_LOAD_S = 10.0
# Devices whose first run of a model happens in a worker process (a failed GPU kernel assertion
# breaks the CUDA context of the process it runs in).
ISOLATED_KINDS = frozenset({DeviceKind.GPU})
# Compiled forms of the leading measured candidates are measured when predicted to load within this.
COMPILE_STAGE_LOAD_S = 120.0
# Min-max calibration clips whatever it did not see: 16 batches of 4 generated rows cover the
# generated distribution well enough for the accuracy check to judge the result fairly.
CALIBRATION_SAMPLES = 16
CALIBRATION_BATCH = 4

_upgrade_lock = threading.Lock()
_upgrade_pool: concurrent.futures.ThreadPoolExecutor | None = None


@dataclasses.dataclass
class _Request:
    """The validated arguments of one plan() call."""

    spec: ModelSpec
    devices: tuple[Device, ...]
    cons: Constraints
    device: str | None
    backend: str | None
    strict: bool
    measure: bool
    feeds: dict[str, np.ndarray] | None
    user_feeds: bool
    top_k: int
    seconds_per_candidate: float
    backends: tuple[str, ...] | None
    ready_only: bool = False  # fast start: only candidates that load without compiling
    generated: optimize.Generated | None = None  # how generated inputs were found (None for user inputs)
    max_load_s: float = MAX_LOAD_S
    ledger: Ledger | None = None  # what is free on each device now (the runtime's memory ledger)
    ledger_shaped: bool = False  # a device was left out, or kept by evicting, for what others hold now


def _validate(
    spec: ModelSpec,
    devices: Sequence[Device],
    opts: DeployOptions,
    *,
    budget_s: float | None,
    top_k: int | None,
    backends: Sequence[str] | None,
) -> _Request:
    if not isinstance(spec, ModelSpec):
        raise ConfigError(f"plan() needs a ModelSpec (aivmm.models.load(...)), got {type(spec).__name__}")
    cons, device, backend, measure = opts.constraints, opts.device, opts.backend, opts.measure
    devs = tuple(devices)
    if not devs:
        raise ConfigError("plan() got no devices: pass aivmm.devices.discover()")
    ids = [d.id for d in devs]
    if device is not None and device not in ids:
        raise DeviceNotFoundError(f"unknown device {device!r}; devices here: {', '.join(ids)}")
    known = registry.names()
    if backend is not None and backend not in known:
        raise ConfigError(f"unknown backend {backend!r}; known: {', '.join(known)}")
    for name in backends or ():
        if name not in known:
            raise ConfigError(f"unknown backend {name!r}; known: {', '.join(known)}")
    allowed = [d for d in devs if cons.allows_device(d)]
    if not allowed:
        raise ConfigError(
            f"the constraints exclude every device: exclude={[s.text for s in cons.exclude]} matches all of {ids}"
        )
    if device is not None and device not in {d.id for d in allowed}:
        raise ConfigError(f"device={device!r} is pinned but also excluded by the constraints")
    if budget_s is not None and not (isinstance(budget_s, int | float) and math.isfinite(budget_s) and budget_s > 0):
        raise ConfigError(f"budget_s must be a positive number of seconds, got {budget_s!r}")
    k = DEFAULT_TOP_K if top_k is None else top_k
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
    per = DEFAULT_SECONDS_PER_CANDIDATE if budget_s is None else max(0.02, float(budget_s) / k)
    max_load = MAX_LOAD_S if budget_s is None else max(MAX_LOAD_S, float(budget_s))
    feeds: dict[str, np.ndarray] | None = None
    user = opts.sample_inputs is not None
    if opts.sample_inputs is not None:
        feeds = optimize.check_feeds(spec, opts.sample_inputs)
    elif measure or cons.tolerance is not None:
        # Only the signature is checked here; the inputs themselves are generated after a cache miss
        # (finding Gather bounds reads the whole model, too slow for a cache hit).
        try:
            optimize.check_generatable(spec)
        except ConfigError as exc:
            what = f"tolerance={cons.tolerance}" if cons.tolerance is not None else "measuring"
            raise ConfigError(f"{what} needs reference inputs and none can be generated: {exc}") from exc
    return _Request(
        spec,
        devs,
        cons,
        device,
        backend,
        opts.strict,
        measure,
        feeds,
        user,
        k,
        per,
        tuple(backends) if backends is not None else None,
        max_load_s=max_load,
    )


def _model_hash(spec: ModelSpec) -> str:
    if spec.sha256:
        return spec.sha256
    path = onnx_path(spec)
    return file_sha256(path) if path is not None else ""


def _cache_parts(req: _Request, model_hash: str) -> dict[str, Any]:
    names = list(req.backends) if req.backends is not None else registry.names()
    return {
        "model": model_hash,
        "devices": _cache.device_fingerprint(req.devices),
        "runtimes": _cache.runtime_versions(names),
        "backends": names,
        "constraints": req.cons.key(),
        "pins": [req.device, req.backend, req.strict],
        "measure": req.measure,
        "inputs": _cache.feeds_digest(req.feeds) if req.user_feeds else "generated-v2",
        "top_k": req.top_k,
        "seconds_per_candidate": req.seconds_per_candidate,
    }


def plan(
    spec: ModelSpec,
    devices: Sequence[Device],
    constraints: Constraints | Mapping[str, Any] | None = None,
    *,
    options: DeployOptions | None = None,
    device: str | None = None,
    backend: str | None = None,
    strict: bool = False,
    measure: bool = True,
    sample_inputs: Any = None,
    cache: bool = True,
    budget_s: float | None = None,
    top_k: int | None = None,
    fast_start: bool = False,
    backends: Sequence[str] | None = None,
    ledger: Ledger | None = None,
    bench: Bench | None = None,
) -> Plan:
    """Choose where ``spec`` runs on ``devices`` under ``constraints``; see docs/planner.md.

    What to plan for is one :class:`~aivmm.options.DeployOptions` (``options=``, as ``VMM.deploy``
    passes it) or its planning keywords given separately (not both). ``device`` / ``backend`` pin
    the placement (FallbackError with ``strict`` when they cannot be honoured, a recorded fallback
    otherwise). ``measure=False`` plans from predictions only and keeps only fp32 candidates
    (lowered precisions cannot be verified without running them). ``budget_s`` bounds total
    profiling time; ``top_k`` how many candidates are measured. ``fast_start`` returns at once a
    ready fp32 candidate chosen from predictions, with ``Plan.upgrade`` a Future of the measured
    plan. ``backends`` restricts the registry's names.

    ``ledger``: the runtime's memory ledger; a device whose free bytes there cannot hold the model
    now is left out, with the reason in the plan (a fallback: ``strict`` refuses it), and sessions
    measured hold reservations in it. ``bench``: where the measured sessions live; after the plan
    it holds only the chosen candidate's session (``bench.take(identity(plan.chosen))``) for the
    runtime to adopt (with ``fast_start``: the upgrade's, once ``Plan.upgrade`` is done). Without
    one, every session is closed before plan() returns.
    """
    t0 = time.perf_counter()
    opts = coerce_options(
        options,
        constraints,
        device=device,
        backend=backend,
        strict=strict,
        measure=measure,
        sample_inputs=sample_inputs,
        fast_start=fast_start,
    )
    req = _validate(spec, devices, opts, budget_s=budget_s, top_k=top_k, backends=backends)
    req.ledger = ledger
    model_hash = _model_hash(spec)
    key = None
    if cache and model_hash:
        key = _cache.plan_key(_cache_parts(req, model_hash))
        hit = _cache.load(key)
        if hit is not None:
            try:
                cached = Plan.from_json(hit, spec)
                missing = [
                    str(c.model.source)
                    for c in cached.ranked()
                    if c.transform and not pathlib.Path(str(c.model.source)).is_file()
                ]
                if missing:
                    raise ValueError(f"transformed model(s) no longer on disk: {missing[:2]}")
                full = _ledger_shortfall(req, cached.chosen)
                if full:
                    raise ValueError(f"its choice {cached.chosen.label} does not fit now: {full}")
            except (KeyError, ValueError, TypeError, AivmmError) as exc:
                log.warning("plan cache entry unusable (%s); planning again", exc)
            else:
                # The cached measurement stands; beside other models now, the shared-cores options apply.
                ranked = _share_cores(dataclasses.replace(req, measure=False), list(cached.ranked()))
                return dataclasses.replace(
                    cached,
                    chosen=ranked[0],
                    alternatives=tuple(ranked[1:]),
                    cache_hit=True,
                    planning_seconds=time.perf_counter() - t0,
                )
    if opts.fast_start and req.measure:
        with Bench() as nothing_measured:  # measure=False opens no session
            quick = _run(dataclasses.replace(req, measure=False, ready_only=True), t0, model_hash, nothing_measured)
        # The upgrade measures into the caller's bench (which then holds its winner's session for the
        # switch to adopt; the caller keeps it open until the upgrade is done), or into its own,
        # closed when it ends. It plans without the ledger: the quick placement holds memory there
        # that the switch frees.
        future = upgrade_executor().submit(
            plan,
            spec,
            req.devices,
            options=opts.replace(fast_start=False, constraints=req.cons),
            cache=cache,
            budget_s=budget_s,
            top_k=top_k,
            backends=backends,
            bench=bench,
        )
        note = "fast start: chosen from predictions; Plan.upgrade resolves to the measured plan"
        return dataclasses.replace(quick, upgrade=future, notes=(*quick.notes, note))
    if req.feeds is None and req.measure:
        with _quiet.captured("generated inputs"):  # a refused first guess makes ORT log its error
            req.generated = optimize.generate_inputs(spec, batch=req.cons.batch_size, model_path=onnx_path(spec))
        req.feeds = req.generated.feeds
    own = bench is None
    bench = Bench(ledger) if bench is None else bench
    try:
        result = _run(req, t0, model_hash, bench)
    except BaseException:
        bench.close()
        raise
    if own:
        bench.close()
    else:
        bench.keep_only([identity(result.chosen)])  # the losers' sessions and reservations go now
    # A plan shaped by what other models hold now is not the model's plan in general: not cached.
    if key is not None and not req.ledger_shaped:
        _cache.store(key, result.to_json())
    return result


def identity(c: Candidate) -> tuple[Any, ...]:
    """What a measured session is kept under in the bench: the configuration and the model it loads."""
    return (c.config, c.transform)


def _ledger_shortfall(req: _Request, c: Candidate) -> str:
    """Why ``c`` does not fit what the ledger has free on its device now ('' when it fits or there is
    no ledger). Sized as the runtime admits a load: the footprint estimate at the constraints' batch.
    A model over the device's whole budget is not a matter of "now": the engine splits it across
    devices or refuses it, as it did before the planner read the ledger."""
    from aivmm.memory import estimate, format_bytes

    ledger = req.ledger
    if ledger is None or c.config.device not in ledger.devices():
        return ""
    need = estimate(c.model, c.precision, req.cons.batch_size).total
    free, capacity = ledger.free(c.config.device), ledger.capacity(c.config.device)
    if need <= free or need > capacity:
        return ""
    held = sorted(ledger.entries(c.config.device), key=lambda e: -e.nbytes)
    resident = ", ".join(f"{e.key} {format_bytes(e.nbytes)}" for e in held[:4]) or "nothing"
    more = f" and {len(held) - 4} more" if len(held) > 4 else ""
    return (
        f"needs ~{format_bytes(need)} but {c.config.device} has {format_bytes(free)} of its "
        f"{format_bytes(capacity)} budget free in the memory ledger now (held: {resident}{more})"
    )


def upgrade_executor() -> concurrent.futures.ThreadPoolExecutor:
    global _upgrade_pool
    with _upgrade_lock:
        if _upgrade_pool is None:
            # One worker: upgrades measure, and two measurements at once would share cores.
            _upgrade_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="aivmm-plan-upgrade")
        return _upgrade_pool


class _Evaluator:
    """Measures, checks and constrains candidates for one request."""

    def __init__(self, req: _Request, bench: Bench) -> None:
        self.req = req
        self.bench = bench
        self.devices = {d.id: d for d in req.devices}
        self._caps: dict[tuple[str, str], Capability] = {}
        self._reference: list[np.ndarray] | None = None
        self._reference_error: str = ""
        self._reference_done = False
        self._isolated_ok: set[str] = set()
        self._device_faults: dict[str, str] = {}  # device id -> the candidate whose worker faulted there
        self.notes: list[str] = list(req.generated.notes) if req.generated is not None else []

    def _group(self, c: Candidate) -> str:
        return _calibration.group(
            c.config.backend, self.devices[c.config.device], c.precision, self.req.spec.primary_category
        )

    def capability(self, c: Candidate) -> Capability:
        k = (c.config.device, c.config.backend)
        if k not in self._caps:
            self._caps[k] = capability(self.devices[c.config.device], c.config.backend)
        return self._caps[k]

    def predict(self, c: Candidate) -> Candidate:
        dev = self.devices[c.config.device]
        pred = predict(
            self.req.spec,
            dev,
            c.config,
            self.capability(c),
            batch=self.req.cons.batch_size,
            precision=c.precision,
            transform=c.transform,
        )
        learned = _calibration.factor(self._group(c))
        if learned != 1.0:
            pred = dataclasses.replace(
                pred,
                latency_ms=pred.latency_ms * learned,
                throughput=pred.throughput / learned,
                energy_j=None if pred.energy_j is None else pred.energy_j * learned,
            )
            c = c.with_(notes=(*c.notes, f"prediction x{learned:.2f}, learned from earlier measurements"))
        c = c.with_(prediction=pred)
        if pred.memory_bytes > dev.memory_free_bytes:
            c = c.reject(
                RejectReason.DOES_NOT_FIT,
                f"needs ~{pred.memory_bytes / 2**20:.1f} MiB, {dev.id} has "
                f"{dev.memory_free_bytes / 2**20:.1f} MiB free",
            )
        else:
            full = _ledger_shortfall(self.req, c)
            if full:
                c = c.reject(RejectReason.DEVICE_FULL, full)
        return c

    # -- measurement -----------------------------------------------------------------------------
    def _reference_outputs(self) -> list[np.ndarray] | None:
        if not self._reference_done:
            self._reference_done = True
            path = onnx_path(self.req.spec)
            gen = self.req.generated
            if gen is not None and path is not None:  # the probe already ran the reference on these feeds
                self._reference = gen.reference
                self._reference_error = gen.reference_error
            elif path is not None and self.req.feeds is not None:
                try:
                    self._reference = optimize.reference_outputs(path, self.req.feeds)
                except AivmmError as exc:
                    self._reference_error = str(exc)
            else:
                self._reference_error = "no ONNX file: the first measured fp32 candidate is the reference"
        return self._reference

    def _calibration(self) -> list[dict[str, np.ndarray]]:
        if self.req.user_feeds and self.req.feeds is not None:
            return [self.req.feeds]
        found = self.req.generated.assignment if self.req.generated is not None else None
        return [
            optimize.sample_inputs(self.req.spec, batch=CALIBRATION_BATCH, seed=1000 + s, assignment=found)
            for s in range(CALIBRATION_SAMPLES)
        ]

    def _materialise(self, c: Candidate) -> Candidate:
        t = c.transform
        if not t:
            return c
        path = onnx_path(self.req.spec)
        assert path is not None  # passes are only enumerated for ONNX files
        p = optimize.Pass(t)
        out = optimize.apply(
            path,
            p,
            model_sha256=_model_hash(self.req.spec),
            calibration=self._calibration() if p.needs_calibration else (),
        )
        model = analysed(self.req.spec, out)
        c = c.with_(model=model, materialised=True)
        support = registry.get(c.config.backend).check(model, self.devices[c.config.device], c.config)
        if not support:
            return c.reject(RejectReason.UNSUPPORTED, "; ".join(support.reasons))
        return c

    def _isolate(self, c: Candidate) -> str | None:
        """Why ``c`` failed its first run in a worker process, if it is the first on its accelerator
        (None: it passed, or needs no isolation). Once one candidate passed on a device, the rest
        are measured in this process."""
        dev = self.devices[c.config.device]
        if dev.kind not in ISOLATED_KINDS or dev.simulated or dev.id in self._isolated_ok:
            return None
        if dev.id in self._device_faults:  # the device itself faulted on these inputs: no second worker
            return (
                f"not run: the first run on {dev.id} faulted on the device with these inputs "
                f"({self._device_faults[dev.id]})"
            )
        if _isolation.model_file(c.model) is None:
            return None  # nothing a worker could load: measured here, as before
        assert self.req.feeds is not None
        why = _isolation.first_run_in_worker(c.model, dev, c.config, self.req.feeds)
        if why is None:
            self._isolated_ok.add(dev.id)
            self.notes.append(f"first run on {dev.id} isolated in a worker process: {c.label} passed")
            return None
        if _isolation.is_device_fault(why):
            self._device_faults[dev.id] = c.label
        return (
            f"failed its first run in an isolated worker process (not run in this one, so a device-side "
            f"error cannot break this process's {dev.id} context): {why}"
        )

    def measure(self, c: Candidate) -> Candidate:
        assert self.req.feeds is not None
        with _quiet.captured(c.label):
            return self._measure(c)

    def _measure(self, c: Candidate) -> Candidate:
        assert self.req.feeds is not None
        try:
            c = self._materialise(c)
            if c.rejected:
                return c
            why = self._isolate(c)
            if why is not None:
                return c.reject(RejectReason.FAILED, why)
            backend = registry.get(c.config.backend)
            # Measured through the bench, so the session stays open: the race times it again in
            # place and, if it wins, the runtime adopts it. (A first run isolated above happened in
            # a worker process: that session cannot be adopted, so it is measured here again.)
            m, outputs = profile(
                backend,
                c.model,
                self.devices[c.config.device],
                c.config,
                self.req.feeds,
                Budget(seconds=self.req.seconds_per_candidate),
                batch_size=self.req.cons.batch_size,
                bench=self.bench,
                identity=identity(c),
            )
        except Exception as exc:  # AivmmError or a runtime's own: recorded, the others still get measured
            log.info("measuring %s failed: %s: %s", c.label, type(exc).__name__, exc)
            return c.reject(RejectReason.FAILED, f"{type(exc).__name__}: {_one_line(str(exc))}")
        if c.prediction is not None:
            learned = _calibration.factor(self._group(c))
            _calibration.record(self._group(c), m.p50_ms, c.prediction.latency_ms / learned)
        c = c.with_(measurement=m)
        ref = self._reference_outputs()
        if ref is None and not c.transform and c.config.precision is Precision.FP32:
            self._reference = [optimize.as_host(o) for o in outputs]
            self.notes.append(f"accuracy reference: {c.label} ({self._reference_error})")
            ref = self._reference
        if ref is None:
            if c.precision is not Precision.FP32 or c.transform:
                self.bench.discard(identity(c))
                return c.reject(RejectReason.ACCURACY, f"no fp32 reference to check against: {self._reference_error}")
            return c
        precision = c.precision
        tol = optimize.tolerance_for(precision, ref, self.req.cons.tolerance)
        report = optimize.compare(outputs, ref, [t.name for t in self.req.spec.outputs], tol)
        c = c.with_(accuracy=report.to_json())
        if not report.ok:
            self.bench.discard(identity(c))
            c = c.reject(RejectReason.ACCURACY, str(report.error(c.label)))
        return c

    # -- constraints -----------------------------------------------------------------------------
    def latency(self, c: Candidate) -> float:
        m = c.measurement
        if m is not None:
            return m.p99_ms if self.req.cons.latency_percentile == 99 else m.p50_ms
        return c.prediction.latency_ms if c.prediction else math.inf

    def figures(self, c: Candidate) -> dict[str, float | None]:
        m, p = c.measurement, c.prediction
        cap = self.capability(c)
        return {
            "latency": self.latency(c),
            "throughput": m.throughput if m else (p.throughput if p else 0.0),
            # RSS growth misses memory the allocator reuses, so the footprint is at least the predicted
            # weights + activations.
            "memory": float(max(m.memory_bytes if m else 0, p.memory_bytes if p else 0)),
            "power": m.power_w if (m and m.power_w is not None) else cap.power_w,
            "energy": m.energy_j if (m and m.energy_j is not None) else (p.energy_j if p else None),
        }

    def figure_label(self, figure: str) -> str:
        return f"p{self.req.cons.latency_percentile} latency" if figure == "latency" else figure

    def violations(self, c: Candidate) -> list[tuple[str, str]]:
        """(constraint name, sentence) for every limit of the constraints table that ``c`` violates."""
        f, out = self.figures(c), []
        basis = "measured" if c.measurement else "predicted"
        for name, limit, value in self.req.cons.limits():
            got, label = f[limit.figure], self.figure_label(limit.figure)
            if got is None:
                why = f" ({c.measurement.energy_source})" if c.measurement else ""
                out.append((name, f"{label} is neither measurable nor known for {c.config.device}{why}"))
            elif limit.bound.violated(got, value):
                out.append((name, f"{label} {limit.show(got)} ({basis}) {limit.bound.broken} {limit.show(value)}"))
        return out

    def objective_key(self, c: Candidate) -> tuple[float, ...]:
        f = self.figures(c)
        objective = self.req.cons.objective
        if objective is Objective.THROUGHPUT:
            primary = -(f["throughput"] or 0.0)
        elif objective is Objective.ENERGY:
            primary = f["energy"] if f["energy"] is not None else math.inf
        else:
            primary = f["latency"] or math.inf
        return (primary, f["latency"] or math.inf)

    def rank_key(self, c: Candidate) -> tuple[Any, ...]:
        measured_first = 0 if (c.measurement is not None or not self.req.measure) else 1
        return (self.req.cons.preference_rank(self.devices[c.config.device]), measured_first, *self.objective_key(c))

    # -- one pool --------------------------------------------------------------------------------
    def evaluate(self, pool: list[Candidate]) -> tuple[list[Candidate], list[Candidate]]:
        """(feasible ranked best first, rejected) for clean, predicted candidates."""
        rejected: list[Candidate] = []
        if not self.req.measure:
            kept = []
            for c in pool:
                slow = backend_info(c.config.backend).compiling(c.config.options)  # compiles on its first load
                if self.req.ready_only and slow:
                    rejected.append(
                        c.reject(
                            RejectReason.PRUNED, f"fast start: {', '.join(slow)} compiles before the first request"
                        )
                    )
                elif c.transform or c.precision is not Precision.FP32:
                    rejected.append(
                        c.reject(
                            RejectReason.ACCURACY,
                            "accuracy of a lowered precision or "
                            "transformed model cannot be verified without measuring (measure=False)",
                        )
                    )
                else:
                    kept.append(c)
            pool = kept
        else:
            pool = self._measure_top_k(pool, rejected)
        feasible: list[Candidate] = []
        for c in pool:
            for name, sentence in self.violations(c):
                c = c.reject(RejectReason.CONSTRAINT, f"{name}: {sentence}")
            (rejected if c.rejected else feasible).append(c)
        feasible.sort(key=self.rank_key)
        if self.req.measure and feasible and feasible[0].measurement is None:
            # Nothing that ran is feasible: a candidate known only by prediction may not win instead.
            rejected.extend(c.reject(RejectReason.NOT_MEASURED, _unmeasured_why(c)) for c in feasible)
            feasible = []
        return feasible, rejected

    def _measure_top_k(self, pool: list[Candidate], rejected: list[Candidate]) -> list[Candidate]:
        slow = [c for c in pool if c.prediction is not None and c.prediction.load_s > self.req.max_load_s]
        order = sorted(
            (c for c in pool if c not in slow),
            key=lambda c: (self.req.cons.preference_rank(self.devices[c.config.device]), *self.objective_key(c)),
        )
        picked = self._pick(order)
        if self.req.cons.precision is not PrecisionPolicy.EXACT:
            # Precision policy: a wider policy measures every candidate the fp32-only policy would
            # (same pool, same picking), so its measured best can never be slower than that choice.
            picked += [c for c in self._pick([c for c in order if _plain_fp32(c)]) if c not in picked]
        # fp32 without a pass first: for non-ONNX models the first of them becomes the reference
        picked.sort(key=lambda c: not _plain_fp32(c))
        measured: list[Candidate] = []
        for c in picked:
            m = self.measure(c)
            (rejected if m.rejected else measured).append(m)
        if not measured:
            # Every measured one failed: the next-best predicted ones get their turn before the
            # plan gives up (an unmeasured candidate never wins while measuring is asked for).
            for c in [c for c in order if c not in picked][:RETRY_AFTER_FAILURES]:
                picked.append(c)
                m = self.measure(c)
                (rejected if m.rejected else measured).append(m)
                if not m.rejected:
                    break
        late = self._measure_compiled(slow, measured, rejected)
        out: list[Candidate] = []
        for c in pool:
            if c in picked or c in late:
                continue
            if c.transform or c.precision is not Precision.FP32:
                rejected.append(
                    c.reject(
                        RejectReason.ACCURACY,
                        "not measured (outside the top-k or the load "
                        "budget), so its accuracy against fp32 is unverified",
                    )
                )
            elif c in slow:
                assert c.prediction is not None  # slow means predicted to load slowly
                out.append(
                    c.with_(
                        notes=(
                            *c.notes,
                            f"not measured: predicted load {c.prediction.load_s:.0f} s "
                            f"exceeds the planning load budget {self.req.max_load_s:.0f} s "
                            "(raise budget_s to measure it)",
                        )
                    )
                )
            else:
                out.append(c.with_(notes=(*c.notes, "not measured: predicted slower than the measured ones")))
        return out + self._race(measured, compiled=late)

    def _pick(self, order: list[Candidate]) -> list[Candidate]:
        """The top-k to measure: first the best-predicted of every group, so each runtime gets a fair
        hearing, then the best-predicted of the rest."""
        picked: list[Candidate] = []
        seen: set[tuple[str, ...]] = set()
        for c in order:
            g = variant_key(c)
            if g not in seen and len(picked) < self.req.top_k:
                seen.add(g)
                picked.append(c)
        for c in order:
            if len(picked) >= self.req.top_k:
                break
            if c not in picked:
                picked.append(c)
        return picked

    def _measure_compiled(
        self, slow: list[Candidate], measured: list[Candidate], rejected: list[Candidate]
    ) -> list[Candidate]:
        """Compiled candidates (too slow to load to measure them all) are measured only where they can
        win: the compiled form of the best measured candidate (same backend, device, precision, pass
        and options but for the runner), and of the best fp32 one, so a wider precision policy still
        covers what the fp32-only policy would measure. Returns the ones measured (or failed)."""
        # On GPUs only: there a compiled graph (fused kernels, one graph launch) is often the fastest
        # form; on CPUs compiling rarely pays for its minutes of load.
        ok = sorted(
            (c for c in measured if not self.violations(c) and self.devices[c.config.device].kind is DeviceKind.GPU),
            key=self.rank_key,
        )
        leaders = ok[:1] + [c for c in ok if _plain_fp32(c)][:1]
        late: list[Candidate] = []
        for leader in leaders:
            partner = next(
                (
                    c
                    for c in slow
                    if c not in late
                    and _same_but_runner(c, leader)
                    and c.prediction is not None
                    and c.prediction.load_s <= COMPILE_STAGE_LOAD_S
                ),
                None,
            )
            if partner is None:
                continue
            late.append(partner)
            m = self.measure(partner.with_(notes=(*partner.notes, f"measured as the compiled form of {leader.label}")))
            (rejected if m.rejected else measured).append(m)
            if any(r.reason is RejectReason.FAILED for r in m.rejections):
                break  # the model does not compile here: a second attempt would fail as slowly
        return late

    def _finalists(self, ok: list[Candidate]) -> list[Candidate]:
        """The best of each backend first (screening alone can be off by 5x on a busy machine, so a
        runtime is never left out on it), then the next best, FINALISTS in all. Seen on whisper:
        ORT's default screened slowest of six, then ran 1.75x faster than the others in one race."""
        best = self.latency(ok[0])
        picked: list[Candidate] = []
        for c in ok:
            if (
                c.config.backend not in {p.config.backend for p in picked}
                and len(picked) < FINALISTS
                and self.latency(c) <= RACE_FACTOR_BACKEND * best
            ):
                picked.append(c)
        picked.extend(c for c in ok if c not in picked and self.latency(c) <= RACE_FACTOR * best)
        return sorted(picked[:FINALISTS], key=ok.index)

    def _race(self, measured: list[Candidate], compiled: Sequence[Candidate] = ()) -> list[Candidate]:
        """Re-time the leading candidates interleaved; their measurements take the raced latencies."""
        if self.req.cons.objective is Objective.ENERGY:
            return measured  # energy needs each candidate alone on the counter
        # Compiled candidates keep their own figures: loading them again would compile again.
        skip = {identity(c) for c in compiled}
        ok = sorted((c for c in measured if not self.violations(c) and identity(c) not in skip), key=self.rank_key)
        if len(ok) < 2:
            return measured
        finalists = self._finalists(ok)
        # Screened too slow to be raced, or violating a constraint: their sessions go now, not at the
        # end (compiled candidates, kept apart from the race, stay).
        self.bench.keep_only([*(identity(c) for c in finalists), *skip])
        if len(finalists) < 2:
            return measured
        entries = [
            (registry.get(c.config.backend), c.model, self.devices[c.config.device], c.config) for c in finalists
        ]
        try:
            with _quiet.captured("the finalist race"):
                # The sessions measured above, raced in place (one reopened if it was closed for room).
                sessions = [
                    self.bench.open(identity(c), *entry, batch=self.req.cons.batch_size)
                    for c, entry in zip(finalists, entries)
                ]
                if any(s.closed for s in sessions):  # the budget holds fewer than all the finalists
                    log.info("the finalists do not fit the memory budget together; keeping the individual measurements")
                    return measured
                result = race_rounds(
                    entries,
                    self.req.feeds or {},
                    Budget(
                        seconds=self.req.seconds_per_candidate * len(finalists),
                        warmup_runs=2,
                        min_runs=RACE_MIN_ROUNDS,
                        max_runs=400,
                    ),
                    sessions=sessions,
                )
        except Exception as exc:  # the screening figures stand; the race is a refinement
            log.warning("finalist race failed (%r); keeping the individual measurements", exc)
            return measured
        raced = {}
        for c, rounds, calls, warm in zip(finalists, result.rounds, result.calls, result.warmup):
            assert c.measurement is not None  # finalists are measured candidates
            arr = np.asarray(calls) * 1e3
            m = dataclasses.replace(
                c.measurement,
                p50_ms=float(np.median(rounds)) * 1e3,
                p99_ms=float(np.percentile(arr, 99)),
                mean_ms=float(arr.mean()),
                runs=len(calls),
                warmup_runs=c.measurement.warmup_runs + len(warm),
            )
            note = (
                f"raced against {len(finalists) - 1} finalist(s): median of {len(rounds)} interleaved rounds "
                f"({len(calls)} timed calls, {len(warm)} warm-up calls apart)"
            )
            if result.extended:
                note += f"; lengthened {result.extended}x as the leaders were within {NOISE_MARGIN:.0%}"
            raced[id(c)] = c.with_(measurement=m, notes=(*c.notes, note))
        return [raced.get(id(c), c) for c in measured]


def _plain_fp32(c: Candidate) -> bool:
    return not c.transform and c.config.precision is Precision.FP32


def _same_but_runner(c: Candidate, other: Candidate) -> bool:
    """Equal but for the options that choose how the graph is run (compiled, replayed), as the backend says."""

    def rest(x: Candidate) -> tuple[Any, ...]:
        opts = backend_info(x.config.backend).without_runner(x.config.options)
        return (x.config.backend, x.config.device, x.config.precision, x.transform, sorted(opts.items()))

    return rest(c) == rest(other)


def _run(req: _Request, t0: float, model_hash: str, bench: Bench) -> Plan:
    ev = _Evaluator(req, bench)
    all_cands = _share_cores(req, enumerate_candidates(req.spec, req.devices, req.cons, req.backends))
    clean: list[Candidate] = []
    rejected: list[Candidate] = []
    for c in all_cands:
        if not c.rejected:
            c = ev.predict(c)
        (rejected if c.rejected else clean).append(c)
    crowded = _crowded_out(req, clean, rejected)

    def pinned(c: Candidate) -> bool:
        return _matches_pins(req, c)

    fallbacks: list[str] = []
    pins = req.device is not None or req.backend is not None
    if pins:
        pool = [c for c in clean if pinned(c)]
        others = [c for c in clean if not pinned(c)]
        feasible, bad = ev.evaluate(pool) if pool else ([], [])
        rejected.extend(bad)
        if feasible:
            rejected.extend(c.reject(RejectReason.NOT_PINNED, _pin_text(req)) for c in others)
        else:
            why = _summarise([c for c in (*rejected, *bad) if pinned(c)]) or "no candidate matches"
            message = f"{_pin_text(req)} cannot run {req.spec.name!r}: {why}"
            if req.strict:
                raise FallbackError(message)
            feasible, bad = ev.evaluate(others)
            rejected.extend(bad)
            if feasible:
                message += f"; placed on {feasible[0].label} instead"
            fallbacks.append(message)
            log.warning("%s", message)
    else:
        feasible, bad = ev.evaluate(clean)
        rejected.extend(bad)
    if not feasible:
        raise _infeasible(req, ev, rejected)
    if crowded:
        fallbacks.append(f"{crowded}; placed on {feasible[0].label} instead")
        log.warning("%s", fallbacks[-1])
    return Plan(
        model_name=req.spec.name,
        model_sha256=model_hash,
        chosen=feasible[0],
        alternatives=tuple(feasible[1:]),
        rejected=tuple(rejected),
        fallbacks=tuple(fallbacks),
        constraints=req.cons,
        planning_seconds=time.perf_counter() - t0,
        measured=req.measure,
        notes=tuple(ev.notes),
    )


def _cores_shared(req: _Request, cands: Sequence[Candidate], device: str) -> str:
    """Why sessions on the CPU ``device`` share its cores with others ('' when they do not): other
    models held there in the memory ledger, or measuring several candidates (their sessions stay
    open together through the finalist race, and the runtime adopts the measured one)."""
    held = [e.key for e in req.ledger.entries(device)] if req.ledger is not None else []
    if held:
        req.ledger_shaped = True  # decided by what others hold now: not the model's plan in general
        return f"{len(held)} other model(s) held on {device} in the memory ledger ({', '.join(sorted(held)[:3])})"
    if req.measure and sum(not c.rejected for c in cands) > 1:
        return "the candidates measured here stay open together through the finalist race"
    return ""


def _share_cores(req: _Request, cands: list[Candidate]) -> list[Candidate]:
    """Every CPU candidate whose backend has options for shared cores (``BackendInfo.shared_cores``)
    takes them, unset ones only, when its cores are shared: a decision the candidate's notes give
    with the reason. Measured and served alike, since the runtime adopts the measured session."""
    out = []
    for c in cands:
        extra = {k: v for k, v in backend_info(c.config.backend).shared_cores.items() if k not in c.config.options}
        dev = next((d for d in req.devices if d.id == c.config.device), None)
        on_cpu = dev is not None and dev.kind is DeviceKind.CPU
        why = _cores_shared(req, cands, c.config.device) if extra and on_cpu else ""
        if why:
            opts = ", ".join(f"{k}={v}" for k, v in sorted(extra.items()))
            config = dataclasses.replace(c.config, options={**c.config.options, **extra})
            c = c.with_(config=config, notes=(*c.notes, f"{opts}: other sessions share the cores ({why})"))
        out.append(c)
    return out


def _matches_pins(req: _Request, c: Candidate) -> bool:
    return (req.device is None or c.config.device == req.device) and (
        req.backend is None or c.config.backend == req.backend
    )


def _crowded_out(req: _Request, clean: list[Candidate], rejected: list[Candidate]) -> str:
    """Candidates left out because other models hold their device's memory now (DEVICE_FULL).

    When some other candidate can run, they stay out and the plan says so (returned sentence,
    recorded as a fallback; ``strict`` refuses). When none can (or none on the pinned device), they
    are put back: the runtime then makes room by evicting idle models (overcommit), as it does
    for any load, and the candidate's notes say so."""
    full = [c for c in rejected if c.rejections and c.rejections[-1].reason is RejectReason.DEVICE_FULL]
    if not full:
        return ""
    req.ledger_shaped = True

    def pinned(c: Candidate) -> bool:
        return _matches_pins(req, c)

    back = [] if any(pinned(c) for c in clean) else [c for c in full if pinned(c)]
    if back:
        rejected[:] = [c for c in rejected if c not in back]
        for c in back:
            clean.append(
                c.with_(
                    rejections=c.rejections[:-1],
                    notes=(*c.notes, f"{c.rejections[-1].detail}: loading it there evicts idle models"),
                )
            )
    full = [c for c in full if c not in back and pinned(c)]  # a device the pins exclude anyway is no fallback
    if not full:
        return ""
    devices = sorted({c.config.device for c in full})
    why = "; ".join(
        next(
            r.detail for c in full if c.config.device == d for r in c.rejections if r.reason is RejectReason.DEVICE_FULL
        )
        for d in devices
    )
    message = f"{', '.join(devices)} left out for lack of free memory now: {why}"
    if req.strict:
        raise FallbackError(f"strict: {message}")
    return message


def _pin_text(req: _Request) -> str:
    parts = []
    if req.backend is not None:
        parts.append(f"backend={req.backend!r}")
    if req.device is not None:
        parts.append(f"device={req.device!r}")
    return "pinned " + " and ".join(parts)


def _summarise(cands: Sequence[Candidate], limit: int = 4) -> str:
    seen: list[str] = []
    for c in cands:
        for r in c.rejections:
            text = f"{c.label}: {r}"
            if text not in seen:
                seen.append(text)
    extra = f" (+{len(seen) - limit} more)" if len(seen) > limit else ""
    return "; ".join(seen[:limit]) + extra


def _one_line(text: str, limit: int = 300) -> str:
    """The first non-empty line of a runtime's message (dynamo's run to 30 lines), cut to ``limit``."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _unmeasured_why(c: Candidate) -> str:
    note = next((n for n in c.notes if n.startswith("not measured")), "not measured")
    return f"{note}; measuring was asked for, so it cannot be chosen on a prediction alone"


def _describe_feeds(feeds: Mapping[str, np.ndarray] | None) -> str:
    return optimize.describe_feeds(feeds) if feeds else "no inputs"


_RAN = (RejectReason.FAILED, RejectReason.ACCURACY, RejectReason.NOT_MEASURED)


def _nothing_ran(req: _Request, rejected: Sequence[Candidate]) -> InfeasibleError:
    """One line per candidate that was tried (or could not be), naming the inputs they got."""
    lines: dict[str, list[str]] = {}
    before = 0
    for c in rejected:
        tried = [r for r in c.rejections if r.reason in _RAN]
        if not tried:
            before += 1
            continue
        text = "; ".join(f"{r.reason.value}: {_one_line(r.detail)}" for r in tried)
        lines.setdefault(text, []).append(c.label)
    source = "the given sample_inputs" if req.user_feeds else "generated inputs"
    head = (
        f"no candidate ran {req.spec.name!r} and matched the fp32 reference on {source} ({_describe_feeds(req.feeds)})"
    )
    body = [
        f"  - {labels[0]}" + (f" (+{len(labels) - 1} option variants)" if len(labels) > 1 else "") + f": {text}"
        for text, labels in lines.items()
    ]
    gen = req.generated
    if gen is not None and gen.reference is None and gen.reference_error:
        body.insert(0, f"  - fp32 reference: {_one_line(gen.reference_error, 400)}")
    tail = [f"  ({before} other candidate(s) were rejected before measuring: `aivmm plan` lists them)"]
    tail = tail if before else []
    hint = [
        "  pass real inputs (sample_inputs=, aivmm run --input FILE.npz) if the generated ones do not suit "
        "the model; -v shows the runtimes' full output"
    ]
    return InfeasibleError("\n".join([head + ":", *body, *tail, *hint]))


def _infeasible(req: _Request, ev: _Evaluator, rejected: Sequence[Candidate]) -> InfeasibleError:
    """The error naming, for each violated constraint, the best figure any candidate achieved."""
    only_constraints = [
        c
        for c in rejected
        if c.rejections and all(r.reason in (RejectReason.CONSTRAINT, RejectReason.NOT_PINNED) for r in c.rejections)
    ]
    if not only_constraints:
        if req.measure and any(r.reason in _RAN for c in rejected for r in c.rejections):
            return _nothing_ran(req, rejected)
        return InfeasibleError(f"no candidate can run {req.spec.name!r}: {_summarise(rejected, 8)}")
    lines = []
    violated = {name for c in only_constraints for name, _ in ev.violations(c)}
    for name, limit, value in req.cons.limits():
        if name not in violated:
            continue
        figures = [(f, c) for c in only_constraints if (f := ev.figures(c)[limit.figure]) is not None]
        asked = f"{name}={limit.show(value)}"
        if not figures:
            lines.append(f"{asked}: not measurable on any candidate")
            continue
        pick = min if limit.bound is Bound.MAX else max
        got, best = pick(figures, key=lambda v: v[0])
        lines.append(f"{asked}: best achievable {ev.figure_label(limit.figure)} {limit.show(got)} ({best.label})")
    return InfeasibleError(f"no candidate for {req.spec.name!r} meets the constraints: " + "; ".join(lines))
