"""The operator enforces the policy: a FineTuneJob that breaks it fails with Validated=False and the rule,
and no Job, ConfigMap or trainer identity is created for it."""

from __future__ import annotations

from apiserver import Server
from harness import CONFIGMAPS, JOBS, Cluster, Operator, qwen_lora, wait_for


def test_a_job_breaking_the_policy_is_refused_with_the_rule(server: Server, cluster: Cluster) -> None:
    cluster.add_gpu_node("h100-a")
    operator = Operator(server).start()
    try:
        cluster.apply("miner", qwen_lora(image="docker.io/attacker/miner:latest"))
        status = cluster.wait_phase("miner", "Failed", "PolicyDenied")
        cluster.apply("fine", qwen_lora())
        cluster.wait_phase("fine", "Pending", "JobCreated")
        wait_for(lambda: any(e["reason"] == "PolicyDenied" and e["type"] == "Warning" for e in cluster.events("miner")),
                 what="the Warning event")
    finally:
        operator.stop()
    validated = next(c for c in status["conditions"] if c["type"] == "Validated")
    assert (validated["status"], validated["reason"]) == ("False", "PolicyDenied")
    assert "spec.image: docker.io/attacker/miner:latest is not an allowed image" in validated["message"]
    assert cluster.get(JOBS, "miner-1") is None and cluster.get(CONFIGMAPS, "miner-spec") is None
