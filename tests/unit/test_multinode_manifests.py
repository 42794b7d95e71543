"""Multi-node jobs: the Indexed Job, its headless Service, the rendezvous env, gang retries and the RWX check."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune import contract, distributed, manifests
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

OWNER = manifests.Owner("llama", "team-a", "uid-1")


def spec_of(**changes: Any) -> Any:
    return effective_spec(parse_spec({"model": {"name": "meta-llama/Llama-3.1-70B"}, "dataset": {"name": "d"},
                                      **changes}))


def job_of(nodes: int, attempt: int = 2, **changes: Any) -> dict[str, Any]:
    spec = spec_of(resources={"gpus": 8, "nodes": nodes}, maxRetries=3, **changes)
    return manifests.build_job(OWNER, spec, attempt, image="trainer:1", status_interval_seconds=30, node_affinity=None)


def env_of(job: dict[str, Any]) -> dict[str, str]:
    container = job["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container["env"]}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("spec", "completionMode"), "Indexed"),
        (("spec", "completions"), 2),
        (("spec", "parallelism"), 2),
        (("spec", "template", "spec", "subdomain"), "llama-2"),
        (("spec", "backoffLimit"), 6),
    ],
    ids=[
        "pods are indexed so each has a rank and a stable hostname",
        "the job completes when every node's pod does",
        "every node's pod runs at once",
        "the pods' subdomain is the headless Service",
        "a gang failure may fail every rank's pod, so retries count per node",
    ],
)
def test_a_two_node_job(path: tuple[str, ...], expected: Any) -> None:
    value: Any = job_of(nodes=2)
    for key in path:
        value = value[key]

    assert value == expected


def test_every_rank_gets_the_rendezvous_on_pod_zero() -> None:
    env = env_of(job_of(nodes=2))

    assert env[contract.ENV_RDZV_ENDPOINT] == f"llama-2-0.llama-2.team-a.svc:{contract.RDZV_PORT}"
    assert env[contract.ENV_RDZV_ID] == "llama-2"
    assert int(env[contract.ENV_RDZV_TIMEOUT_SECONDS]) == distributed.RDZV_TIMEOUT_SECONDS


def test_one_node_has_no_rendezvous_subdomain_or_scaled_retries() -> None:
    job = job_of(nodes=1)

    assert "subdomain" not in job["spec"]["template"]["spec"]
    assert contract.ENV_RDZV_ENDPOINT not in env_of(job)
    assert job["spec"]["backoffLimit"] == 3


def test_the_headless_service_selects_exactly_this_attempts_pods() -> None:
    job = job_of(nodes=2)
    service = distributed.build_headless_service(job)
    pod_labels = job["spec"]["template"]["metadata"]["labels"]

    assert service["metadata"]["name"] == job["spec"]["template"]["spec"]["subdomain"]
    assert service["spec"]["clusterIP"] == "None" and service["spec"]["publishNotReadyAddresses"] is True
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["selector"][contract.LABEL_ATTEMPT] == "2"
    assert service["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


@pytest.mark.parametrize(
    "changes",
    [{}, {"queueName": "gpus", "output": {"volume": {"claimName": "shared"}}}],
    ids=["a plain two-node job", "a Kueue two-node job with an output volume"],
)
def test_multinode_objects_pass_the_kubernetes_schema_strictly(changes: dict[str, Any]) -> None:
    import kubernetes_validate

    job = job_of(nodes=2, **changes)
    for obj in (job, distributed.build_headless_service(job)):
        kubernetes_validate.validate(obj, "1.37", strict=True)


def claim(*modes: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "spec": {"accessModes": list(modes)}}


@pytest.mark.parametrize(
    ("nodes", "pvc", "problem"),
    [
        (2, claim("ReadWriteOnce"), "must be ReadWriteMany"),
        (2, claim("ReadWriteOncePod"), "must be ReadWriteMany"),
        (2, claim(), "must be ReadWriteMany"),
        (2, claim("ReadWriteMany"), None),
        (2, claim("ReadWriteOnce", "ReadWriteMany"), None),
        (2, None, None),
        (1, claim("ReadWriteOnce"), None),
    ],
    ids=[
        "two nodes cannot share a ReadWriteOnce volume",
        "two nodes cannot share a ReadWriteOncePod volume",
        "a claim without access modes is not shared",
        "ReadWriteMany is shared",
        "a claim offering ReadWriteMany among others is shared",
        "an unreadable claim cannot be judged and passes",
        "one node may write any volume",
    ],
)
def test_output_volume_must_be_rwx_across_nodes(nodes: int, pvc: dict[str, Any] | None, problem: str | None) -> None:
    spec = spec_of(resources={"gpus": 8, "nodes": nodes}, output={"volume": {"claimName": "ckpt"}})

    problems = list(distributed.output_volume_problems(spec, pvc))

    if problem is None:
        assert problems == []
    else:
        assert [p.path for p in problems] == ["spec.output.volume.claimName"]
        assert problem in problems[0].message and "ckpt" in problems[0].message
