"""Writing files so that a killed job never leaves a half-written one behind (shared by build, generate and evaluate)."""

from __future__ import annotations

import io
import os
import threading
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to a temporary sibling of `path`, then rename it over `path`.

    The temporary name carries the process and thread, so concurrent writers never share one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def atomic_save_png(image, path: Path) -> None:
    """Save a PIL `image` as PNG at `path` the same way (a killed render leaves no half-written face)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())
