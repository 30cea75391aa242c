"""k8s/: render the base and every overlay with ``kubectl kustomize``, validate every object
strictly against the Kubernetes OpenAPI schemas of a pinned version (kubernetes-validate), and check the
operational properties the platform relies on (probes, non-root, read-only root, zero-unavailable rollouts,
least-privilege RBAC, names the rollout code expects)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pi2i.cluster import rollout

pytestmark = pytest.mark.cluster  # rendered by the real tool (kubectl kustomize)

K8S = Path(__file__).resolve().parents[1] / "k8s"
K8S_VERSION = "1.31.0"  # schemas bundled with kubernetes-validate; the cluster floor we support
TARGETS = ["base", "overlays/dev", "overlays/prod"]
KUBECTL = shutil.which("kubectl")


# ------------------------------------------------------------------------------------------------ rendering
# Only the real tool renders: `kubectl kustomize` (kustomize v5 built in). .ci/run checks kubectl is on PATH.


def kubectl() -> str:
    if KUBECTL is None:
        pytest.fail("kubectl not on PATH: the k8s tests render with `kubectl kustomize` (install kubectl >= 1.27)")
    return KUBECTL


def render(target: str) -> list[dict]:
    out = subprocess.run([kubectl(), "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, f"kubectl kustomize {target}: {out.stderr}"
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def test_every_object_validates_strictly(rendered):
    import kubernetes_validate

    _, objs = rendered
    kinds = {o["kind"] for o in objs}
    assert kinds >= {"Namespace", "ConfigMap", "Deployment", "Service", "HorizontalPodAutoscaler",
                     "PodDisruptionBudget", "ServiceAccount", "Role", "RoleBinding"}, kinds
    for o in objs:
        kubernetes_validate.validate(o, K8S_VERSION, strict=True)  # raises on unknown fields / bad types


def test_all_objects_in_one_namespace(rendered):
    target, objs = rendered
    ns = by_kind(objs, "Namespace")[0]["metadata"]["name"]
    assert ns == ("pi2i-dev" if target.endswith("dev") else "pi2i")
    for o in objs:
        if o["kind"] != "Namespace":
            assert o["metadata"]["namespace"] == ns, o["metadata"]
    rb = by_kind(objs, "RoleBinding")[0]
    assert all(s["namespace"] == ns for s in rb["subjects"])


def test_serving_deployment_is_production_shaped(rendered):
    _, objs = rendered
    d = by_kind(objs, "Deployment", "pi2i-serving")[0]
    assert d["spec"]["strategy"]["type"] == "RollingUpdate"
    assert d["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    pod = d["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (c,) = [c for c in pod["containers"] if c["name"] == "serving"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/livez"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert {"cpu", "memory"} <= set(c["resources"]["requests"]) and {"cpu", "memory"} <= set(c["resources"]["limits"])
    tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and any(v["name"] == tmp[0]["name"] and "emptyDir" in v for v in pod["volumes"])
    # the names pi2i.cluster.rollout patches by default
    assert d["metadata"]["name"] == "pi2i-serving" and c["name"] == "serving"
    assert any(e["name"] == rollout.VERSION_ENV for e in c["env"])
    assert c["image"].startswith("ghcr.io/pi2i/pi2i:")


def test_hpa_pdb_service_and_redis_point_at_the_right_pods(rendered):
    _, objs = rendered
    d = by_kind(objs, "Deployment", "pi2i-serving")[0]
    sel = d["spec"]["selector"]["matchLabels"]
    labels = d["spec"]["template"]["metadata"]["labels"]
    assert sel.items() <= labels.items()
    hpa = by_kind(objs, "HorizontalPodAutoscaler")[0]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "pi2i-serving"}
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    pdb = by_kind(objs, "PodDisruptionBudget")[0]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    if "minAvailable" in pdb["spec"]:  # a PDB must never forbid every voluntary eviction
        assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]
    svc = by_kind(objs, "Service", "pi2i-serving")[0]
    assert svc["spec"]["selector"].items() <= labels.items()
    redis = by_kind(objs, "Deployment", "pi2i-redis")[0]
    rsvc = by_kind(objs, "Service", "pi2i-redis")[0]
    assert rsvc["spec"]["selector"].items() <= redis["spec"]["template"]["metadata"]["labels"].items()
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True


def test_rbac_is_least_privilege(rendered):
    _, objs = rendered
    role = by_kind(objs, "Role", "pi2i-deployer")[0]
    rules: dict[tuple, tuple[set, list | None]] = {}
    for r in role["rules"]:  # a resource's verbs may be split over several rules: compare their union
        verbs, names = rules.setdefault((tuple(r["apiGroups"]), tuple(r["resources"])),
                                        (set(), r.get("resourceNames")))
        assert names == r.get("resourceNames")
        verbs |= set(r["verbs"])
    assert rules == {
        (("apps",), ("deployments",)): ({"get", "patch"}, ["pi2i-serving"]),
        (("",), ("pods",)): ({"get", "list"}, None),
        (("",), ("pods/log",)): ({"get"}, None),
        (("ray.io",), ("rayjobs",)): ({"create", "get", "list", "watch", "delete"}, None),
    }
    rb = by_kind(objs, "RoleBinding", "pi2i-deployer")[0]
    assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pi2i-deployer"}
    sas = {o["metadata"]["name"] for o in by_kind(objs, "ServiceAccount")}
    assert {s["name"] for s in rb["subjects"]} <= sas
    assert by_kind(objs, "ServiceAccount", "pi2i-ray")[0]["automountServiceAccountToken"] is False


def test_overlays_differ_where_intended():
    dev, prod = render("overlays/dev"), render("overlays/prod")
    rep = lambda objs: by_kind(objs, "Deployment", "pi2i-serving")[0]["spec"]["replicas"]
    assert rep(dev) == 1 and rep(prod) == 3
    assert by_kind(dev, "PodDisruptionBudget")[0]["spec"] == {
        "maxUnavailable": 1, "selector": {"matchLabels": {"app.kubernetes.io/name": "pi2i-serving"}}}
    assert by_kind(dev, "ConfigMap")[0]["data"]["PI2I_REGISTRY"].startswith("s3://pi2i-dev/")


def test_image_is_defined_once():
    """One pin: components.image.PINNED_IMAGE (what every KFP component and every RayJob the components create
    run) equals every kustomize `images:` entry, the serving Deployment as rendered, the compiled pipeline's
    images and the RayJob templates."""
    from components.image import PINNED_IMAGE

    name, tag = PINNED_IMAGE.rsplit(":", 1)
    kustomizations = sorted(K8S.rglob("kustomization.yaml"))
    assert len(kustomizations) >= 4
    for k in kustomizations:
        for img in yaml.safe_load(k.read_text()).get("images", []):
            assert (img.get("newName", img["name"]), img["newTag"]) == (name, tag), k
    for target in TARGETS:
        containers = [c for d in by_kind(render(target), "Deployment")
                      for c in d["spec"]["template"]["spec"]["containers"] if c["image"].startswith(name)]
        assert containers and {c["image"] for c in containers} == {PINNED_IMAGE}, target
    compiled = (K8S.parent / "pipelines" / "pi2i_daily.yaml").read_text()
    images = {ln.split("image:", 1)[1].strip() for ln in compiled.splitlines() if ln.strip().startswith("image:")}
    assert images == {PINNED_IMAGE}
    for t in (K8S / "rayjobs").glob("*.yaml"):
        if t.name != "kustomization.yaml":
            assert set(re.findall(r"image: (\S+)", t.read_text())) == {PINNED_IMAGE}, t
