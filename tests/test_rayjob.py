"""RayJob: manifest builder, the KubeRay status state machine, and create/poll/logs/fail against injected
client objects returning real kubernetes model objects (no API server exists here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from pi2i.cluster import rayjob
from pi2i.cluster.rayjob import RayJobError, job_name, rayjob_manifest, rayjob_state, run_rayjob

RAYJOB_DIR = Path(__file__).resolve().parents[1] / "k8s" / "rayjobs"

#: The shape of a ray.io/v1 RayJob we rely on (a subset of the KubeRay CRD's openAPIV3Schema).
POD_TEMPLATE = {"type": "object", "required": ["spec"], "properties": {"spec": {
    "type": "object", "required": ["containers"],
    "properties": {"containers": {"type": "array", "minItems": 1, "items": {
        "type": "object", "required": ["name", "image"],
        "properties": {"name": {"type": "string"}, "image": {"type": "string"}}}}}}}}
RAYJOB_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayJob"},
        "metadata": {"type": "object", "required": ["name"], "properties": {
            "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}}},
        "spec": {
            "type": "object",
            "required": ["entrypoint", "rayClusterSpec"],
            "additionalProperties": False,
            "properties": {
                "entrypoint": {"type": "string", "minLength": 1},
                "shutdownAfterJobFinishes": {"type": "boolean"},
                "ttlSecondsAfterFinished": {"type": "integer", "minimum": 0},
                "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
                "backoffLimit": {"type": "integer", "minimum": 0},
                "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
                "runtimeEnvYAML": {"type": "string"},
                "rayClusterSpec": {
                    "type": "object", "required": ["headGroupSpec"],
                    "properties": {
                        "rayVersion": {"type": "string"},
                        "headGroupSpec": {"type": "object", "required": ["template"],
                                          "properties": {"rayStartParams": {"type": "object",
                                                                            "additionalProperties":
                                                                                {"type": "string"}},
                                                         "template": POD_TEMPLATE}},
                        "workerGroupSpecs": {"type": "array", "items": {
                            "type": "object", "required": ["groupName", "template"],
                            "properties": {"groupName": {"type": "string"},
                                           "replicas": {"type": "integer", "minimum": 0},
                                           "minReplicas": {"type": "integer", "minimum": 0},
                                           "maxReplicas": {"type": "integer", "minimum": 0},
                                           "rayStartParams": {"type": "object", "additionalProperties":
                                                              {"type": "string"}},
                                           "template": POD_TEMPLATE}}},
                    },
                },
            },
        },
    },
}


def validate_rayjob(obj: dict) -> None:
    import jsonschema

    jsonschema.validate(obj, RAYJOB_SCHEMA)
    for tmpl in [obj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"],
                 *[g["template"] for g in obj["spec"]["rayClusterSpec"].get("workerGroupSpecs", [])]]:
        _validate_pod_template(tmpl)


def _validate_pod_template(tmpl: dict) -> None:
    """The embedded pod templates are core Kubernetes: validate them strictly as a PodTemplate."""
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": tmpl}, "1.31.0", strict=True)


def test_manifest_shape_and_content():
    m = rayjob_manifest("pi2i-swing-abc", ["pi2i", "swing", "--events", "s3://b/e.parquet", "--out", "s3://b/o"],
                        namespace="pi2i", num_workers=3, gpus_per_worker=1, env={"A": "1"},
                        env_from_secret="objstore", service_account="pi2i-ray")
    validate_rayjob(m)
    spec = m["spec"]
    assert spec["entrypoint"] == "pi2i swing --events s3://b/e.parquet --out s3://b/o"
    assert spec["shutdownAfterJobFinishes"] is True and spec["submissionMode"] == "K8sJobMode"
    w = spec["rayClusterSpec"]["workerGroupSpecs"][0]
    assert w["replicas"] == w["minReplicas"] == w["maxReplicas"] == 3
    c = w["template"]["spec"]["containers"][0]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert {"name": "A", "value": "1"} in c["env"] and c["envFrom"][0]["secretRef"]["name"] == "objstore"
    head = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in head["containers"][0]["resources"]["limits"]
    assert head["serviceAccountName"] == "pi2i-ray"


def test_entrypoint_is_shell_quoted():
    m = rayjob_manifest("x", ["pi2i", "swing", "--out", "s3://b/a b"])
    assert m["spec"]["entrypoint"] == "pi2i swing --out 's3://b/a b'"


def test_job_name_is_dns1123():
    n = job_name("Swing", "8f2c1d3e-7a6b-4c5d-9e8f-0a1b2c3d4e5f_EXTRA/long")
    assert len(n) <= 50 and n == n.lower() and not n.endswith("-")
    import re

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)


@pytest.mark.parametrize("path", sorted(RAYJOB_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_committed_templates_validate_and_match_builder(path):
    obj = yaml.safe_load(path.read_text())
    validate_rayjob(obj)
    step = obj["metadata"]["labels"]["pi2i.io/step"]
    assert obj == rayjob.template(step), f"{path} drifted from pi2i.cluster.rayjob.template({step!r}); regenerate it"


@pytest.mark.parametrize("status, terminal, ok", [
    ({}, False, False),
    ({"jobDeploymentStatus": "Initializing"}, False, False),
    ({"jobStatus": "PENDING", "jobDeploymentStatus": "Running"}, False, False),
    ({"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}, False, False),
    ({"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Running"}, True, True),
    ({"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}, True, True),
    ({"jobStatus": "FAILED", "jobDeploymentStatus": "Complete"}, True, False),
    ({"jobStatus": "FAILED", "jobDeploymentStatus": "Retrying"}, False, False),
    ({"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "reason": "AppFailed"}, True, False),
    ({"jobStatus": "STOPPED", "jobDeploymentStatus": "Running"}, True, False),
    ({"jobDeploymentStatus": "Failed", "reason": "DeadlineExceeded", "message": "activeDeadlineSeconds"},
     True, False),
])
def test_state_machine(status, terminal, ok):
    st = rayjob_state({"status": status})
    assert (st.terminal, st.succeeded) == (terminal, ok)
    if status.get("reason"):
        assert status["reason"] in st.message


class FakeK8s:
    """CustomObjectsApi + CoreV1Api surface used by run_rayjob; statuses scripted, pods as real V1Pod objects."""

    def __init__(self, statuses: list[dict], log: str = "driver says hi"):
        self.statuses = list(statuses)
        self.created: list[dict] = []
        self.deleted: list[str] = []
        self.log = log

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("ray.io", "v1", "rayjobs")
        self.created.append(json.loads(json.dumps(body)))
        return body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        st = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        return {**self.created[-1], "status": st}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)

    def list_namespaced_pod(self, namespace, label_selector=None):
        assert label_selector == f"job-name={self.created[-1]['metadata']['name']}"
        return k8s.V1PodList(items=[k8s.V1Pod(metadata=k8s.V1ObjectMeta(name="pi2i-swing-x-abcde"))])

    def read_namespaced_pod_log(self, name, namespace, tail_lines=None):
        return self.log


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, s):
        self.t += s


def _run(fake, **kw):
    clock = Clock()
    m = rayjob_manifest("pi2i-swing-x", ["pi2i", "swing"])
    return run_rayjob(m, custom_api=fake, core_api=fake, poll_s=5, sleep=clock.sleep, clock=clock, log=None, **kw)


def test_run_succeeds_after_polling():
    fake = FakeK8s([{"jobDeploymentStatus": "Initializing"}, {"jobStatus": "RUNNING", "jobDeploymentStatus":
                    "Running"}, {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}])
    assert _run(fake)["jobStatus"] == "SUCCEEDED"
    assert len(fake.created) == 1 and not fake.deleted


def test_run_failure_surfaces_status_and_logs():
    fake = FakeK8s([{"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"},
                    {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "message": "exit code 1"}],
                   log="Traceback ...\nValueError: bad events")
    with pytest.raises(RayJobError) as e:
        _run(fake)
    msg = str(e.value)
    assert "jobStatus=FAILED" in msg and "exit code 1" in msg and "ValueError: bad events" in msg


def test_run_timeout_deletes_the_job():
    fake = FakeK8s([{"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}])
    with pytest.raises(RayJobError, match="not finished after 60s"):
        _run(fake, timeout_s=60)
    assert fake.deleted == ["pi2i-swing-x"]
