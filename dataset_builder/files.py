"""Writing files so that a killed job never leaves a half-written one behind (used by build, generate, evaluate)."""

from __future__ import annotations

import io
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path


def atomic_write(path: Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8) to a temporary sibling of `path`, then rename it over `path`; the temporary name
    carries the process and thread, so concurrent writers never share one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list:
    """The JSON values of the non-blank lines of a UTF-8 JSONL file."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def atomic_save_png(image, path: Path) -> None:
    """Save a PIL `image` as PNG at `path` the same way (a killed render leaves no half-written face)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def check_output_folder(
    path: str | os.PathLike, *, flag: str, ours: Callable[[Path], bool], what: str, action: str = "write into"
) -> Path:
    """Refuse an output folder that holds something this tool did not make; returns it as a `Path`.

    Allowed: a new path, an empty folder, or one `ours` recognises (by the tool's marker), so reruns and resumes
    work. Otherwise FileExistsError names `flag` and `what` (what `ours` looks for, e.g. "a model folder made by
    `mirror train` (no mirror_training.json)"); nothing is touched.
    """
    path = check_not_a_file(path, flag=flag)
    if path.is_dir() and any(path.iterdir()) and not ours(path):
        raise FileExistsError(
            f"{flag} {path} is not empty and is not {what}; refusing to {action} it. Choose a new or empty folder."
        )
    return path


def check_not_a_file(path: str | os.PathLike, *, flag: str) -> Path:
    """Refuse an output folder path that is an existing file (clearer than "[Errno 20] Not a directory" later)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{flag} {path} is a file, not a folder; choose a new folder.")
    return path
