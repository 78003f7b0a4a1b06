"""Where transformed models and plans live on disk, and the content hashes that key them."""

from __future__ import annotations

import hashlib
import os
import pathlib

_CHUNK = 1 << 20


def cache_dir(*parts: str) -> pathlib.Path:
    """The aivmm cache directory (``AIVMM_CACHE_DIR`` or ``~/.cache/aivmm``), created on demand.

    Read at call time, never at import, so tests and users can point it elsewhere per process.
    """
    root = os.environ.get("AIVMM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "aivmm"
    )
    path = pathlib.Path(root, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
