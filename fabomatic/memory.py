"""Keeping the long-running processes (portal, bridge) small enough for a Raspberry Pi with 512 MB.

Two things make a CPython server on glibc grow without leaking: glibc gives every thread that allocates its own
malloc arena (up to eight per core), and the portal runs each request's sync code in a fresh thread (asgiref), so the
memory a big page used stays spread over many arenas; and freed memory in the middle of an arena is kept, not given
back. ``limit_arenas()`` caps the arenas at two (the setting ``MALLOC_ARENA_MAX=2`` does the same, but only when set
before the process starts, which every way of starting it would have to remember), and ``start_trimmer()`` calls
``malloc_trim(0)`` every ``MEMORY_TRIM_SECONDS`` (30 s by default, 0 turns it off) and a second after each portal
request, which returns the free pages of every arena to the system (a few milliseconds). Measured with
``python -m bench.footprint``; both do nothing where the C library is not
glibc (musl, macOS).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
import os
import platform
import threading
import time
from functools import cache

logger = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt() parameter, from glibc's malloc.h
ARENAS = 2
DEFAULT_TRIM_SECONDS = 30.0


@cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    name = ctypes.util.find_library("c")
    return ctypes.CDLL(name) if name else None


def limit_arenas(arenas: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas; effective for arenas made after the call (call it before threads start)."""
    libc = _glibc()
    return bool(libc and libc.mallopt(M_ARENA_MAX, arenas))


def trim() -> bool:
    """Give the free memory of every malloc arena back to the system; True if some was."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


def trim_interval() -> float:
    try:
        return max(0.0, float(os.environ.get("MEMORY_TRIM_SECONDS", DEFAULT_TRIM_SECONDS)))
    except ValueError:
        return DEFAULT_TRIM_SECONDS


_started = threading.Event()
_wanted = threading.Event()
SETTLE_SECONDS = 1.0  # after a request asks, let it finish freeing (and the next ones come) before trimming


def trim_soon(**_: object) -> None:
    """Ask the trimmer to trim within about a second (a ``request_finished`` receiver: after a big page, not 30 s
    later). Costs nothing when no trimmer runs."""
    if _started.is_set():
        _wanted.set()


def start_trimmer(interval: float | None = None) -> threading.Thread | None:
    """Trim every ``interval`` seconds, and soon after ``trim_soon()``, in a daemon thread, once per process; None when
    off or not on glibc."""
    every = trim_interval() if interval is None else interval
    if every <= 0 or _glibc() is None or _started.is_set():
        return None
    _started.set()

    def run() -> None:
        while True:
            if _wanted.wait(every):
                time.sleep(SETTLE_SECONDS)
            _wanted.clear()
            try:
                trim()
            except Exception:  # never let housekeeping of the allocator take a process down
                logger.exception("malloc_trim failed")
                return

    thread = threading.Thread(target=run, name="malloc-trim", daemon=True)
    thread.start()
    return thread


def freeze_startup_objects() -> None:
    """Move everything made so far (modules, settings, URL patterns, templates...) out of the garbage collector's
    sight: its full collections no longer walk those hundreds of thousands of objects, which cost the dashboard of
    1,000 machines ~30 ms a page. Call once, when the process has started."""
    gc.collect()
    gc.freeze()
