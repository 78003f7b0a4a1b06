"""Loading and unloading models: replicas or pipeline stages, admitted through the ledger.

``ModelLoader.load`` is the one way a model's sessions come to exist in the engine: it sizes each
placement, splits a model too large for its device into pipeline stages, registers the replicas
with residency (which opens the sessions through :func:`open_session`) and with the dispatcher
(which gives batched ones a queue). ``unload`` undoes all of it.
"""

from __future__ import annotations

import logging
import pathlib
import tempfile
from collections.abc import Sequence

from aivmm.backends import Config, Session, registry
from aivmm.devices import Device
from aivmm.errors import ConfigError, ModelNotReadyError, ModelTooLargeError, OutOfMemoryError
from aivmm.memory import Footprint, Ledger, estimate, format_bytes
from aivmm.models import ModelSpec
from aivmm.runtime._batching import BatchingConfig
from aivmm.runtime._dispatch import Dispatcher
from aivmm.runtime._fleet import DeviceFleet
from aivmm.runtime._handle import ModelHandle
from aivmm.runtime._replica import Replica
from aivmm.runtime._request import settle
from aivmm.runtime._residency import ResidencyManager, WarmSession
from aivmm.runtime._split import PipelineSession, SplitPlan, build_stages, plan_split
from aivmm.runtime._states import ModelState, Tier
from aivmm.runtime._worker import WorkerSession

log = logging.getLogger(__name__)

Placement = tuple[Config, Device]


def _adoptable(replica: Replica, session: Session) -> bool:
    # An isolated replica runs in a worker process: a session of this process cannot serve it.
    return (
        not replica.isolation
        and not session.closed
        and session.config == replica.config
        and session.device.id == replica.device.id
        and session.model is replica.spec
    )


def open_session(replica: Replica) -> Session:
    """A new session for ``replica``: in a worker process when it asked for isolation, else in-process."""
    if replica.isolation:
        return WorkerSession(replica.spec, replica.device, replica.config)
    return registry.get(replica.config.backend).load(replica.spec, replica.device, replica.config)


