"""The generated CRD: no drift, structural, accepts the examples, and its CEL rules do what the
validator does. CEL is evaluated with a real CEL implementation, after API-server-style defaulting."""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cel
import jsonschema
import pytest
import yaml
from tests.unit.test_api_validation import BASE, spec_patch

from kubetune import crd
from kubetune.api import frozen_after_start
from kubetune.plan import merge_patch

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "manifests" / "examples").glob("*.yaml"))
CRD = crd.crd_manifest()
VERSION = CRD["spec"]["versions"][0]
ROOT = VERSION["schema"]["openAPIV3Schema"]


def test_committed_files_match_the_generator() -> None:
    stale = [str(path.relative_to(REPO)) for path, text in crd.generated_files().items()
             if not path.exists() or path.read_text(encoding="utf-8") != text]
    assert stale == [], f"regenerate with `python -m kubetune.crd --write`: {stale}"


def test_kubetune_crd_prints_the_committed_crd() -> None:
    out = subprocess.run([sys.executable, "-m", "kubetune.cli", "crd"], capture_output=True, text=True, check=True)
    assert out.stdout == crd.CRD_FILE.read_text(encoding="utf-8")


def test_names_scope_and_status_subresource() -> None:
    names = CRD["spec"]["names"]
    assert CRD["metadata"]["name"] == "finetunejobs.kubetune.io"
    assert (names["kind"], names["plural"], names["singular"]) == ("FineTuneJob", "finetunejobs", "finetunejob")
    assert names["shortNames"] == ["ftj"] and names["categories"] == ["kubetune"]
    assert CRD["spec"]["scope"] == "Namespaced"
    assert VERSION["subresources"] == {"status": {}}


