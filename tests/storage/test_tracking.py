"""End states of MLflow runs (storage.tracking): runs of a gone process end as KILLED, others are left."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from lead.processes import owner_tag
from storage.tracking import OWNER_TAG, Tracker


@pytest.fixture(scope="module")
def migrated_db(tmp_path_factory) -> Path:
    """One migrated MLflow SQLite database (a migration costs seconds; a copy 0.05 s)."""
    db = tmp_path_factory.mktemp("template") / "mlflow.db"
    Tracker(f"sqlite:///{db}")
    return db


def _tracker(tmp_path: Path, template: Path) -> Tracker:
    shutil.copy(template, tmp_path / "mlflow.db")
    return Tracker(f"sqlite:///{tmp_path}/mlflow.db", artifact_root=tmp_path / "artifacts")


def test_the_next_ranking_ends_the_runs_of_gone_processes_on_this_host_as_killed(tmp_path, migrated_db):
    tracker = _tracker(tmp_path, migrated_db)
    exp = tracker.ensure_experiment("lead/x")
    ended = subprocess.Popen(["true"])
    ended.wait()
    owners = {
        "killed": f"{socket.gethostname()}:{ended.pid}:1",
        "alive": owner_tag(os.getppid()),
        "elsewhere": f"another-host:{ended.pid}:1",
    }
    ids = {name: tracker.client.create_run(exp, run_name=name, tags={OWNER_TAG: o}).info.run_id
           for name, o in owners.items()}
    ids["untagged"] = tracker.client.create_run(exp, run_name="untagged").info.run_id  # before lead.owner existed
    new = tracker.start_parent(exp, run_name="new", tags={"dataset": "x"})
    status = {name: tracker.client.get_run(i).info.status for name, i in ids.items()}
    assert status == {"killed": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING", "untagged": "RUNNING"}
    assert tracker.client.get_run(ids["killed"]).info.end_time is not None
    run = tracker.client.get_run(new)
    assert run.info.status == "RUNNING" and run.data.tags[OWNER_TAG] == owner_tag()


def test_end_open_runs_ends_what_this_process_started_and_nothing_else(tmp_path, migrated_db):
    tracker = _tracker(tmp_path, migrated_db)
    exp = tracker.ensure_experiment("lead/y")
    other = tracker.client.create_run(exp, run_name="not ours").info.run_id
    parent = tracker.start_parent(exp, run_name="ours", tags={})
    assert parent in Tracker.end_open_runs("KILLED")
    assert tracker.client.get_run(parent).info.status == "KILLED"
    assert tracker.client.get_run(other).info.status == "RUNNING"
    assert parent not in Tracker.end_open_runs("KILLED")  # ended once
