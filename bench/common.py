"""Shared bench helpers: wall time and peak resident memory of one call, measured in this process."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * _PAGE


def measure(fn: Callable[[], Any], interval: float = 0.005) -> tuple[Any, float, int]:
    """Run `fn`; return (result, seconds, peak RSS growth in bytes over the RSS at the start).

    RSS is sampled by a thread, so baseline and candidate can be compared inside one process (the kernel's
    lifetime peak, ru_maxrss, cannot do that).
    """
    start_rss, peak, done = rss_bytes(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_bytes() - start_rss)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    start = time.perf_counter()
    try:
        result = fn()
    finally:
        seconds = time.perf_counter() - start
        done.set()
        thread.join()
    peak[0] = max(peak[0], rss_bytes() - start_rss)
    return result, seconds, peak[0]
