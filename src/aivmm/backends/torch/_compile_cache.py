"""Where torch.compile keeps what it builds (Inductor's FX graph and autotuning caches, Triton's
kernels), keyed by everything that makes a compiled kernel wrong or slow when it changes.

Inductor and Triton already cache on disk and key their entries by source, torch and Triton
versions and the device's properties, but not by the driver, and by default in a shared
``/tmp/torchinductor_<user>`` that another process can wipe. aivmm points both at one folder
under its own cache per (GPU model, compute capability, driver, torch, CUDA, Triton, Python): a
change of any of them starts an empty folder, so nothing built for another stack is read back,
and a second deploy of the same model in a new process reuses the kernels and autotuning results
of the first.

The folder is a process-wide environment variable (Inductor reads it whenever it compiles, and
keeps Triton's kernels under it), so it is set only when aivmm compiles, and never over a value the
user chose (Inductor writes its default back into the variable once it has compiled: that one is
not a choice and is replaced).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import pathlib
import platform
import threading
from collections.abc import Mapping
from typing import Any

from aivmm._storage import cache_dir
from aivmm.devices import Device

INDUCTOR_ENV = "TORCHINDUCTOR_CACHE_DIR"
_lock = threading.Lock()


def stack_versions(device: Device, torch: Any) -> dict[str, str]:
    """What a compiled kernel depends on beyond its source: the device and the software stack."""
    props = device.properties
    try:
        triton = importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        triton = "absent"
    return {
        "device": device.name,
        "compute_capability": str(props.get("compute_capability", "")),
        "driver": str(props.get("driver_version", "")),
        "torch": str(torch.__version__),
        "cuda": str(getattr(torch.version, "cuda", None) or getattr(torch.version, "hip", None) or ""),
        "triton": triton,
        "python": platform.python_version(),
    }


def stack_key(versions: Mapping[str, str]) -> str:
    text = json.dumps(dict(sorted(versions.items())), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def compile_cache_dir(versions: Mapping[str, str], *, create: bool = True) -> pathlib.Path:
    """The folder for this stack (``<aivmm cache>/torch-compile/<key>``), with a ``stack.json``
    that says which versions it belongs to."""
    path = cache_dir("torch-compile", stack_key(versions), create=create)
    if create:
        marker = path / "stack.json"
        if not marker.is_file():
            marker.write_text(json.dumps(dict(versions), indent=1, sort_keys=True))
    return path


def use_compile_cache(device: Device, torch: Any) -> pathlib.Path | None:
    """Point Inductor (and Triton under it) at this stack's folder, unless the user set their own;
    returns the folder in use (None when the user's own setting is kept)."""
    with _lock:
        current = os.environ.get(INDUCTOR_ENV)
        ours = cache_dir("torch-compile", create=False)
        if current and not _is_default(current) and not pathlib.Path(current).is_relative_to(ours):
            return None
        root = compile_cache_dir(stack_versions(device, torch)) / "inductor"
        os.environ[INDUCTOR_ENV] = str(root)
        return root


def _is_default(path: str) -> bool:
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    except ImportError:
        return False
    return os.path.abspath(path) == os.path.abspath(default_cache_dir())
