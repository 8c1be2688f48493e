"""Against a real ``prefect server start``: set up, serve the deployments, register a dataset, and wait for
the triggered ranking to land in the rankings table; then the nightly schedule, MLflow's tags, and the
same deployments from ``deploy/prefect.yaml`` onto the work pool that ``lead setup`` created.

Everything runs as the user would run it: ``lead`` and ``prefect`` commands in subprocesses, each in its
own process group; serve and server are stopped with SIGINT (serve first), and killed in a ``finally``.
Takes about a minute and a half on 2 busy cores (server start ~10 s, serve ~15 s, register ~4 s, the
triggered ranking ~20 s, ``prefect deploy`` ~15 s).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from flows.ui import (
    free_port,
    prefect_health_url,
    quiet_env,
    start_prefect_server,
    stop,
    wait_http,
)
from tests.conftest import copy_sqlite, lite_entry, write_zoo

REPO = Path(__file__).resolve().parents[2]
LEAD = str(Path(sys.executable).parent / "lead")
PREFECT = str(Path(sys.executable).parent / "prefect")
#: Seconds allowed from registering the dataset to its ranking in the table (measured ~20 s here).
TRIGGER_TIMEOUT_S = 240


def _wait(what: str, check, timeout_s: float, procs=(), interval_s: float = 0.5):
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        for p, log in procs:
            assert p.poll() is None, f"{what}: a process exited with {p.returncode}:\n{Path(log).read_text()[-3000:]}"
        value = check()
        if value:
            return value
        time.sleep(interval_s)
    pytest.fail(f"{what}: not within {timeout_s:.0f} s")


@pytest.mark.timeout(480)
def test_served_deployments_rank_a_registered_dataset(tmp_path, tiny_dataset, migrated_prefect_database):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
    )
    from prefect.exceptions import ObjectNotFound
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    store = tmp_path / "store"
    zoo = write_zoo(tmp_path / "zoo.yaml", [lite_entry(0)])
    env = quiet_env(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_API_URL=url,
                    HF_HUB_OFFLINE="1", PREFECT_LOGGING_LEVEL="INFO")
    env.pop("LEAD_STORE", None)
    env.pop("MLFLOW_TRACKING_URI", None)
    server_log, serve_log = tmp_path / "server.log", tmp_path / "serve.log"
    # the server's database exists, at the head revision, as on any server after its first start
    copy_sqlite(migrated_prefect_database, tmp_path / "prefect-home" / "prefect.db")

    def lead(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([LEAD, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path, check=False)

    server = serve = None
    try:
        server = start_prefect_server(port, env=env, log=server_log)
        wait_http(prefect_health_url(port), server)

        setup = lead("setup", "--gpus", "1")
        assert setup.returncode == 0, setup.stderr
        assert f"{url}: concurrency limit 'gpu' = 1 slot" in setup.stdout
        assert "work pool 'lead' created (type process)" in setup.stdout

        with open(serve_log, "wb") as out:
            serve = subprocess.Popen([LEAD, "serve", "--zoo", str(zoo), "--store", str(store)], env=env, cwd=tmp_path,
                                     stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            assert client.read_global_concurrency_limit_by_name("gpu").limit == 1
            assert client.read_work_pool("lead").type == "process"

            def served():
                try:
                    nightly = client.read_deployment_by_name("nightly-rerank/nightly-rerank")
                    on_new = client.read_deployment_by_name("rank-zoo/rank-on-new-dataset")
                except ObjectNotFound:
                    return None
                # the trigger is an automation created right after the deployment: wait for it too
                if not client.read_resource_related_automations(f"prefect.deployment.{on_new.id}"):
                    return None
                return nightly, on_new

            nightly, on_new = _wait("serve registers both deployments and the trigger", served, 120,
                                    procs=[(serve, serve_log)])

            # the nightly deployment carries its cron schedule: 02:00 UTC by default
            assert [(s.schedule.cron, s.schedule.timezone, s.active) for s in nightly.schedules] == [("0 2 * * *", "UTC", True)]
            assert nightly.parameters["zoo"] == str(zoo) and nightly.parameters["store"] == str(store)
            automation = client.read_resource_related_automations(f"prefect.deployment.{on_new.id}")[0]
            assert automation.trigger.expect == {"lead.dataset.registered"}

            started = time.monotonic()
            add = lead("datasets", "add", "tiny", str(tiny_dataset), "--store", str(store))
            assert add.returncode == 0, add.stderr
            assert add.stdout.startswith(f"registered tiny: {tiny_dataset} (24 images, 4 classes, fingerprint ")
            assert f"event lead.dataset.registered sent to {url}" in add.stdout
            register_s = time.monotonic() - started

            files = _wait("the triggered ranking reaches the rankings table",
                          lambda: sorted((store / "rankings").glob("dataset=*/run=*.parquet")), TRIGGER_TIMEOUT_S,
                          procs=[(serve, serve_log)])
            latency_s = time.monotonic() - started
            rows = pq.read_table(files[0]).to_pylist()
            assert len(files) == 1 and [r["method"] for r in rows] == ["lead", "logme"]  # the default methods
            row = rows[0]
            assert (row["dataset"], row["model"], row["method"], row["rank"], row["status"]) == (
                "tiny", "efficientnet_lite0.in1k", "lead", 1, "ok")
            assert math.isfinite(row["score"]) and (row["n_samples"], row["n_classes"]) == (24, 4)

            def completed():
                runs = client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[on_new.id])),
                                             flow_run_filter=FlowRunFilter())
                return runs if runs and runs[0].state and runs[0].state.is_final() else None

            runs = _wait("the triggered flow run finishes", completed, 60, procs=[(serve, serve_log)])
            assert len(runs) == 1 and runs[0].state.is_completed(), runs[0].state
            assert runs[0].parameters["dataset"] == str(tiny_dataset) and runs[0].parameters["dataset_name"] == "tiny"
            assert runs[0].parameters["store"] == str(store)
            assert str(runs[0].id) == row["flow_run_id"]
        print(f"\nregister -> ranking in the table: {latency_s:.1f} s (the `lead datasets add` command: {register_s:.1f} s)")
        (tmp_path / "latency.txt").write_text(f"{latency_s:.1f}\n")

        # MLflow: the selection is findable by tags.dataset and tags.best_model
        import mlflow

        client_ml = mlflow.MlflowClient(tracking_uri=f"sqlite:///{store}/mlflow.db")
        exp = client_ml.get_experiment_by_name("lead/tiny")
        parents = client_ml.search_runs([exp.experiment_id],
                                        "tags.dataset = 'tiny' AND tags.best_model = 'efficientnet_lite0.in1k'")
        assert [r.info.run_id for r in parents] == [row["mlflow_run_id"]]

        stop(serve)
        assert serve.returncode is not None
        serve = None

        # deploy/prefect.yaml declares the same deployments for a work pool
        deploy = subprocess.run([PREFECT, "--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml"],
                                env=env, cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        with temporary_settings({PREFECT_API_URL: url}), get_client(sync_client=True) as client:
            nightly = client.read_deployment_by_name("nightly-rerank/nightly-rerank")
            on_new = client.read_deployment_by_name("rank-zoo/rank-on-new-dataset")
            assert nightly.work_pool_name == on_new.work_pool_name == "lead"
            assert [(s.schedule.cron, s.schedule.timezone) for s in nightly.schedules] == [("0 2 * * *", "UTC")]
            triggers = client.read_resource_related_automations(f"prefect.deployment.{on_new.id}")
            assert [a.trigger.expect for a in triggers] == [{"lead.dataset.registered"}]
            assert client.read_deployment_by_name("rank-zoo/rank-zoo").work_pool_name == "lead"
    finally:
        stop(serve)  # serve before the server, each with SIGINT first
        stop(server)
