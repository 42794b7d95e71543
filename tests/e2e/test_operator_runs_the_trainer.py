"""The whole loop: the real operator creates the Job, a kubelet runs its trainer container for real (a tiny
model on CPU), and what the trainer writes (status, checkpoints, its termination message) comes back
through the API to the FineTuneJob. It checks the contracts between the two halves together: the spec in
the ConfigMap, the environment, the volumes, status ownership and the exit codes."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from harness import FTJ, JOBS, NAMESPACE, Cluster, wait_for
from kubelet import SECRETS, Kubelet
from tests.trainer import hub

from kubetune import contract
from kubetune_trainer import tiny

pytestmark = [pytest.mark.usefixtures("operator"), pytest.mark.slow]  # trainer pods run as processes

MAX_STEPS, SAVE_STEPS = 8, 4
HF_TOKEN = "hf_e2e"  # in the Secret that hfTokenSecretRef names


@pytest.fixture(scope="module")
def data_claim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The PVC holding the model and the data, as a folder."""
    root = tmp_path_factory.mktemp("claim-data")
    tiny.save_tiny_model(root / "model")
    tiny.write_jsonl(root / "train.jsonl", tiny.instruction_rows(200))
    tiny.write_jsonl(root / "broken.jsonl", [*tiny.instruction_rows(3), {"prompt": "no response here"}])
    return root


def tiny_lora(dataset: str) -> dict[str, Any]:
    """LoRA on the tiny model, CPU only; its dimensions given, as the operator cannot read /data/model."""
    dims = tiny.TINY_DIMS
    architecture = {
        "hiddenSize": dims["hidden_size"], "numLayers": dims["num_hidden_layers"],
        "numAttentionHeads": dims["num_attention_heads"], "numKeyValueHeads": dims["num_key_value_heads"],
        "intermediateSize": dims["intermediate_size"], "vocabSize": tiny.TINY_VOCAB_SIZE,
    }
    return {
        "model": {"path": "/data/model", "dtype": "float32", "architecture": architecture},
        "dataset": {"path": f"/data/{dataset}", "format": "instruction"},
        "method": {"type": "lora", "lora": {"rank": 8, "dropout": 0.0}},
        "training": {
            "maxSteps": MAX_STEPS, "saveSteps": SAVE_STEPS, "loggingSteps": 2, "batchSize": 4,
            "learningRate": 3e-3, "maxSeqLength": 64, "gradientCheckpointing": False,
        },
        "resources": {"gpus": 0, "cpu": "2", "memory": "4Gi"},
        "volumes": [{"claimName": "data", "mountPath": "/data", "readOnly": True}],
        "output": {"volume": {"claimName": "out"}},
        "hfTokenSecretRef": {"name": "hf"},
    }


@pytest.fixture
def kubelet(cluster: Cluster, data_claim: Path, tmp_path: Path) -> Kubelet:
    secret = {"metadata": {"name": "hf"}, "data": {"token": base64.b64encode(HF_TOKEN.encode()).decode()}}
    cluster.server.call(cluster.api.create, *SECRETS, NAMESPACE, secret)
    cluster.add_gpu_node("node-a")
    return Kubelet(cluster, tmp_path / "kubelet", {"data": data_claim, "out": tmp_path / "claim-out"})


