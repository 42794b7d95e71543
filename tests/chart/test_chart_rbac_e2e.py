"""The chart's RBAC against every request the real operator makes: the operator (kopf with all its
handlers) runs against the e2e tests' Kubernetes API emulation through FineTuneJobs that succeed,
fail and are deleted, and each request it sent must be allowed to the chart's ServiceAccount."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from tests.chart.conftest import REPO, Manifest, Render, _rules_in, allowed, only

sys.path.insert(0, str(REPO / "tests" / "e2e"))  # the e2e harness modules

from apiserver import Server  # type: ignore[import-not-found]
from harness import FTJ, NAMESPACE, Cluster, Operator, qwen_lora, wait_for  # type: ignore[import-not-found]
from test_multinode import SERVICES  # type: ignore[import-not-found]

VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def rbac_request(method: str, path: str) -> tuple[str, str, str, str, str] | None:
    """(verb, API group, resource[/subresource], namespace, name) of a request; None for discovery."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) > 2:
        group, rest = "", parts[2:]
    elif parts[0] == "apis" and len(parts) > 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    namespace = ""
    if rest[0] == "namespaces" and len(rest) > 2:
        namespace, rest = rest[1], rest[2:]
    resource = "/".join(rest[::2]) if len(rest) > 2 else rest[0]
    name = rest[1] if len(rest) > 1 else ""
    verb = VERBS.get(method) or ("get" if name else "list")
    return verb, group, resource, namespace, name


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/apis/kubetune.io/v1alpha1", None),
        ("GET", "/api/v1/nodes", ("list", "", "nodes", "", "")),
        ("GET", "/api/v1/namespaces/a/pods/p", ("get", "", "pods", "a", "p")),
        ("PATCH", "/apis/kubetune.io/v1alpha1/namespaces/a/finetunejobs/f/status",
         ("patch", "kubetune.io", "finetunejobs/status", "a", "f")),
        ("POST", "/apis/batch/v1/namespaces/a/jobs", ("create", "batch", "jobs", "a", "")),
    ],
    ids=[
        "discovery needs no RBAC",
        "a cluster-wide list",
        "a get of one named object",
        "a patch of a status subresource",
        "a create in a namespace",
    ],
)
def test_requests_map_to_rbac_attributes(method: str, path: str, expected: tuple[str, ...] | None) -> None:
    assert rbac_request(method, path) == expected


# The two ways the chart runs the operator: its values, and kopf's arguments for them.
MODES: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cluster-wide": ({}, {"clusterwide": True}),
    "namespaced": ({"operator": {"watchNamespaces": [NAMESPACE]}}, {"clusterwide": False, "namespaces": [NAMESPACE]}),
}


def start_operator(server: Server, kopf_arguments: dict[str, Any]) -> threading.Event:
    """The real operator in a thread, as `kubetune operator` runs it in the mode; set the result to stop it."""
    Operator(server)  # first: the kubeconfig the kubernetes client reads when it is imported
    import kopf

    import kubetune.handlers  # noqa: F401  (registers the handlers)

    stop, ready = threading.Event(), threading.Event()
    arguments = {"standalone": True, "stop_flag": stop, "ready_flag": ready, **kopf_arguments}
    threading.Thread(target=kopf.run, kwargs=arguments, daemon=True).start()
    assert ready.wait(60), "the operator did not start"  # a hang guard, not a budget
    return stop


@pytest.fixture(scope="module", params=list(MODES), ids=[f"{mode} operator" for mode in MODES])
def operator_run(request: pytest.FixtureRequest) -> Iterator[tuple[dict[str, Any], list[tuple[str, str]]]]:
    values, kopf_arguments = MODES[request.param]
    server = Server().start()
    cluster = Cluster(server)
    server.call(server.api.create, "/api/v1", "namespaces", "", {"metadata": {"name": NAMESPACE}})
    cluster.add_gpu_node("h100-a")
    cluster.add_gpu_node("h100-b")
    stop = start_operator(server, kopf_arguments)
    try:
        cluster.apply("ok", qwen_lora())
        cluster.apply("oom", qwen_lora())
        cluster.start_pod("ok-1", "h100-a")
        cluster.wait_phase("ok", "Running")
        cluster.start_pod("ok-1", "h100-a", {"terminated": {"exitCode": 0}}, phase="Succeeded")
        cluster.finish_job("ok-1", "Complete")
        cluster.wait_phase("ok", "Succeeded")
        oom = {"exitCode": 13, "message": '{"reason": "OutOfMemory", "message": "peak 30 GiB"}'}
        cluster.start_pod("oom-1", "h100-b", {"terminated": oom}, phase="Failed")
        cluster.finish_job("oom-1", "Failed", "PodFailurePolicy", failed=1)
        cluster.wait_job("oom-2")  # adjusted: the spec ConfigMap and the calibration ConfigMap are written
        cluster.delete(FTJ, "oom")  # frees its GPU for the gang below
        cluster.delete(FTJ, "ok")
        # Another shape than "oom": its out-of-memory raised the calibrated estimate of that shape past any GPU here.
        cluster.apply("ttl", qwen_lora(ttlSecondsAfterFinished=0, training={"maxSeqLength": 512}))
        cluster.wait_job("ttl-1")
        cluster.finish_job("ttl-1", "Complete")
        wait_for(lambda: cluster.get(FTJ, "ttl") is None, what="the FineTuneJob deleted after its TTL")
        cluster.add_claim("shared", "ReadWriteMany")
        gang = qwen_lora(output={"volume": {"claimName": "shared"}})
        gang["resources"] = {**gang["resources"], "nodes": 2}
        cluster.apply("gang", gang)
        wait_for(lambda: cluster.get(SERVICES, "gang-1"), what="the gang's headless Service")
        cluster.patch_spec("gang", {"suspend": True})
        cluster.wait_phase("gang", "Suspended")
        yield values, list(server.api.requests)
    finally:
        stop.set()
        server.stop()


