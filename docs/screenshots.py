"""Retake the README's pictures of the two UIs, with a real selection in them.

Runs the README's operations path in a temporary folder: the Prefect server and the MLflow UI on free
loopback ports, `lead setup`, `lead serve`, `lead datasets add animals animal-mnist-fewshot`; waits for the
triggered ranking (3 EfficientNet-Lite models, 300 images, about 45 s on 2 cores), then photographs the
flow run in the Prefect UI, the experiment's runs table (model-training view, the children expanded, the
score and P(best) columns) and the selection's figure among the parent run's artifacts in the MLflow UI,
with headless Chromium.

    .venv/bin/python docs/screenshots.py          # needs chromium (Debian: apt-get install chromium); with
                                                  # `pip install playwright` it drives that chromium (no download)

Writes docs/img/prefect-flow-run.png, docs/img/mlflow-runs.png and docs/img/mlflow-selection.png. Not part of
the test suite.
"""

from __future__ import annotations

import glob
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from flows.ui import (
    free_port,
    mlflow_health_url,
    prefect_health_url,
    quiet_env,
    start_mlflow_ui,
    start_prefect_server,
    stop,
    wait_http,
)

OUT = Path(__file__).resolve().parent / "img"
LEAD = str(Path(sys.executable).parent / "lead")


def browser_path() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        sys.exit("screenshots: chromium must be installed; got none on PATH. Debian: apt-get install chromium")
    return browser


#: Browser storage set before an MLflow page loads: the assistant panel closed (it opens itself on a first
#: visit and would cover half the page).
MLFLOW_INIT = ("localStorage.setItem('mlflow.assistant.fab.autoOpenedOnFirstLoad_v1', 'true');"
               "localStorage.setItem('mlflow.assistant.panelOpen_v1', 'false');")


def shoot(url: str, out: Path, size: str, init_script: str = "") -> None:
    """Photograph ``url`` with headless Chromium: through Playwright (driving the system's chromium, so
    nothing is downloaded) when it is installed, which lets ``init_script`` run first; else Chromium's
    own ``--screenshot``."""
    width, height = (int(v) for v in size.split(","))
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        subprocess.run([browser_path(), "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--window-size={size}", "--virtual-time-budget=20000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)
    else:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=browser_path(), args=["--no-sandbox", "--disable-gpu"])
            try:
                context = browser.new_context(viewport={"width": width, "height": height})
                if init_script:
                    context.add_init_script(init_script)
                page = context.new_page()
                page.goto(url)
                page.wait_for_load_state("load")
                page.wait_for_timeout(8000)  # the UIs poll their APIs: never "network idle"
                page.screenshot(path=str(out))
            finally:
                browser.close()
    print(f"{out} ({out.stat().st_size // 1024} KB)")


def main() -> None:
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="lead-shots-"))
    store = work / "lead-store"
    pport, mport = free_port(), free_port()
    env = quiet_env(PREFECT_HOME=str(work / "prefect-home"), PREFECT_API_URL=f"http://127.0.0.1:{pport}/api",
                    LEAD_STORE=str(store), HF_HUB_OFFLINE="1")
    procs = []
    try:
        procs.append(start_prefect_server(pport, env=env, log=work / "prefect.log"))
        procs.append(start_mlflow_ui(f"sqlite:///{store}/mlflow.db", mport, env=env, log=work / "mlflow.log"))
        wait_http(prefect_health_url(pport), procs[0])
        wait_http(mlflow_health_url(mport), procs[1])
        subprocess.run([LEAD, "setup"], env=env, check=True)
        procs.append(subprocess.Popen([LEAD, "serve", "--zoo", "efficientnet-lite"], env=env, start_new_session=True,
                                      stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT))
        time.sleep(20)  # serve registers the deployments and the trigger
        subprocess.run([LEAD, "datasets", "add", "animals", "animal-mnist-fewshot"], env=env, check=True)
        started = time.monotonic()
        while not glob.glob(f"{store}/rankings/*/*.parquet"):
            if time.monotonic() - started > 600:
                sys.exit("screenshots: the triggered ranking did not arrive within 10 minutes")
            time.sleep(1)
        time.sleep(5)  # the flow run finishes its artifact and final state
        row = pq.read_table(glob.glob(f"{store}/rankings/*/*.parquet")[0]).to_pylist()[0]
        OUT.mkdir(exist_ok=True)
        shoot(f"http://127.0.0.1:{pport}/runs/flow-run/{row['flow_run_id']}", OUT / "prefect-flow-run.png", "1400,860")
        from storage.tracking import run_url, runs_url

        base = f"http://127.0.0.1:{mport}"
        shoot(runs_url(base, "1"), OUT / "mlflow-runs.png", "1600,560", MLFLOW_INIT)
        shoot(run_url(base, "1", row["mlflow_run_id"], "artifacts/figure.png"), OUT / "mlflow-selection.png", "1600,900",
              MLFLOW_INIT)
    finally:
        for p in reversed(procs):
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
