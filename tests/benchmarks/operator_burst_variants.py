"""The kubetune operator with its reconcile cut down, for `operator_burst.py --decompose`.

    python3 tests/benchmarks/operator_burst_variants.py job-only|job-and-status

Runs `kubetune operator --standalone` (kopf, every index, watch and handler of the real operator) with
the reconcile of a new FineTuneJob replaced by:
- job-only: create the attempt's Job, nothing else (no validation, estimate, plan, ConfigMap, status);
- job-and-status: that, and write the status the operator writes for it (JobCreated), with its Event
  and log line, through the operator's own write_status.
The difference between the three shows what the status write and the placement itself cost.
"""

from __future__ import annotations

import sys
from typing import Any

from kubetune import contract, manifests, reconcile
from kubetune.status import observe

VARIANTS = ("job-only", "job-and-status")


def minimal_job(ftj: dict[str, Any]) -> dict[str, Any]:
    meta = ftj["metadata"]
    labels = {contract.LABEL_FINETUNEJOB: meta["name"], contract.LABEL_ATTEMPT: "1"}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": manifests.job_name(meta["name"], 1), "namespace": meta["namespace"], "labels": labels},
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}},
    }


def cut_down(variant: str) -> Any:
    async def place_only(state: reconcile.State, cluster: reconcile.Cluster, ftj: dict[str, Any]) -> None:
        job = minimal_job(ftj)
        await state.kube.create(job)
        if variant == "job-and-status":
            extra = {"jobName": job["metadata"]["name"], "attempt": 1}
            await reconcile.write_status(state, ftj, observe(job, []), extra)

    return place_only


def main() -> int:
    variant = sys.argv[1]
    assert variant in VARIANTS, f"variant must be one of {VARIANTS}"
    reconcile.reconcile = cut_down(variant)  # type: ignore[assignment]  (what reconcile_or_report calls)
    from kubetune.cli import main as cli

    return cli(["operator", "--standalone"])


if __name__ == "__main__":
    sys.exit(main())
