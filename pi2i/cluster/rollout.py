"""Roll a published version out to serving, verify it, and roll back on failure.

Two targets, one contract (``promote -> serve -> verify``, or restore the previous version and raise):

* **local** — the registry's ``CURRENT`` is moved to the new version, the running service is told to hot-swap
  (``POST /admin/reload`` with the admin token of ``$PI2I_ADMIN_TOKEN``) and is then health-checked: ``/readyz`` answers 200 and ``/version`` reports the new
  version. Without a service URL only the registry is promoted.
* **kubernetes** — the serving Deployment's pod template gets ``PI2I_VERSION=<version>`` (and the annotation
  ``pi2i.io/version``), then we wait the way ``kubectl rollout status`` does (:func:`deployment_rollout_status`):
  the spec generation must be observed, every replica updated, no old replica left, every updated replica
  available, and a ``Progressing`` condition with reason ``ProgressDeadlineExceeded`` fails at once. A rollout
  that makes no progress before our own timeout (a stuck rollout) also fails. On failure the Deployment and the
  registry go back to the previous version.

The Kubernetes client is passed in (``apps_api``) so the wait logic is testable against real
``kubernetes.client.V1Deployment`` objects without an API server.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

VERSION_ENV = "PI2I_VERSION"
VERSION_ANNOTATION = "pi2i.io/version"
TIMED_OUT_REASON = "ProgressDeadlineExceeded"  # kubectl's deploymentutil.TimedOutReason


class RolloutError(RuntimeError):
    """The new version did not become healthy; the previous one was restored (see the message)."""


@dataclass(frozen=True)
class RolloutStatus:
    """One observation of a Deployment rollout, as ``kubectl rollout status`` would print it."""

    done: bool
    failed: bool
    message: str


def _get(obj: Any, *path: str, default: Any = None) -> Any:
    """Read a field from a V1 model object (snake_case attributes) or its dict form (camelCase keys)."""
    for key in path:
        if obj is None:
            return default
        if isinstance(obj, dict):
            camel = key.split("_")[0] + "".join(p.title() for p in key.split("_")[1:])
            obj = obj.get(camel, obj.get(key))
        else:
            obj = getattr(obj, key, None)
    return default if obj is None else obj


def deployment_rollout_status(dep: Any) -> RolloutStatus:
    """The rollout state of a Deployment (kubectl's ``DeploymentStatusViewer.Status``, same order of checks)."""
    name = _get(dep, "metadata", "name", default="?")
    generation = _get(dep, "metadata", "generation", default=0)
    observed = _get(dep, "status", "observed_generation", default=0)
    if generation > observed:
        return RolloutStatus(False, False, "Waiting for deployment spec update to be observed...")
    for cond in _get(dep, "status", "conditions", default=[]) or []:
        if _get(cond, "type") == "Progressing" and _get(cond, "reason") == TIMED_OUT_REASON:
            return RolloutStatus(False, True, f"deployment {name!r} exceeded its progress deadline")
    want = _get(dep, "spec", "replicas")
    updated = _get(dep, "status", "updated_replicas", default=0)
    replicas = _get(dep, "status", "replicas", default=0)
    available = _get(dep, "status", "available_replicas", default=0)
    if want is not None and updated < want:
        return RolloutStatus(False, False, f"Waiting for deployment {name!r} rollout to finish: "
                                           f"{updated} out of {want} new replicas have been updated...")
    if replicas > updated:
        return RolloutStatus(False, False, f"Waiting for deployment {name!r} rollout to finish: "
                                           f"{replicas - updated} old replicas are pending termination...")
    if available < updated:
        return RolloutStatus(False, False, f"Waiting for deployment {name!r} rollout to finish: "
                                           f"{available} of {updated} updated replicas are available...")
    return RolloutStatus(True, False, f"deployment {name!r} successfully rolled out")


def wait_for_rollout(
    read: Callable[[], Any],
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = print,
) -> RolloutStatus:
    """Poll ``read()`` (returns the Deployment) until the rollout is done; raise :class:`RolloutError` on a
    progress-deadline failure or when nothing finishes within ``timeout_s`` (a stuck rollout)."""
    deadline = clock() + timeout_s
    last = ""
    while True:
        st = deployment_rollout_status(read())
        if log and st.message != last:
            log(st.message)
        last = st.message
        if st.failed:
            raise RolloutError(st.message)
        if st.done:
            return st
        if clock() >= deadline:
            raise RolloutError(f"rollout not finished after {timeout_s:.0f}s (stuck): {st.message}")
        sleep(poll_s)


# --------------------------------------------------------------------------------------------- kubernetes
def deployed_version(dep: Any, container: str | None = None) -> str | None:
    """The version a Deployment's pod template pins (env ``PI2I_VERSION``, else the annotation)."""
    for c in _get(dep, "spec", "template", "spec", "containers", default=[]) or []:
        if container and _get(c, "name") != container:
            continue
        for e in _get(c, "env", default=[]) or []:
            if _get(e, "name") == VERSION_ENV:
                return _get(e, "value")
    ann = _get(dep, "spec", "template", "metadata", "annotations", default={}) or {}
    return ann.get(VERSION_ANNOTATION)


def version_patch(version: str, container: str) -> dict:
    """Strategic-merge patch pinning ``version`` (env merges by name; the annotation forces a new ReplicaSet)."""
    return {"spec": {"template": {
        "metadata": {"annotations": {VERSION_ANNOTATION: version}},
        "spec": {"containers": [{"name": container, "env": [{"name": VERSION_ENV, "value": version}]}]},
    }}}


def _apps_api(apps_api: Any | None) -> Any:
    if apps_api is not None:
        return apps_api
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.AppsV1Api()


def rollout_kubernetes(
    version: str,
    deployment: str = "pi2i-serving",
    namespace: str = "pi2i",
    container: str = "serving",
    registry: str | None = None,
    apps_api: Any | None = None,
    timeout_s: float = 600.0,
    poll_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    log: Callable[[str], None] | None = print,
) -> dict:
    """Patch the serving Deployment to ``version`` and wait; on failure restore the previous version and raise.

    With ``registry`` its ``CURRENT`` moves first (serving pods load CURRENT at start and follow it), the
    patch then rolls every pod through startup/readiness probes on the new version; on failure CURRENT and
    the Deployment both go back to the previous version."""
    api = _apps_api(apps_api)
    read = lambda: api.read_namespaced_deployment(deployment, namespace)
    previous = deployed_version(read(), container)
    reg_previous = None
    if registry is not None:
        from pi2i.publish import registry as reg

        reg_previous = reg.current(registry)
        if reg_previous != version:
            reg.promote(registry, version)
    api.patch_namespaced_deployment(deployment, namespace, version_patch(version, container))
    try:
        st = wait_for_rollout(read, timeout_s, poll_s, sleep, clock, log)
    except RolloutError as e:
        msg = f"rollout of {version} failed: {e}"
        if registry is not None and reg_previous and reg_previous != version:
            # restoring what was live is not a new gate decision (it may have been a forced promote)
            reg.promote(registry, reg_previous, force=True, reason=f"restore after failed rollout of {version}")
            msg += f"; registry CURRENT back to {reg_previous}"
        if previous and previous != version:
            api.patch_namespaced_deployment(deployment, namespace, version_patch(previous, container))
            try:
                wait_for_rollout(read, timeout_s, poll_s, sleep, clock, log)
                msg += f"; rolled back to {previous}"
            except RolloutError as e2:
                msg += f"; rollback to {previous} ALSO failed: {e2}"
        else:
            msg += "; no previous version to roll back to"
        raise RolloutError(msg) from None
    return {"target": "kubernetes", "version": version, "previous": previous, "status": st.message}


# -------------------------------------------------------------------------------------------------- local
def _version_of(resp: Any) -> str | None:
    try:
        body = resp.json()
    except (ValueError, json.JSONDecodeError):
        return resp.text.strip() or None
    if isinstance(body, dict):
        return body.get("version") or body.get("current")
    return str(body)


def check_service(url: str, version: str, timeout_s: float = 60.0, poll_s: float = 0.5,
                  http: Any | None = None) -> None:
    """Wait until the service at ``url`` is ready and reports ``version``; raise RolloutError otherwise."""
    import httpx

    http = http or httpx
    deadline = time.monotonic() + timeout_s
    why = "no answer"
    while time.monotonic() < deadline:
        try:
            r = http.get(f"{url}/readyz", timeout=5.0)
            if r.status_code != 200:
                why = f"/readyz answered {r.status_code}"
            else:
                got = _version_of(http.get(f"{url}/version", timeout=5.0))
                if got == version:
                    return
                why = f"/version reports {got!r}, expected {version!r}"
        except httpx.HTTPError as e:
            why = f"{type(e).__name__}: {e}"
        time.sleep(poll_s)
    raise RolloutError(f"service {url} not serving {version} after {timeout_s:.0f}s: {why}")


ADMIN_TOKEN_ENV = "PI2I_ADMIN_TOKEN"  # the serving admin token (k8s Secret pi2i-serving-auth, key admin-token)


def rollout_local(registry: str, version: str, service_url: str | None = None, timeout_s: float = 60.0,
                  http: Any | None = None, admin_token: str | None = None) -> dict:
    """Promote ``version`` in the registry; if a service runs at ``service_url`` hot-swap it and verify.

    ``POST /admin/reload`` carries ``Authorization: Bearer <admin_token>`` (default: ``$PI2I_ADMIN_TOKEN``).
    On failure the registry goes back to the previous version (and the service is told to reload it)."""
    import os

    import httpx

    from pi2i.publish import registry as reg

    http = http or httpx
    token = admin_token if admin_token is not None else os.environ.get(ADMIN_TOKEN_ENV, "")
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    previous = reg.current(registry)
    if previous != version:  # a registry's first version is live from publish on
        reg.promote(registry, version)
    if not service_url:
        return {"target": "local", "version": version, "previous": previous, "service": None}
    url = service_url.rstrip("/")
    try:
        r = http.post(f"{url}/admin/reload", timeout=120.0, headers=auth)
        if r.status_code in (401, 403):
            raise RolloutError(f"POST {url}/admin/reload answered {r.status_code}: "
                               f"{'wrong' if token else 'no'} admin token (set {ADMIN_TOKEN_ENV})")
        if r.status_code >= 400:
            raise RolloutError(f"POST {url}/admin/reload answered {r.status_code}: {r.text[:200]}")
        check_service(url, version, timeout_s, http=http)
    except (RolloutError, httpx.HTTPError) as e:
        msg = f"rollout of {version} to {url} failed: {e}"
        if previous and previous != version:
            if reg.rollback(registry) != previous:  # history disagrees with CURRENT: be explicit
                reg.promote(registry, previous, force=True, reason=f"restore after failed rollout of {version}")
            try:
                http.post(f"{url}/admin/reload", timeout=120.0, headers=auth)
            except httpx.HTTPError:
                pass
            msg += f"; registry rolled back to {previous}"
        else:
            msg += "; no previous version to roll back to (the registry's first version stays live)"
        raise RolloutError(msg) from None
    return {"target": "local", "version": version, "previous": previous, "service": url}
