"""A Kubernetes API emulation on loopback for the operator's e2e tests (aiohttp).

kmock 0.8 needs a long list of fixes to carry kopf (see DESIGN.md: no uid/resourceVersion stamping,
watches that replay everything, no status subresource isolation, no selectors, PUT, generateName,
garbage collection ...); this small server implements exactly the semantics the operator relies on:
stamped metadata, resourceVersion-ordered watches, the status subresource, label selectors,
generateName, merge and JSON patches, finalizers with deletionTimestamp, owner-reference cascade
deletion, discovery, and injected faults (5xx, 409, 429, 410 Gone on a watch).
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import threading
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

# (URL prefix, plural) -> (kind, namespaced, has a status subresource)
RESOURCES: dict[tuple[str, str], tuple[str, bool, bool]] = {
    ("/api/v1", "namespaces"): ("Namespace", False, True),
    ("/api/v1", "nodes"): ("Node", False, True),
    ("/api/v1", "pods"): ("Pod", True, True),
    ("/api/v1", "configmaps"): ("ConfigMap", True, False),
    ("/api/v1", "secrets"): ("Secret", True, False),
    ("/api/v1", "serviceaccounts"): ("ServiceAccount", True, False),
    ("/api/v1", "services"): ("Service", True, True),
    ("/api/v1", "persistentvolumeclaims"): ("PersistentVolumeClaim", True, True),
    ("/api/v1", "events"): ("Event", True, False),
    ("/apis/batch/v1", "jobs"): ("Job", True, True),
    ("/apis/rbac.authorization.k8s.io/v1", "roles"): ("Role", True, False),
    ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"): ("RoleBinding", True, False),
    ("/apis/kubetune.io/v1alpha1", "finetunejobs"): ("FineTuneJob", True, True),
    ("/apis/kopf.dev/v1", "clusterkopfpeerings"): ("ClusterKopfPeering", False, False),
    ("/apis/kopf.dev/v1", "kopfpeerings"): ("KopfPeering", True, False),
    ("/apis/karpenter.sh/v1", "nodepools"): ("NodePool", False, False),
}
WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})
Key = tuple[str, str, str, str]  # prefix, plural, namespace ("" for cluster objects), name


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: dicts merge, None deletes, anything else (lists, scalars) replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    return (
        [part.replace("~1", "/").replace("~0", "~") for part in path.lstrip("/").split("/")] if path else []
    )


def json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any] | None:
    """RFC 6902 add/replace/remove/test; None when a `test` fails."""
    doc = copy.deepcopy(target)
    for op in ops:
        *parents, last = _pointer(op["path"])
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
        if op["op"] == "test":
            current = node[int(last)] if isinstance(node, list) else node.get(last)
            if current != op["value"]:
                return None
        elif op["op"] in ("add", "replace"):
            if isinstance(node, list):
                node.insert(len(node) if last == "-" else int(last), op["value"]) if op[
                    "op"
                ] == "add" else None
                if op["op"] == "replace":
                    node[int(last)] = op["value"]
            else:
                node[last] = op["value"]
        elif op["op"] == "remove":
            del node[int(last) if isinstance(node, list) else last]
    return doc


def selector_matches(selector: str, labels: dict[str, str]) -> bool:
    """Equality and existence label selectors: a=b, a==b, a!=b, a, !a (comma-separated, ANDed)."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


@dataclass
class Fault:
    """Answer `status` to the next `times` requests whose method and path match.

    after_write: the request takes effect first and then fails (the client cannot tell it happened).
    """

    method: str
    path_contains: str
    status: int
    times: int = 1
    watch: bool = False
    after_write: bool = False


