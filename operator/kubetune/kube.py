"""The operator's only I/O with the Kubernetes API (besides kopf's own watching).

An aiohttp client with the credentials kopf logs in with. Writes are idempotent: creating an object
that already exists is success when the FineTuneJob it is for owns it, deleting one that is gone is
success. Throttling (429, after its Retry-After), server errors (5xx), answers that are not JSON and lost
connections are retried with a short backoff before the error goes to the caller. A service-account
token is read again when its file changes (projected tokens rotate) and on a 401.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import json as jsonlib
import logging
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
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
# A 429's Retry-After is honoured up to this: longer, and the handler's own (longer) retry takes over.
MAX_RETRY_AFTER_SECONDS = 10.0
# The status of a request that got no HTTP answer (connection refused or reset, timeout).
NO_ANSWER = 0
# Then kopf retries the whole (idempotent) handler: soon for transient errors, later for the rest
# (a missing RBAC rule, a quota) which need someone to act.
TRANSIENT_RETRY_SECONDS = 1.0
RETRY_SECONDS = 15.0
# Requests in flight at once: enough for a burst, few enough not to flood the API server.
MAX_CONNECTIONS = 32
REQUEST_TIMEOUT_SECONDS = 30
# Where a pod's (projected) service-account token is mounted; the kubelet replaces it before it expires.
SERVICE_ACCOUNT_TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount/token"
# The backoff's wait (a module attribute, so that tests can record the waits instead of waiting).
sleep = asyncio.sleep
# Characters of an error answer that is not JSON kept in a message (an HTML page from a proxy, say).
MAX_BODY_CHARS = 300


class KubeError(kopf.TemporaryError):
    """An API request that failed after the quick retries; kopf retries the handler after `delay`."""

    def __init__(self, status: int, message: str) -> None:
        transient = status in RETRIED_STATUSES or status in (409, NO_ANSWER)
        answer = "no answer" if status == NO_ANSWER else f"HTTP {status}"
        super().__init__(f"{answer}: {message}", delay=TRANSIENT_RETRY_SECONDS if transient else RETRY_SECONDS)
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


class Credentials:
    """The Authorization header, renewed when the token file changes and, on a 401, from a new login."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        login: Callable[[], kopf.ConnectionInfo | None],
        token_path: str = SERVICE_ACCOUNT_TOKEN_PATH,
    ) -> None:
        self._login = login
        self._headers = _headers(info)
        self._token_path = token_path
        self._token_mtime = self._mtime()

    def _mtime(self) -> int | None:
        try:
            return os.stat(self._token_path).st_mtime_ns
        except OSError:
            return None

    def headers(self) -> dict[str, str]:
        """The current header; read again first when the token file changed since it was read."""
        mtime = self._mtime()
        if mtime is not None and mtime != self._token_mtime:
            self._token_mtime = mtime
            self.renew()
        return self._headers

    def renew(self) -> bool:
        """Log in again (the token may have rotated); whether the header changed."""
        info = self._login()
        headers = _headers(info) if info is not None else self._headers
        changed = headers != self._headers
        self._headers = headers
        return changed


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """A Retry-After header (seconds, or an HTTP date) as seconds to wait, bounded; None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        seconds = float(text[:6])
    else:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def parse_body(body: bytes) -> tuple[Any, bool]:
    """An answer's body as JSON, and whether it was JSON. The API server answers JSON (a Status on an error);
    anything else came from something in between (a proxy's HTML page) and is kept as a short message."""
    if not body:
        return None, True
    try:
        return jsonlib.loads(body), True
    except ValueError:
        text = " ".join(body[: MAX_BODY_CHARS * 4].decode("utf-8", "replace").split())
        return {"message": f"an answer that is not JSON: {text[:MAX_BODY_CHARS]}"}, False


def _controller_uids(body: Mapping[str, Any]) -> set[str]:
    return {ref["uid"] for ref in (body.get("metadata") or {}).get("ownerReferences") or () if ref.get("uid")}


def taken_by(existing: Mapping[str, Any], wanted: Mapping[str, Any]) -> str | None:
    """None when `existing` may be adopted as `wanted` (it has the same owner, or `wanted` has none), else
    who holds the name."""
    owners = _controller_uids(wanted)
    if not owners:
        return None
    refs = (existing.get("metadata") or {}).get("ownerReferences") or []
    if owners & {ref.get("uid") for ref in refs}:
        return None
    holders = [f"{ref.get('kind')} {ref.get('name')} (uid {ref.get('uid')})" for ref in refs]
    return ", ".join(holders) if holders else "an object no FineTuneJob owns"


def object_path(body: dict[str, Any], *, name: str | None = None) -> str:
    prefix, plural = KINDS[(body["apiVersion"], body["kind"])]
    path = f"{prefix}/namespaces/{body['metadata']['namespace']}/{plural}"
    return f"{path}/{name}" if name else path


NODEPOOLS_PATH = "/apis/karpenter.sh/v1/nodepools"


def finetunejob_path(namespace: str, name: str) -> str:
    return f"{FINETUNEJOBS_PREFIX}/namespaces/{namespace}/{PLURAL}/{name}"


class KubeClient:
    """Writes of the operator: create children, patch FineTuneJob status, delete."""

    def __init__(
        self,
        info: kopf.ConnectionInfo,
        metrics: OperatorMetrics,
        login: Callable[[], kopf.ConnectionInfo | None] | None = None,
        *,
        token_path: str = SERVICE_ACCOUNT_TOKEN_PATH,
    ) -> None:
        self._server = info.server.rstrip("/")
        self._metrics = metrics
        self._credentials = Credentials(info, login or (lambda: info), token_path)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=_ssl_context(info), limit=MAX_CONNECTIONS),
            timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_SECONDS),
        )

    async def close(self) -> None:
        await self._session.close()

    async def _send(self, method: str, path: str, json: Any, content_type: str) -> tuple[int, Any, float | None]:
        """One request: status, payload and the Retry-After; NO_ANSWER when there was no usable answer (the
        connection failed, or the body was not JSON)."""
        headers = {"Content-Type": content_type, **self._credentials.headers()}
        try:
            async with self._session.request(method, self._server + path, json=json, headers=headers) as response:
                payload, is_json = parse_body(await response.read())
                wait = retry_after_seconds(response.headers.get("Retry-After")) if response.status == 429 else None
                return response.status if is_json else NO_ANSWER, payload, wait
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError) as error:
            return NO_ANSWER, {"message": f"no answer from the API server ({type(error).__name__}: {error})"}, None

    async def _request(
        self, method: str, path: str, *, json: Any = None, content_type: str = "application/json"
    ) -> tuple[int, Any]:
        renewed = False
        delays = iter((*RETRY_DELAYS_SECONDS, None))
        while True:
            status, payload, wait = await self._send(method, path, json, content_type)
            if NO_ANSWER < status < 400:
                return status, payload
            self._metrics.api_errors.labels(code=str(status)).inc()
            if status == 401 and not renewed:  # a rotated token: log in again, once
                renewed = True
                if self._credentials.renew():
                    continue
            # A 409 on a write other than create is a conflict with another writer: retry it too.
            retried = status in RETRIED_STATUSES or status == NO_ANSWER or (status == 409 and method != "POST")
            delay = next(delays)
            if not retried or delay is None:
                return status, payload
            await sleep(delay if wait is None else max(wait, delay))

    async def create(self, body: dict[str, Any]) -> bool:
        """Create an object; False when it already existed and may be adopted (a retried or restarted
        reconcile). An object of that name the FineTuneJob does not own is an error that names its owner."""
        name = body["metadata"]["name"]
        status, payload = await self._request("POST", object_path(body), json=body)
        if status == 409 and not _controller_uids(body):
            return False  # a shared object no FineTuneJob owns (the calibration ConfigMap): the same for all
        if status == 409:
            existing_status, existing = await self._request("GET", object_path(body, name=name))
            if existing_status == 404:  # deleted meanwhile (garbage collection of an old owner's child)
                raise KubeError(409, f"create {body['kind']} {name}: it was being deleted; trying again")
            _raise_for(existing_status, existing, f"read {body['kind']} {name}")
            holder = taken_by(existing if isinstance(existing, dict) else {}, body)
            if holder is not None:
                raise KubeError(409, f"{body['kind']} name {name} is taken by {holder}: delete that {body['kind']} "
                                     "or rename this FineTuneJob")
            return False
        _raise_for(status, payload, f"create {body['kind']} {name}")
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
    if status >= 400 or status == NO_ANSWER:
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
    """A client with the same credentials as kopf's watches, renewed the same way."""
    info = credentials(settings)
    if info is None:
        raise kopf.PermanentError("no Kubernetes credentials: neither a service account nor a kubeconfig")
    return KubeClient(info, metrics, lambda: credentials(settings))
