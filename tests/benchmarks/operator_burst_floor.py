"""The floor for the operator burst benchmark: what any correct operator must do per FineTuneJob.

Run by operator_burst.py as `python -m kopf run --standalone -A tests/benchmarks/operator_burst_floor.py`.
A bare kopf handler that creates the Job, patches the FineTuneJob's status and posts an Event: the same
kopf, the same in-memory handler bookkeeping (kubetune.persistence) and the same API client library
(aiohttp) as the operator; no validation, estimate, plan, ConfigMap, trainer identity or reservation.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf

from kubetune.persistence import HandlerMemory

FTJ = ("kubetune.io", "v1alpha1", "finetunejobs")


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    memo.handler_memory = HandlerMemory(prefix="kubetune.io", kind="FineTuneJob")
    memo.handler_memory.install(settings)
    info = kopf.login_with_kubeconfig(settings=settings)
    assert info is not None
    memo.server = info.server
    memo.session = aiohttp.ClientSession()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.session.close()


async def _send(memo: kopf.Memo, method: str, path: str, body: dict[str, Any], content_type: str) -> None:
    headers = {"Content-Type": content_type}
    async with memo.session.request(method, memo.server + path, json=body, headers=headers) as response:
        if response.status not in (200, 201, 409):
            raise kopf.TemporaryError(f"HTTP {response.status}", delay=1)


@kopf.on.create(*FTJ)
async def place(name: str, namespace: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-1", "labels": {"kubetune.io/finetunejob": name}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}
        },
    }
    await _send(memo, "POST", f"/apis/batch/v1/namespaces/{namespace}/jobs", job, "application/json")
    status = {"status": {"phase": "Pending", "jobName": f"{name}-1", "attempt": 1}}
    path = f"/apis/kubetune.io/v1alpha1/namespaces/{namespace}/finetunejobs/{name}/status"
    await _send(memo, "PATCH", path, status, "application/merge-patch+json")
    kopf.info(body, reason="JobCreated", message=f"created Job {name}-1")
