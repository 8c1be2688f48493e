"""Start-up cost of a cached `lead rank` against importing torch + timm + lead.scoring (issue #18, target 1).

    .venv/bin/python benchmarks/startup.py --store /tmp/store [--repeats 3] [--profile]

The store must already hold a ranking of the demo (``LEAD_STORE=/tmp/store lead rank --dataset
animal-mnist-fewshot --zoo efficientnet-lite`` once), so the timed runs extract nothing and recompute no
score. Three whole processes are run alternately, ``--repeats`` times:

- ``rank``: the cached ranking as a user runs it, with its own temporary Prefect server
  (flows/ephemeral.py). CPU is user + system time of the process tree (``getrusage(RUSAGE_CHILDREN)``:
  the server subprocess is waited for, so it counts), split into the ``lead`` process and the server;
- ``rank_configured``: the same ranking with ``PREFECT_API_URL`` pointing at one Prefect server that this
  benchmark started before (what ``lead serve``, a work pool or a platform's server gives). CPU is the
  ``lead`` process's, and the server's CPU while it served that ranking is reported beside it;
- ``imports``: ``python -c "import torch, timm, lead.scoring"``, the reference;
- the floor of what the issue keeps, imports only, nothing run: ``floor_client`` (``import prefect,
  mlflow.tracking`` and MLflow's SQLAlchemy store: what any process that runs a Prefect flow and records it
  in MLflow imports), ``floor_server`` (``import prefect.server.api.server``: what any process that serves
  Prefect's API imports) and ``floor_one_process`` (both in one interpreter). With a temporary server in a
  second process, ``floor_client + floor_server`` against the imports is a lower bound of ``ratio_cpu``.

Reported: medians and the median paired ratios against the imports (target <= 1.5). ``--profile`` also
writes a CPU profile of one cached run, per thread (cProfile with ``time.thread_time`` in the main thread
and in the thread that runs the flow, flows/cli/interrupts.py), and ``python -X importtime`` totals per
top-level package of the ``lead`` process and of the reference. Writes benchmarks/results/startup.json
(and startup_profile.txt).
"""

from __future__ import annotations

import argparse
import collections
import io
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
RANK = ["rank", "--dataset", "animal-mnist-fewshot", "--zoo", "efficientnet-lite"]
IMPORTS = "import torch, timm, lead.scoring"
#: Imports only: a Prefect flow recorded in MLflow's SQLite store (the client side), Prefect's API (the server).
FLOOR_CLIENT = "import prefect, mlflow.tracking, mlflow.store.tracking.sqlalchemy_store"
FLOOR_SERVER = "import prefect.server.api.server"
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


class _ChildWatch(threading.Thread):
    """The last CPU reading of every direct child of ``pid`` (the temporary server), every 0.1 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.cpu, self.done = pid, {}, threading.Event()

    def run(self):
        while not self.done.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                        if int(fields[1]) == self.pid:
                            self.cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / TICK
                    except (OSError, IndexError, ValueError):
                        pass
            self.done.wait(0.1)


def run(cmd: list[str], env: dict, server_pid: int | None = None) -> dict:
    """One whole process: ``cpu`` (its tree), ``wall``, ``rc``, ``children`` (CPU of its direct children,
    last reading before they ended: the temporary server) and ``served`` (CPU the configured server spent
    meanwhile, when ``server_pid`` is given)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    served0 = proc_cpu(server_pid) if server_pid else 0.0
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    watch = _ChildWatch(proc.pid)
    watch.start()
    _, err = proc.communicate()
    wall = time.perf_counter() - started
    watch.done.set()
    watch.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.stderr.write(err[-3000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    out = {"cpu": cpu, "wall": wall, "rc": proc.returncode, "children": sum(watch.cpu.values())}
    if server_pid:
        time.sleep(1.0)  # the server finishes recording the run's last events
        out["served"] = proc_cpu(server_pid) - served0
    return out


def import_totals(env: dict, cmd: list[str]) -> dict[str, float]:
    """Self time of every module imported by ``cmd``'s own process (``-X importtime``, not inherited by its
    subprocesses), summed per top-level package (seconds), the 25 largest."""
    proc = subprocess.run([sys.executable, "-X", "importtime", *cmd], env=env, cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    totals: dict[str, float] = collections.Counter()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            parts = line.split("|")
            try:
                self_us = int(parts[0].split(":")[1])
            except ValueError:
                continue
            totals[parts[2].strip().split(".")[0]] += self_us / 1e6
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])[:25])


#: Run in a child process by --profile: the CLI with cProfile (CPU time per thread) in the main thread and in
#: the thread that runs the flow (flows/cli/interrupts.py names it "lead-flow").
PROFILE_SCRIPT = textwrap.dedent("""
    import cProfile, pstats, sys, threading, time
    out, argv = sys.argv[1], sys.argv[2:]
    profiles = {}
    run = threading.Thread.run
    def profiled(self):
        if self.name != "lead-flow":
            return run(self)
        profiles["flow thread"] = prof = cProfile.Profile(time.thread_time)
        prof.runcall(run, self)
    threading.Thread.run = profiled
    profiles["main thread"] = main = cProfile.Profile(time.thread_time)
    sys.argv = ["lead", *argv]
    main.enable()
    try:
        from flows.cli import app
        app()
    except SystemExit:
        pass
    finally:
        main.disable()
        with open(out, "w") as f:
            for name, prof in profiles.items():
                stats = pstats.Stats(prof, stream=f)
                f.write(f"== {name}: {stats.total_tt:.2f} s of CPU ==\\n")
                stats.sort_stats("cumulative").print_stats(40)
""")


