"""Small shared helpers for tests: raw-record folders with simple images (no renderer needed)."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
SAMPLE_DIR = REPO / "dataset_builder" / "sample"


def offline_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a fresh offline process: its own HF_HOME under `tmp_path`, the Hub off."""
    return {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", **extra}


def run_python(
    *args, cwd=None, env=None, timeout: float = 300, input: str | None = None
) -> subprocess.CompletedProcess:
    """`python *args` (a script and its arguments, or "-c", code) in a fresh process, its output captured as text."""
    command = [sys.executable, *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=env, input=input, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server another process starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_mirror(*args, cwd: Path = REPO, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """`mirror <args>` (through `mirror_cli.main`) in a fresh offline process, its output captured as text."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    return run_python(
        "-c", "import sys, mirror_cli; sys.exit(mirror_cli.main())", *args, cwd=cwd, env=env, timeout=timeout
    )


def sample_records(n: int | None = None) -> list[dict]:
    records = [json.loads(line) for line in (SAMPLE_DIR / "sessions.jsonl").read_text().splitlines() if line.strip()]
    return copy.deepcopy(records[:n] if n else records)


def sample_profiles() -> list[dict]:
    return [json.loads(line) for line in (SAMPLE_DIR / "profiles.jsonl").read_text().splitlines() if line.strip()]


def with_images(records: list[dict], raw_dir: Path) -> list[dict]:
    """Give every client turn a small PNG file under raw_dir/images (colour derived from the turn)."""
    (raw_dir / "images").mkdir(parents=True, exist_ok=True)
    for r_index, record in enumerate(records):
        for t_index, turn in enumerate(record["turns"]):
            if turn["speaker"] == "client":
                relative = f"images/{record['id']}-{t_index:02d}.png"
                Image.new("RGB", (48, 48), (r_index * 10 % 256, t_index * 20 % 256, 128)).save(raw_dir / relative)
                turn["image"] = relative
    return records


def write_raw(raw_dir: Path, records: list[dict], profiles: list[dict] | None = None) -> Path:
    raw_dir.mkdir(parents=True, exist_ok=True)
    (raw_dir / "sessions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    if profiles is not None:
        (raw_dir / "profiles.jsonl").write_text("".join(json.dumps(p) + "\n" for p in profiles), encoding="utf-8")
    return raw_dir


class ClosingHTTPServer(ThreadingHTTPServer):
    """A `ThreadingHTTPServer` for scripted test servers that leaves no thread behind when closed.

    HTTP/1.1 clients keep connections open, so a plain server's handler threads stay parked on idle sockets after
    `shutdown()`; left until interpreter exit, such threads can abort the process during finalisation. Closing shuts
    every open client connection down, which ends its handler, then joins the handler threads (bounded).
    (Moved here from inference/server.py, which now runs on uvicorn.)
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    close_timeout = 30.0

    def __init__(self, *args, **kwargs) -> None:
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._tracking_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        thread = threading.Thread(target=self.process_request_thread, args=(request, client_address), daemon=True)
        with self._tracking_lock:
            self._connections.add(request)
            self._handlers = {handler for handler in self._handlers if handler.is_alive()}
            self._handlers.add(thread)
        thread.start()

    def shutdown_request(self, request) -> None:
        with self._tracking_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        with self._tracking_lock:
            connections, handlers = list(self._connections), list(self._handlers)
        for connection in connections:
            try:
                connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        deadline = time.monotonic() + self.close_timeout
        for handler in handlers:
            if handler is not threading.current_thread():
                handler.join(timeout=max(0.0, deadline - time.monotonic()))
