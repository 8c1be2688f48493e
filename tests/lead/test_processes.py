"""Process lifetime helpers (lead.processes): the parent-death signal, descendants, run owners."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from lead.processes import descendants, die_with_parent, owner_alive, owner_tag, start_time

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl and /proc are Linux")

#: A process that starts `sleep 600` with die_with_parent, prints its pid, and waits for it.
STARTER = """
import subprocess, sys
from lead.processes import die_with_parent
child = subprocess.Popen(["sleep", "600"], preexec_fn=die_with_parent())
print(child.pid, flush=True)
child.wait()
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_a_child_started_with_die_with_parent_ends_when_its_parent_is_killed():
    starter = subprocess.Popen([sys.executable, "-c", STARTER], stdout=subprocess.PIPE, text=True)
    try:
        child = int(starter.stdout.readline())
        assert descendants(starter.pid) == [child]
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        deadline = time.monotonic() + 5
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _gone(child)  # measured: within 0.1 s
    finally:
        starter.kill()
        starter.wait()


def test_a_plain_child_outlives_a_killed_parent_which_is_why_the_signal_is_needed():
    code = STARTER.replace(", preexec_fn=die_with_parent()", "")
    starter = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    child = int(starter.stdout.readline())
    try:
        starter.send_signal(signal.SIGKILL)
        starter.wait(timeout=10)
        time.sleep(1.0)
        assert not _gone(child)
    finally:
        os.kill(child, signal.SIGKILL)


def test_die_with_parent_is_a_preexec_function_on_linux():
    assert callable(die_with_parent())


def test_owner_tags_tell_a_live_process_from_a_gone_one():
    me = owner_tag()
    assert me == f"{socket.gethostname()}:{os.getpid()}:{start_time(os.getpid())}"
    assert owner_alive(me) is True
    ended = subprocess.Popen(["true"])
    ended.wait()
    assert owner_alive(f"{socket.gethostname()}:{ended.pid}:1") is False
    # the same pid started at another time is another process (a reused pid)
    assert owner_alive(f"{socket.gethostname()}:{os.getpid()}:1") is False
    assert owner_alive(f"another-host:{os.getpid()}:{start_time(os.getpid())}") is None
    assert owner_alive("not a tag") is None
