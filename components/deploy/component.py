"""Deploy: roll the published version out (local service hot swap, or the Kubernetes Deployment)."""

from kfp import dsl

from components.image import PINNED_IMAGE


@dsl.component(base_image=PINNED_IMAGE, install_kfp_package=False)
def deploy(version: str, registry_uri: str, target: str, service_url: str, namespace: str,
           deployment: str) -> str:
    """``pi2i.cluster.rollout``: promote + verify, rolling back (and failing the run) when the new version is unhealthy."""
    import json

    from pi2i.cluster import rollout

    if target == "local":
        result = rollout.rollout_local(registry_uri, version, service_url or None)
    elif target == "kubernetes":
        result = rollout.rollout_kubernetes(version, deployment=deployment, namespace=namespace,
                                            registry=registry_uri)
    else:
        raise ValueError(f"deploy target must be 'local' or 'kubernetes', got {target!r}")
    print(json.dumps(result))
    return version
