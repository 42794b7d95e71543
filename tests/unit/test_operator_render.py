"""`kubetune render`: the objects the operator would create, with `kubetune plan`'s exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.cli import main
from kubetune.manifest_files import CliError

JOB = """
apiVersion: kubetune.io/v1alpha1
kind: FineTuneJob
metadata: {name: tune, namespace: team-a}
spec:
  model: {name: Qwen/Qwen2.5-7B}
  dataset: {name: tatsu-lab/alpaca}
"""


def node(name: str, product: str, memory_mib: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {"nvidia.com/gpu.product": product, "nvidia.com/gpu.memory": str(memory_mib)},
        },
        "status": {
            "allocatable": {"nvidia.com/gpu": "1"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }


H100 = node("h100-a", "NVIDIA-H100-80GB-HBM3", 81559)
T4 = node("t4-a", "Tesla-T4", 15360)
BUSY = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "other", "namespace": "x"},
    "spec": {
        "nodeName": "h100-a",
        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}],
    },
    "status": {"phase": "Running"},
}


@pytest.mark.parametrize(
    ("nodes", "pods", "code"),
    [([H100], [], 0), ([T4], [], 3), ([H100], [BUSY], 2)],
    ids=[
        "a job that fits renders its objects",
        "a job no GPU can hold exits 3",
        "a job waiting for a busy GPU exits 2",
    ],
)
def test_render_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], nodes: list[Any], pods: list[Any], code: int
) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": nodes}))
    (tmp_path / "pods.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": pods}))
    args = [
        "render",
        "-f",
        str(tmp_path / "job.yaml"),
        "--nodes",
        str(tmp_path / "nodes.yaml"),
        "--pods",
        str(tmp_path / "pods.yaml"),
    ]
    assert main(args) == code
    out = capsys.readouterr().out
    if code == 0:
        objects = list(yaml.safe_load_all(out))
        assert [o["kind"] for o in objects] == ["ServiceAccount", "Role", "RoleBinding", "ConfigMap", "Job"]
        job = objects[-1]
        assert job["metadata"]["name"] == "tune-1" and job["metadata"]["namespace"] == "team-a"
        assert "nodeAffinity" in job["spec"]["template"]["spec"]["affinity"]
    else:
        assert out == ""


@pytest.fixture
def no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    """No kubeconfig and no --nodes: render cannot read a cluster."""

    def unreachable() -> None:
        raise CliError("no cluster")

    monkeypatch.setattr("kubetune.commands.plan.cluster_objects", unreachable)


@pytest.mark.usefixtures("no_cluster")
def test_render_without_nodes_or_cluster_assumes_a_fit_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    assert main(["render", "-f", str(tmp_path / "job.yaml")]) == 0
    captured = capsys.readouterr()
    assert "as if the job fits" in captured.err
    job = list(yaml.safe_load_all(captured.out))[-1]
    assert "affinity" not in job["spec"]["template"]["spec"]


@pytest.mark.usefixtures("no_cluster")
def test_a_multi_node_job_renders_its_headless_service(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text(JOB + "  resources: {gpus: 2, nodes: 2}\n")
    assert main(["render", "-f", str(tmp_path / "job.yaml")]) == 0
    objects = list(yaml.safe_load_all(capsys.readouterr().out))
    service, job = objects[-2], objects[-1]
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert job["spec"]["template"]["spec"]["subdomain"] == service["metadata"]["name"]


@pytest.mark.usefixtures("no_cluster")
def test_the_configmap_shows_the_spec_as_a_readable_block(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "job.yaml").write_text(JOB)
    assert main(["render", "-f", str(tmp_path / "job.yaml")]) == 0
    out = capsys.readouterr().out

    configmap = next(o for o in yaml.safe_load_all(out) if o["kind"] == "ConfigMap")
    spec_text = configmap["data"]["spec.yaml"]
    assert "  spec.yaml: |\n" in out
    assert '"name": "Qwen/Qwen2.5-7B"' in out  # a line of the spec as it is, not escaped into one string
    assert yaml.safe_load(spec_text)["model"]["name"] == "Qwen/Qwen2.5-7B"


def test_render_with_the_operators_autoscale_settings_pins_the_job_to_a_node_group(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBETUNE_CAPACITY_MODE", "autoscale")
    monkeypatch.setenv("KUBETUNE_NODE_GROUPS", '[{"name": "a100", "gpuProduct": "NVIDIA-A100-SXM4-80GB", '
                       '"gpusPerNode": 8, "nodeSelector": {"cloud.google.com/gke-nodepool": "a100"}}]')
    (tmp_path / "job.yaml").write_text(JOB)
    (tmp_path / "nodes.yaml").write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [T4]}))
    assert main(["render", "-f", str(tmp_path / "job.yaml"), "--nodes", str(tmp_path / "nodes.yaml")]) == 0
    job = list(yaml.safe_load_all(capsys.readouterr().out))[-1]
    terms = job["spec"]["template"]["spec"]["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [
        {"key": "cloud.google.com/gke-nodepool", "operator": "In", "values": ["a100"]}]}]