def test_the_trainer_the_operator_starts_trains_and_reports_back(cluster: Cluster, kubelet: Kubelet) -> None:
    cluster.apply("loop", tiny_lora("train.jsonl"))
    cluster.wait_job("loop-1")

    exited = kubelet.run("loop-1", "node-a")

    assert exited.code == 0, exited.output[-3000:]
    status = cluster.wait_phase("loop", "Succeeded")
    training = status["training"]  # written by the trainer, through the API, with its pod's settings
    assert training["step"] == MAX_STEPS and training["totalSteps"] == MAX_STEPS
    assert training["loss"] > 0 and training["tokensPerSecond"] > 0
    assert status["lastCheckpoint"]["step"] == MAX_STEPS
    output = kubelet.claims["out"] / "loop"  # the output PVC, at the subPath the Job mounts
    summary = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    assert summary["final_loss"] == pytest.approx(training["loss"], rel=0.5)
    assert (output / "final" / "adapter_model.safetensors").is_file()
    checkpoints = sorted(p.name for p in output.glob("checkpoint-*"))
    assert checkpoints == [f"checkpoint-{SAVE_STEPS}", f"checkpoint-{MAX_STEPS}"]
    summary_text = (output / contract.SUMMARY_FILE_NAME).read_text()

    again = kubelet.run("loop-1", "node-a", index=1)  # a pod that starts after the run finished (a replacement)

    assert again.code == 0, again.output[-3000:]
    assert f"already complete (step {MAX_STEPS}/{MAX_STEPS})" in again.output
    assert sorted(p.name for p in output.glob("checkpoint-*")) == checkpoints
    assert (output / contract.SUMMARY_FILE_NAME).read_text() == summary_text
    assert cluster.wait_phase("loop", "Succeeded")["output"]["path"].endswith("/final")


def test_a_dataset_error_in_the_trainer_fails_the_job_with_the_row_named(
    cluster: Cluster, kubelet: Kubelet
) -> None:
    cluster.apply("broken", tiny_lora("broken.jsonl"))
    cluster.wait_job("broken-1")

    exited = kubelet.run("broken-1", "node-a")

    assert exited.code == contract.ExitCode.DATASET_ERROR, exited.output[-3000:]
    status = cluster.wait_phase("broken", "Failed", "DatasetError")
    assert "broken.jsonl" in status["failure"]["message"] and "response" in status["failure"]["message"]
    wait_for(
        lambda: any(e["type"] == "Warning" and e["reason"] == "DatasetError" for e in cluster.events("broken")),
        what="a Warning event DatasetError",
    )


def test_a_preempted_trainer_checkpoints_and_its_replacement_resumes_where_it_stopped(
    cluster: Cluster, kubelet: Kubelet
) -> None:
    longer = tiny_lora("train.jsonl")
    longer["training"] |= {"maxSteps": 40, "saveSteps": 4}
    cluster.apply("pre", longer)
    cluster.wait_job("pre-1")
    output = kubelet.claims["out"] / "pre"

    first = kubelet.run("pre-1", "node-a", preempt_when=(output / "checkpoint-4").is_dir)

    assert first.code == contract.ExitCode.INTERRUPTED, first.output[-3000:]
    saved = sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    assert saved and saved[-1] < 40, "the SIGTERM checkpoint is the newest, before the end"
    second = kubelet.run("pre-1", "node-a", index=1)

    assert second.code == 0, second.output[-3000:]
    assert f"checkpoint-{saved[-1]}" in second.output, "the replacement resumes from the SIGTERM checkpoint"
    status = cluster.wait_phase("pre", "Succeeded")
    assert status["training"]["step"] == 40 and status["attempt"] == 1  # the same attempt, its pod replaced
    assert status.get("restarts", 0) == 0  # a preemption is not a retry