def walk(node: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield path, node
    for name, child in node.get("properties", {}).items():
        yield from walk(child, f"{path}.{name}")
    if "items" in node:
        yield from walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from walk(node["additionalProperties"], f"{path}{{}}")


def test_schema_is_structural() -> None:
    problems = []
    for path, node in walk(ROOT):
        if "$ref" in node or "allOf" in node or "oneOf" in node:
            problems.append(f"{path}: $ref/allOf/oneOf")
        if "anyOf" in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: anyOf without int-or-string")
        if "type" not in node and not node.get("x-kubernetes-int-or-string"):
            problems.append(f"{path}: no type")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties together")
        if node.get("additionalProperties") is False or "title" in node:
            problems.append(f"{path}: JSON-Schema-only keyword left over")
    assert problems == []


def test_every_spec_field_has_a_description() -> None:
    spec = ROOT["properties"]["spec"]
    missing = [path for path, node in walk(spec, "spec") if path != "spec" and not node.get("description")
               and not path.endswith("[]") and not path.endswith("}")]
    assert missing == []


def test_preset_filled_fields_have_no_schema_default() -> None:
    training = ROOT["properties"]["spec"]["properties"]["training"]
    assert [name for name, node in training["properties"].items() if "default" in node] == []


def test_the_crd_itself_is_a_valid_kubernetes_object() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    kubernetes_validate.validate(CRD, kubernetes_validate.latest_version(), strict=True)


# ------------------------------------------------------------------- schema against manifests


def openapi_validator() -> jsonschema.Draft4Validator:
    # OpenAPI 3.0 schemas use Draft 4's boolean exclusiveMinimum; x-kubernetes-* keys are ignored.
    return jsonschema.Draft4Validator(ROOT)


@pytest.mark.parametrize("path", EXAMPLES, ids=[f"example {p.stem} passes the CRD schema" for p in EXAMPLES])
def test_examples_pass_the_schema_and_every_cel_rule(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    openapi_validator().validate(document)
    assert failing_rules(apply_defaults(document, ROOT)) == []


def test_there_are_examples_for_every_documented_use_case() -> None:
    stems = " ".join(path.stem for path in EXAMPLES)
    for needed in ("qlora-llama-3.1-8b", "lora-mistral-7b-chat", "full-qwen2.5-0.5b", "cnn-dailymail", "xsum",
                   "samsum", "fsdp-4gpu", "kueue", "cpu-tiny"):
        assert needed in stems


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """What the API server does before validation: fill schema defaults into present objects."""
    if isinstance(value, dict) and "properties" in schema:
        result = dict(value)
        for name, child in schema["properties"].items():
            if name not in result and "default" in child:
                result[name] = copy.deepcopy(child["default"])
            if name in result:
                result[name] = apply_defaults(result[name], child)
        return result
    if isinstance(value, list) and "items" in schema:
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def rule_sites(schema: dict[str, Any], value: Any) -> Iterator[tuple[dict[str, str], Any]]:
    """Every (rule, self) pair the API server would evaluate for this object (spec subtree)."""
    for rule in schema.get("x-kubernetes-validations", []):
        yield rule, value
    if isinstance(value, dict):
        for name, child in schema.get("properties", {}).items():
            if name in value:
                yield from rule_sites(child, value[name])
    if isinstance(value, list) and "items" in schema:
        for item in value:
            yield from rule_sites(schema["items"], item)


def failing_rules(document: dict[str, Any]) -> list[str]:
    spec_schema = ROOT["properties"]["spec"]
    return [rule["message"] for rule, value in rule_sites(spec_schema, document["spec"])
            if not cel.evaluate(rule["rule"], {"self": value})]


CEL_CASES: list[tuple[str, dict[str, Any], str]] = [
    ("both model sources are refused by the API server", spec_patch(model={"path": "/m"}), "spec.model:"),
    ("no dataset source is refused by the API server", spec_patch(dataset={"name": None}), "spec.dataset:"),
    ("a dataset config on a URL is refused by the API server",
     spec_patch(dataset={"name": None, "url": "https://example.com/a.jsonl", "config": "x"}),
     "spec.dataset: config and revision apply to hub datasets"),
    ("evalSplit with evalFraction is refused by the API server",
     spec_patch(dataset={"evalSplit": "t", "evalFraction": 0.1}), "spec.dataset.evalFraction"),
    ("qlora without quantization is refused by the API server", spec_patch(method={"type": "qlora"}),
     "spec.method.quantization:"),
    ("lora with quantization is refused by the API server",
     spec_patch(method={"type": "lora", "quantization": {"bits": 4}}), "spec.method.quantization:"),
    ("lora settings on full are refused by the API server", spec_patch(method={"type": "full", "lora": {}}),
     "spec.method.lora"),
    ("an 8-bit nf4 type is refused by the API server",
     spec_patch(method={"type": "qlora", "quantization": {"bits": 8, "type": "nf4"}}),
     "spec.method.quantization.type"),
    ("a CPU job over two nodes is refused by the API server", spec_patch(resources={"gpus": 0, "nodes": 2}),
     "spec.resources.nodes"),
    ("fsdp on one GPU is refused by the API server", spec_patch(training={"strategy": "fsdp"}),
     "spec.training.strategy"),
    ("GPU filters on a CPU job are refused by the API server",
     spec_patch(resources={"gpus": 0, "minGpuMemoryGiB": 40}), "spec.resources:"),
    ("an Exists toleration with a value is refused by the API server",
     spec_patch(resources={"tolerations": [{"key": "a", "operator": "Exists", "value": "b"}]}),
     "spec.resources.tolerations"),
    ("all-linear with explicit modules is refused by the API server",
     spec_patch(method={"lora": {"targetModules": ["all-linear", "q_proj"]}}), "spec.method.lora.targetModules"),
    ("two volumes on one path are refused by the API server",
     spec_patch(volumes=[{"claimName": "a", "mountPath": "/d"}, {"claimName": "b", "mountPath": "/d"}]),
     "spec.volumes"),
    ("evalSteps without eval data is refused by the API server", spec_patch(training={"evalSteps": 5}),
     "spec.training.evalSteps"),
    ("rouge without eval data is refused by the API server", spec_patch(evaluation={"metrics": ["rouge"]}),
     "spec.evaluation.metrics"),
    ("pushToHub without a token is refused by the API server", spec_patch(output={"pushToHub": {"repo": "a/b"}}),
     "spec.output.pushToHub"),
    ("mergeAdapter on full is refused by the API server",
     spec_patch(method={"type": "full"}, output={"mergeAdapter": True}), "spec.output.mergeAdapter"),
    ("an env name kubetune sets itself is refused by the API server",
     spec_patch(env=[{"name": "KUBETUNE_SPEC_PATH", "value": "/x"}]), "spec.env: a name kubetune sets itself"),
    ("torchrun's WORLD_SIZE in env is refused by the API server",
     spec_patch(env=[{"name": "WORLD_SIZE", "value": "2"}]), "spec.env: a name kubetune sets itself"),
    ("an env variable with value and valueFrom is refused by the API server",
     spec_patch(env=[{"name": "X", "value": "v", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]),
     "spec.env: set value or valueFrom, not both"),
    ("an env valueFrom with both sources is refused by the API server",
     spec_patch(env=[{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"},
                                                 "configMapKeyRef": {"name": "c", "key": "k"}}}]),
     "spec.env: valueFrom takes exactly one of secretKeyRef and configMapKeyRef"),
    ("a dataset URL with a token in its query is refused by the API server",
     spec_patch(dataset={"name": None, "url": "https://d.example.com/t.jsonl?x=1&Access_Token=abc"}),
     "spec.dataset.url"),
    ("a model revision with '..' is refused by the API server", spec_patch(model={"revision": "v1..v2"}),
     "spec.model.revision"),
    ("a dataset revision with '..' is refused by the API server", spec_patch(dataset={"revision": "a/../b"}),
     "spec.dataset.revision"),
    ("a nodeSelector key that is no label key is refused by the API server",
     spec_patch(resources={"nodeSelector": {"bad key": "x"}}), "spec.resources.nodeSelector"),
    ("a nodeSelector key with a prefix longer than a DNS label part is refused by the API server",
     spec_patch(resources={"nodeSelector": {"-bad.example.com/zone": "x"}}), "spec.resources.nodeSelector"),
]


@pytest.mark.parametrize(("patch", "message_start"), [c[1:] for c in CEL_CASES], ids=[c[0] for c in CEL_CASES])
def test_cel_rules_refuse_what_the_validator_refuses(patch: dict[str, Any], message_start: str) -> None:
    document = apply_defaults(merge_patch(BASE, patch), ROOT)
    assert any(message.startswith(message_start) for message in failing_rules(document))


def test_the_cel_messages_are_the_validators_messages() -> None:
    from kubetune.validation import validate_manifest

    for _, patch, message_start in CEL_CASES:
        problems = validate_manifest(merge_patch(BASE, patch))[1]
        assert any(str(p).startswith(message_start) for p in problems), (message_start, problems)


# --------------------------------------------------------------------- frozen spec (transition rule)

STARTED = {**BASE, "status": {"jobName": "demo-1", "phase": "Running"}}
FREEZE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], bool]] = [
    ("changing the learning rate after start is refused", STARTED, spec_patch(training={"learningRate": 1e-5}),
     False),
    ("changing the model after start is refused", STARTED, spec_patch(model={"name": "Qwen/Qwen2.5-7B"}), False),
    ("adding GPUs after start is refused", STARTED, spec_patch(resources={"gpus": 2}), False),
    ("suspending after start is allowed", STARTED, spec_patch(suspend=True), True),
    ("changing the deadline and TTL after start is allowed", STARTED,
     spec_patch(activeDeadlineSeconds=3600, ttlSecondsAfterFinished=60), True),
    ("changing anything before a Job exists is allowed", BASE, spec_patch(training={"learningRate": 1e-5}), True),
    ("changing env after start is allowed (the next attempt uses it)", STARTED,
     spec_patch(env=[{"name": "NCCL_SOCKET_IFNAME", "value": "eth1"}]), True),
    ("adding tolerations after start is allowed (placement only)", STARTED,
     spec_patch(resources={"tolerations": [{"key": "x", "operator": "Exists"}]}), True),
]


