"""File fingerprints for cache keys and describe() records: sha256 of a file's bytes, hashed once per process.

    file_sha256("weights/model.safetensors")   # 64 hex digits; memoised per (path, size, mtime)
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

__all__ = ["file_sha256"]


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file's bytes; memoised by (resolved path, size, mtime), so a large file hashes once."""
    st = os.stat(path)
    return _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
