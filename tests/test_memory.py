"""fabomatic/memory.py: the allocator settings that keep the portal and the bridge small on a Raspberry Pi."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from fabomatic import memory

from .services import ROOT

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim and mallopt are glibc's")

# A child that leaves its heap full of holes: 200 MB of 4 KB blocks, one in 50 kept, the rest freed. glibc keeps the
# freed blocks (only the top of the heap is returned on free); malloc_trim(0) gives their pages back.
FRAGMENT = r"""
import json, sys, threading, time
from fabomatic import memory

def rss():
    return int(open("/proc/self/status").read().split("VmRSS:")[1].split()[0]) / 1024

def churn():
    blocks = [bytes(4096) for _ in range(50_000)]
    kept.extend(blocks[::50])

kept = []
memory.limit_arenas()
worker = threading.Thread(target=churn)  # a thread of its own, as the portal's request threads
worker.start()
worker.join()
before = rss()
if sys.argv[1] == "trim":
    memory.trim()
elif sys.argv[1] == "trimmer":
    memory.start_trimmer(0.1)
    time.sleep(1)
elif sys.argv[1] == "soon":
    memory.start_trimmer(600)  # only trim_soon() can make it trim within the test
    time.sleep(0.2)
    memory.trim_soon()
    time.sleep(2)
else:
    time.sleep(1)
print(json.dumps({"before": before, "after": rss()}))
"""


def _fragmented(mode: str) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", FRAGMENT, mode], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out)


@glibc
def test_freed_memory_stays_with_the_process_until_it_is_trimmed() -> None:
    kept = _fragmented("none")
    trimmed = _fragmented("trim")
    assert kept["before"] > 150 and kept["after"] > 150, kept  # the holes are still resident
    assert trimmed["after"] < trimmed["before"] / 3, trimmed


@glibc
def test_the_trimmer_thread_gives_the_memory_back_by_itself() -> None:
    result = _fragmented("trimmer")
    assert result["after"] < result["before"] / 3, result


@glibc
def test_a_finished_request_has_the_memory_given_back_a_second_later() -> None:
    result = _fragmented("soon")
    assert result["after"] < result["before"] / 3, result


@glibc
def test_the_arena_cap_and_trim_are_available() -> None:
    assert memory.limit_arenas() is True
    assert isinstance(memory.trim(), bool)


@pytest.mark.parametrize(("value", "seconds"), [("", 30.0), ("0", 0.0), ("5", 5.0), ("-3", 0.0), ("soon", 30.0)])
def test_the_trim_interval_comes_from_the_environment(monkeypatch, value, seconds) -> None:
    if value:
        monkeypatch.setenv("MEMORY_TRIM_SECONDS", value)
    else:
        monkeypatch.delenv("MEMORY_TRIM_SECONDS", raising=False)
    assert memory.trim_interval() == seconds


def test_no_trimmer_when_turned_off() -> None:
    assert memory.start_trimmer(0) is None


def test_the_bridge_runs_without_the_cryptography_that_only_the_portal_needs() -> None:
    """The bridge's live updates go through redis-py and channels_redis, which use `cryptography` only if present."""
    code = (
        "import sys, django; django.setup(); import channels_redis.pubsub, redis; "
        "from telemetry.mqtt import Bridge; print(sorted(m for m in sys.modules if m.startswith('cryptography')))"
    )
    env = {**os.environ, "FABOMATIC_PROCESS": "bridge", "SECRET_KEY": "x", "FABOMATIC_ENV_FILE": "/nonexistent"}
    env["DJANGO_SETTINGS_MODULE"] = "fabomatic.settings"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['cryptography']", out.stdout  # the blocked entry itself, nothing imported


def test_the_portal_and_the_bridge_hide_their_startup_objects_from_the_garbage_collector() -> None:
    code = "import gc, django; import fabomatic.asgi; print(gc.get_freeze_count())"
    env = {**os.environ, "SECRET_KEY": "x", "FABOMATIC_ENV_FILE": "/nonexistent"}
    env["DJANGO_SETTINGS_MODULE"] = "fabomatic.settings"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert int(out.stdout) > 100_000, out.stdout  # Django, the admin, the URL patterns: frozen, not walked
    source = (ROOT / "telemetry" / "management" / "commands" / "mqtt_listen.py").read_text()
    assert "memory.freeze_startup_objects()" in source
