"""Rollout: the ``kubectl rollout status`` wait logic over sequences of real V1Deployment objects, the
Kubernetes rollout with rollback, and the local target against a real HTTP server and a real registry."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pyarrow as pa
import pytest
from kubernetes import client as k8s

from pi2i.cluster import rollout
from pi2i.cluster.rollout import (
    RolloutError,
    deployed_version,
    deployment_rollout_status,
    rollout_kubernetes,
    rollout_local,
    version_patch,
    wait_for_rollout,
)


def dep(gen=2, observed=2, want=3, replicas=3, updated=3, available=3, progressing: str | None = None,
        version="v1") -> k8s.V1Deployment:
    conds = []
    if progressing:
        conds.append(k8s.V1DeploymentCondition(type="Progressing", status="False" if progressing ==
                                               rollout.TIMED_OUT_REASON else "True", reason=progressing))
    container = k8s.V1Container(name="serving", image="ghcr.io/pi2i/pi2i:0.1.0",
                                env=[k8s.V1EnvVar(name="PI2I_VERSION", value=version)])
    return k8s.V1Deployment(
        metadata=k8s.V1ObjectMeta(name="pi2i-serving", namespace="pi2i", generation=gen),
        spec=k8s.V1DeploymentSpec(
            replicas=want, selector=k8s.V1LabelSelector(match_labels={"app": "x"}),
            template=k8s.V1PodTemplateSpec(
                metadata=k8s.V1ObjectMeta(annotations={"pi2i.io/version": version}),
                spec=k8s.V1PodSpec(containers=[container]))),
        status=k8s.V1DeploymentStatus(observed_generation=observed, replicas=replicas, updated_replicas=updated,
                                      available_replicas=available, conditions=conds or None))


@pytest.mark.parametrize("d, done, failed, needle", [
    (dep(gen=3, observed=2), False, False, "spec update to be observed"),
    (dep(updated=1, replicas=4), False, False, "1 out of 3 new replicas have been updated"),
    (dep(replicas=4, updated=3), False, False, "1 old replicas are pending termination"),
    (dep(available=2), False, False, "2 of 3 updated replicas are available"),
    (dep(), True, False, "successfully rolled out"),
    (dep(updated=1, progressing=rollout.TIMED_OUT_REASON), False, True, "exceeded its progress deadline"),
    (dep(progressing="NewReplicaSetAvailable"), True, False, "successfully rolled out"),
])
def test_status_matches_kubectl(d, done, failed, needle):
    st = deployment_rollout_status(d)
    assert (st.done, st.failed) == (done, failed)
    assert needle in st.message
    # the dict form (what the API returns as JSON) classifies the same
    st2 = deployment_rollout_status(k8s.ApiClient().sanitize_for_serialization(d))
    assert (st2.done, st2.failed, st2.message) == (st.done, st.failed, st.message)


def test_observed_generation_checked_before_progress_deadline():
    # an old ProgressDeadlineExceeded on a spec not yet observed must not fail the new rollout
    st = deployment_rollout_status(dep(gen=5, observed=4, progressing=rollout.TIMED_OUT_REASON))
    assert not st.failed and not st.done


def test_wait_walks_a_normal_rollout(fake_clock):
    seq = iter([dep(gen=3, observed=2), dep(gen=3, observed=3, updated=1, replicas=4, available=3),
                dep(gen=3, observed=3, updated=3, replicas=4, available=3),
                dep(gen=3, observed=3, updated=3, replicas=3, available=2), dep(gen=3, observed=3)])
    seen: list[str] = []
    st = wait_for_rollout(lambda: next(seq), timeout_s=100, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=seen.append)
    assert st.done and fake_clock.t == 4
    assert len(seen) == 5 and "successfully" in seen[-1]


def test_wait_fails_on_progress_deadline(fake_clock):
    seq = iter([dep(updated=1, replicas=4), dep(updated=1, replicas=4, progressing=rollout.TIMED_OUT_REASON)])
    with pytest.raises(RolloutError, match="progress deadline"):
        wait_for_rollout(lambda: next(seq), timeout_s=100, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=None)


def test_wait_fails_on_stuck_rollout(fake_clock):
    stuck = dep(updated=1, replicas=4, available=3)  # never changes: e.g. the new pods never become ready
    with pytest.raises(RolloutError, match="stuck"):
        wait_for_rollout(lambda: stuck, timeout_s=30, poll_s=5, sleep=fake_clock.sleep, clock=fake_clock, log=None)
    assert fake_clock.t == 30


class FakeAppsApi:
    """The two AppsV1Api calls the rollout makes, over a scripted sequence of Deployment states per patch."""

    def __init__(self, initial: k8s.V1Deployment, after_patch: dict[str, list[k8s.V1Deployment]]):
        self.state = [initial]
        self.after_patch = after_patch
        self.patches: list[dict] = []

    def read_namespaced_deployment(self, name, namespace):
        return self.state.pop(0) if len(self.state) > 1 else self.state[0]

    def patch_namespaced_deployment(self, name, namespace, body):
        self.patches.append(body)
        v = body["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"]
        self.state = list(self.after_patch[v])


def test_kubernetes_rollout_success(fake_clock):
    api = FakeAppsApi(dep(version="v1"), {"v2": [dep(gen=3, observed=2, version="v2"),
                                                  dep(gen=3, observed=3, updated=1, replicas=4, version="v2"),
                                                  dep(gen=3, observed=3, version="v2")]})
    out = rollout_kubernetes("v2", apps_api=api, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=None)
    assert out["previous"] == "v1" and out["version"] == "v2"
    assert api.patches == [version_patch("v2", "serving")]


def test_kubernetes_rollout_rolls_back_on_deadline(fake_clock):
    bad = [dep(gen=3, observed=3, updated=1, replicas=4, version="v2"),
           dep(gen=3, observed=3, updated=1, replicas=4, version="v2", progressing=rollout.TIMED_OUT_REASON)]
    good = [dep(gen=4, observed=4, version="v1")]
    api = FakeAppsApi(dep(version="v1"), {"v2": bad, "v1": good})
    with pytest.raises(RolloutError, match="rolled back to v1"):
        rollout_kubernetes("v2", apps_api=api, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=None)
    assert [deployed_version({"spec": p["spec"]}) for p in api.patches] == ["v2", "v1"]


def test_kubernetes_rollout_rolls_back_when_stuck(fake_clock):
    api = FakeAppsApi(dep(version="v1"), {"v2": [dep(gen=3, observed=3, available=2, version="v2")],
                                           "v1": [dep(gen=4, observed=4, version="v1")]})
    with pytest.raises(RolloutError, match="stuck.*rolled back to v1"):
        rollout_kubernetes("v2", apps_api=api, timeout_s=20, poll_s=2, sleep=fake_clock.sleep, clock=fake_clock, log=None)


def test_version_patch_is_a_strategic_merge_on_env_and_annotation():
    p = version_patch("v9", "serving")
    assert p["spec"]["template"]["metadata"]["annotations"] == {"pi2i.io/version": "v9"}
    assert deployed_version(dep(version="v9")) == "v9"


# -------------------------------------------------------------------------------------------- local target
@pytest.fixture
def registry_two_versions(tmp_path):
    """A real registry with two published versions (v_a live)."""
    from pi2i.contracts import I2I_SCHEMA, write_parquet
    from pi2i.publish import registry

    i2i = tmp_path / "i2i.parquet"
    write_parquet(pa.table({"trigger": [1, 1, 2], "target": [2, 3, 1], "score": [0.5, 0.2, 0.5],
                            "rank": [1, 2, 1]}, schema=I2I_SCHEMA), str(i2i))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    reg = str(tmp_path / "registry")
    a = registry.publish(reg, str(i2i), str(model), promote=True)
    (model / "config.json").write_text('{"b": 1}')
    b = registry.publish(reg, str(i2i), str(model))
    assert registry.current(reg) == a and a != b
    return reg, a, b


class FakeService:
    """A real HTTP server speaking the serving admin contract; ``broken`` makes /readyz fail after reload."""

    def __init__(self, registry: str, broken: bool = False, token: str | None = None):
        from pi2i.publish import registry as reg

        self.loaded = reg.current(registry)
        state = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                    self._send(401, {"error": "unauthorized"})
                elif self.path == "/admin/reload":
                    state.loaded = reg.current(registry)
                    self._send(200, {"version": state.loaded})
                else:
                    self._send(404, {})

            def do_GET(self):
                if self.path == "/readyz":
                    self._send(503 if broken else 200, {"ready": not broken})
                elif self.path == "/version":
                    self._send(200, {"version": state.loaded})
                else:
                    self._send(404, {})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_local_rollout_promotes_and_verifies(registry_two_versions):
    from pi2i.publish import registry

    reg, a, b = registry_two_versions
    svc = FakeService(reg)
    try:
        out = rollout_local(reg, b, svc.url, timeout_s=5)
    finally:
        svc.close()
    assert out["previous"] == a and registry.current(reg) == b and svc.loaded == b


def test_local_rollout_rolls_back_when_unhealthy(registry_two_versions):
    from pi2i.publish import registry

    reg, a, b = registry_two_versions
    svc = FakeService(reg, broken=True)
    try:
        with pytest.raises(RolloutError, match=f"rolled back to {a}"):
            rollout_local(reg, b, svc.url, timeout_s=1)
    finally:
        svc.close()
    assert registry.current(reg) == a and svc.loaded == a


def test_local_rollout_without_service_only_promotes(registry_two_versions):
    from pi2i.publish import registry

    reg, _, b = registry_two_versions
    assert rollout_local(reg, b)["service"] is None
    assert registry.current(reg) == b


def test_local_rollout_unreachable_service_fails_and_restores(registry_two_versions):
    from pi2i.publish import registry

    reg, a, b = registry_two_versions
    with pytest.raises(RolloutError, match="rolled back"):
        rollout_local(reg, b, "http://127.0.0.1:9", timeout_s=1)
    assert registry.current(reg) == a


def test_kubernetes_rollout_moves_registry_and_restores_it(registry_two_versions, fake_clock):
    from pi2i.publish import registry

    reg, a, b = registry_two_versions
    ok = FakeAppsApi(dep(version=a), {b: [dep(gen=3, observed=3, version=b)]})
    rollout_kubernetes(b, registry=reg, apps_api=ok, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=None)
    assert registry.current(reg) == b
    registry.promote(reg, a)
    bad = FakeAppsApi(dep(version=a), {b: [dep(gen=3, observed=3, updated=1, replicas=4, version=b,
                                               progressing=rollout.TIMED_OUT_REASON)],
                                       a: [dep(gen=4, observed=4, version=a)]})
    with pytest.raises(RolloutError, match=f"registry CURRENT back to {a}.*rolled back to {a}"):
        rollout_kubernetes(b, registry=reg, apps_api=bad, poll_s=1, sleep=fake_clock.sleep, clock=fake_clock, log=None)
    assert registry.current(reg) == a


def test_local_rollout_sends_the_admin_token(registry_two_versions, monkeypatch):
    from pi2i.publish import registry

    reg, a, b = registry_two_versions
    svc = FakeService(reg, token="s3cret")
    try:
        monkeypatch.delenv(rollout.ADMIN_TOKEN_ENV, raising=False)
        with pytest.raises(RolloutError, match="401: no admin token .set PI2I_ADMIN_TOKEN.*rolled back"):
            rollout_local(reg, b, svc.url, timeout_s=1)
        assert registry.current(reg) == a
        monkeypatch.setenv(rollout.ADMIN_TOKEN_ENV, "s3cret")
        assert rollout_local(reg, b, svc.url, timeout_s=5)["version"] == b
    finally:
        svc.close()
    assert registry.current(reg) == b and svc.loaded == b
