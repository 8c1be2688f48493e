"""Process lifetime: nothing a ``lead`` command starts outlives it, and a run records which process owns it.

- ``die_with_parent``: a ``subprocess.Popen`` ``preexec_fn`` asking the kernel to signal the child when
  the process that started it ends, however it ends (SIGKILL included): Linux ``prctl(PR_SET_PDEATHSIG)``.
- ``watch_parent``: the same from inside a child we do not spawn ourselves (a thread polling a pid).
- ``descendants``: every live process below a pid (``/proc``), for ``lead``'s own clean exit and the tests.
- ``owner_tag`` / ``owner_alive``: "host:pid:start-time" of this process, recorded on MLflow runs, so the
  next command can tell a run whose process is gone (killed) from one still going.

Linux only where it reads ``/proc`` or calls ``prctl``; elsewhere those parts are no-ops (documented per
function).
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

#: ``prctl`` option: signal to deliver when the parent (the thread that forked) ends; <linux/prctl.h>.
PR_SET_PDEATHSIG = 1
#: Seconds between two looks at the watched parent (our choice: children gone within a second or two).
WATCH_INTERVAL_S = 1.0


def _prctl() -> Callable | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess.Popen``: the child gets ``sig`` when this process ends (also by
    SIGKILL), and exits at once if this process has already ended before the request took effect.

    The kernel ties the request to the *thread* that starts the child: call Popen from a thread that
    lives as long as the process (the main thread). The signal survives ``exec`` (not set-uid programs).
    Returns None off Linux (no such request there), which Popen takes as "no preexec_fn".
    """
    prctl = _prctl()  # resolved here, before the fork: the child only makes the call
    if prctl is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os._exit(1)

    return preexec


def watch_parent(pid: int, interval_s: float = WATCH_INTERVAL_S) -> threading.Thread:
    """End this process (exit status 1) once process ``pid`` is gone: a daemon thread polling it every
    ``interval_s``. For children another library spawns (where no ``preexec_fn`` can be passed)."""

    def watch() -> None:
        while True:
            time.sleep(interval_s)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):  # gone, or the pid now belongs to another user
                os._exit(1)

    thread = threading.Thread(target=watch, name="lead-parent-watch", daemon=True)
    thread.start()
    return thread


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 onwards), or None."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def start_time(pid: int) -> str | None:
    """The kernel's start time of process ``pid`` (clock ticks since boot), None if unknown; with the
    pid it names one process even after the pid is reused."""
    fields = _stat(pid)
    return fields[19] if fields and len(fields) > 19 else None


def descendants(pid: int | None = None) -> list[int]:
    """Pids of the live processes below ``pid`` (default: this process), children first. Zombies (ended,
    not yet reaped) are left out. Linux (/proc); elsewhere an empty list."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    try:
        names = os.listdir("/proc")
    except OSError:
        return []
    # os.listdir and bytes, not Path.glob and text: a third of the CPU (tests poll this several times a second)
    for name in names:
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                state, ppid = f.read().rsplit(b")", 1)[1].split(None, 2)[:2]
            if state != b"Z":
                children.setdefault(int(ppid), []).append(int(name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(0), []):
            out.append(child)
            todo.append(child)
    return out


def signal_all(pids: list[int], sig: int = signal.SIGTERM) -> None:
    """Send ``sig`` to each of ``pids`` that still runs."""
    for p in pids:
        try:
            os.kill(p, sig)
        except (ProcessLookupError, PermissionError):
            continue


def owner_tag(pid: int | None = None) -> str:
    """``host:pid:start-time`` of process ``pid`` (default: this one)."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{pid}:{start_time(pid) or ''}"


def owner_alive(tag: str) -> bool | None:
    """Whether the process an ``owner_tag`` names still runs: True or False on this host, None when the
    tag is from another host or malformed (nothing can be known)."""
    try:
        host, pid_text, started = tag.rsplit(":", 2)
        pid = int(pid_text)
    except ValueError:
        return None
    if host != socket.gethostname():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process now has that pid
        return False
    now = start_time(pid)
    return now is None or not started or now == started