def test_suspend_checkpoints_and_the_next_attempt_resumes_from_it(cluster: Cluster, kubelet: Kubelet) -> None:
    longer = tiny_lora("train.jsonl")
    longer["training"] |= {"maxSteps": 40, "saveSteps": 4}
    cluster.apply("sus", longer)
    cluster.wait_job("sus-1")
    output = kubelet.claims["out"] / "sus"
    suspended: list[bool] = []

    def suspend_after_a_checkpoint() -> bool:
        """The user suspends once a checkpoint exists; the pod is stopped when the operator deletes the Job."""
        if not suspended and (output / "checkpoint-4").is_dir():
            cluster.patch_spec("sus", {"suspend": True})
            suspended.append(True)
        return bool(suspended) and cluster.get(JOBS, "sus-1") is None

    first = kubelet.run("sus-1", "node-a", preempt_when=suspend_after_a_checkpoint)

    assert first.code == contract.ExitCode.INTERRUPTED, first.output[-3000:]
    cluster.wait_phase("sus", "Suspended")
    stopped_at = max(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*"))
    cluster.patch_spec("sus", {"suspend": False})
    cluster.wait_job("sus-2")
    second = kubelet.run("sus-2", "node-a")

    assert second.code == 0, second.output[-3000:]
    assert f"checkpoint-{stopped_at}" in second.output, "attempt 2 resumes from attempt 1's last checkpoint"
    status = cluster.wait_phase("sus", "Succeeded")
    assert status["attempt"] == 2 and status["training"]["step"] == 40


def test_a_two_node_job_trains_as_one_and_reports_once(cluster: Cluster, kubelet: Kubelet) -> None:
    """Two pods of the Indexed Job, each a torchrun on its "node", meet at the rendezvous the operator named
    (pod 0's DNS name, which the kubelet resolves to this machine) and train over gloo on the CPU."""
    cluster.add_claim("out", "ReadWriteMany")  # several nodes write the output
    cluster.add_gpu_node("node-b")
    spec = tiny_lora("train.jsonl")
    spec["resources"] |= {"gpus": 1, "nodes": 2}  # one GPU on each of two nodes: the processes use the CPU here
    spec["training"] |= {"strategy": "ddp"}
    cluster.apply("gang", spec)
    job = cluster.wait_job("gang-1")
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["parallelism"] == 2

    exits = kubelet.run_gang("gang-1", ["node-a", "node-b"])

    assert [exited.code for exited in exits] == [0, 0], "\n".join(exited.output[-2000:] for exited in exits)
    status = cluster.wait_phase("gang", "Succeeded")
    assert status["training"]["step"] == MAX_STEPS  # rank 0 alone writes the status
    output = kubelet.claims["out"] / "gang"
    assert (output / "final" / "adapter_model.safetensors").is_file()
    summary = json.loads((output / contract.SUMMARY_FILE_NAME).read_text())
    one_rank_at_most = MAX_STEPS * spec["training"]["batchSize"] * spec["training"]["maxSeqLength"]
    assert summary["tokens_total"] > one_rank_at_most, "both ranks trained: more tokens than one rank's batches hold"


@pytest.mark.parametrize(
    "outcome",
    [(HF_TOKEN, "Succeeded", None), ("hf_known_only_to_the_hub", "Failed", "ModelLoadError")],
    ids=["a private Hub model and dataset load with the token from the Secret",
         "a token the Hub refuses fails the job as ModelLoadError naming spec.model.name"],
)
def test_the_hub_token_comes_from_the_secret_and_is_never_shown(
    cluster: Cluster, kubelet: Kubelet, data_claim: Path, tmp_path: Path, outcome: tuple[str, str, str | None]
) -> None:
    """hfTokenSecretRef -> the Job's HF_TOKEN from the Secret -> the trainer's Hub requests (the emulated Hub
    answers RepoNotFound to a private repo without that token); the token shows in no log, status or Event."""
    hub_token, phase, reason = outcome  # the token the Hub knows; the Secret always holds HF_TOKEN
    dataset = tmp_path / "hub-dataset"
    tiny.write_jsonl(dataset / "data" / "train.jsonl", tiny.instruction_rows(64))
    repos = (hub.Repo("acme/private-tiny", "model", {"main": data_claim / "model"}, private=True),
             hub.Repo("acme/private-rows", "dataset", {"main": dataset}, private=True))
    spec = tiny_lora("train.jsonl")
    spec["model"] = {**spec["model"], "name": "acme/private-tiny"}
    spec["dataset"] = {"name": "acme/private-rows", "format": "instruction"}
    del spec["model"]["path"], spec["volumes"]
    cluster.apply("hub", spec)
    cluster.wait_job("hub-1")

    with hub.serving(hub.HubEmulation(repos, hub_token)) as endpoint:
        kubelet.egress["HF_ENDPOINT"] = endpoint
        exited = kubelet.run("hub-1", "node-a")

    status = cluster.wait_phase("hub", phase, reason)
    if reason is None:
        assert status["training"]["step"] == MAX_STEPS
    else:
        assert status["failure"]["message"].startswith("spec.model.name: ")
    shown = [exited.output, exited.termination_message, json.dumps(cluster.get(FTJ, "hub")),
             json.dumps(cluster.events("hub"))]
    assert not [text for text in shown if HF_TOKEN in text]
