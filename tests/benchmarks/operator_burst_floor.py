"""The floor for the operator burst benchmark: a bare kopf handler that only creates a Job.

Run by operator_burst.py as `python -m kopf run --standalone -A tests/benchmarks/operator_burst_floor.py`.
Same kopf, same annotation storage, same API client library (aiohttp) as the operator; no validation,
estimate, plan, ConfigMap, RBAC or status.
"""

from __future__ import annotations

from typing import Any

import aiohttp
import kopf


@kopf.on.startup()
async def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kubetune.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="kubetune.io")
    info = kopf.login_with_kubeconfig(settings=settings)
    assert info is not None
    memo.server = info.server
    memo.session = aiohttp.ClientSession()


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    await memo.session.close()


@kopf.on.create("kubetune.io", "v1alpha1", "finetunejobs")
async def create_job(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": f"{name}-1", "labels": {"kubetune.io/finetunejob": name}},
        "spec": {
            "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "c", "image": "x"}]}}
        },
    }
    url = f"{memo.server}/apis/batch/v1/namespaces/{namespace}/jobs"
    async with memo.session.post(url, json=job) as response:
        if response.status not in (201, 409):
            raise kopf.TemporaryError(f"HTTP {response.status}", delay=1)
