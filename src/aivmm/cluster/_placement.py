"""Where copies go: classes of identical devices, and the spread of copies over nodes and devices.

Pure functions over device ids, so they are tested without Ray.
"""

from __future__ import annotations

import collections
import dataclasses
import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

from aivmm.cluster._ids import split
from aivmm.devices import Device


def device_classes(devices: Sequence[Device], keep: str | None = None) -> dict[str, list[str]]:
    """Representative device id → the ids of every device identical to it (hardware, memory, runtimes).

    ``keep`` (a pinned device) is made the representative of its class.
    """
    groups: dict[str, list[str]] = {}
    for d in devices:
        props = {k: v for k, v in d.properties.items() if k not in ("node", "local_id")}
        key = json.dumps(
            [
                d.kind.value,
                d.vendor.value,
                d.name,
                d.memory_total_bytes,
                d.memory_free_bytes >> 30,
                sorted(d.features),
                list(d.runtimes),
                d.simulated,
                props,
            ],
            sort_keys=True,
            default=str,
        )
        groups.setdefault(key, []).append(d.id)
    out = {}
    for members in groups.values():
        rep = keep if keep in members else members[0]
        out[rep] = members
    return out


def on_device(plan: Any, device: str) -> Any:
    """The plan with its chosen candidate moved to the device it was actually loaded on (same class)."""
    chosen = plan.chosen
    if chosen.config.device == device:
        return plan
    moved = dataclasses.replace(chosen, config=dataclasses.replace(chosen.config, device=device))
    return dataclasses.replace(plan, chosen=moved)


def choose_devices(
    ranked: Sequence[Any],
    classes: Mapping[str, list[str]],
    count: int,
    avoid: AbstractSet[str],
    copies: collections.Counter[str],
) -> list[tuple[Any, str]]:
    """``count`` (candidate, device id) pairs: candidates in ``ranked`` order, each on the members of
    its device class; nodes without a copy of this model first, then the device holding the fewest
    copies of any model; distinct devices not in ``avoid`` first, then the first pick again.
    Empty when ``avoid`` already covers every feasible device."""
    picks: list[tuple[Any, str]] = []
    for cand in ranked:
        members = list(classes.get(cand.config.device, [cand.config.device]))
        while members and len(picks) < count:
            nodes = {split(d)[0] for d in avoid} | {split(d)[0] for _, d in picks}
            free = [d for d in members if d not in avoid and d not in {p for _, p in picks}]
            if not free:
                break
            best = min(free, key=lambda d: (split(d)[0] in nodes, copies[d], d))
            picks.append((cand, best))
            members.remove(best)
    if not picks:
        if avoid:
            return []
        first = ranked[0].config.device
        picks.append((ranked[0], min(classes.get(first, [first]), key=lambda d: (copies[d], d))))
    while len(picks) < count:
        picks.append(picks[0])
    return picks
