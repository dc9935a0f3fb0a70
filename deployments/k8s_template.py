"""The Kubernetes work pool's base job template (`deployments/k8s-base-job-template.json`).

It is prefect-kubernetes' own default template (`KubernetesWorker.get_default_base_job_template()`)
with these additions, so every default variable and placeholder stays as the worker expects:

- a GPU limit, `nvidia.com/gpu: {{ gpu_count }}` (variable `gpu_count`, default 1);
- WORK on a PersistentVolumeClaim (`work_volume_claim`, default `segpipe-work`) mounted at /work,
  and a pod security context (uid/gid 10001, the images' user; fsGroup makes the volume writable);
- CPU and memory requests and a memory limit with defaults (`cpu_request`, `memory_request`,
  `memory_limit`: the worker's own variables);
- environment defaults for WORK, Prefect's persisted results and cache records, and Keras' download
  cache, all on the volume (a deployment's or a run's `env` adds to them and wins by name);
- `node_selector` and `tolerations` variables for GPU nodes (default: tolerate the common
  `nvidia.com/gpu` taint).

Regenerate the file after upgrading prefect-kubernetes (a test fails while it is stale):

    python -m segpipe_app.deployments.k8s_template > deployments/k8s-base-job-template.json
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

TEMPLATE_PATH = Path(__file__).resolve().parent / "k8s-base-job-template.json"
WORK_MOUNT = "/work"
RUN_AS = 10001  # the images' non-root user and group (deployments/Dockerfile.*)
WORK_ENV = {
    "SEGPIPE_WORK_DIR": WORK_MOUNT,
    "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
    "PREFECT_LOCAL_STORAGE_PATH": f"{WORK_MOUNT}/prefect-results",
    "KERAS_HOME": f"{WORK_MOUNT}/keras",
}
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}

_VARIABLES: dict[str, dict[str, Any]] = {
    "gpu_count": {
        "title": "GPUs",
        "description": "nvidia.com/gpu limit of the flow-run container (0: no GPU).",
        "type": "integer",
        "minimum": 0,
        "default": 1,
    },
    "work_volume_claim": {
        "title": "WORK volume claim",
        "description": f"PersistentVolumeClaim mounted at {WORK_MOUNT} (SEGPIPE_WORK_DIR): datasets, runs, the "
        "champion, Prefect's persisted results and cache records (deployments/k8s-work-pvc.yaml creates one).",
        "type": "string",
        "default": "segpipe-work",
    },
    "node_selector": {
        "title": "Node selector",
        "description": "Pod nodeSelector, e.g. {\"nvidia.com/gpu.present\": \"true\"} or "
        "{\"cloud.google.com/gke-accelerator\": \"nvidia-h100-80gb\"}.",
        "type": "object",
        "additionalProperties": {"type": "string"},
        "default": {},
    },
    "tolerations": {
        "title": "Tolerations",
        "description": "Pod tolerations; the default tolerates the nvidia.com/gpu taint GPU node pools carry.",
        "type": "array",
        "items": {"type": "object"},
        "default": [GPU_TOLERATION],
    },
}
_DEFAULTS = {"cpu_request": "4", "memory_request": "16Gi", "memory_limit": "32Gi"}


def build(default: dict[str, Any] | None = None) -> dict[str, Any]:
    """The template: `default` (prefect-kubernetes' default base job template) plus segpipe's additions."""
    if default is None:
        from prefect_kubernetes.worker import KubernetesWorker

        default = KubernetesWorker.get_default_base_job_template()
    template = copy.deepcopy(default)
    props = template["variables"]["properties"]
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]

    container["resources"]["limits"]["nvidia.com/gpu"] = "{{ gpu_count }}"
    container["volumeMounts"] = [{"name": "work", "mountPath": WORK_MOUNT}]
    pod["volumes"] = [{"name": "work", "persistentVolumeClaim": {"claimName": "{{ work_volume_claim }}"}}]
    pod["securityContext"] = {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS}
    pod["nodeSelector"] = "{{ node_selector }}"
    pod["tolerations"] = "{{ tolerations }}"

    props.update(copy.deepcopy(_VARIABLES))
    for name, value in _DEFAULTS.items():
        props[name]["default"] = value
    props["env"]["default"] = dict(WORK_ENV)
    return template


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
