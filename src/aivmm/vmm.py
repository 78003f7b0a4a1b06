"""The façade: ``VMM.deploy`` wires discovery, analysis, planning and the runtime together.

::

    vmm = aivmm.VMM()
    model = vmm.deploy("model.onnx", aivmm.Constraints(max_latency_ms=10))
    outputs = model.execute(x)      # dict of output name -> array, in model order
    print(model.plan.explain())     # where it runs and why

The façade owns no policy of its own: the planner decides where a model runs, the runtime's
engine decides when (queues, batching, residency). It adds what a user-facing object needs:
input validation against the signature, detection of a model file changed on disk, a name
registry and the lifecycle (close / context manager).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import pathlib
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from aivmm._storage import file_sha256
from aivmm.devices import Device
from aivmm.errors import (
    ConfigError,
    DeviceNotFoundError,
    ModelChangedError,
    ModelClosedError,
    ModelNotFoundError,
)
from aivmm.models import ModelSpec
from aivmm.options import DeployOptions, coerce_options
from aivmm.planner.constraints import Constraints

if TYPE_CHECKING:
    from aivmm.planner import Bench, Held, Plan
    from aivmm.runtime import BatchingConfig, Engine

log = logging.getLogger(__name__)

# How often execute() re-checks the model file's stat; hashing happens only when the stat changed.
_FILE_CHECK_INTERVAL_S = 1.0


def _coerce_batching(batching: BatchingConfig | Mapping[str, Any] | None) -> BatchingConfig | None:
    if batching is None or not isinstance(batching, Mapping):
        return batching  # None or a BatchingConfig (DeployOptions checked the type)
    from aivmm.runtime import BatchingConfig

    return BatchingConfig.from_mapping(batching)


@dataclasses.dataclass
class _FileWatch:
    """Detects a model file changed after deploy: cheap stat checks, a hash only when the stat moved."""

    path: pathlib.Path
    sha256: str
    stat: tuple[int, int]
    next_check: float = 0.0

    @classmethod
    def of(cls, spec: ModelSpec) -> _FileWatch | None:
        src = spec.source
        if not isinstance(src, str | os.PathLike) or not spec.sha256:
            return None
        path = pathlib.Path(src)
        try:
            st = path.stat()
        except OSError:
            return None
        return cls(path, spec.sha256, (st.st_mtime_ns, st.st_size), time.monotonic() + _FILE_CHECK_INTERVAL_S)

    def check(self, name: str, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self.next_check:
            return
        self.next_check = now + _FILE_CHECK_INTERVAL_S
        try:
            st = self.path.stat()
        except OSError as exc:
            raise ModelChangedError(f"model {name!r}: file {self.path} is gone since deploy ({exc})") from exc
        stat = (st.st_mtime_ns, st.st_size)
        if stat == self.stat:
            return
        digest = file_sha256(self.path)
        if digest != self.sha256:
            raise ModelChangedError(
                f"model {name!r}: {self.path} changed on disk after deploy "
                f"(sha256 {self.sha256[:12]}… → {digest[:12]}…); deploy it again to use the new file"
            )
        self.stat = stat  # touched but identical content


class DeployedModel:
    """A model placed by the planner and run by the engine. Thread-safe."""

    def __init__(self, vmm: VMM, name: str, spec: ModelSpec, plan: Plan, handle: Any) -> None:
        self._vmm = vmm
        self.name = name
        self.spec = spec
        self.plan = plan
        self._handle = handle
        self._engine_name = name  # changes when a fast-start upgrade swaps the placement
        self._watch = _FileWatch.of(spec)
        self._closed = False
        from aivmm.backends.tensors import validate_feeds

        self._validate = validate_feeds
        self._options = DeployOptions(name=name)  # set by VMM.deploy: how to plan this model again
        self._replan_first = False  # deploy(replan_on_first_request=True): re-plan on the first real inputs
        self._replanning: concurrent.futures.Future[Plan] | None = None  # the background re-plan, if any

    def __repr__(self) -> str:
        chosen = self.plan.chosen.config.label() if self.plan.chosen else "?"
        return f"<DeployedModel {self.name!r} on {chosen}{' closed' if self._closed else ''}>"

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def options(self) -> DeployOptions:
        """What this model was deployed with (the name and batching resolved)."""
        return self._options

    @property
    def handle(self) -> Any:
        """The engine's :class:`~aivmm.runtime.ModelHandle` serving this model now (its replicas,
        stats and state); read-only: a fast-start upgrade or a re-plan puts a new one here."""
        return self._handle

    @property
    def state(self) -> Any:
        return self._handle.state

    def _feeds(self, inputs: Any) -> dict[str, Any]:
        if self._closed:
            raise ModelClosedError(f"model {self.name!r} was closed")
        if self._watch is not None:
            self._watch.check(self.name)
        return self._validate(self.spec, inputs)

    def execute(
        self,
        inputs: Any,
        *,
        output: str = "numpy",
        priority: int = 0,
        deadline_ms: float | None = None,
        reject_late: bool = False,
    ) -> dict[str, Any]:
        """Run the model. ``inputs``: a dict of name → array, or one array for a one-input model."""
        feeds = self._feeds(inputs)
        if self._replan_first:
            self._first_request(feeds)
        return self._handle.infer(
            feeds, priority=priority, deadline_ms=deadline_ms, reject_late=reject_late, output=output
        )

    async def execute_async(
        self,
        inputs: Any,
        *,
        output: str = "numpy",
        priority: int = 0,
        deadline_ms: float | None = None,
        reject_late: bool = False,
    ) -> dict[str, Any]:
        feeds = self._feeds(inputs)
        if self._replan_first:
            self._first_request(feeds)
        return await self._handle.infer_async(
            feeds, priority=priority, deadline_ms=deadline_ms, reject_late=reject_late, output=output
        )

    @property
    def replan_state(self) -> str:
        """Where a re-plan on real inputs stands: "" (none asked), "waiting for the first request",
        "planning", "done: <configuration>" or "failed: <reason>"."""
        if self._replan_first:
            return "waiting for the first request"
        future = self._replanning
        if future is None:
            return ""
        if not future.done():
            return "planning"
        exc = future.exception()
        if exc is not None:
            return f"failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return f"done: {future.result().chosen.config.label()}"

    def replan(self, sample_inputs: Any, *, wait: bool = True) -> concurrent.futures.Future[Plan]:
        """Plan again, measuring on ``sample_inputs`` (real requests: a server passes its first ones,
        whose shapes generated inputs can only guess), and move to the new choice without dropping
        requests, as a fast-start upgrade does. Returns a Future of the new plan, done once the
        switch is; ``wait=False`` plans in the background (one planning thread per process)."""
        import numpy as np

        from aivmm.backends.tensors import to_numpy
        from aivmm.planner import Bench, upgrade_executor
        from aivmm.planner import plan as make_plan

        def owned(v: Any) -> Any:  # a copy the caller cannot change under the planner; sequences item by item
            return None if v is None else [owned(x) for x in v] if isinstance(v, list) else np.array(to_numpy(v))

        feeds = {k: owned(v) for k, v in self._feeds(sample_inputs).items()}
        # Measuring on real shapes is the point; the first plan's fast start is over.
        opts = self._options.replace(measure=True, sample_inputs=feeds, fast_start=False)

        # The new choice's measured session is adopted by the switch (admitted to the ledger then, as
        # a load is). The plan does not read the ledger, nor do its sessions reserve there: this
        # model's current placement holds memory there that the switch frees.
        bench = Bench(owner=f"{self.name}@replan")

        def work() -> Plan:
            return make_plan(self.spec, self._vmm.devices, options=opts, bench=bench)

        if not wait:
            # Done once the model has moved (or kept its placement), not when planning ends: callers
            # and the server's status read it as "the new choice serves".
            switched: concurrent.futures.Future[Plan] = concurrent.futures.Future()

            def after(planned: concurrent.futures.Future[Plan]) -> None:
                try:
                    self._vmm._upgrade(self, planned, opts, bench)
                finally:
                    exc = planned.exception()
                    if exc is not None:
                        switched.set_exception(exc)
                    else:
                        switched.set_result(planned.result())

            self._replanning = switched
            upgrade_executor().submit(work).add_done_callback(after)
            return switched
        future: concurrent.futures.Future[Plan] = concurrent.futures.Future()
        try:
            future.set_result(work())
        except Exception as exc:  # the Future carries it; the current placement keeps serving
            future.set_exception(exc)
        self._vmm._upgrade(self, future, opts, bench)
        return future

    def _first_request(self, feeds: Mapping[str, Any]) -> None:
        self._replan_first = False  # once: later requests go straight to the engine
        log.info("model %r: re-planning on the shapes of its first request in the background", self.name)
        self.replan(feeds, wait=False)

    def stats(self) -> dict[str, Any]:
        return self._handle.stats()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._vmm._forget(self.name)

    def __enter__(self) -> DeployedModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class VMM:
    """Discovers devices once and deploys models onto them."""

    def __init__(
        self,
        devices: Sequence[Device] | None = None,
        *,
        simulate: str | os.PathLike[str] | Sequence[Mapping[str, Any]] | None = None,
        memory_budget: Mapping[str, int | str] | str | None = None,
    ) -> None:
        if devices is None:
            from aivmm.devices import discover

            devices = discover(simulate)
        elif simulate is not None:
            raise ConfigError("pass either devices or simulate, not both")
        if not devices:
            raise DeviceNotFoundError("no device found (not even the CPU): see `aivmm devices`")
        self._devices: tuple[Device, ...] = tuple(devices)
        self._memory_budget = memory_budget
        self._engine: Engine | None = None
        self._models: dict[str, DeployedModel] = {}
        self._lock = threading.RLock()
        self._closed = False

    # -- devices -----------------------------------------------------------------------------
    @property
    def devices(self) -> tuple[Device, ...]:
        return self._devices

    def device(self, device_id: str) -> Device:
        for d in self._devices:
            if d.id == device_id:
                return d
        known = ", ".join(d.id for d in self._devices)
        raise DeviceNotFoundError(f"unknown device {device_id!r}; this VMM has: {known}")

    @property
    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                from aivmm.runtime import Engine

                budgets = self._memory_budget
                if isinstance(budgets, str):
                    from aivmm.memory import parse_budget_spec

                    budgets = parse_budget_spec(budgets, source="memory_budget")
                self._engine = Engine(self._devices, budgets=budgets)
            return self._engine

    # -- models ------------------------------------------------------------------------------
    def deploy(
        self,
        model: str | os.PathLike[str] | ModelSpec | Any,
        constraints: Constraints | Mapping[str, Any] | None = None,
        *,
        options: DeployOptions | None = None,
        device: str | None = None,
        backend: str | None = None,
        strict: bool = False,
        name: str | None = None,
        batching: BatchingConfig | Mapping[str, Any] | None = None,
        replicas: int = 1,
        isolation: bool = False,
        sample_inputs: Mapping[str, Any] | None = None,
        example_inputs: Any = None,
        measure: bool = True,
        fast_start: bool = False,
        replan_on_first_request: bool = False,
    ) -> DeployedModel:
        """Analyse, plan and load a model; returns a handle whose ``plan`` says where and why.

        The options are one :class:`~aivmm.options.DeployOptions`, given as ``options=`` or as the
        separate keywords (not both). ``device`` / ``backend`` pin the placement: when they cannot
        be honoured the plan records the fallback (and logs it) or, with ``strict=True``, a
        FallbackError is raised. ``fast_start=True`` serves at once from a ready candidate chosen
        by prediction and switches, without dropping requests, to the measured choice when its
        measurement ends. ``replan_on_first_request=True`` (planned on generated inputs) plans
        again, in the background, on the first request's real inputs and switches the same way
        (see ``DeployedModel.replan``).
        """
        if self._closed:
            raise ModelClosedError("this VMM was closed")
        opts = coerce_options(
            options,
            constraints,
            device=device,
            backend=backend,
            strict=strict,
            name=name,
            batching=batching,
            replicas=replicas,
            isolation=isolation,
            sample_inputs=sample_inputs,
            example_inputs=example_inputs,
            measure=measure,
            fast_start=fast_start,
            replan_on_first_request=replan_on_first_request,
        )
        if opts.device is not None:
            self.device(opts.device)  # unknown ids fail before any work
        from aivmm.models import load
        from aivmm.planner import Bench
        from aivmm.planner import identity as plan_identity
        from aivmm.planner import plan as make_plan

        if isinstance(model, str | os.PathLike) and pathlib.Path(model).is_dir():
            return self._deploy_llm(model, opts)
        if not isinstance(model, str | os.PathLike | ModelSpec):
            from aivmm.llm import is_torch_llm

            if is_torch_llm(model):  # a transformers causal LM in memory generates on torch
                return self._deploy_llm(model, opts)
        spec = model if isinstance(model, ModelSpec) else load(model, example_inputs=opts.example_inputs)
        if _has_kv_cache(spec):
            return self._deploy_llm(spec.source, opts)
        opts = opts.replace(name=opts.name or spec.name, batching=_coerce_batching(opts.batching))
        name = opts.name
        assert name is not None
        with self._lock:
            if name in self._models:
                raise ConfigError(f"a model named {name!r} is already deployed; pass name= or unload it first")
        engine = self.engine
        # The plan is made against the engine's ledger (what is free on each device now), and its
        # measured sessions hold reservations there; the winner's stays open for the engine to adopt.
        # A fast start's bench is the background upgrade's: not in the ledger, where the quick
        # placement holds memory that the switch frees, and closed once the switch is done.
        if opts.fast_start:
            bench = Bench(owner=f"{name}@upgrade")
        else:
            bench = Bench(engine.ledger, make_room=engine.residency.make_room, owner=name)
        try:
            plan = make_plan(spec, self._devices, options=opts, ledger=engine.ledger, bench=bench)
            for note in plan.fallbacks:
                log.warning("model %r: %s", name, note)
            # With isolation the engine runs the model in a worker process, which cannot use a session
            # of this one: the bench closes the measured winner and the worker loads its own.
            warm = None if opts.isolation else bench.take(plan_identity(plan.chosen))
            handle = self._add_to_engine(name, plan, opts, warm)
        except BaseException:
            bench.close()
            raise
        if plan.upgrade is None:
            bench.close()
            _loaded(spec, plan)
        deployed = DeployedModel(self, name, spec, plan, handle)
        deployed._options = opts
        deployed._replan_first = opts.replan_on_first_request and opts.sample_inputs is None
        with self._lock:
            self._models[name] = deployed
        if plan.upgrade is not None:
            plan.upgrade.add_done_callback(lambda fut: self._upgrade(deployed, fut, opts, bench, spec))
        return deployed

    def _deploy_llm(self, model: Any, options: DeployOptions) -> DeployedModel:
        # A decoder with a KV cache (file or model directory) generates: aivmm.llm plans and runs it.
        from aivmm.llm import deploy_llm

        deployed = deploy_llm(self, model, options)
        deployed._options = options.replace(name=deployed.name)
        for note in deployed.plan.fallbacks:
            log.warning("model %r: %s", deployed.name, note)
        with self._lock:
            if deployed.name in self._models:
                deployed._shutdown()
                raise ConfigError(f"a model named {deployed.name!r} is already deployed; pass name= or unload it first")
            self._models[deployed.name] = deployed
        return deployed

    def _add_to_engine(self, name: str, plan: Plan, options: DeployOptions, warm: Held | None = None) -> Any:
        # The chosen candidate may load a transformed file (int8, fp16, optimised graph): the engine
        # loads ``chosen.model``, and every replica the plan offers loads that same file. The first
        # placement is the chosen candidate: it adopts the session measured while planning (``warm``).
        devices = {d.id: d for d in self._devices}
        placements = [(c.config, devices[c.config.device]) for c in plan.replicas(options.replicas)]
        return self.engine.add(
            name, plan.chosen.model, placements, options, adopt={0: warm} if warm is not None else None
        )

    def _upgrade(
        self,
        model: DeployedModel,
        future: Any,
        options: DeployOptions,
        bench: Bench | None = None,
        spec: ModelSpec | None = None,
    ) -> None:
        """Fast start: switch to the measured plan without dropping requests.

        The new placement is loaded under a second engine name while the first keeps serving; the
        handle swap is one attribute store, then the first entry drains its in-flight work. With
        ``bench`` (where the new plan measured), the new placement adopts the session it measured.
        """
        try:
            self._switch(model, future, options, bench)
        finally:
            if bench is not None:
                bench.close()  # whatever was not adopted
            if spec is not None:
                _loaded(spec, model.plan)

    def _switch(self, model: DeployedModel, future: Any, options: DeployOptions, bench: Bench | None) -> None:
        from aivmm.planner import identity as plan_identity

        try:
            better = future.result()
        except Exception as exc:  # the ready plan keeps serving; say why it was not upgraded
            log.warning(
                "model %r: plan upgrade failed, keeping %s: %s", model.name, model.plan.chosen.config.label(), exc
            )
            return
        if model.closed or better.chosen.config == model.plan.chosen.config:
            model.plan = better
            return
        old_name = model._engine_name
        new_name = f"{model.name}@{better.chosen.config.key()}"
        warm = bench.take(plan_identity(better.chosen)) if bench is not None and not options.isolation else None
        try:
            handle = self._add_to_engine(new_name, better, options, warm)
        except Exception as exc:
            log.warning(
                "model %r: could not load the upgraded plan %s: %s", model.name, better.chosen.config.label(), exc
            )
            return
        model._handle, model._engine_name, model.plan = handle, new_name, better
        log.info("model %r: upgraded to %s", model.name, better.chosen.config.label())
        if self._engine is not None:
            self._engine.remove(old_name, drain=True)
            if model.closed:  # closed while the upgrade loaded: nothing may stay behind
                self._engine.remove(new_name, drain=False)

    def get(self, name: str) -> DeployedModel:
        with self._lock:
            try:
                return self._models[name]
            except KeyError:
                raise ModelNotFoundError(
                    f"no deployed model {name!r}; deployed: {sorted(self._models) or 'none'}"
                ) from None

    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def unload(self, name: str, *, drain: bool = True) -> None:
        model = self.get(name)
        model._closed = True
        self._forget(name, drain=drain)

    def _forget(self, name: str, *, drain: bool = True) -> None:
        with self._lock:
            model = self._models.pop(name, None)
            engine = self._engine
        if model is not None and hasattr(model, "_shutdown"):  # a DeployedLLM runs outside the engine
            model._shutdown()
        elif engine is not None and model is not None:
            engine.remove(model._engine_name, drain=drain)

    def status(self) -> dict[str, Any]:
        if self._engine is None:
            return {"devices": [d.to_json() for d in self._devices], "models": {}}
        return self._engine.status()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            names = list(self._models)
        for n in names:
            self._models[n]._closed = True
            self._forget(n)
        if self._engine is not None:
            self._engine.close()

    def __enter__(self) -> VMM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _loaded(spec: ModelSpec, plan: Plan) -> None:
    # Loaded: the runtime holds the graph now, so the loader's parse is dropped (it would double the
    # memory a deployed model holds). A later replan or reload parses the file again.
    from aivmm.models import release_parsed

    release_parsed(spec)
    release_parsed(plan.chosen.model)


def _has_kv_cache(spec: ModelSpec) -> bool:
    names = {t.name for t in spec.inputs}
    return isinstance(spec.source, str | os.PathLike) and any(n.startswith("past_key_values.") for n in names)


async def gather_execute(model: DeployedModel, batches: Sequence[Any]) -> list[dict[str, Any]]:
    """Run several inputs concurrently through ``execute_async`` (a convenience for notebooks)."""
    return list(await asyncio.gather(*(model.execute_async(b) for b in batches)))
