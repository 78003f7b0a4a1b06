"""Where transformed models and plans live on disk, and the content hashes that key them."""

from aivmm._storage import cache_dir, file_sha256

__all__ = ["cache_dir", "file_sha256"]
