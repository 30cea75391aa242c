"""RayJob: manifest builder, the KubeRay status state machine, and create/poll/logs/fail against injected
client objects returning real kubernetes model objects (no API server exists here)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from pi2i.cluster import rayjob
from pi2i.cluster.rayjob import RayJobError, job_name, rayjob_manifest, rayjob_state, run_rayjob

K8S = Path(__file__).resolve().parents[1] / "k8s"
RAYJOB_DIR = K8S / "rayjobs"
#: ray.io/v1 RayJob, every field we set, written from the KubeRay v1 API types (see its $comment)
RAYJOB_SCHEMA = json.loads((K8S / "schemas" / "rayjob-v1.json").read_text())
K8S_VERSION = "1.31.0"
IMAGE = "ghcr.io/pi2i/pi2i:test"


def pod_templates(obj: dict) -> list[dict]:
    rc = obj["spec"]["rayClusterSpec"]
    return [rc["headGroupSpec"]["template"], *[g["template"] for g in rc.get("workerGroupSpecs", [])]]


def validate_rayjob(obj: dict) -> None:
    """The RayJob fields against our schema; each embedded pod template strictly as a core PodTemplateSpec."""
    import jsonschema

    jsonschema.Draft202012Validator(RAYJOB_SCHEMA).validate(obj)
    for tmpl in pod_templates(obj):
        _validate_pod_template(tmpl)


def _validate_pod_template(tmpl: dict) -> None:
    """Core Kubernetes: a PodTemplate's ``template`` is a PodTemplateSpec (kubernetes-validate --strict)."""
    import kubernetes_validate

    kubernetes_validate.validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "t"},
                                  "template": tmpl}, K8S_VERSION, strict=True)


def _manifest(**kw):
    return rayjob_manifest("pi2i-swing-x", ["pi2i", "swing"], IMAGE, **kw)


def test_manifest_shape_and_content():
    m = rayjob_manifest("pi2i-swing-abc", ["pi2i", "swing", "--events", "s3://b/e.parquet", "--out", "s3://b/o"],
                        IMAGE, namespace="pi2i", num_workers=3, gpus_per_worker=1, env={"A": "1"},
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
    m = rayjob_manifest("x", ["pi2i", "swing", "--out", "s3://b/a b"], IMAGE)
    assert m["spec"]["entrypoint"] == "pi2i swing --out 's3://b/a b'"


def test_job_name_is_dns1123():
    n = job_name("Swing", "8f2c1d3e-7a6b-4c5d-9e8f-0a1b2c3d4e5f_EXTRA/long")
    assert len(n) <= 50 and n == n.lower() and not n.endswith("-")
    import re

    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", n)


@pytest.mark.cluster
def test_committed_templates_render_with_kustomize_validate_and_match_builder():
    """`kubectl kustomize k8s/rayjobs` renders both templates; each validates (schema + strict pod templates) and
    equals the builder's output on the pinned image (regenerate: python -m components.rayjob_templates)."""
    from components.image import PINNED_IMAGE

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl not on PATH: k8s/rayjobs is rendered with `kubectl kustomize`")
    out = subprocess.run([kubectl, "kustomize", str(RAYJOB_DIR)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    rendered = {o["metadata"]["labels"]["pi2i.io/step"]: o for o in yaml.safe_load_all(out.stdout) if o}
    assert sorted(rendered) == sorted(rayjob.STEP_RESOURCES)
    for step, obj in rendered.items():
        validate_rayjob(obj)
        committed = yaml.safe_load((RAYJOB_DIR / f"{step}.yaml").read_text())
        assert obj == committed == rayjob.template(step, PINNED_IMAGE), f"k8s/rayjobs/{step}.yaml drifted"
        assert {c["image"] for t in pod_templates(obj) for c in t["spec"]["containers"]} == {PINNED_IMAGE}


@pytest.mark.cluster
@pytest.mark.parametrize("mutate, where", [
    (lambda m: m["spec"].update(submissionMode="K8sJob"), "submissionMode"),
    (lambda m: m["spec"].update(shutdownAfterJobFinish=True), "shutdownAfterJobFinish"),
    (lambda m: m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0].pop("maxReplicas"), "maxReplicas"),
    (lambda m: m["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"].update({"num-cpus": 0}), "num-cpus"),
    (lambda m: m["spec"].update(backoffLimit=2**31), "backoffLimit"),
    (lambda m: m["metadata"].update(name="Pi2i_Swing"), "Pi2i_Swing"),
])
def test_schema_rejects_what_kuberay_rejects(mutate, where):
    import jsonschema

    m = _manifest()
    mutate(m)
    with pytest.raises(jsonschema.ValidationError) as e:
        jsonschema.Draft202012Validator(RAYJOB_SCHEMA).validate(m)
    assert where in str(e.value)


@pytest.mark.cluster
@pytest.mark.parametrize("mutate", [
    lambda c: c.update(resourcess={}),                        # unknown field (strict)
    lambda c: c["env"].append({"value": "x"}),                # required field missing (EnvVar.name)
    lambda c: c.update(ports=[{"containerPort": "6379"}]),    # wrong type
])
def test_pod_templates_are_validated_as_core_podtemplatespecs(mutate):
    import kubernetes_validate

    m = _manifest()
    mutate(m["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0])
    with pytest.raises(kubernetes_validate.ValidationError):
        validate_rayjob(m)


def test_ray_version_matches_the_installed_ray():
    import ray

    assert rayjob.RAY_VERSION == ray.__version__


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


def _run(fake, clock, **kw):
    """``run_rayjob`` against the fake API, time from the fake clock (no real waiting)."""
    m = _manifest()
    return run_rayjob(m, custom_api=fake, core_api=fake, poll_s=5, sleep=clock.sleep, clock=clock, log=None, **kw)


def test_run_succeeds_after_polling(fake_clock):
    fake = FakeK8s([{"jobDeploymentStatus": "Initializing"}, {"jobStatus": "RUNNING", "jobDeploymentStatus":
                    "Running"}, {"jobStatus": "SUCCEEDED", "jobDeploymentStatus": "Complete"}])
    assert _run(fake, fake_clock)["jobStatus"] == "SUCCEEDED"
    assert len(fake.created) == 1 and not fake.deleted


def test_run_failure_surfaces_status_and_logs(fake_clock):
    fake = FakeK8s([{"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"},
                    {"jobStatus": "FAILED", "jobDeploymentStatus": "Failed", "message": "exit code 1"}],
                   log="Traceback ...\nValueError: bad events")
    with pytest.raises(RayJobError) as e:
        _run(fake, fake_clock)
    msg = str(e.value)
    assert "jobStatus=FAILED" in msg and "exit code 1" in msg and "ValueError: bad events" in msg


def test_run_timeout_deletes_the_job(fake_clock):
    fake = FakeK8s([{"jobStatus": "RUNNING", "jobDeploymentStatus": "Running"}])
    with pytest.raises(RayJobError, match="not finished after 60s"):
        _run(fake, fake_clock, timeout_s=60)
    assert fake.deleted == ["pi2i-swing-x"]