class ModelLoader:
    """Turns (config, device) placements into registered replicas, and takes them down again."""

    def __init__(
        self,
        fleet: DeviceFleet,
        ledger: Ledger,
        residency: ResidencyManager,
        dispatcher: Dispatcher,
        *,
        work_dir: pathlib.Path | None = None,
    ) -> None:
        self._fleet = fleet
        self._ledger = ledger
        self._residency = residency
        self._dispatcher = dispatcher
        self._work_dir = work_dir

    def check(
        self, name: str, spec: ModelSpec, placements: Sequence[Placement], batching: BatchingConfig | None
    ) -> None:
        """Refuse what cannot be deployed before anything is loaded."""
        if not placements:
            raise ConfigError(f"model {name!r}: at least one (config, device) placement is needed")
        for config, device in placements:
            self._fleet.check_placement(name, config, device)
        if batching is not None:
            _check_batchable(spec, batching)

    def load(
        self,
        handle: ModelHandle,
        placements: Sequence[Placement],
        *,
        split: bool | str = "auto",
        adopt: dict[int, WarmSession] | None = None,
    ) -> None:
        """Load ``handle``'s replicas on ``placements`` (already checked) and leave it READY.

        ``adopt``: sessions already loaded, by placement index; each one a replica adopts is removed
        from it (the caller closes the rest). On failure everything loaded so far is unloaded again
        and the error propagates.
        """
        adopt = {} if adopt is None else adopt
        placements = list(placements)
        spec = handle.spec
        batch = handle.batching.max_batch_size if handle.batching is not None else 1
        try:
            footprints = [estimate(spec, cfg.precision, batch) for cfg, _ in placements]
            too_big = [
                (cfg, dev, fp)
                for (cfg, dev), fp in zip(placements, footprints)
                if fp.total > self._ledger.capacity(dev.id)
            ]
            if split is True or (split == "auto" and too_big and len(placements) == 1):
                self._load_split(handle, placements, footprints[0], forced=split is True)
            else:
                if too_big:
                    raise self._too_large(spec, too_big, batch)
                for i, ((cfg, dev), fp) in enumerate(zip(placements, footprints)):
                    self._add(handle, i, cfg, dev, fp)
                for replica in handle.replicas:
                    given = adopt.get(replica.index)
                    if given is not None and _adoptable(replica, given.session):
                        del adopt[replica.index]
                        self._residency.adopt(
                            replica, given.session, given.ledger_key, "deploy (measured while planning)"
                        )
                        continue
                    try:
                        self._residency.ensure_resident(replica, "deploy")
                    except OutOfMemoryError as exc:
                        # Overcommitted and everything else busy: it loads on its first request.
                        handle.events.append(f"{replica.key} not loaded at deploy: {exc}")
        except BaseException:
            self.unload(handle)
            raise
        handle.state = ModelState.READY
        handle.refresh_fast_path()

    def add_replica(self, handle: ModelHandle, index: int, config: Config, device: Device) -> Replica:
        """One more replica of a deployed model (loaded on its first request)."""
        batch = handle.batching.max_batch_size if handle.batching is not None else 1
        return self._add(handle, index, config, device, estimate(handle.spec, config.precision, batch))

    def unload(self, handle: ModelHandle, *, timeout_s: float = 5.0) -> None:
        """Fail what is still queued, close every session (bounded wait for running requests), free the
        ledger, and mark the model UNLOADED."""
        for replica in handle.replicas:
            for left in self._dispatcher.detach(replica):
                settle(left, error=ModelNotReadyError(f"model {handle.name!r} was unloaded before it ran"))
        for replica in [*handle.replicas, *handle.stage_replicas]:
            try:
                self._residency.unload(replica, timeout_s=timeout_s)
            except Exception:  # a broken session must not keep the memory accounted
                log.exception("closing %s failed", replica.key)
                self._ledger.release(replica.key)
        handle.state = ModelState.UNLOADED
        handle.refresh_fast_path()

    # ------------------------------------------------------------------ inside
    def _add(self, handle: ModelHandle, index: int, config: Config, device: Device, footprint: Footprint) -> Replica:
        replica = Replica(handle.name, index, handle.spec, config, device, footprint, isolation=handle.isolation)
        self._dispatcher.attach(handle, replica)
        self._residency.register(replica)
        handle.add_replica(replica)
        return replica

    def _too_large(
        self, spec: ModelSpec, too_big: list[tuple[Config, Device, Footprint]], batch: int
    ) -> ModelTooLargeError:
        parts = [
            f"{dev.id}: needs {format_bytes(fp.total)} (weights {format_bytes(fp.weights_bytes)} at"
            f" {cfg.precision.value} + activations {format_bytes(fp.activation_bytes)} at batch {batch}),"
            f" budget {format_bytes(self._ledger.capacity(dev.id))}"
            for cfg, dev, fp in too_big
        ]
        largest = max(self._ledger.capacity(d) for d in self._fleet.healthy_ids())
        return ModelTooLargeError(
            f"model {spec.name!r} does not fit: {'; '.join(parts)}; the largest budget is {format_bytes(largest)}"
            " (deploy it with one placement and split='auto' to split it across devices)"
        )

    def _load_split(
        self, handle: ModelHandle, placements: list[Placement], footprint: Footprint, *, forced: bool
    ) -> None:
        spec = handle.spec
        config, first = placements[0]
        if forced and len(placements) > 1:
            devices = [d for _, d in placements]
        else:
            others = sorted(
                (self._fleet.get(i) for i in self._fleet.healthy_ids() if i != first.id),
                key=lambda d: -self._ledger.capacity(d.id),
            )
            devices = [first, *others]
        share = footprint.activation_bytes // max(1, len(devices))
        rooms = [(d.id, max(0, self._ledger.capacity(d.id) - share)) for d in devices]
        plan: SplitPlan = plan_split(spec, rooms)
        work = self._work_dir or pathlib.Path(tempfile.mkdtemp(prefix="aivmm-split-"))
        stage_specs = build_stages(spec, plan, work / handle.name.replace("/", "_"))
        handle.split_plan = plan
        sessions: list[Session] = []
        for stage, stage_spec in zip(plan.stages, stage_specs):
            dev = self._fleet.get(stage.device)
            cfg = placements[stage.index][0] if forced and len(placements) > 1 else self._fleet.config_for(dev, config)
            fp = estimate(stage_spec, cfg.precision, handle.batching.max_batch_size if handle.batching else 1)
            replica = Replica(
                f"{handle.name}/stage{stage.index}", 0, stage_spec, cfg, dev, fp, isolation=handle.isolation
            )
            replica.pinned = True
            self._residency.register(replica)
            handle.stage_replicas.append(replica)
            self._residency.ensure_resident(replica, "deploy (pipeline stage)")
            assert replica.session is not None
            sessions.append(replica.session)
        pipeline = Replica(handle.name, 0, spec, config, first, Footprint(0, 0))
        pipeline.pinned = True
        pipeline.session = PipelineSession(spec, first, config, sessions)
        pipeline.tier = Tier.DEVICE
        # The stages are pinned, so the pipeline itself never waits for a load: no prefetch.
        self._dispatcher.attach(handle, pipeline, prefetch_when_stalled=False)
        handle.add_replica(pipeline)
        handle.events.append(
            f"split into {len(plan.stages)} stages on {', '.join(s.device for s in plan.stages)}:"
            f" {format_bytes(footprint.total)} does not fit {first.id}'s budget of"
            f" {format_bytes(self._ledger.capacity(first.id))}"
            if not forced
            else f"split into {len(plan.stages)} stages as asked"
        )


def _check_batchable(spec: ModelSpec, batching: BatchingConfig) -> None:
    bd = spec.batch_dim
    if bd is None:
        raise ConfigError(f"model {spec.name!r} has no batch dimension; deploy it without batching")
    for t in spec.inputs:
        if len(t.shape) <= bd:
            raise ConfigError(f"input {t.describe()} has no dimension {bd} to batch along")
        dim = t.shape[bd]
        if isinstance(dim, int) and dim >= 0 and batching.max_batch_size > 1 and dim != batching.max_batch_size:
            raise ConfigError(
                f"input {t.describe()} has a fixed batch size {dim}; batching up to"
                f" {batching.max_batch_size} needs a dynamic batch dimension"
            )
