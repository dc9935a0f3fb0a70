"""Deployments against a real Prefect server: `prefect deploy --all`, a process worker, real runs.

Slow (a server, a worker and flow-run subprocesses); runs in CI with `make test`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.httpserver import LoopbackServer
from tests.synthetic import make_pets_archives

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server exited with {proc.returncode}")
        try:
            if requests.get(f"{url}/health", timeout=2).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"prefect server at {url} not healthy after {timeout}s")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`prefect server start` on 127.0.0.1 with SQLite in a temporary PREFECT_HOME; stopped afterwards."""
    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_UI_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    log = open(home / "server.log", "w")
    proc = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/api"
    try:
        _wait_healthy(url, proc)
        yield {"url": url, "env": {**env, "PREFECT_API_URL": url}, "home": home}
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _prefect(env, *args, timeout=300) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "prefect"), "--no-prompt", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"prefect {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _flow_run_state(env, output: str) -> str:
    from prefect.client.orchestration import get_client

    run_id = next(line.split("UUID:")[1].strip() for line in output.splitlines() if "UUID:" in line)
    with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
        return client.read_flow_run(run_id).state.name


def test_deploy_all_then_worker_runs_pipeline_and_retrain(server, tmp_path):
    work = tmp_path / "work"
    # the worker's own result storage is this test's, not the session's: a cache record another test left there
    # for the same synthetic archives would serve validate from the cache (and skip its validation-report)
    env = {**server["env"], "PREFECT_LOCAL_STORAGE_PATH": str(work / "prefect-results")}
    archives = tmp_path / "archives"
    make_pets_archives(archives)
    files = {p.name: p.read_bytes() for p in archives.iterdir()}
    job_env = {
        "SEGPIPE_WORK_DIR": str(work), "PREFECT_LOCAL_STORAGE_PATH": str(work / "prefect-results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true", "TF_CPP_MIN_LOG_LEVEL": "2",
    }

    _prefect(env, "work-pool", "create", "segpipe-process", "--type", "process")
    deployed = _prefect(env, "deploy", "--all")
    assert "pets-pipeline" in deployed.stdout and "scheduled-retrain" in deployed.stdout
    assert "champion-predict" in deployed.stdout

    from prefect.client.orchestration import get_client

    with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
        retrain = client.read_deployment_by_name("retrain/scheduled-retrain")
        schedule = retrain.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("0 3 * * 1", "Europe/London")
        assert client.read_deployment_by_name("pipeline/pets-pipeline").schedules == []

    worker_log = open(tmp_path / "worker.log", "w")
    # the worker asks for scheduled runs every 2 s (Prefect's default is 10 s: idle time between this test's runs)
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "segpipe-process", "--type", "process"],
        cwd=ROOT, env={**env, "PREFECT_WORKER_QUERY_SECONDS": "2"}, stdout=worker_log, stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        with LoopbackServer(files) as srv:
            # the collapse rule has its own tests: a one-epoch tiny model may collapse on the small val split;
            # the retrain exports the SavedModel only (what TF Serving and champion-predict load): the LiteRT and
            # ONNX converters and their parity have their own tests (tests/export)
            params = {"config": {"preset": "tiny", "data": {"source": srv.url, "split": "random"},
                                 "eval": {"collapse_threshold": 1.0},
                                 "promotion": {"min_mean_iou": 0.0, "export_formats": ["saved_model"]}}}
            run_args = ["--params", json.dumps(params), "--job-variable", f"env={json.dumps(job_env)}",
                        "--watch", "--watch-interval", "1", "--watch-timeout", "600"]
            out = _prefect(env, "deployment", "run", "pipeline/pets-pipeline", *run_args, timeout=660)
            assert _flow_run_state(env, out.stdout) == "Completed", out.stdout[-2000:]
            runs = list((work / "runs").iterdir())
            assert len(runs) == 1 and (runs[0] / "metrics.json").is_file() and (runs[0] / "gallery" / "index.html").is_file()
            assert any((work / "prefect-results").iterdir())  # the task results went to this test's storage

            with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
                keys = {a.key for a in client.read_artifacts()}
            assert {"validation-report", "evaluation-metrics", "gallery"} <= keys

            out = _prefect(env, "deployment", "run", "retrain/scheduled-retrain", *run_args, timeout=660)
            assert _flow_run_state(env, out.stdout) == "Completed", out.stdout[-2000:]
            champion = work / "models" / "champion"
            decision = json.loads((champion / "decision.json").read_text())
            assert decision["promote"] is True and (champion / "model.keras").is_file()
            lineage = json.loads((champion / "lineage.json").read_text())
            assert lineage["run_id"] == runs[0].name
            assert (work / "models" / "serving" / "pets" / "1" / "saved_model.pb").is_file()
            with get_client(sync_client=True, httpx_settings={"base_url": env["PREFECT_API_URL"]}) as client:
                (decision_md,) = [a.data for a in client.read_artifacts() if a.key == "promotion-decision"]
            assert "PROMOTED" in decision_md and "no champion yet" in decision_md

            # Batch prediction with the champion's served export, through its deployment.
            images = sorted((work / "extracted").rglob("*.jpg"))[:3]
            predict_params = {"inputs": [str(p) for p in images], "out_dir": str(tmp_path / "served-masks"),
                              "work_dir": str(work), "eval_config": {"batch_size": 2}}
            out = _prefect(env, "deployment", "run", "champion-predict-flow/champion-predict", "--params",
                           json.dumps(predict_params), "--job-variable", f"env={json.dumps(job_env)}",
                           "--watch", "--watch-interval", "1", "--watch-timeout", "600", timeout=660)
            assert _flow_run_state(env, out.stdout) == "Completed", out.stdout[-2000:]
            summary = json.loads((tmp_path / "served-masks" / "predictions.json").read_text())
            assert summary["n_written"] == 3 and summary["models"][0]["format"] == "saved_model"
            assert summary["models"][0]["path"] == str((work / "models" / "serving" / "pets" / "1").resolve())
    finally:
        _stop(worker)
        worker_log.close()


