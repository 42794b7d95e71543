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


# ----------------------------------------------------------------------------- forecasts


STEPS_8B = {**QLORA_8B, "training": {"maxSteps": 1000, "batchSize": 4, "gradientAccumulationSteps": 4,
                                     "maxSeqLength": 2048, "packing": True}}


def test_estimate_gpus_checks_the_standard_list_with_eta_and_cost(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    prices = write_yaml(tmp_path, "prices.yaml", {"NVIDIA-H100-80GB-HBM3": 4.0})
    assert main(["estimate", "-f", manifest(tmp_path, STEPS_8B), "--gpus", "--prices", prices, "-o", "json"]) == 0
    rows = {row["gpuProduct"]: row for row in json.loads(capsys.readouterr().out)["gpus"]}
    assert list(rows) == ["Tesla-T4", "NVIDIA-A10G", "NVIDIA-L4", "NVIDIA-GeForce-RTX-4090", "NVIDIA-A100-SXM4-40GB",
                          "NVIDIA-H100-80GB-HBM3", "NVIDIA-A100-SXM4-80GB", "NVIDIA-H200", "NVIDIA-B200"]
    assert not rows["Tesla-T4"]["fits"] and rows["Tesla-T4"]["forecast"] is None
    h100 = rows["NVIDIA-H100-80GB-HBM3"]["forecast"]
    assert h100["tokens"] == 32_768_000 and h100["etaSeconds"] == 13103 and h100["cost"] == pytest.approx(14.56)
    assert "cost" not in rows["NVIDIA-B200"]["forecast"]  # no price for it: no cost, not 0
    assert main(["estimate", "-f", manifest(tmp_path, STEPS_8B), "--gpus"]) == 0
    table = capsys.readouterr().out
    assert "GPU-hours" in table and "3h 38m" in table and "32,768,000 tokens (maxSteps)" in table


def test_plan_prints_a_forecast_per_gpu_product_of_the_cluster(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    nodes = write_yaml(tmp_path, "nodes.yaml", gpu_node("l4", "NVIDIA-L4", 23034),
                       gpu_node("h100", "NVIDIA-H100-80GB-HBM3", 81559, gpus=8),
                       {"kind": "Node", "metadata": {"name": "mystery"},
                        "status": {"allocatable": {"nvidia.com/gpu": "1"},
                                   "conditions": [{"type": "Ready", "status": "True"}]}})
    assert main(["plan", "-f", manifest(tmp_path, STEPS_8B), "--nodes", nodes]) == 0
    out = capsys.readouterr().out
    assert "GPU products in the cluster:" in out and "NVIDIA-L4" in out and "3h 38m" in out
    assert "GPU memory unknown (not in the table): mystery" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prices", "{bad_prices}"], "price per GPU-hour"),
        (["--throughput", "{bad_runs}"], "[0]: not a measured run"),
        (["--dataset-tokens", "0"], "--dataset-tokens"),
    ],
    ids=["a price that is not a number", "a measured run without its fields", "a dataset without tokens"],
)
def test_forecast_input_errors_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str],
                                      message: str) -> None:
    files = {"bad_prices": write_yaml(tmp_path, "prices.yaml", {"NVIDIA-L4": "cheap"}),
             "bad_runs": write_yaml(tmp_path, "runs.yaml", [{"gpuProduct": "NVIDIA-L4"}])}
    args = ["estimate", "-f", manifest(tmp_path, STEPS_8B), "--gpus"] + [arg.format(**files) for arg in extra]
    assert main(args) == 1
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------------- clusters that grow

G6E_POOL = {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": "gpu"},
            "spec": {"template": {"spec": {"requirements": [
                {"key": "karpenter.k8s.aws/instance-family", "operator": "In", "values": ["g6e"]}]}}}}
QWEN_7B = {"model": {"name": "Qwen/Qwen2.5-7B"}, "dataset": {"name": "tatsu-lab/alpaca"}, "method": {"type": "lora"},
           "training": {"maxSteps": 100, "packing": True}}


@pytest.mark.parametrize(
    ("capacity", "code", "shown"),
    [
        ({}, 3, "does not fit (InsufficientGPUMemory)"),
        ({"--nodepools": [G6E_POOL]}, 0, "fits a node type the cluster can add (NVIDIA-L40S"),
        ({"--node-groups": [[{"name": "a100", "gpuProduct": "NVIDIA-A100-SXM4-80GB", "gpusPerNode": 8,
                              "nodeSelector": {"cloud.google.com/gke-nodepool": "a100"}}]]}, 0,
         "node group a100: 8x NVIDIA-A100-SXM4-80GB"),
        ({"--node-groups": [[{"name": "a100", "gpusPerNode": 8, "nodeSelector": {"pool": "a100"}}]]}, 1,
         "give gpuProduct or memoryGiB"),
    ],
    ids=["an L4 cluster that cannot grow: no fit", "a Karpenter NodePool of L40S machines: provisioned",
         "a cluster-autoscaler node group: provisioned", "a node group without a GPU is an input error"],
)
def test_plan_offline_with_node_types_the_cluster_can_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], capacity: dict[str, list[Any]], code: int, shown: str
) -> None:
    nodes = write_yaml(tmp_path, "nodes.yaml", gpu_node("l4", "NVIDIA-L4", 23034))
    args = ["plan", "-f", manifest(tmp_path, QWEN_7B), "--nodes", nodes]
    for flag, documents in capacity.items():
        args += [flag, write_yaml(tmp_path, f"{flag.strip('-')}.yaml", *documents)]
    assert main(args) == code
    captured = capsys.readouterr()
    assert shown in captured.out + captured.err


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


@pytest.mark.parametrize(
    ("label_products", "code", "shown"),
    [
        (None, 2, "waits (GPUMemoryUnknown)"),
        ([{"label": "pool=big", "product": "nvidia-a100-sxm4-80gb"}], 0, "fits: NVIDIA-A100-SXM4-80GB, 80.0 GiB"),
        ([{"label": "pool=big", "memoryGiB": 48}], 0, "fits: GPU, 48.0 GiB"),
        ([{"label": "pool"}], 1, "[0].label: must be a node label written key=value"),
    ],
    ids=["an unlabelled GPU node: the job waits until its memory is told",
         "a label mapped to a product (spelled as users do)", "a label mapped to a memory",
         "a mapping without key=value is an input error"],
)
def test_plan_offline_with_label_products(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          label_products: list[dict[str, Any]] | None, code: int, shown: str) -> None:
    bare = {"kind": "Node", "metadata": {"name": "bare", "labels": {"pool": "big", "kubernetes.io/hostname": "bare"}},
            "status": {"allocatable": {"nvidia.com/gpu": "1"}, "conditions": [{"type": "Ready", "status": "True"}]}}
    args = ["plan", "-f", manifest(tmp_path, QWEN_7B), "--nodes", write_yaml(tmp_path, "nodes.yaml", bare)]
    if label_products is not None:
        args += ["--label-products", write_yaml(tmp_path, "labels.yaml", label_products)]
    assert main(args) == code
    captured = capsys.readouterr()
    assert shown in captured.out + captured.err
