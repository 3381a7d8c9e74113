"""Writing files so that a crash never leaves a half-written one: the one atomic writer of tfnas.

Kept free of TensorFlow: the configuration loader uses it.
"""
from __future__ import annotations

import os
import pathlib
import tempfile


def write_atomic(path: str | os.PathLike, data: bytes | str) -> None:
    """Writes `data` to a temporary file beside `path`, then renames it over `path` (atomic on one
    filesystem): readers see the old file or the new one, never a part. The file is readable by all
    (0644), as a plain write would leave it; mkstemp alone creates 0600."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