# --------------------------------------------------------------------------- container work pools


def _resolve_job(env, deployment_name: str, configuration_cls, pool_name: str, job_variables=None):
    """A flow run of the deployment, and the job configuration the pool's worker would build for it: the
    real worker code (`resolve_for_flow_run`) on the server's pool template and the deployment's job
    variables. No worker, cluster or Docker daemon."""
    import asyncio

    from prefect.client.orchestration import get_client

    async def resolve():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(deployment_name)
            flow_run = await client.create_flow_run_from_deployment(deployment.id, job_variables=job_variables)
            pool = await client.read_work_pool(pool_name)
            config = await configuration_cls.resolve_for_flow_run(
                flow_run, client=client, work_pool=pool, worker_name="test-worker", deployment=deployment)
            return deployment, flow_run, config

    with _api(env):
        return asyncio.run(resolve())


def _api(env):
    """This process's Prefect client on the test server (rather than an ephemeral API of its own)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    return temporary_settings({PREFECT_API_URL: env["PREFECT_API_URL"]})


def test_kubernetes_pool_from_the_template_file_and_gpu_deployments(server):
    """`prefect work-pool create --type kubernetes --base-job-template FILE` stores the shipped template;
    `prefect deploy --all --prefect-file deployments/prefect-k8s.yaml` puts both deployments on it (the
    server validates their job variables against the template); a flow run renders to a GPU Job."""
    from prefect.client.orchestration import get_client
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    image = "registry.example.com/segpipe:0.1.0-gpu"
    env = {**server["env"], "SEGPIPE_IMAGE": image}
    template_file = ROOT / "deployments" / "k8s-base-job-template.json"
    _prefect(env, "work-pool", "create", "segpipe-k8s", "--type", "kubernetes", "--base-job-template", str(template_file))
    with _api(env), get_client(sync_client=True) as client:
        pool = client.read_work_pool("segpipe-k8s")
    assert pool.type == "kubernetes"
    assert pool.base_job_template == json.loads(template_file.read_text())

    deployed = _prefect(env, "deploy", "--all", "--prefect-file", "deployments/prefect-k8s.yaml")
    assert "pets-pipeline" in deployed.stdout and "scheduled-retrain" in deployed.stdout

    deployment, flow_run, config = _resolve_job(env, "pipeline/pets-pipeline", KubernetesWorkerJobConfiguration,
                                                "segpipe-k8s")
    assert deployment.work_pool_name == "segpipe-k8s"
    assert deployment.entrypoint == "flows/pipeline.py:pipeline"
    assert deployment.pull_steps == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/segpipe"}}]
    assert deployment.parameters["config"]["preset"] == "full"
    assert deployment.job_variables["image"] == image

    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == image
    assert container["args"] == ["prefect", "flow-run", "execute"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"] == {"cpu": "8", "memory": "16Gi"}
    assert container["volumeMounts"] == [{"name": "work", "mountPath": "/work"}]
    assert env_vars["SEGPIPE_WORK_DIR"] == "/work" and env_vars["PREFECT_LOCAL_STORAGE_PATH"] == "/work/prefect-results"
    assert env_vars["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true" and env_vars["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env_vars["PREFECT__FLOW_RUN_ID"] == str(flow_run.id) and env_vars["PREFECT_API_URL"] == env["PREFECT_API_URL"]

    # A run's own job variables (`prefect deployment run --job-variable gpu_count=2`) win; its env adds.
    _, _, config = _resolve_job(env, "pipeline/pets-pipeline", KubernetesWorkerJobConfiguration, "segpipe-k8s",
                                job_variables={"gpu_count": 2, "env": {"SEGPIPE_WORK_DIR": "/work/team-b"}})
    container = config.job_manifest["spec"]["template"]["spec"]["containers"][0]
    env_vars = {e["name"]: e.get("value") for e in container["env"]}
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert env_vars["SEGPIPE_WORK_DIR"] == "/work/team-b" and env_vars["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert env_vars["PREFECT_LOCAL_STORAGE_PATH"] == "/work/prefect-results"

    with _api(env), get_client(sync_client=True) as client:
        retrain = client.read_deployment_by_name("retrain/scheduled-retrain")
    assert retrain.work_pool_name == "segpipe-k8s"
    assert (retrain.schedules[0].schedule.cron, retrain.schedules[0].schedule.timezone) == ("0 3 * * 1", "Europe/London")


def test_docker_pool_deployments(server):
    """`prefect deploy --all --prefect-file deployments/prefect-docker.yaml` on a Docker pool; a flow run
    renders (prefect-docker's worker code) to the CPU image with WORK on a named volume."""
    from prefect_docker.worker import DockerWorkerJobConfiguration

    image = "segpipe:0.1.0-cpu"
    env = {**server["env"], "SEGPIPE_IMAGE": image}
    _prefect(env, "work-pool", "create", "segpipe-docker", "--type", "docker")
    deployed = _prefect(env, "deploy", "--all", "--prefect-file", "deployments/prefect-docker.yaml")
    assert "pets-pipeline" in deployed.stdout and "scheduled-retrain" in deployed.stdout

    deployment, flow_run, config = _resolve_job(env, "retrain/scheduled-retrain", DockerWorkerJobConfiguration,
                                                "segpipe-docker")
    assert deployment.work_pool_name == "segpipe-docker"
    assert deployment.parameters["config"]["preset"] == "cpu-quick"
    assert config.image == image
    assert config.volumes == ["segpipe-work:/work"]
    assert config.env["SEGPIPE_WORK_DIR"] == "/work"
    assert config.env["PREFECT_LOCAL_STORAGE_PATH"] == "/work/prefect-results"
    assert config.env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id)
    assert config.command == "prefect flow-run execute"
