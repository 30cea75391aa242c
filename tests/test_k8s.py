"""k8s/: render the base and every overlay with kustomize (``kubectl kustomize``), validate every object
strictly against the Kubernetes OpenAPI schemas of a pinned version (kubernetes-validate), and check the
operational properties the platform relies on (probes, non-root, read-only root, zero-unavailable rollouts,
least-privilege RBAC, names the rollout code expects)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from pi2i.cluster import rollout

K8S = Path(__file__).resolve().parents[1] / "k8s"
K8S_VERSION = "1.31.0"  # schemas bundled with kubernetes-validate; the cluster floor we support
TARGETS = ["base", "overlays/dev", "overlays/prod"]
KUBECTL = shutil.which("kubectl")


# ------------------------------------------------------------------------------------------------ rendering
# `kubectl kustomize` when kubectl is installed; otherwise a small renderer for exactly the kustomize subset
# k8s/ uses (resources, namespace, labels, images, patches: strategic-merge files and JSON6902 with a target).
# Where both exist the test below checks they agree, so the fallback cannot drift.
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def _smp(base, patch):
    """Strategic merge for what our patches touch: maps merge, lists of named maps merge by name."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            out[k] = _smp(base[k], v) if k in base else v
        return out
    if isinstance(base, list) and isinstance(patch, list) and all(isinstance(x, dict) and "name" in x
                                                                   for x in base + patch):
        out = [dict(x) for x in base]
        for p in patch:
            hit = [i for i, b in enumerate(out) if b["name"] == p["name"]]
            if hit:
                out[hit[0]] = _smp(out[hit[0]], p)
            else:
                out.append(p)
        return out
    return patch


def _json6902(obj, ops):
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node = obj
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        key = int(last) if isinstance(node, list) else last
        if op["op"] == "remove":
            del node[key]
        elif op["op"] in ("add", "replace"):
            node[key] = op["value"]
        else:
            raise NotImplementedError(op["op"])
    return obj


def render_subset(target: Path) -> list[dict]:
    k = yaml.safe_load((target / "kustomization.yaml").read_text())
    objs: list[dict] = []
    for r in k.get("resources", []):
        p = target / r
        objs += render_subset(p) if p.is_dir() else [d for d in yaml.safe_load_all(p.read_text()) if d]
    for patch in k.get("patches", []):
        if "path" in patch:
            pd = yaml.safe_load((target / patch["path"]).read_text())
            objs = [_smp(o, pd) if (o["kind"], o["metadata"]["name"]) == (pd["kind"], pd["metadata"]["name"])
                    else o for o in objs]
        else:
            t, ops = patch["target"], yaml.safe_load(patch["patch"])
            objs = [_json6902(o, ops) if o["kind"] == t["kind"] and o["metadata"]["name"] == t["name"] else o
                    for o in objs]
    for img in k.get("images", []):
        for o in objs:
            for c in o.get("spec", {}).get("template", {}).get("spec", {}).get("containers", []):
                if c["image"].split(":")[0] == img["name"]:
                    c["image"] = f"{img.get('newName', img['name'])}:{img['newTag']}"
    for lab in k.get("labels", []):
        for o in objs:
            o["metadata"].setdefault("labels", {}).update(lab["pairs"])
            tmpl = o.get("spec", {}).get("template")
            if lab.get("includeTemplates") and isinstance(tmpl, dict) and "metadata" in tmpl:
                tmpl["metadata"].setdefault("labels", {}).update(lab["pairs"])
    if "namespace" in k:
        for o in objs:
            if o["kind"] == "Namespace":
                o["metadata"]["name"] = k["namespace"]
            elif o["kind"] not in CLUSTER_SCOPED:
                o["metadata"]["namespace"] = k["namespace"]
    return objs


def render(target: str) -> list[dict]:
    if KUBECTL is None:
        return render_subset(K8S / target)
    out = subprocess.run([KUBECTL, "kustomize", str(K8S / target)], capture_output=True, text=True, timeout=60,
                         check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


@pytest.mark.skipif(KUBECTL is None, reason="kubectl not installed: nothing to compare the fallback renderer to")
@pytest.mark.parametrize("target", TARGETS)
def test_fallback_renderer_agrees_with_kustomize(target):
    key = lambda o: (o["kind"], o["metadata"]["name"])
    assert sorted(render_subset(K8S / target), key=key) == sorted(render(target), key=key)


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def by_kind(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def test_every_object_validates_strictly(rendered):
    import kubernetes_validate

    _, objs = rendered
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == sorted(["Namespace", "ConfigMap", "Deployment", "Deployment", "Service", "Service",
                            "HorizontalPodAutoscaler", "PodDisruptionBudget", "ServiceAccount", "ServiceAccount",
                            "Role", "RoleBinding"]), kinds
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
    rules = {(tuple(r["apiGroups"]), tuple(r["resources"])): (set(r["verbs"]), r.get("resourceNames"))
             for r in role["rules"]}
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
