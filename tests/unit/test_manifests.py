"""Table tests of the Job, ConfigMap and RBAC builders."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from kubetune import api, contract, manifests, validation
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

OWNER = manifests.Owner("tune", "team-a", "uid-1")
AFFINITY = {
    "requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.memory", "operator": "Gt", "values": ["22527"]}]}
        ]
    }
}


def job_for(attempt: int = 1, affinity: dict[str, Any] | None = AFFINITY, **spec: Any) -> dict[str, Any]:
    parsed = parse_spec(
        {"model": {"name": "Qwen/Qwen2.5-0.5B"}, "dataset": {"name": "tatsu-lab/alpaca"}, **spec}
    )
    return manifests.build_job(
        OWNER,
        effective_spec(parsed),
        attempt,
        image="trainer:1",
        status_interval_seconds=30,
        node_affinity=affinity,
    )


def pod(job: dict[str, Any]) -> dict[str, Any]:
    return job["spec"]["template"]["spec"]


def trainer(job: dict[str, Any]) -> dict[str, Any]:
    return pod(job)["containers"][0]


@pytest.mark.parametrize(
    ("spec", "check"),
    [
        (
            {"resources": {"gpus": 2, "cpu": 8, "memory": "64Gi"}},
            lambda j: (
                trainer(j)["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "2"}
            ),
        ),
        (
            {"resources": {"gpus": 0, "memory": "8Gi"}},
            lambda j: (
                "nvidia.com/gpu" not in trainer(j)["resources"]["limits"]
                and "affinity" not in pod(j)
                and "tolerations" not in pod(j)
            ),
        ),
        ({}, lambda j: pod(j)["affinity"]["nodeAffinity"] == AFFINITY),
        ({}, lambda j: manifests.GPU_TOLERATION in pod(j)["tolerations"]),
        (
            {"resources": {"tolerations": [{"key": "team", "operator": "Exists"}]}},
            lambda j: {"key": "team", "operator": "Exists"} in pod(j)["tolerations"],
        ),
        (
            {"resources": {"memory": "64Gi"}},
            lambda j: (
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "32768Mi"}} in pod(j)["volumes"]
            ),
        ),
        (
            {"resources": {"sharedMemory": "2Gi"}},
            lambda j: (
                {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}} in pod(j)["volumes"]
            ),
        ),
        (
            {"hfTokenSecretRef": {"name": "hf", "key": "tok"}},
            lambda j: (
                {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "hf", "key": "tok"}}}
                in trainer(j)["env"]
            ),
        ),
        ({}, lambda j: all(e["name"] != "HF_TOKEN" for e in trainer(j)["env"])),
        (
            {"output": {"volume": {"claimName": "out"}}},
            lambda j: (
                {"name": "output", "mountPath": "/output", "subPath": "tune"} in trainer(j)["volumeMounts"]
            ),
        ),
        (
            {"volumes": [{"claimName": "models", "mountPath": "/models"}]},
            lambda j: (
                {"name": "volume-0", "mountPath": "/models", "readOnly": True} in trainer(j)["volumeMounts"]
            ),
        ),
        (
            {"maxRetries": 5, "activeDeadlineSeconds": 600},
            lambda j: j["spec"]["backoffLimit"] == 5 and j["spec"]["activeDeadlineSeconds"] == 600,
        ),
        (
            {"queueName": "gpus"},
            lambda j: (
                j["spec"]["suspend"] is True and j["metadata"]["labels"][contract.LABEL_KUEUE_QUEUE] == "gpus"
            ),
        ),
        (
            {},
            lambda j: (
                j["spec"]["suspend"] is False and contract.LABEL_KUEUE_QUEUE not in j["metadata"]["labels"]
            ),
        ),
        ({"priorityClassName": "high"}, lambda j: pod(j)["priorityClassName"] == "high"),
        (
            {},
            lambda j: (
                pod(j)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
                and trainer(j)["securityContext"]["capabilities"] == {"drop": ["ALL"]}
                and trainer(j)["securityContext"]["allowPrivilegeEscalation"] is False
            ),
        ),
        (
            {},
            lambda j: (
                j["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"]
                == sorted(int(c) for c in contract.NON_RETRYABLE_EXIT_CODES)
            ),
        ),
        (
            {},
            lambda j: (
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]}
                in j["spec"]["podFailurePolicy"]["rules"]
            ),
        ),
        (
            {"env": [{"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
                     {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key"}}}]},
            lambda j: trainer(j)["env"][-2:] == [
                {"name": "NCCL_SOCKET_IFNAME", "value": "eth0"},
                {"name": "WANDB_API_KEY",
                 "valueFrom": {"secretKeyRef": {"name": "wandb", "key": "key", "optional": False}}},
            ] and trainer(j)["env"][0]["name"] == contract.ENV_SPEC_PATH,
        ),
        ({"image": "mine:2"}, lambda j: trainer(j)["image"] == "mine:2"),
        ({}, lambda j: trainer(j)["ports"][0]["name"] == contract.TRAINER_METRICS_PORT_NAME),
    ],
    ids=[
        "gpus, cpu and memory become equal requests and limits",
        "a CPU-only job requests no GPU and carries no GPU affinity or toleration",
        "the placement's node affinity is on the pod",
        "GPU jobs tolerate the nvidia.com/gpu taint",
        "the user's tolerations are added",
        "shared memory defaults to half the pod memory",
        "an explicit sharedMemory wins",
        "HF_TOKEN comes from the referenced Secret only",
        "without a secret reference there is no HF_TOKEN",
        "the output PVC is mounted at /output under the job's name",
        "extra volumes are mounted read-only by default",
        "maxRetries and activeDeadlineSeconds reach the Job",
        "a Kueue queue name labels the Job and creates it suspended",
        "without a queue the Job starts unsuspended and unlabelled",
        "the priority class reaches the pod",
        "the security context is restricted",
        "non-retryable trainer exit codes fail the Job at once",
        "disruptions and preemptions are not counted as failures",
        "spec.env follows the contract's variables, Secret references kept as references",
        "spec.image overrides the operator's trainer image",
        "the metrics port is named for the PodMonitor",
    ],
)
def test_job_builder(spec: dict[str, Any], check: Any) -> None:
    assert check(job_for(**spec))


def test_user_node_affinity_and_placement_are_both_required() -> None:
    user = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
                ]
            }
        }
    }
    merged = manifests.merge_affinity(user, AFFINITY)
    assert merged is not None
    terms = merged["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert [e["key"] for e in terms[0]["matchExpressions"]] == ["zone", "nvidia.com/gpu.memory"]


@pytest.mark.parametrize(
    ("attempt", "name"),
    [(1, "tune-1"), (7, "tune-7")],
    ids=["the first attempt is <name>-1", "a later attempt carries its number"],
)
def test_job_names_are_deterministic(attempt: int, name: str) -> None:
    job = job_for(attempt)
    assert job["metadata"]["name"] == name
    assert job["metadata"]["labels"][contract.LABEL_ATTEMPT] == str(attempt)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "uid-1"


def test_configmap_holds_the_effective_spec_for_the_trainer() -> None:
    spec = effective_spec(
        parse_spec({"model": {"name": "m"}, "dataset": {"name": "d"}, "training": {"preset": "quick-test"}})
    )
    configmap = manifests.build_configmap(OWNER, spec)
    assert configmap["metadata"]["name"] == "tune-spec"
    assert yaml.safe_load(configmap["data"][contract.SPEC_FILE_NAME])["training"]["maxSteps"] == 30


def test_literal_env_values_reach_the_job_only_never_the_configmap() -> None:
    env = [{"name": "WANDB_API_KEY", "value": "s3cr3t-literal"},
           {"name": "HF_ENDPOINT", "valueFrom": {"configMapKeyRef": {"name": "hub", "key": "url"}}}]
    spec = effective_spec(parse_spec({"model": {"name": "m"}, "dataset": {"name": "d"}, "env": env}))
    configmap_text = json.dumps(manifests.build_configmap(OWNER, spec))
    assert "s3cr3t-literal" not in configmap_text
    written = yaml.safe_load(manifests.build_configmap(OWNER, spec)["data"][contract.SPEC_FILE_NAME])
    assert [variable["name"] for variable in written["env"]] == ["WANDB_API_KEY", "HF_ENDPOINT"]
    assert written["env"][1]["valueFrom"]["configMapKeyRef"]["name"] == "hub", "references stay visible"
    assert validation.parse_effective_spec(written).env[0].value is None, "the trainer still reads it"
    container = job_for(env=env)["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "WANDB_API_KEY", "value": "s3cr3t-literal"} in container["env"]


def test_the_trainer_may_patch_only_the_status_of_its_own_finetunejob() -> None:
    sa, role, binding = manifests.build_trainer_rbac(OWNER)
    name = f"{OWNER.name}-trainer"
    assert {obj["metadata"]["name"] for obj in (sa, role, binding)} == {name}
    assert role["rules"] == [
        {"apiGroups": ["kubetune.io"], "resources": ["finetunejobs/status"], "resourceNames": [OWNER.name],
         "verbs": ["patch"]}
    ]
    assert binding["roleRef"]["name"] == name
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": name, "namespace": OWNER.namespace}]
    for obj in (sa, role, binding):
        assert obj["metadata"]["ownerReferences"] == [OWNER.reference()], "garbage-collected with the FineTuneJob"
    assert job_for()["spec"]["template"]["spec"]["serviceAccountName"] == name


@pytest.mark.parametrize(
    ("quantity", "value"),
    [("64Gi", 64 * 2**30), ("500M", 500 * 10**6), (8, 8), ("1e3", 1000)],
    ids=["binary suffix", "decimal suffix", "plain integer", "exponent"],
)
def test_quantities_parse(quantity: int | str, value: int) -> None:
    assert api.quantity_value(quantity) == value


@pytest.mark.parametrize(
    "spec",
    [
        {
            "resources": {
                "gpus": 2,
                "cpu": 8,
                "memory": "64Gi",
                "tolerations": [{"key": "t", "operator": "Exists"}],
            },
            "hfTokenSecretRef": {"name": "hf"},
            "output": {"volume": {"claimName": "out"}},
            "volumes": [{"claimName": "models", "mountPath": "/models"}],
            "activeDeadlineSeconds": 60,
            "env": [{"name": "NCCL_DEBUG", "valueFrom": {"configMapKeyRef": {"name": "nccl", "key": "debug"}}}],
        },
        {"resources": {"gpus": 0, "memory": "8Gi"}},
        {"queueName": "gpus", "priorityClassName": "high"},
    ],
    ids=["a GPU job with volumes and a secret", "a CPU-only job", "a Kueue job with a priority class"],
)
def test_built_objects_pass_the_kubernetes_schema_strictly(spec: dict[str, Any]) -> None:
    import kubernetes_validate

    parsed = effective_spec(parse_spec({"model": {"name": "m"}, "dataset": {"name": "d"}, **spec}))
    objects = [
        *manifests.build_trainer_rbac(OWNER),
        manifests.build_configmap(OWNER, parsed),
        job_for(**spec),
    ]
    for obj in objects:
        kubernetes_validate.validate(obj, "1.37", strict=True)
