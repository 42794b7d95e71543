"""The pod's environment and the mounted spec file become one RunContext."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune import contract, manifests
from kubetune.api import API_VERSION, KIND
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer.context import context_from_env, with_local_mounts

from .conftest import BASE_SPEC, SpecFactory

SPEC_ONLY = {"spec": BASE_SPEC}
WHOLE_JOB = {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": "j"}, "spec": BASE_SPEC}


@pytest.mark.parametrize("document", [SPEC_ONLY, WHOLE_JOB],
                         ids=["a mapping holding spec is read", "a whole FineTuneJob is read"])
def test_spec_file_forms(tmp_path: Path, document: dict[str, Any]) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(document))

    context = context_from_env({contract.ENV_SPEC_PATH: str(spec_file)})

    assert context.spec.model.path == "/data/model"
    assert context.spec.method.adapter.effective_alpha == 16  # presets and defaults applied
    assert context.output_dir == Path(contract.OUTPUT_DIR)
    assert context.metrics_port == contract.DEFAULT_METRICS_PORT
    assert not context.reports_status


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"training": {"learningRate": 2e-5, "weightDecay": 1e-4}},
        {"dataset": {"path": "/data/données ünïcode.jsonl"}},
        {"training": {"preset": "quick-test", "maxSteps": 5}},
    ],
    ids=[
        "the trainer reads back exactly the spec the operator's ConfigMap holds",
        "a learning rate written with an exponent stays a number (YAML 1.1 would read 2e-05 as text)",
        "non-ASCII paths survive the round trip",
        "a preset's save and eval intervals beyond maxSteps do not make the trainer refuse the spec",
    ],
)
def test_the_operator_configmap_is_what_the_trainer_reads(tmp_path: Path, changes: dict[str, Any]) -> None:
    """The Job's trainer container as the kubelet starts it: its literal env, its ConfigMap mounted."""
    document = {**BASE_SPEC, **{key: {**BASE_SPEC.get(key, {}), **value} for key, value in changes.items()}}
    spec = effective_spec(parse_spec(document))
    owner = manifests.Owner(name="tune", namespace="team-a", uid="uid-1")
    configmap = manifests.build_configmap(owner, spec)
    pod = manifests.build_job(owner, spec, 1, image="kubetune", status_interval_seconds=30,
                               node_affinity=None)["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volume = next(v for v in pod["volumes"] if v.get("configMap", {}).get("name") == configmap["metadata"]["name"])
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"])
    (tmp_path / mount.lstrip("/")).mkdir(parents=True)
    for key, text in configmap["data"].items():
        (tmp_path / mount.lstrip("/") / key).write_text(text, encoding="utf-8")
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env[contract.ENV_SPEC_PATH] = str(tmp_path / env[contract.ENV_SPEC_PATH].lstrip("/"))

    context = context_from_env(env)

    assert context.spec == spec
    assert (context.job_name, context.namespace) == ("tune", "team-a")


EXAMPLES = sorted((Path(__file__).parents[2] / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("example", EXAMPLES, ids=[f"the trainer reads example {p.stem} as the operator wrote it"
                                                    for p in EXAMPLES])
def test_every_example_reaches_the_trainer_unchanged(tmp_path: Path, example: Path) -> None:
    spec = effective_spec(parse_spec(yaml.safe_load(example.read_text())["spec"]))
    owner = manifests.Owner(name="example", namespace="team-a", uid="uid-1")
    spec_file = tmp_path / contract.SPEC_FILE_NAME
    spec_file.write_text(manifests.build_configmap(owner, spec)["data"][contract.SPEC_FILE_NAME], encoding="utf-8")

    # Literal spec.env values stay out of the ConfigMap (they reach the trainer as its container's env).
    assert context_from_env({contract.ENV_SPEC_PATH: str(spec_file)}).spec == manifests.without_literal_env(spec)


def test_environment_overrides_defaults(tmp_path: Path) -> None:
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(SPEC_ONLY))
    env = {contract.ENV_SPEC_PATH: str(spec_file), contract.ENV_OUTPUT_DIR: "/out", contract.ENV_JOB_NAME: "j",
           contract.ENV_JOB_NAMESPACE: "ns", contract.ENV_METRICS_PORT: "9100",
           contract.ENV_STATUS_INTERVAL_SECONDS: "5", contract.ENV_HF_TOKEN: "hf_x"}

    context = context_from_env(env)

    assert (context.output_dir, context.metrics_port, context.status_interval_seconds) == (Path("/out"), 9100, 5)
    assert context.reports_status and context.hf_token == "hf_x"


@pytest.mark.parametrize(
    ("mounts", "expected"),
    [
        ({"/data": Path("/home/me/d")}, "/home/me/d/model"),
        ({"/data/": Path("/home/me/d")}, "/home/me/d/model"),
        ({"/dat": Path("/home/me/d")}, "/data/model"),
        ({}, "/data/model"),
    ],
    ids=[
        "a path under the mount moves to the local directory",
        "a trailing slash on the mount path is the same mount",
        "a mount path that is only a prefix of the name does not match",
        "without mounts paths stay",
    ],
)
def test_local_mounts(make_spec: SpecFactory, mounts: dict[str, Path], expected: str) -> None:
    spec = make_spec()
    cluster_spec = spec.model_copy(update={"model": spec.model.model_copy(update={"path": "/data/model"})})

    assert with_local_mounts(cluster_spec, mounts).model.path == expected