@pytest.mark.parametrize(("old", "patch", "allowed"), [c[1:] for c in FREEZE_CASES], ids=[c[0] for c in FREEZE_CASES])
def test_training_defining_fields_freeze_once_a_job_exists(old: dict[str, Any], patch: dict[str, Any],
                                                           allowed: bool) -> None:
    old_object = apply_defaults(old, ROOT)
    new_object = apply_defaults(merge_patch(old, patch), ROOT)
    [rule] = ROOT["x-kubernetes-validations"]
    assert cel.evaluate(rule["rule"], {"self": new_object, "oldSelf": old_object}) is allowed


def changed_paths(old: Any, new: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Leaf paths where two wire-form objects differ (what kopf's diff reports)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in old.keys() | new.keys():
            yield from changed_paths(old.get(key), new.get(key), (*path, key))
    elif old != new:
        yield path


@pytest.mark.parametrize(("old", "patch", "allowed"), [c[1:] for c in FREEZE_CASES],
                         ids=[f"the operator agrees: {c[0]}" for c in FREEZE_CASES])
def test_the_operator_freezes_exactly_what_the_crd_freezes(old: dict[str, Any], patch: dict[str, Any],
                                                           allowed: bool) -> None:
    started = "jobName" in old.get("status", {})
    # The operator sees objects as the API server stores them: with the schema's defaults.
    before, after = apply_defaults(old, ROOT), apply_defaults(merge_patch(old, patch), ROOT)
    refused = started and any(frozen_after_start(p) for p in changed_paths(before["spec"], after["spec"]))
    assert refused is not allowed


# ------------------------------------------------------------------------------ printer columns


def resolve_json_path(document: dict[str, Any], path: str) -> Any:
    value: Any = document
    for name, index in re.findall(r"\.([A-Za-z]+)(?:\[(\d+)\])?", path):
        value = value[name]
        if index:
            value = value[int(index)]
    return value


SAMPLE = {
    **BASE,
    "metadata": {"name": "demo", "creationTimestamp": "2026-11-22T10:00:00Z"},
    "spec": {**BASE["spec"], "method": {"type": "lora"}, "resources": {"gpus": 1}},
    "status": {
        "phase": "Running", "message": "training: step 420 of 1000",
        "estimate": {"perGpuGiB": 21.4, "totalGiB": 21.4},
        "placement": {"nodes": ["gpu-node-1"], "gpuProduct": "NVIDIA-L40S", "gpuMemoryGiB": 44.5},
        "training": {"step": 420, "totalSteps": 1000, "progress": "42%", "loss": 1.23},
    },
}
PYTHON_TYPES = {"string": str, "number": float, "integer": int, "date": str}


COLUMNS = VERSION["additionalPrinterColumns"]


@pytest.mark.parametrize("column", COLUMNS, ids=[f"column {c['name']} resolves on a running job" for c in COLUMNS])
def test_printer_columns_resolve_against_a_sample_status(column: dict[str, Any]) -> None:
    value = resolve_json_path(SAMPLE, column["jsonPath"])
    assert isinstance(value, PYTHON_TYPES[column["type"]])


def test_the_sample_status_is_valid_for_the_status_schema() -> None:
    openapi_validator().validate(SAMPLE)
    assert [c["name"] for c in COLUMNS if not c.get("priority")] == [
        "Model", "Method", "Phase", "Progress", "Loss", "VRAM", "Age"]
