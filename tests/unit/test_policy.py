"""Policy: what a FineTuneJob may use, as the operator checks it and as the chart's settings load it."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.policy import Policy, image_pattern_of, policy_problems
from kubetune.settings import SettingsError, image_repository, load_settings
from kubetune.validation import parse_spec

TRAINER = image_pattern_of("ghcr.io/kubetune/trainer")
DEFAULT = Policy(allowed_images=(TRAINER,))
BASE = {"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "tatsu-lab/alpaca"}}
HF = {"hfTokenSecretRef": {"name": "hf", "key": "token"}}


def secret_env(name: str) -> dict[str, Any]:
    return {"env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": name, "key": "k"}}}]}


def problems(spec: dict[str, Any], policy: Policy = DEFAULT) -> list[str]:
    return [str(problem) for problem in policy_problems(parse_spec({**BASE, **spec}), policy)]


@pytest.mark.parametrize(
    ("spec", "policy", "expected"),
    [
        ({}, DEFAULT, []),
        ({"image": "ghcr.io/kubetune/trainer:0.3.0"}, DEFAULT, []),
        ({"image": "ghcr.io/kubetune/trainer@sha256:" + "a" * 64}, DEFAULT, []),
        ({"image": "ghcr.io/kubetune/trainer-evil:1"}, DEFAULT, ["spec.image: ghcr.io/kubetune/trainer-evil:1 is not"]),
        ({"image": "docker.io/attacker/miner:latest"}, DEFAULT, ["spec.image: docker.io/attacker/miner:latest"]),
        ({"image": "registry.corp/ml/trainer:2"}, Policy(allowed_images=(r"registry\.corp/ml/.*",)), []),
        ({**HF, **secret_env("hf")}, DEFAULT, []),
        (secret_env("db-password"), DEFAULT, ["spec.env[0].valueFrom.secretKeyRef.name: Secret db-password may not"]),
        ({**HF, **secret_env("db-password")}, DEFAULT, ["spec.env[0].valueFrom.secretKeyRef.name"]),
        (secret_env("wandb"), Policy(allow_other_secrets=True), []),
        ({"resources": {"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}},
         DEFAULT, ["spec.resources.tolerations[0].key: node-role.kubernetes.io/control-plane: policy.allowControl"]),
        ({"resources": {"tolerations": [{"operator": "Exists"}]}}, DEFAULT,
         ["spec.resources.tolerations[0]: an empty key with operator Exists tolerates every taint"]),
        ({"resources": {"tolerations": [{"key": "team", "operator": "Equal", "value": "a"}]}}, DEFAULT, []),
        ({"resources": {"nodeSelector": {"node-role.kubernetes.io/master": ""}}}, DEFAULT,
         ["spec.resources.nodeSelector.node-role.kubernetes.io/master: policy.allowControlPlane is false"]),
        ({"resources": {"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}]}}}}},
         DEFAULT, ["spec.resources.affinity: node-role.kubernetes.io/control-plane"]),
        ({"resources": {"tolerations": [{"operator": "Exists"}]}}, Policy(allow_control_plane=True), []),
        ({"output": {"volume": {"claimName": "team-a-out"}}, "volumes": [{"claimName": "payroll", "mountPath": "/m"}]},
         Policy(allowed_claims=("team-a-.*",)),
         ["spec.volumes[0].claimName: PersistentVolumeClaim payroll is not allowed (policy.allowedClaims: team-a-.*)"]),
    ],
    ids=[
        "a job that sets nothing the policy restricts is allowed",
        "the trainer image at another tag is allowed",
        "the trainer image by digest is allowed",
        "a repository whose name only starts like the trainer's is refused",
        "any other image is refused by default",
        "an image matching a configured pattern is allowed",
        "an env variable from the Hugging Face token's Secret is allowed",
        "an env variable from another Secret is refused by default",
        "naming the token Secret does not open other Secrets",
        "other Secrets are allowed when the policy says so",
        "a control-plane toleration is refused",
        "a toleration of every taint is refused",
        "an ordinary toleration is allowed",
        "a node selector for the old master label is refused",
        "node affinity for the control plane is refused",
        "the control plane is allowed when the policy says so",
        "a claim outside the allowed patterns is refused and named",
    ],
)
def test_policy_problems(spec: dict[str, Any], policy: Policy, expected: list[str]) -> None:
    found = problems(spec, policy)
    assert len(found) == len(expected), found
    for message, start in zip(found, expected, strict=True):
        assert message.startswith(start), message


@pytest.mark.parametrize(
    ("image", "repository"),
    [
        ("ghcr.io/kubetune/trainer:0.3.0", "ghcr.io/kubetune/trainer"),
        ("ghcr.io/kubetune/trainer:0.3.0@sha256:abc", "ghcr.io/kubetune/trainer"),
        ("localhost:5000/trainer:dev", "localhost:5000/trainer"),
        ("trainer", "trainer"),
    ],
    ids=["a tag", "a tag and a digest", "a registry with a port", "a bare name"],
)
def test_image_repository(image: str, repository: str) -> None:
    assert image_repository(image) == repository


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KUBETUNE_POLICY_ALLOWED_IMAGES": "ghcr.io/*"}, "must be a JSON list of regular expressions"),
        ({"KUBETUNE_POLICY_ALLOWED_CLAIMS": '["(unclosed"]'}, "is not a regular expression"),
        ({"KUBETUNE_POLICY_ALLOW_OTHER_SECRETS": "yes"}, "must be true or false"),
    ],
    ids=["a glob instead of a JSON list", "a pattern that does not compile", "a flag that is not true or false"],
)
def test_a_bad_policy_setting_names_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings(env)


def test_the_default_policy_allows_the_operators_own_trainer_image_only() -> None:
    policy = load_settings({"KUBETUNE_TRAINER_IMAGE": "registry.corp/kubetune/trainer:1.2"}).policy
    assert policy.allows_image("registry.corp/kubetune/trainer:9.9")
    assert not policy.allows_image("ghcr.io/kubetune/trainer:1.2")
    assert (policy.allow_other_secrets, policy.allow_control_plane) == (False, False)
