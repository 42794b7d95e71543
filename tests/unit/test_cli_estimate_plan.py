"""`kubetune estimate` and `kubetune plan`: output forms, exit codes and error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from kubetune.cli import main


def manifest(tmp_path: Path, spec: dict[str, Any], name: str = "job.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"apiVersion": "kubetune.io/v1alpha1", "kind": "FineTuneJob",
                                    "metadata": {"name": "demo"}, "spec": spec}))
    return str(path)


QLORA_8B = {"model": {"name": "meta-llama/Llama-3.1-8B-Instruct"}, "dataset": {"name": "tatsu-lab/alpaca"},
            "method": {"type": "qlora", "quantization": {"bits": 4}}}


def gpu_node(name: str, product: str, memory_mib: int, gpus: int = 1) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.product": product,
                                                  "nvidia.com/gpu.memory": str(memory_mib)}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def write_yaml(tmp_path: Path, name: str, *documents: Any) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(documents))
    return str(path)


def test_estimate_prints_a_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["estimate", "-f", manifest(tmp_path, QLORA_8B)]) == 0
    out = capsys.readouterr().out
    for expected in ("weights", "logits", "peak", "strategy:  single", "trainable:", "assumptions:"):
        assert expected in out


def test_estimate_json_is_one_object_with_the_contract_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["estimate", "-f", manifest(tmp_path, QLORA_8B), "-o", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert {"perGpuGiB", "totalGiB", "strategy", "breakdown", "trainableParameters", "totalParameters",
            "assumptions"} <= set(body)
    assert body["strategy"] == "single" and body["breakdown"]["weights"] > 0
    assert all(isinstance(note, str) for note in body["assumptions"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({**QLORA_8B, "model": {"name": "acme/unknown-7b"}}, "spec.model.architecture"),
        ({**QLORA_8B, "training": {"batchSize": 0}}, "spec.training.batchSize"),
    ],
    ids=["an unknown model says how to describe it", "an invalid spec names the field"],
)
def test_estimate_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any],
                                message: str) -> None:
    assert main(["estimate", "-f", manifest(tmp_path, spec)]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "case",
    [
        ([gpu_node("a100", "NVIDIA-A100-SXM4-80GB", 81920)], [], 0, "fits: NVIDIA-A100-SXM4-80GB"),
        ([gpu_node("a100", "NVIDIA-A100-SXM4-80GB", 81920)],
         [{"kind": "Pod", "spec": {"nodeName": "a100", "containers": [
             {"resources": {"limits": {"nvidia.com/gpu": 1}}}]}, "status": {"phase": "Running"}}],
         2, "waits (WaitingForGPUs)"),
        ([gpu_node("t4", "Tesla-T4", 15360)], [], 3, "does not fit (InsufficientGPUMemory)"),
    ],
    ids=["a fitting cluster exits 0", "busy GPUs exit 2", "GPUs too small exit 3"],
)
def test_plan_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str], case: tuple[Any, ...]) -> None:
    nodes, pods, code, expected = case
    args = ["plan", "-f", manifest(tmp_path, QLORA_8B), "--nodes",
            write_yaml(tmp_path, "nodes.yaml", {"apiVersion": "v1", "kind": "List", "items": nodes})]
    if pods:
        args += ["--pods", write_yaml(tmp_path, "pods.yaml", *pods)]
    assert main(args) == code
    assert expected in capsys.readouterr().out


def test_plan_reads_single_objects_and_multi_document_files(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    single = write_yaml(tmp_path, "one.yaml", gpu_node("a100", "NVIDIA-A100-SXM4-80GB", 81920))
    assert main(["plan", "-f", manifest(tmp_path, QLORA_8B), "--nodes", single]) == 0
    several = write_yaml(tmp_path, "two.yaml", gpu_node("t4", "Tesla-T4", 15360),
                         gpu_node("l4", "NVIDIA-L4", 23034))
    # QLORA_8B needs about 18 GiB: too big for a T4 with the margin, small enough for an L4.
    assert main(["plan", "-f", manifest(tmp_path, QLORA_8B), "--nodes", several, "-o", "json"]) == 0
    body = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert body["result"] == "Placement" and body["placement"]["nodes"] == ["l4"]
    assert body["placement"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]


def test_plan_json_lists_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    full = {**QLORA_8B, "method": {"type": "full"}}
    nodes = write_yaml(tmp_path, "nodes.yaml", gpu_node("a100", "NVIDIA-A100-SXM4-80GB", 81920))
    assert main(["plan", "-f", manifest(tmp_path, full), "--nodes", nodes, "-o", "json"]) == 3
    body = json.loads(capsys.readouterr().out)
    assert body["result"] == "NoFit" and body["reason"] == "InsufficientGPUMemory"
    assert body["suggestions"] and all(s["perGpuGiB"] <= 72 for s in body["suggestions"])


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--nodes", "{pods}"], "expected Node objects"),
        (["--nodes", "{nodes}", "--safety-margin", "1.5"], "--safety-margin"),
    ],
    ids=["pods given as nodes are rejected", "a safety margin must be a fraction"],
)
def test_plan_input_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                  message: str) -> None:
    files = {"pods": write_yaml(tmp_path, "pods.yaml", {"kind": "Pod", "spec": {}}),
             "nodes": write_yaml(tmp_path, "nodes.yaml", gpu_node("a100", "NVIDIA-A100-SXM4-80GB", 81920))}
    args = ["plan", "-f", manifest(tmp_path, QLORA_8B)] + [arg.format(**files) for arg in extra]
    assert main(args) == 1
    assert message in capsys.readouterr().err


def test_plan_without_nodes_reads_the_cluster_and_says_so_when_it_cannot(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    assert main(["plan", "-f", manifest(tmp_path, QLORA_8B)]) == 1
    assert "--nodes" in capsys.readouterr().err


def calibration_file(tmp_path: Path, spec: dict[str, Any], ratio: float) -> str:
    """The operator's calibration ConfigMap holding one measured run of this spec's shape."""
    from kubetune.calibration import Store, measured_record
    from kubetune.estimate import estimate
    from kubetune.presets import effective_spec
    from kubetune.validation import parse_spec

    effective = effective_spec(parse_spec(spec))
    analytic = estimate(effective)
    record = measured_record(uid="u", attempt=1, spec=effective, estimate=analytic, outcome="Succeeded",
                             peak_gib=analytic.per_gpu_gib * ratio - 0.6, gpu_memory_gib=80.0, gpu_product=None)
    assert record is not None
    return write_yaml(tmp_path, "calibration.yaml", Store([record]).configmap("kubetune-system"))


@pytest.mark.parametrize("command", ["estimate", "plan"], ids=["estimate", "plan"])
def test_calibration_file_gives_the_operators_numbers_offline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    job = manifest(tmp_path, QLORA_8B)
    extra = ["--nodes", write_yaml(tmp_path, "nodes.yaml", gpu_node("a", "NVIDIA-H100-80GB-HBM3", 81559))] \
        if command == "plan" else []
    assert main([command, "-f", job, "-o", "json", *extra]) == 0
    plain = json.loads(capsys.readouterr().out)
    plain_estimate = plain.get("estimate", plain)
    assert main([command, "-f", job, "-o", "json", "--calibration", calibration_file(tmp_path, QLORA_8B, 1.25),
                 *extra]) == 0
    calibrated = json.loads(capsys.readouterr().out)
    calibrated_estimate = calibrated.get("estimate", calibrated)
    assert calibrated_estimate["analyticGiB"] == plain_estimate["perGpuGiB"]
    assert calibrated_estimate["perGpuGiB"] == pytest.approx(plain_estimate["perGpuGiB"] * 1.25, rel=0.01)
    assert calibrated_estimate["calibrationRecords"] == 1


def test_an_unreadable_calibration_file_is_an_error_naming_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"records": 7}')
    assert main(["estimate", "-f", manifest(tmp_path, QLORA_8B), "--calibration", str(bad)]) == 1
    assert "--calibration" in capsys.readouterr().err
