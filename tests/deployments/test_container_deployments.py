"""The container deployment files (deployments/): the Kubernetes base job template rendered by the real
prefect-kubernetes worker code for a flow run (no cluster), and the Dockerfiles, deployment files and
volume claim agreeing with each other and with prefect.yaml. A real Prefect server creates pools from
these files in tests/deployments/test_deployments.py (slow)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from segpipe_app.deployments import k8s_template

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deployments"
TEMPLATE = json.loads(k8s_template.TEMPLATE_PATH.read_text())
API_URL = "http://prefect-server.prefect.svc.cluster.local:4200/api"


class _NoApi:
    """Stands for a Prefect client: rendering must not need an API (no block or variable references)."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"rendering the template called the Prefect API ({name})")


def render_k8s(values: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The Job manifest the Kubernetes worker would submit for a new flow run, and that run's id."""
    from prefect.client.schemas.objects import FlowRun
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration

    flow_run = FlowRun(id=uuid.uuid4(), name="gentle-tabby", flow_id=uuid.uuid4())
    with temporary_settings({PREFECT_API_URL: API_URL}):
        config = asyncio.run(KubernetesWorkerJobConfiguration.from_template_and_values(
            TEMPLATE, values, client=_NoApi()))
        config.prepare_for_flow_run(flow_run)
    return config.job_manifest, str(flow_run.id)


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _env(container: dict[str, Any]) -> dict[str, str]:
    names = [e["name"] for e in container["env"]]
    assert len(names) == len(set(names)), f"duplicate env names: {names}"
    return {e["name"]: e["value"] for e in container["env"]}


# --------------------------------------------------------------------------- the Kubernetes template


def test_template_file_is_prefect_kubernetes_default_plus_ours():
    """The shipped JSON is what the generator makes from the installed prefect-kubernetes default (a
    prefect-kubernetes upgrade that changes the default fails here: regenerate the file), and keeps every
    default variable and job_configuration key."""
    from prefect_kubernetes.worker import KubernetesWorker

    assert TEMPLATE == k8s_template.build(), (
        "deployments/k8s-base-job-template.json is stale: python -m segpipe_app.deployments.k8s_template > "
        "deployments/k8s-base-job-template.json")
    default = KubernetesWorker.get_default_base_job_template()
    assert set(default["variables"]["properties"]) <= set(TEMPLATE["variables"]["properties"])
    assert set(default["job_configuration"]) == set(TEMPLATE["job_configuration"])
    assert {"gpu_count", "work_volume_claim", "node_selector", "tolerations"} <= set(TEMPLATE["variables"]["properties"])


def test_rendered_job_has_image_gpu_limit_work_volume_env_and_command():
    values = {
        "image": "registry.example.com/segpipe:0.1.0-gpu",
        "gpu_count": 2,
        "node_selector": {"nvidia.com/gpu.present": "true"},
        "env": {"TF_CPP_MIN_LOG_LEVEL": "2"},
    }
    manifest, run_id = render_k8s(values)
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    pod = manifest["spec"]["template"]["spec"]
    c = _container(manifest)

    assert c["image"] == "registry.example.com/segpipe:0.1.0-gpu"
    assert c["args"] == ["prefect", "flow-run", "execute"]  # what runs the flow in the image
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert c["resources"]["requests"] == {"cpu": "4", "memory": "16Gi"}  # the template's defaults
    assert c["resources"]["limits"]["memory"] == "32Gi"
    assert "cpu" not in c["resources"]["limits"]  # an unset variable drops its key

    [mount] = c["volumeMounts"]
    assert mount["mountPath"] == "/work"
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["persistentVolumeClaim"] == {"claimName": "segpipe-work"}
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["fsGroup"] == 10001

    env = _env(c)
    assert env["SEGPIPE_WORK_DIR"] == "/work"
    assert env["PREFECT_RESULTS_PERSIST_BY_DEFAULT"] == "true"
    assert env["PREFECT_LOCAL_STORAGE_PATH"] == "/work/prefect-results"  # results and cache records on the volume
    assert env["KERAS_HOME"] == "/work/keras"
    assert env["TF_CPP_MIN_LOG_LEVEL"] == "2"  # the deployment's env adds to the template's
    assert env["PREFECT_API_URL"] == API_URL and env["PREFECT__FLOW_RUN_ID"] == run_id

    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["restartPolicy"] == "Never"
    assert manifest["metadata"]["labels"]["prefect.io/flow-run-id"] == run_id


def test_template_defaults_and_overrides():
    """No job variables: one GPU, default claim and tolerations. A deployment's env wins by name, and
    gpu_count 0 / other claims / no tolerations render as given."""
    manifest, _ = render_k8s({"image": "img"})
    c, pod = _container(manifest), manifest["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {} and len(pod["tolerations"]) == 1

    manifest, _ = render_k8s({"image": "img", "gpu_count": 0, "work_volume_claim": "pets-rwx", "tolerations": [],
                              "cpu_request": "16", "memory_limit": "64Gi",
                              "env": {"SEGPIPE_WORK_DIR": "/work/team-a"}})
    c, pod = _container(manifest), manifest["spec"]["template"]["spec"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == 0
    assert c["resources"]["requests"]["cpu"] == "16" and c["resources"]["limits"]["memory"] == "64Gi"
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "pets-rwx"
    assert pod["tolerations"] == []
    env = _env(c)
    assert env["SEGPIPE_WORK_DIR"] == "/work/team-a" and env["PREFECT_LOCAL_STORAGE_PATH"] == "/work/prefect-results"


def test_k8s_deployment_job_variables_render():
    """The job variables of deployments/prefect-k8s.yaml are variables of the template and render."""
    doc = yaml.safe_load((DEPLOY / "prefect-k8s.yaml").read_text())
    variables = doc["definitions"]["work_pools"]["k8s_gpu_pool"]["job_variables"]
    assert set(variables) <= set(TEMPLATE["variables"]["properties"])
    values = {**variables, "image": "registry.example.com/segpipe:0.1.0-gpu"}
    manifest, _ = render_k8s(values)
    c = _container(manifest)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == variables["gpu_count"]
    assert c["resources"]["requests"]["cpu"] == variables["cpu_request"]
    assert _env(c)["SEGPIPE_WORK_DIR"] == "/work"


# --------------------------------------------------------------------------- files agree with each other


def _dockerfile(name: str) -> str:
    return (DEPLOY / name).read_text()


def _pin(package: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.lower().startswith(package.lower() + "=="):
            return line.split("==", 1)[1]
    raise AssertionError(f"{package} is not pinned in constraints.txt")


@pytest.mark.parametrize("name", ["Dockerfile.cpu", "Dockerfile.gpu"])
def test_dockerfiles_install_the_pinned_set_as_a_non_root_user_with_work_on_a_volume(name):
    text = _dockerfile(name)
    assert re.search(r'pip install -c constraints\.txt "\.\[kubernetes\]"', text)
    assert "WORKDIR /opt/segpipe" in text and "COPY . /opt/segpipe" in text
    assert 'VOLUME ["/work"]' in text
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert k8s_template.RUN_AS == 10001
    for key, value in k8s_template.WORK_ENV.items():
        assert f"{key}={value}" in text, f"{name}: ENV {key}={value} missing"
    # USER comes after the last RUN: nothing runs as root at run time.
    assert text.rindex("\nUSER ") > text.rindex("\nRUN ")


def test_gpu_image_is_on_tensorflows_gpu_image_of_the_pinned_tensorflow():
    tf = _pin("tensorflow")
    assert f"ARG BASE_IMAGE=tensorflow/tensorflow:{tf}-gpu" in _dockerfile("Dockerfile.gpu")
    assert f"tf.__version__ == '{tf}'" in _dockerfile("Dockerfile.gpu")
    assert "ARG BASE_IMAGE=python:3.11-" in _dockerfile("Dockerfile.cpu")


def test_dockerignore_keeps_what_the_image_needs():
    patterns = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
                if ln.strip() and not ln.startswith("#")]
    assert {".git", ".venv", "segpipe-work", "bench-out"} <= set(patterns)
    needed = ["pyproject.toml", "constraints.txt", "segpipe", "tasks", "flows", "deployments", "cli"]
    for pattern in patterns:
        for path in needed:
            assert pattern.rstrip("/") != path and not path.startswith(pattern.rstrip("/") + "/"), (pattern, path)


@pytest.mark.parametrize("name", ["prefect-docker.yaml", "prefect-k8s.yaml"])
def test_container_deployments_mirror_prefect_yaml(name):
    """Same deployments (names, entrypoints, schedules) as prefect.yaml; code pulled from the image's
    WORKDIR; the image from $SEGPIPE_IMAGE."""
    base = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    doc = yaml.safe_load((DEPLOY / name).read_text())

    def shape(d: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(x["name"], x["entrypoint"], json.dumps(x.get("schedules"), sort_keys=True)) for x in d["deployments"]]

    assert shape(doc) == shape(base)
    assert doc["pull"] == [{"prefect.deployments.steps.set_working_directory": {"directory": "/opt/segpipe"}}]
    pools = {d["work_pool"]["name"] for d in doc["deployments"]}
    assert pools == {"segpipe-docker" if "docker" in name else "segpipe-k8s"}
    for d in doc["deployments"]:
        assert d["work_pool"]["job_variables"]["image"] == "{{ $SEGPIPE_IMAGE }}"
        if "config" in d["parameters"]:  # champion-predict takes no training config
            assert d["parameters"]["config"]["preset"] == ("cpu-quick" if "docker" in name else "full")
        else:
            assert d["entrypoint"] == "flows/predict.py:champion_predict_flow"


def test_docker_deployment_keeps_work_on_a_volume():
    doc = yaml.safe_load((DEPLOY / "prefect-docker.yaml").read_text())
    variables = doc["definitions"]["work_pools"]["docker_pool"]["job_variables"]
    assert "segpipe-work:/work" in variables["volumes"]
    for key, value in k8s_template.WORK_ENV.items():
        assert variables["env"][key] == value


def test_work_volume_claim_manifest_matches_the_template():
    pvc = yaml.safe_load((DEPLOY / "k8s-work-pvc.yaml").read_text())
    assert pvc["kind"] == "PersistentVolumeClaim"
    assert pvc["metadata"]["name"] == TEMPLATE["variables"]["properties"]["work_volume_claim"]["default"]
