"""Where aivmm keeps files, and how it fingerprints them: one place for every package.

The cache directory is ``$AIVMM_CACHE_DIR``, else ``$XDG_CACHE_HOME/aivmm``, else ``~/.cache/aivmm``,
read at call time (never at import) so tests and users can point it elsewhere per process.
"""

from __future__ import annotations

import hashlib
import os
import pathlib

CACHE_ENV = "AIVMM_CACHE_DIR"


def cache_dir(*parts: str, create: bool = True) -> pathlib.Path:
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        root = pathlib.Path(configured).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
        root = (pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache") / "aivmm"
    path = root.joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """The content hash of a file, streamed (weights files can be many GB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()
