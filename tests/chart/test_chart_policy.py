"""The chart's ValidatingAdmissionPolicy and the operator judge every FineTuneJob the same way: each case
runs through the policy's CEL (with the CRD's defaults applied first, as the API server does) and through
the operator's policy loaded from the rendered Deployment's environment."""

from __future__ import annotations

from typing import Any

import cel
import pytest
from tests.chart.conftest import Render, find, only
from tests.unit.test_crd import ROOT, apply_defaults

from kubetune.policy import policy_problems
from kubetune.settings import load_settings
from kubetune.validation import parse_spec

BASE = {"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "tatsu-lab/alpaca"}}
CONTROL_PLANE = "node-role.kubernetes.io/control-plane"


def secret_env(name: str) -> dict[str, Any]:
    return {"env": [{"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {"name": name, "key": "k"}}}]}


def affinity(key: str, *, preferred: bool = False) -> dict[str, Any]:
    expressions = {"matchExpressions": [{"key": key, "operator": "Exists"}]}
    node = ({"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 1, "preference": expressions}]}
            if preferred else {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [expressions]}})
    return {"resources": {"affinity": {"nodeAffinity": node}}}


CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("a plain job is admitted", {}, {}, True),
    ("the trainer image at another tag is admitted", {"image": "ghcr.io/kubetune/trainer:9.9"}, {}, True),
    ("another image is refused", {"image": "docker.io/attacker/miner:1"}, {}, False),
    ("a look-alike repository is refused", {"image": "ghcr.io/kubetune/trainer-x:1"}, {}, False),
    ("a configured image pattern is admitted", {"image": "registry.corp/ml/t:1"},
     {"policy": {"allowedImages": [r"registry\.corp/ml/.*"]}}, True),
    ("the token Secret in env is admitted", {"hfTokenSecretRef": {"name": "hf"}, **secret_env("hf")}, {}, True),
    ("another Secret in env is refused", secret_env("db"), {}, False),
    ("another Secret is admitted when allowed", secret_env("db"), {"policy": {"allowOtherSecrets": True}}, True),
    ("a control-plane toleration is refused",
     {"resources": {"tolerations": [{"key": CONTROL_PLANE, "operator": "Exists"}]}}, {}, False),
    ("a toleration of every taint is refused", {"resources": {"tolerations": [{"operator": "Exists"}]}}, {}, False),
    ("an ordinary toleration is admitted",
     {"resources": {"tolerations": [{"key": "team", "operator": "Equal", "value": "a"}]}}, {}, True),
    ("a control-plane node selector is refused", {"resources": {"nodeSelector": {CONTROL_PLANE: ""}}}, {}, False),
    ("required control-plane affinity is refused", affinity(CONTROL_PLANE), {}, False),
    ("preferred control-plane affinity is refused", affinity(CONTROL_PLANE, preferred=True), {}, False),
    ("other node affinity is admitted", affinity("nvidia.com/gpu.product"), {}, True),
    ("the control plane is admitted when allowed", affinity(CONTROL_PLANE), {"policy": {"allowControlPlane": True}},
     True),
    ("an allowed claim is admitted", {"output": {"volume": {"claimName": "team-a-out"}}},
     {"policy": {"allowedClaims": ["team-a-.*"]}}, True),
    ("another claim is refused", {"volumes": [{"claimName": "payroll", "mountPath": "/m"}]},
     {"policy": {"allowedClaims": ["team-a-.*"]}}, False),
]


def finetunejob(spec: dict[str, Any]) -> dict[str, Any]:
    document = {"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                "metadata": {"name": "f", "namespace": "team-a"}, "spec": {**BASE, **spec}}
    return apply_defaults(document, ROOT)


def admitted(objects: list[dict[str, Any]], document: dict[str, Any]) -> bool:
    policy = only(objects, "ValidatingAdmissionPolicy")
    bindings = {"object": document, "oldObject": None, "request": {"operation": "CREATE"}}
    return all(cel.evaluate(rule["expression"], bindings) for rule in policy["spec"]["validations"])


def operator_allows(objects: list[dict[str, Any]], spec: dict[str, Any]) -> bool:
    container = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    env = {variable["name"]: variable["value"] for variable in container["env"] if "value" in variable}
    return policy_problems(parse_spec({**BASE, **spec}), load_settings(env).policy) == []


@pytest.mark.parametrize(("spec", "values", "allowed"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_admission_and_operator_agree(
    render: Render, spec: dict[str, Any], values: dict[str, Any], allowed: bool
) -> None:
    objects = render(values)
    assert admitted(objects, finetunejob(spec)) is allowed
    assert operator_allows(objects, spec) is allowed


def test_only_spec_changes_are_judged(render: Render) -> None:
    condition = only(render({}), "ValidatingAdmissionPolicy")["spec"]["matchConditions"][0]["expression"]
    old = finetunejob({"image": "docker.io/old:1"})
    assert cel.evaluate(condition, {"object": old, "oldObject": old, "request": {"operation": "UPDATE"}}) is False
    changed = finetunejob({"image": "docker.io/new:1"})
    assert cel.evaluate(condition, {"object": changed, "oldObject": old, "request": {"operation": "UPDATE"}}) is True


def test_the_admission_policy_can_be_left_out(render: Render) -> None:
    objects = render({"policy": {"admission": {"enabled": False}}})
    assert not find(objects, "ValidatingAdmissionPolicy") and not find(objects, "ValidatingAdmissionPolicyBinding")
    binding = only(render({}), "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["validationActions"] == ["Deny"]
