"""The operator's API client against a scripted HTTP server on loopback: rotated tokens, Retry-After,
lost connections and answers that are not JSON are ridden out; a name taken by another owner is an error."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf
import pytest
from aiohttp import web

from kubetune import kube
from kubetune.kube import MAX_RETRY_AFTER_SECONDS, RETRY_DELAYS_SECONDS, KubeClient, KubeError
from kubetune.metrics import OperatorMetrics

DROP = "drop the connection"
Answer = tuple[int, Any, dict[str, str]] | str  # status, body (bytes are sent raw), headers; or DROP
CONFIGMAP = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "f-spec", "namespace": "ns"}}
OWNED = {**CONFIGMAP, "metadata": {**CONFIGMAP["metadata"], "ownerReferences": [
    {"kind": "FineTuneJob", "name": "f", "uid": "uid-f", "controller": True}]}}
OTHER = {**CONFIGMAP, "metadata": {**CONFIGMAP["metadata"], "ownerReferences": [
    {"kind": "FineTuneJob", "name": "f", "uid": "uid-old", "controller": True}]}}
CONFLICT = (409, {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": "exists"}, {})
CREATED = (201, CONFIGMAP, {})


def run(
    answers: list[Answer],
    act: Callable[[KubeClient], Any],
    *,
    login: Callable[[], kopf.ConnectionInfo | None] | None = None,
    token_path: str = "/nonexistent",
    between: Callable[[], None] | None = None,
) -> tuple[Any, list[str], list[float]]:
    """`act` on a client whose server gives `answers` in turn: (result or the KubeError, the Authorization
    header of each request, the backoff waits)."""
    seen: list[str] = []
    waits: list[float] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        seen.append(request.headers.get("Authorization", ""))
        answer = answers.pop(0)
        if answer == DROP:
            assert request.transport is not None
            request.transport.close()
            return web.Response()
        status, body, headers = answer
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return web.Response(status=status, body=raw, headers=headers)

    async def record(delay: float) -> None:
        waits.append(delay)

    async def main() -> Any:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        info = kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}", token="old")
        client = KubeClient(info, OperatorMetrics(list), login, token_path=token_path)
        try:
            if between is not None:
                await act(client)
                between()
            return await act(client)
        except KubeError as error:
            return error
        finally:
            await client.close()
            await runner.cleanup()

    original = kube.sleep
    kube.sleep = record
    try:
        return asyncio.run(main()), seen, waits
    finally:
        kube.sleep = original


def create(client: KubeClient, body: dict[str, Any] = OWNED) -> Any:
    return client.create(body)


@pytest.mark.parametrize(
    ("answers", "expected", "waits"),
    [
        ([(429, {"message": "slow down"}, {"Retry-After": "3"}), CREATED], True, [3.0]),
        ([(429, {}, {"Retry-After": "86400"}), CREATED], True, [MAX_RETRY_AFTER_SECONDS]),
        ([(429, {}, {"Retry-After": "soon"}), CREATED], True, [RETRY_DELAYS_SECONDS[0]]),
        ([DROP, CREATED], True, [RETRY_DELAYS_SECONDS[0]]),
        ([(502, b"<html>Bad Gateway</html>", {}), CREATED], True, [RETRY_DELAYS_SECONDS[0]]),
        ([(200, b"<html>a captive portal</html>", {}), CONFLICT, (200, OWNED, {})], False,
         [RETRY_DELAYS_SECONDS[0]]),
        ([CONFLICT, (200, OWNED, {})], False, []),
        ([(422, {"message": "spec.x: Invalid value"}, {})], "HTTP 422: create ConfigMap f-spec: spec.x: Invalid", []),
        ([DROP] * (len(RETRY_DELAYS_SECONDS) + 1), "no answer: create ConfigMap f-spec: no answer from the API",
         list(RETRY_DELAYS_SECONDS)),
        ([CONFLICT, (200, OTHER, {})], "taken by FineTuneJob f (uid uid-old)", []),
        ([CONFLICT, (200, CONFIGMAP, {})], "taken by an object no FineTuneJob owns", []),
    ],
    ids=[
        "a 429 waits as long as its Retry-After says",
        "a Retry-After of a day waits only the bound",
        "a Retry-After that is not a number waits the usual backoff",
        "a dropped connection is retried",
        "an HTML error page from a proxy is retried",
        "a success whose body is not JSON is retried, and the object it made is adopted",
        "an object this FineTuneJob owns already is adopted",
        "a 422 is not retried and quotes the API server",
        "a server that never answers ends in an error that says so, after the backoff",
        "a name held by an older FineTuneJob of the same name is refused, naming its uid",
        "a name held by an object nobody owns is refused",
    ],
)
def test_create(answers: list[Answer], expected: Any, waits: list[float]) -> None:
    result, _, recorded = run(answers, create)
    if isinstance(expected, str):
        assert isinstance(result, KubeError)
        assert expected in str(result)
    else:
        assert result is expected
    assert recorded == waits


def test_a_shared_object_without_owner_that_exists_is_success() -> None:
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer", "namespace": "ns"}}
    result, _, _ = run([CONFLICT, (200, account, {})], lambda client: client.create(account))
    assert result is False


def test_a_401_logs_in_again_and_retries_with_the_new_token() -> None:
    def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server="unused", token="new")

    result, seen, _ = run([(401, {"message": "Unauthorized"}, {}), CREATED], create, login=login)
    assert result is True
    assert seen == ["Bearer old", "Bearer new"]


def test_a_401_that_a_new_login_does_not_change_is_an_error() -> None:
    result, seen, _ = run([(401, {"message": "Unauthorized"}, {})], create)
    assert isinstance(result, KubeError) and result.status == 401
    assert seen == ["Bearer old"]


def test_a_rotated_token_file_is_read_before_the_next_request(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("old")

    def login() -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server="unused", token=token.read_text())

    def rotate() -> None:
        token.write_text("rotated")
        stat = token.stat()
        os.utime(token, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))

    _, seen, _ = run([CREATED, CREATED], create, login=login, token_path=str(token), between=rotate)
    assert seen == ["Bearer old", "Bearer rotated"]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        (" 7 ", 7.0),
        ("Thu, 01 Jan 2026 00:00:05 GMT", 5.0),
        ("Thu, 01 Jan 2025 00:00:00 GMT", 0.0),
        ("999999999999999999999", MAX_RETRY_AFTER_SECONDS),
        ("-1", None),
        ("", None),
        (None, None),
    ],
    ids=[
        "seconds",
        "seconds with spaces",
        "an HTTP date five seconds ahead",
        "an HTTP date in the past means now",
        "an absurd number of seconds is bounded",
        "a negative number is ignored",
        "an empty header is ignored",
        "no header",
    ],
)
def test_retry_after_seconds(header: str | None, expected: float | None) -> None:
    now = 1767225600.0  # 2026-01-01T00:00:00Z
    assert kube.retry_after_seconds(header, now=now) == expected
