"""The operator's only I/O with the Kubernetes API (besides kopf's own watching).

An aiohttp client with the credentials kopf logs in with. Writes are idempotent: creating an object
that already exists is success, deleting one that is gone is success. Throttling (429) and server
errors (5xx) are retried with a short backoff before the error goes to kopf, which retries the
handler.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import ssl
import tempfile
from typing import Any

import aiohttp
import kopf

from kubetune.api import GROUP, PLURAL, VERSION
from kubetune.metrics import OperatorMetrics

logger = logging.getLogger(__name__)

# apiVersion, kind -> (URL prefix, plural) of every kind the operator writes.
KINDS: dict[tuple[str, str], tuple[str, str]] = {
    ("v1", "ConfigMap"): ("/api/v1", "configmaps"),
    ("v1", "ServiceAccount"): ("/api/v1", "serviceaccounts"),
    ("v1", "Service"): ("/api/v1", "services"),
    ("batch/v1", "Job"): ("/apis/batch/v1", "jobs"),
    ("rbac.authorization.k8s.io/v1", "Role"): ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    ("rbac.authorization.k8s.io/v1", "RoleBinding"): ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
}
FINETUNEJOBS_PREFIX = f"/apis/{GROUP}/{VERSION}"
# 429 and 5xx are transient; a few quick retries ride out a blip without involving kopf's backoff.
RETRIED_STATUSES = frozenset({429, 500, 502, 503, 504})
RETRY_DELAYS_SECONDS = (0.05, 0.2, 0.5)
# Then kopf retries the whole (idempotent) handler: soon for transient errors, later for the rest
# (a missing RBAC rule, a quota) which need someone to act.
TRANSIENT_RETRY_SECONDS = 1.0
RETRY_SECONDS = 15.0
# Requests in flight at once: enough for a burst, few enough not to flood the API server.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_SECONDS = 30


class KubeError(kopf.TemporaryError):
    """An API request that failed after the quick retries; kopf retries the handler after `delay`."""

    def __init__(self, status: int, message: str) -> None:
        transient = status in RETRIED_STATUSES or status == 409
        super().__init__(f"HTTP {status}: {message}", delay=TRANSIENT_RETRY_SECONDS if transient else RETRY_SECONDS)
        self.status = status


def _ssl_context(info: kopf.ConnectionInfo) -> ssl.SSLContext | bool:
    if info.insecure:
        return False
    context = ssl.create_default_context()
    if info.ca_path:
        context.load_verify_locations(cafile=info.ca_path)
    if info.ca_data:
        data = info.ca_data
        text = data.decode() if isinstance(data, bytes) else data
        context.load_verify_locations(cadata=text if "BEGIN" in text else base64.b64decode(text).decode())
    if info.certificate_path or info.certificate_data:
        context.load_cert_chain(*_client_cert_files(info))
    return context


def _client_cert_files(info: kopf.ConnectionInfo) -> tuple[str, str]:
    """Paths of the client certificate and key; inline data is written to private temp files."""

    def path_of(path: Any, data: Any) -> str:
        if path:
            return str(path)
        raw = data if isinstance(data, bytes) else str(data).encode()
        handle = tempfile.NamedTemporaryFile(prefix="kubetune-", delete=False)  # noqa: SIM115
        handle.write(raw if b"BEGIN" in raw else base64.b64decode(raw))
        handle.close()
        return handle.name

    return path_of(info.certificate_path, info.certificate_data), path_of(
        info.private_key_path, info.private_key_data
    )


def _headers(info: kopf.ConnectionInfo) -> dict[str, str]:
    if info.token:
        return {"Authorization": f"{info.scheme or 'Bearer'} {info.token}"}
    if info.username and info.password:
        basic = base64.b64encode(f"{info.username}:{info.password}".encode()).decode()
        return {"Authorization": f"Basic {basic}"}
    return {}


def object_path(body: dict[str, Any], *, name: str | None = None) -> str:
    prefix, plural = KINDS[(body["apiVersion"], body["kind"])]
    path = f"{prefix}/namespaces/{body['metadata']['namespace']}/{plural}"
    return f"{path}/{name}" if name else path


NODEPOOLS_PATH = "/apis/karpenter.sh/v1/nodepools"


def finetunejob_path(namespace: str, name: str) -> str:
    return f"{FINETUNEJOBS_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}"


class KubeClient:
    """Writes of the operator: create children, patch FineTuneJob status, delete."""

    def __init__(self, info: kopf.ConnectionInfo, metrics: OperatorMetrics) -> None:
        self._server = info.server.rstrip("/")
        self._metrics = metrics
        self._session = aiohttp.ClientSession(
            headers=_headers(info),
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=MAX_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _request(
        self, method: str, path: str, *, json: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        for delay in (*RETRY_DELAYS_SECONDS, None):
            async with self._session.request(
                method, self._server + path, json=json, headers={"Content-Type": content_type}
            ) as response:
                status = response.status
                payload = await response.json(content_type=None) if response.content_length != 0 else None
            if status < 400:
                return status, payload
            self._metrics.api_errors.labels(code=str(status)).inc()
            # A 409 on a write other than create is a conflict with another writer: retry it too.
            retried = status in RETRIED_STATUSES or (status == 409 and method != "POST")
            if not retried or delay is None:
                return status, payload
            await asyncio.sleep(delay)
        raise AssertionError("unreachable: the last delay returns")

    async def create(self, body: dict[str, Any]) -> bool:
        """Create an object; False when it already existed (a retried or restarted reconcile)."""
        status, payload = await self._request("POST", object_path(body), json=body)
        if status == 409:
            return False
        _raise_for(status, payload, f"create {body['kind']} {body['metadata']['name']}")
        return True

    async def delete(self, body: dict[str, Any]) -> None:
        """Delete an object and, in the background, its dependents; gone already is fine."""
        path = object_path(body, name=body["metadata"]["name"])
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        status, payload = await self._request("DELETE", path, json=options)
        if status != 404:
            _raise_for(status, payload, f"delete {body['kind']} {body['metadata']['name']}")

    async def patch_status(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        """Merge-patch the FineTuneJob's status subresource (only the fields in `patch`)."""
        path = finetunejob_path(namespace, name) + "/status"
        status, payload = await self._request(
            "PATCH", path, json={"status": patch}, content_type="application/merge-patch+json"
        )
        if status != 404:
            _raise_for(status, payload, f"patch status of FineTuneJob {name}")

    async def read_claim(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A PersistentVolumeClaim; None when it is missing or the operator may not read it."""
        status, payload = await self._request("GET", f"/api/v1/namespaces/{namespace}/persistentvolumeclaims/{name}")
        if status in (403, 404):
            return None
        _raise_for(status, payload, f"read PersistentVolumeClaim {name}")
        return payload if isinstance(payload, dict) else None

    async def list_nodepools(self) -> list[dict[str, Any]]:
        """Karpenter's NodePools (karpenter.sh/v1); [] where Karpenter is not installed or may not be read."""
        status, payload = await self._request("GET", NODEPOOLS_PATH)
        if status in (403, 404):
            return []
        _raise_for(status, payload, "list Karpenter NodePools")
        items = payload.get("items") if isinstance(payload, dict) else None
        return [item for item in items or () if isinstance(item, dict)]

    async def read_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        """A ConfigMap; None when it does not exist."""
        status, payload = await self._request("GET", f"/api/v1/namespaces/{namespace}/configmaps/{name}")
        if status == 404:
            return None
        _raise_for(status, payload, f"read ConfigMap {name}")
        return payload if isinstance(payload, dict) else None

    async def put(self, body: dict[str, Any]) -> None:
        """Create a ConfigMap, or set its data when it exists (the operator is its one writer)."""
        if await self.create(body):
            return
        path = object_path(body, name=body["metadata"]["name"])
        status, payload = await self._request(
            "PATCH", path, json={"data": body["data"]}, content_type="application/merge-patch+json"
        )
        _raise_for(status, payload, f"update {body['kind']} {body['metadata']['name']}")

    async def delete_finetunejob(self, namespace: str, name: str) -> None:
        options = {"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
        status, payload = await self._request("DELETE", finetunejob_path(namespace, name), json=options)
        if status != 404:
            _raise_for(status, payload, f"delete FineTuneJob {name}")


def _raise_for(status: int, payload: Any, what: str) -> None:
    if status >= 400:
        message = payload.get("message", "") if isinstance(payload, dict) else str(payload)
        raise KubeError(status, f"{what}: {message}")


def credentials(settings: kopf.OperatorSettings) -> kopf.ConnectionInfo | None:
    """The in-cluster service account, else the kubeconfig ($KUBECONFIG read now, not at import)."""
    for login in (kopf.login_with_service_account, kopf.login_with_kubeconfig):
        info = login(settings=settings, logger=logger)
        if info is not None:
            return info
    return None


def connect(metrics: OperatorMetrics, settings: kopf.OperatorSettings) -> KubeClient:
    """A client with the same credentials as kopf's watches."""
    info = credentials(settings)
    if info is None:
        raise kopf.PermanentError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return KubeClient(info, metrics)