@dataclass
class ApiServer:
    objects: dict[Key, dict[str, Any]] = field(default_factory=dict)
    log: list[tuple[int, str, Key, dict[str, Any]]] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    rv: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    last_rv: int = 0
    changed: asyncio.Event | None = None  # set (and replaced) on every change
    loop: asyncio.AbstractEventLoop | None = None

    # ------------------------------------------------------------------------- storage

    def _record(self, kind: str, key: Key, obj: dict[str, Any]) -> None:
        self.last_rv = next(self.rv)
        obj["metadata"]["resourceVersion"] = str(self.last_rv)
        self.log.append((self.last_rv, kind, key, copy.deepcopy(obj)))
        if self.changed is not None:
            self.changed.set()
            self.changed = asyncio.Event()

    def create(
        self, prefix: str, plural: str, namespace: str, obj: dict[str, Any]
    ) -> tuple[int, dict[str, Any]]:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        key = (prefix, plural, namespace, meta.get("name", ""))
        if key in self.objects:
            return 409, _status(409, "AlreadyExists", f'{plural} "{key[3]}" already exists')
        kind, namespaced, _ = RESOURCES[(prefix, plural)]
        obj.setdefault("apiVersion", prefix.split("/", 2)[-1] if prefix.startswith("/apis") else "v1")
        obj.setdefault("kind", kind)
        if namespaced:
            meta["namespace"] = namespace
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_now(), generation=1)
        self.objects[key] = obj
        self._record("ADDED", key, obj)
        return 201, obj

    def update(self, key: Key, new: dict[str, Any], *, subresource: str | None) -> tuple[int, dict[str, Any]]:
        old = self.objects.get(key)
        if old is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        has_status = RESOURCES[key[:2]][2]
        if subresource == "status":
            new = {**old, "status": new.get("status")}
        elif has_status:
            new = {**new, "status": old.get("status")}
            if new.get("status") is None:
                new.pop("status")
        new["metadata"] = {
            **new.get("metadata", {}),
            **{
                k: old["metadata"][k]
                for k in ("uid", "creationTimestamp", "name", "namespace", "generation")
                if k in old["metadata"]
            },
        }
        if "deletionTimestamp" in old["metadata"]:
            new["metadata"]["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        if {k: v for k, v in new.items() if k not in ("metadata", "status")} != {
            k: v for k, v in old.items() if k not in ("metadata", "status")
        }:
            new["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
        self.objects[key] = new
        if new["metadata"].get("deletionTimestamp") and not new["metadata"].get("finalizers"):
            return 200, self._remove(key)
        self._record("MODIFIED", key, new)
        return 200, new

    def delete(self, key: Key) -> tuple[int, dict[str, Any]]:
        obj = self.objects.get(key)
        if obj is None:
            return 404, _status(404, "NotFound", f'{key[1]} "{key[3]}" not found')
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                self.objects[key] = obj
                self._record("MODIFIED", key, obj)
            return 200, obj
        return 200, self._remove(key)

    def _remove(self, key: Key) -> dict[str, Any]:
        """Delete an object and, like the garbage collector, everything it owns."""
        obj = self.objects.pop(key)
        self._record("DELETED", key, obj)
        uid = obj["metadata"]["uid"]
        for other_key, other in list(self.objects.items()):
            owners = other["metadata"].get("ownerReferences") or []
            if other_key in self.objects and any(ref.get("uid") == uid for ref in owners):
                self.delete(other_key)
        return obj

    def matching(
        self, prefix: str, plural: str, namespace: str | None, query: dict[str, str]
    ) -> list[dict[str, Any]]:
        return [
            obj
            for key, obj in self.objects.items()
            if key[:2] == (prefix, plural) and _selected(key, obj, namespace, query)
        ]

    # ---------------------------------------------------------------------- fault injection

    def fault_for(self, method: str, path: str, *, watch: bool) -> Fault | None:
        for fault in self.faults:
            if (
                fault.times > 0
                and fault.method == method
                and fault.path_contains in path
                and fault.watch == watch
            ):
                fault.times -= 1
                return fault
        return None


def _selected(key: Key, obj: dict[str, Any], namespace: str | None, query: dict[str, str]) -> bool:
    if namespace is not None and key[2] != namespace:
        return False
    if not selector_matches(query.get("labelSelector", ""), obj["metadata"].get("labels") or {}):
        return False
    for term in filter(None, query.get("fieldSelector", "").split(",")):
        name, _, value = term.partition("=")
        actual = {"metadata.name": key[3], "metadata.namespace": key[2]}.get(name)
        if actual is not None and actual != value.lstrip("="):
            return False
    return True


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


# ---------------------------------------------------------------------------------- HTTP layer


def _discovery(path: str) -> dict[str, Any] | None:
    if path == "/api":
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
    groups = sorted({prefix for prefix, _ in RESOURCES if prefix.startswith("/apis/")})
    if path == "/apis":
        items = []
        for prefix in groups:
            group, version = prefix.split("/")[2:4]
            gv = {"groupVersion": f"{group}/{version}", "version": version}
            items.append({"name": group, "versions": [gv], "preferredVersion": gv})
        return {"kind": "APIGroupList", "apiVersion": "v1", "groups": items}
    if path in {prefix for prefix, _ in RESOURCES}:
        resources = []
        for (prefix, plural), (kind, namespaced, has_status) in RESOURCES.items():
            if prefix != path:
                continue
            verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
            resources.append(
                {
                    "name": plural,
                    "singularName": kind.lower(),
                    "namespaced": namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
            if has_status:
                resources.append(
                    {
                        "name": f"{plural}/status",
                        "singularName": "",
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        return {
            "kind": "APIResourceList",
            "apiVersion": "v1",
            "groupVersion": path.removeprefix("/apis/").removeprefix("/api/"),
            "resources": resources,
        }
    return None


def _route(path: str) -> tuple[str, str, str | None, str | None, str | None] | None:
    """URL -> (prefix, plural, namespace, name, subresource)."""
    parts = path.strip("/").split("/")
    if parts[0] == "api" and len(parts) >= 3:
        prefix, rest = "/api/v1", parts[2:]
    elif parts[0] == "apis" and len(parts) >= 4:
        prefix, rest = "/" + "/".join(parts[:3]), parts[3:]
    else:
        return None
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    if (prefix, rest[0]) not in RESOURCES:
        return None
    return prefix, rest[0], namespace, rest[1] if len(rest) > 1 else None, rest[2] if len(rest) > 2 else None


class Server:
    """The emulation running on its own event loop in a thread."""

    def __init__(self) -> None:
        self.api = ApiServer()
        self.loop = asyncio.new_event_loop()
        self.port = 0
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._runner: web.AppRunner | None = None

    # -------------------------------------------------------------------------- lifecycle

    def start(self) -> Server:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())
        self._ready.set()
        self.loop.run_forever()

    async def _serve(self) -> None:
        self.api.changed = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def stop(self) -> None:
        async def shutdown() -> None:
            assert self._runner is not None
            await self._runner.cleanup()
            current = asyncio.current_task()
            for task in asyncio.all_tasks():
                if task is not current:
                    task.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a store operation on the server's loop (tests play kubelet and user through this)."""

        async def run() -> Any:
            return function(*args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    # ------------------------------------------------------------------------------ HTTP

    async def handle(self, request: web.Request) -> web.StreamResponse:
        api, method, path, query = self.api, request.method, request.path, dict(request.query)
        watch = query.get("watch") in ("true", "1")
        api.requests[(method, path)] += 1
        fault = api.fault_for(method, path, watch=watch)
        if fault is not None and not fault.watch:
            if fault.after_write:
                await self.respond(request, path, query, watch, None)
            return web.json_response(_status(fault.status, "Injected", "injected fault"), status=fault.status)
        return await self.respond(request, path, query, watch, fault)

    async def respond(
        self, request: web.Request, path: str, query: dict[str, str], watch: bool, fault: Fault | None
    ) -> web.StreamResponse:
        api, method = self.api, request.method
        discovery = _discovery(path)
        if discovery is not None:
            return web.json_response(discovery)
        route = _route(path)
        if route is None:
            return web.json_response(_status(404, "NotFound", f"no route {path}"), status=404)
        prefix, plural, namespace, name, subresource = route
        ns = namespace or ""
        if name is None and method == "GET":
            if watch:
                return await self.watch(request, prefix, plural, namespace, query, fault)
            items = api.matching(prefix, plural, namespace, query)
            kind = RESOURCES[(prefix, plural)][0]
            return web.json_response(
                {
                    "apiVersion": prefix.split("/", 2)[-1] if "/apis" in prefix else "v1",
                    "kind": f"{kind}List",
                    "metadata": {"resourceVersion": str(api.last_rv)},
                    "items": items,
                }
            )
        if method == "POST" and name is None:
            code, body = api.create(prefix, plural, ns, await request.json())
            return web.json_response(body, status=code)
        assert name is not None
        key = (prefix, plural, ns, name)
        if method == "GET":
            obj = api.objects.get(key)
            return web.json_response(obj or _status(404, "NotFound", "not found"), status=200 if obj else 404)
        if method == "DELETE":
            code, body = api.delete(key)
            return web.json_response(body, status=code)
        if method == "PUT":
            code, body = api.update(key, await request.json(), subresource=subresource)
            return web.json_response(body, status=code)
        if method == "PATCH":
            return await self.patch(request, key, subresource)
        return web.json_response(_status(405, "MethodNotAllowed", method), status=405)

    async def patch(self, request: web.Request, key: Key, subresource: str | None) -> web.Response:
        old = self.api.objects.get(key)
        if old is None:
            return web.json_response(_status(404, "NotFound", "not found"), status=404)
        payload = await request.json()
        if "json-patch" in request.content_type:
            new = json_patch(old, payload)
            if new is None:
                return web.json_response(_status(422, "Invalid", "test operation failed"), status=422)
        else:
            new = merge_patch(old, payload)
        code, body = self.api.update(key, new, subresource=subresource)
        return web.json_response(body, status=code)

    async def watch(  # noqa: PLR0917
        self,
        request: web.Request,
        prefix: str,
        plural: str,
        namespace: str | None,
        query: dict[str, str],
        fault: Fault | None,
    ) -> web.StreamResponse:
        api = self.api
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if fault is not None:
            gone = {"type": "ERROR", "object": _status(410, "Expired", "too old resource version")}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        since = int(query.get("resourceVersion") or 0)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + float(query.get("timeoutSeconds") or 3600)
        try:
            while loop.time() < deadline:
                changed = api.changed
                assert changed is not None
                # resourceVersions are 1, 2, 3 ... in log order: the log index of rv N is N - 1.
                for rv, kind, key, obj in api.log[since:]:
                    since = rv
                    if key[:2] == (prefix, plural) and _selected(key, obj, namespace, query):
                        await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                if api.last_rv <= since:
                    try:
                        await asyncio.wait_for(changed.wait(), deadline - loop.time())
                    except TimeoutError:
                        break
        except (ConnectionResetError, asyncio.CancelledError):
            return response
        return response
        return response
