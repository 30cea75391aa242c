"""Run one pipeline step's Ray work as a KubeRay ``RayJob`` on a cluster.

Locally the Ray steps (Swing, Ray Train) run ``ray.init()`` in-process; on a cluster the same CLI command
(``pi2i swing ...`` / ``pi2i train ...``, the same core function underneath) becomes the ``entrypoint`` of a
``RayJob`` (``ray.io/v1``): KubeRay starts a Ray cluster from the project image, submits the entrypoint, and
tears the cluster down when it finishes. This module builds that manifest, creates it through
``kubernetes.client.CustomObjectsApi``, polls it to a terminal state, surfaces the submitter/driver logs and
fails with a message that says what went wrong.

State machine (:func:`rayjob_state`), on ``status.jobStatus`` / ``status.jobDeploymentStatus``:

* succeeded — ``jobStatus == SUCCEEDED`` (``jobDeploymentStatus`` Complete, or Running just before it);
* failed    — ``jobDeploymentStatus == Failed``, ``jobStatus`` FAILED or STOPPED (unless KubeRay is
  ``Retrying``), or ``Complete`` with any job status other than SUCCEEDED;
* otherwise running (New/Initializing/Running/Waiting/Retrying, jobStatus PENDING/RUNNING or empty).
"""

from __future__ import annotations

import re
import shlex
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

GROUP, VERSION, PLURAL, KIND = "ray.io", "v1", "rayjobs", "RayJob"
RAY_VERSION = "2.60.0"  # the ray pin of pyproject.toml: the image's Ray and the RayCluster's rayVersion agree


class RayJobError(RuntimeError):
    """The RayJob failed, stopped, or did not finish in time; the message carries its status and log tail."""


@dataclass(frozen=True)
class RayJobState:
    terminal: bool
    succeeded: bool
    job_status: str
    deployment_status: str
    message: str


def _pod_template(image: str, cpu: str, memory: str, gpus: int, env: dict[str, str], head: bool,
                  service_account: str | None, env_from_secret: str | None, tmp_size: str, shm_size: str) -> dict:
    """A hardened Ray node pod: non-root, read-only root, no capabilities, seccomp RuntimeDefault, no API token;
    writable only ``/tmp`` (Ray's session dir, spilling, checkpoints) and ``/dev/shm`` (the object store),
    both size-bounded."""
    resources = {"requests": {"cpu": cpu, "memory": memory}, "limits": {"cpu": cpu, "memory": memory}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"]["nvidia.com/gpu"] = str(gpus)
    container: dict[str, Any] = {
        "name": "ray-head" if head else "ray-worker",
        "image": image,
        "resources": resources,
        "env": [{"name": k, "value": v} for k, v in sorted({"HOME": "/tmp", **env}.items())],
        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}, {"name": "shm", "mountPath": "/dev/shm"}],
    }
    if env_from_secret:
        container["envFrom"] = [{"secretRef": {"name": env_from_secret}}]
    if head:
        container["ports"] = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
                              {"containerPort": 10001, "name": "client"}]
    spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": tmp_size}},
                    {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size}}],
    }
    if service_account:
        spec["serviceAccountName"] = service_account
    return {"spec": spec}


def job_name(step: str, run_id: str) -> str:
    """A DNS-1123 name for the RayJob of ``step`` in run ``run_id`` (max 63 chars; KubeRay derives others)."""
    raw = re.sub(r"[^a-z0-9-]+", "-", f"pi2i-{step}-{run_id}".lower()).strip("-")
    return raw[:50].rstrip("-")


def rayjob_manifest(
    name: str,
    entrypoint: Sequence[str] | str,
    image: str,
    namespace: str = "pi2i",
    num_workers: int = 2,
    worker_cpu: str = "2",
    worker_memory: str = "4Gi",
    head_cpu: str = "1",
    head_memory: str = "2Gi",
    gpus_per_worker: int = 0,
    head_tmp_size: str = "2Gi",
    head_shm_size: str = "512Mi",
    worker_tmp_size: str = "16Gi",
    worker_shm_size: str = "4Gi",
    env: dict[str, str] | None = None,
    env_from_secret: str | None = None,
    service_account: str | None = None,
    ttl_seconds_after_finished: int = 600,
    active_deadline_seconds: int | None = 6 * 3600,
    labels: dict[str, str] | None = None,
) -> dict:
    """The ``RayJob`` object for ``entrypoint`` (argv list or shell string), ready for ``create``. ``image`` is
    the project image (``components.image.PINNED_IMAGE``, passed in: the core does not pin it)."""
    cmd = entrypoint if isinstance(entrypoint, str) else shlex.join(entrypoint)
    env = {"PI2I_IN_RAYJOB": "1", **(env or {})}
    spec: dict[str, Any] = {
        "entrypoint": cmd,
        "shutdownAfterJobFinishes": True,
        "ttlSecondsAfterFinished": ttl_seconds_after_finished,
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "rayClusterSpec": {
            "rayVersion": RAY_VERSION,
            "headGroupSpec": {
                "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
                "template": _pod_template(image, head_cpu, head_memory, 0, env, True, service_account,
                                          env_from_secret, head_tmp_size, head_shm_size),
            },
            "workerGroupSpecs": [{
                "groupName": "workers",
                "replicas": num_workers,
                "minReplicas": num_workers,
                "maxReplicas": num_workers,
                "rayStartParams": {},
                "template": _pod_template(image, worker_cpu, worker_memory, gpus_per_worker, env, False,
                                          service_account, env_from_secret, worker_tmp_size, worker_shm_size),
            }],
        },
    }
    if active_deadline_seconds:
        spec["activeDeadlineSeconds"] = active_deadline_seconds
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/part-of": "pi2i", **(labels or {})}},
        "spec": spec,
    }