def start_server() -> tuple[subprocess.Popen, str]:
    """A Prefect server as `lead` starts its temporary one (same command and settings), for the configured runs."""
    from flows.ephemeral import _command, _environment
    from flows.ui import free_port, prefect_health_url, wait_http

    port = free_port()
    proc = subprocess.Popen(_command(port), env=_environment(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_http(prefect_health_url(port), proc, timeout_s=120)
    return proc, f"http://127.0.0.1:{port}/api"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--store", required=True, type=Path)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "startup.json")
    args = ap.parse_args(argv)
    env = {**os.environ, "LEAD_STORE": str(args.store.resolve())}
    env.pop("PREFECT_API_URL", None)
    lead = str(Path(sys.executable).with_name("lead"))
    server, url = start_server()
    configured = {**env, "PREFECT_API_URL": url}
    runs = {"rank": [], "rank_configured": [], "imports": [], "floor_client": [], "floor_server": [],
            "floor_one_process": []}
    try:
        for _ in range(args.repeats):
            runs["rank"].append(run([lead, *RANK], env))
            runs["rank_configured"].append(run([lead, *RANK], configured, server_pid=server.pid))
            runs["imports"].append(run([sys.executable, "-c", IMPORTS], env))
            runs["floor_client"].append(run([sys.executable, "-c", FLOOR_CLIENT], env))
            runs["floor_server"].append(run([sys.executable, "-c", FLOOR_SERVER], env))
            runs["floor_one_process"].append(run([sys.executable, "-c", f"{FLOOR_CLIENT}, {FLOOR_SERVER.removeprefix('import ')}"], env))
    finally:
        server.terminate()
        server.wait()
    if any(r["rc"] != 0 for rs in runs.values() for r in rs):
        raise SystemExit("a run failed (see above)")
    med = lambda rs, key: statistics.median(r[key] for r in rs)  # noqa: E731
    ratio = lambda name, key: statistics.median(a[key] / b[key] for a, b in zip(runs[name], runs["imports"]))  # noqa: E731
    out = {
        "cpu_s": {k: med(rs, "cpu") for k, rs in runs.items()},
        "wall_s": {k: med(rs, "wall") for k, rs in runs.items()},
        "rank_server_cpu_s": med(runs["rank"], "children"),
        "rank_lead_cpu_s": statistics.median(r["cpu"] - r["children"] for r in runs["rank"]),
        "configured_server_cpu_s": med(runs["rank_configured"], "served"),
        "ratio_cpu": ratio("rank", "cpu"), "ratio_wall": ratio("rank", "wall"),
        "ratio_cpu_configured": ratio("rank_configured", "cpu"), "ratio_wall_configured": ratio("rank_configured", "wall"),
        # lower bounds of ratio_cpu from imports alone: a temporary server in a second process, or in this one
        "floor_ratio_cpu_two_processes": statistics.median(
            (c["cpu"] + s["cpu"]) / i["cpu"] for c, s, i in zip(runs["floor_client"], runs["floor_server"], runs["imports"])),
        "floor_ratio_cpu_one_process": ratio("floor_one_process", "cpu"),
        "runs": runs, "target": "ratio_cpu <= 1.5",
    }
    print(json.dumps({k: v for k, v in out.items() if k != "runs"}, indent=1))
    if args.profile:
        with tempfile.TemporaryDirectory() as tmp:
            script, prof = Path(tmp) / "lead_thread_profile.py", Path(tmp) / "lead_thread_profile.txt"
            script.write_text(PROFILE_SCRIPT)
            done = subprocess.run([sys.executable, str(script), str(prof), *RANK], env=env, cwd=ROOT,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
            if not prof.exists():
                raise SystemExit(f"the profiled run failed:\n{done.stderr[-3000:]}")
            text = prof.read_text()
        out["imports_rank"] = import_totals(env, [lead, *RANK])
        out["imports_reference"] = import_totals(env, ["-c", IMPORTS])
        text = (f"CPU profile of one cached `lead {' '.join(RANK)}`, per thread (cProfile, time.thread_time)\n\n" + text
                + "\n-X importtime, self seconds per top-level package (the lead process):\n"
                + "\n".join(f"  {k:28s} {v:6.2f}" for k, v in out["imports_rank"].items())
                + "\n\n-X importtime (import torch, timm, lead.scoring):\n"
                + "\n".join(f"  {k:28s} {v:6.2f}" for k, v in out["imports_reference"].items()) + "\n")
        (RESULTS / "startup_profile.txt").write_text(text)
    args.out.write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