def test_every_request_of_the_real_operator_is_allowed(
    render: Render, operator_run: tuple[dict[str, Any], list[tuple[str, str]]]
) -> None:
    values, requests = operator_run
    objects: list[Manifest] = render(values)
    attributes = [a for a in (rbac_request(m, p) for m, p in requests) if a is not None]
    refused = sorted(
        f"{verb} {group or 'core'}/{resource} in {namespace or 'the cluster'} {name}"
        for verb, group, resource, namespace, name in set(attributes)
        if not allowed(objects, verb, group, resource, namespace, name=name)
    )
    assert refused == []
    verbs_on = {(verb, resource) for verb, _, resource, _, _ in attributes}
    assert {("create", "jobs"), ("create", "configmaps"), ("patch", "finetunejobs/status"), ("delete", "finetunejobs"),
            ("create", "services"), ("get", "persistentvolumeclaims"), ("patch", "configmaps")} <= verbs_on


# Granted though the run above does not send them, each with its reason.
UNEXERCISED = {
    ("get", "batch", "jobs"): "a create answered 409 reads the existing object's owner (test_kube_client.py)",
    ("get", "", "configmaps"): "the same, for the spec ConfigMap",
    ("get", "", "services"): "the same, for a gang's headless Service",
    ("get", "", "serviceaccounts"): "the same, for the trainer's ServiceAccount",
    ("get", "rbac.authorization.k8s.io", "roles"): "the same, for the trainer's Role",
    ("get", "rbac.authorization.k8s.io", "rolebindings"): "the same, for the trainer's RoleBinding",
    ("create", "events.k8s.io", "events"): "kopf posts core events; clients that post events.k8s.io need it",
    ("list", "apiextensions.k8s.io", "customresourcedefinitions"): "kopf's CRD scan; the emulation has no CRDs",
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions"): "kopf's CRD scan; the emulation has no CRDs",
    ("list", "", "namespaces"): "kopf's namespace scan (in namespaced mode it matches watched namespaces)",
    ("watch", "", "namespaces"): "kopf's namespace scan (in namespaced mode it matches watched namespaces)",
    ("list", "kopf.dev", "clusterkopfpeerings"): "peering: the run is --standalone",
    ("watch", "kopf.dev", "clusterkopfpeerings"): "peering: the run is --standalone",
    ("get", "kopf.dev", "clusterkopfpeerings"): "peering: the run is --standalone",
    ("patch", "kopf.dev", "clusterkopfpeerings"): "peering: the run is --standalone",
    ("list", "kopf.dev", "kopfpeerings"): "peering: the run is --standalone",
    ("watch", "kopf.dev", "kopfpeerings"): "peering: the run is --standalone",
    ("get", "kopf.dev", "kopfpeerings"): "peering: the run is --standalone",
    ("patch", "kopf.dev", "kopfpeerings"): "peering: the run is --standalone",
}


def test_every_permission_the_chart_grants_is_used(
    render: Render, operator_run: tuple[dict[str, Any], list[tuple[str, str]]]
) -> None:
    values, requests = operator_run
    objects: list[Manifest] = render(values)
    used: set[tuple[str, str, str]] = set()
    for attributes in filter(None, (rbac_request(m, p) for m, p in requests)):
        verb, group, resource = attributes[:3]
        # The emulation records paths without their query: a list may have been a watch.
        used |= {(v, group, resource) for v in ((verb, "watch") if verb == "list" else (verb,))}
    account = only(objects, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"]
    granted = {
        (verb, group, resource)
        for namespace in ("", NAMESPACE)
        for rule in _rules_in(objects, account, namespace)
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert sorted(granted - used - set(UNEXERCISED)) == []