def rayjob_state(obj: dict) -> RayJobState:
    """Classify a RayJob object (dict as returned by CustomObjectsApi) into running / succeeded / failed."""
    st = obj.get("status") or {}
    job = (st.get("jobStatus") or "").upper()
    dep = st.get("jobDeploymentStatus") or ""
    detail = "; ".join(x for x in (st.get("reason"), st.get("message")) if x)
    msg = f"jobStatus={job or '-'} jobDeploymentStatus={dep or '-'}" + (f" ({detail})" if detail else "")
    if job == "SUCCEEDED" and dep in ("Complete", "Running", ""):
        return RayJobState(True, True, job, dep, msg)
    if dep == "Failed" or (job in ("FAILED", "STOPPED") and dep != "Retrying") or dep == "Complete":
        return RayJobState(True, False, job, dep, msg)
    return RayJobState(False, False, job, dep, msg)


def _apis(custom_api: Any | None, core_api: Any | None) -> tuple[Any, Any]:
    if custom_api is not None and core_api is not None:
        return custom_api, core_api
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return custom_api or client.CustomObjectsApi(), core_api or client.CoreV1Api()


def job_logs(core_api: Any, name: str, namespace: str, tail_lines: int = 200) -> str:
    """Logs of the RayJob's submitter pods (K8sJobMode: a batch Job named like the RayJob; the submitter
    follows the driver, so its log is the driver's output)."""
    out = []
    try:
        pods = core_api.list_namespaced_pod(namespace, label_selector=f"job-name={name}").items
    except Exception as e:  # noqa: BLE001  (logs are a courtesy: never mask the real failure)
        return f"(could not list submitter pods: {e})"
    for pod in pods:
        pod_name = pod.metadata.name
        try:
            text = core_api.read_namespaced_pod_log(pod_name, namespace, tail_lines=tail_lines)
        except Exception as e:  # noqa: BLE001
            text = f"(could not read log: {e})"
        out.append(f"--- {pod_name} ---\n{text}")
    return "\n".join(out) or "(no submitter pods found)"


def run_rayjob(
    manifest: dict,
    custom_api: Any | None = None,
    core_api: Any | None = None,
    timeout_s: float = 6 * 3600,
    poll_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = print,
    delete_on_timeout: bool = True,
) -> dict:
    """Create the RayJob, poll it to a terminal state, print its logs; raise :class:`RayJobError` unless it
    succeeded. Returns the final status dict."""
    custom, core = _apis(custom_api, core_api)
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    if log:
        log(f"created RayJob {ns}/{name}: {manifest['spec']['entrypoint']}")
    deadline = clock() + timeout_s
    last = ""
    while True:
        obj = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
        state = rayjob_state(obj)
        if log and state.message != last:
            log(f"RayJob {name}: {state.message}")
        last = state.message
        if state.terminal:
            logs = job_logs(core, name, ns)
            if log:
                log(logs)
            if not state.succeeded:
                raise RayJobError(f"RayJob {ns}/{name} failed: {state.message}\n{_tail(logs)}")
            return obj.get("status") or {}
        if clock() >= deadline:
            logs = job_logs(core, name, ns)
            if delete_on_timeout:
                custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name)
            raise RayJobError(f"RayJob {ns}/{name} not finished after {timeout_s:.0f}s "
                              f"({state.message}); deleted={delete_on_timeout}\n{_tail(logs)}")
        sleep(poll_s)


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


#: Cluster shape per Ray step (the components and the k8s/rayjobs/ templates both use these).
STEP_RESOURCES: dict[str, dict[str, Any]] = {
    "swing": {"num_workers": 4, "worker_cpu": "4", "worker_memory": "16Gi", "gpus_per_worker": 0},
    "train": {"num_workers": 2, "worker_cpu": "4", "worker_memory": "16Gi", "gpus_per_worker": 1},
    # LLM-I2I generator + discriminator: Ray Train like the scorer (train.num_workers, GPU workers)
    "augment": {"num_workers": 2, "worker_cpu": "4", "worker_memory": "16Gi", "gpus_per_worker": 1},
}
#: Entrypoints of the templates; the ``__UPPER__`` placeholders are filled per run by the component.
TEMPLATE_ENTRYPOINTS: dict[str, list[str]] = {
    "swing": ["pi2i", "swing", "--events", "__EVENTS_URI__", "--out", "__OUT_URI__", "--config", "__CONFIG_URI__",
              "--no-progress"],
    "train": ["pi2i", "prs", "train", "--samples", "__SAMPLES_URI__", "--out", "__OUT_URI__", "--config",
              "__CONFIG_URI__"],
    "augment": ["pi2i", "augment", "--events", "__EVENTS_URI__", "--out", "__OUT_URI__", "--config", "__CONFIG_URI__",
                "--no-progress"],
}


def step_manifest(step: str, name: str, entrypoint: Sequence[str] | str, image: str, namespace: str = "pi2i",
                  **overrides: Any) -> dict:
    """``rayjob_manifest`` with the step's cluster shape (:data:`STEP_RESOURCES`) and identity."""
    kw = {**STEP_RESOURCES[step], "service_account": "pi2i-ray", "env_from_secret": "pi2i-object-store",
          "labels": {"pi2i.io/step": step}, **overrides}
    return rayjob_manifest(name, entrypoint, namespace=namespace, image=image, **kw)


def template(step: str, image: str) -> dict:
    """The committed ``k8s/rayjobs/<step>.yaml`` (regenerate: ``python -m components.rayjob_templates``)."""
    return step_manifest(step, f"pi2i-{step}-template", TEMPLATE_ENTRYPOINTS[step], image)
