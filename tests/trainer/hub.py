"""A Hugging Face Hub emulation on loopback, serving repos from directories the tests create.

It answers the part of the Hub HTTP API that huggingface_hub 2.4, transformers 5.23 and datasets 5.2 call to
load a model or a dataset by id (read from their sources and from the requests they make):

- `HEAD`/`GET /{repo}/resolve/{revision}/{file}` and `/datasets/{repo}/resolve/...`: the file, with
  `X-Repo-Commit`, `ETag` (the git blob sha1) and `Content-Length`;
- `GET /api/{models|datasets}/{repo}[/revision/{revision}]`: the repo info (commit sha, siblings);
- `GET /api/{models|datasets}/{repo}/tree/{revision}[/{dir}]` (`recursive`): the listing datasets globs for data
  files and transformers reads for chat templates.

Errors are the Hub's: a private repo without `Authorization: Bearer <token>` and an unknown repo are
`RepoNotFound` (401 unauthenticated, 404 authenticated), a token the Hub does not know is 401 "Invalid
credentials in Authorization header", an unknown revision is `RevisionNotFound` (404), a missing file or
directory is `EntryNotFound` (404, with `X-Repo-Commit`). A revision is a branch or tag name, or the commit sha
the emulation derives from it. Anything else gets 501 naming the request, so a library upgrade that calls a new
endpoint fails loudly. Not emulated: uploads, LFS/Xet redirects (every file is served inline), byte ranges,
paths-info, gated repos, pagination (one page) and the dataset viewer (datasets-server) behind datasets'
parquet export.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

RepoKind = Literal["model", "dataset"]
# Every commit of the emulation has this date; nothing the loaders do depends on it.
COMMIT_DATE = "2026-01-01T00:00:00.000Z"
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class Repo:
    """A repo on the emulated Hub: its id, kind, and the directory holding each branch or tag."""

    repo_id: str
    kind: RepoKind
    refs: Mapping[str, Path]
    private: bool = False

    def commit(self, ref: str) -> str:
        """The 40-hex commit sha of a branch or tag, stable across runs."""
        return hashlib.sha1(f"{self.kind}/{self.repo_id}@{ref}".encode()).hexdigest()

    def snapshot(self, revision: str) -> tuple[str, Path] | None:
        """(commit sha, directory) of a branch, tag or commit sha; None for an unknown revision."""
        return next(
            ((self.commit(ref), root) for ref, root in self.refs.items() if revision in (ref, self.commit(ref))),
            None,
        )


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Route:
    """What a request asks for: a file (resolve), the repo info (revision) or a listing (tree)."""

    action: Literal["resolve", "revision", "tree"]
    kind: RepoKind
    repo_id: str
    revision: str
    path: str


REPO_ID = r"[^/]+/[^/]+"
RESOLVE = re.compile(rf"/(?:(?P<datasets>datasets)/)?(?P<repo>{REPO_ID})/resolve/(?P<revision>[^/]+)/(?P<path>.+)")
API = re.compile(
    rf"/api/(?P<kind>models|datasets)/(?P<repo>{REPO_ID})"
    r"(?:/(?P<action>revision|tree)/(?P<revision>[^/]+)(?:/(?P<path>.+))?)?"
)


def route(method: str, url_path: str) -> Route | None:
    """The route of a GET or HEAD request; None for anything the emulation does not serve."""
    if method in ("GET", "HEAD") and (match := RESOLVE.fullmatch(url_path)):
        kind: RepoKind = "dataset" if match["datasets"] else "model"
        return Route("resolve", kind, match["repo"], unquote(match["revision"]), unquote(match["path"]))
    if method == "GET" and (match := API.fullmatch(url_path)):
        kind = "dataset" if match["kind"] == "datasets" else "model"
        action: Literal["revision", "tree"] = "tree" if match["action"] == "tree" else "revision"
        return Route(action, kind, match["repo"], unquote(match["revision"] or "main"), unquote(match["path"] or ""))
    return None


# ---------------------------------------------------------------------------------- files and listings


def blob_sha(content: bytes) -> str:
    """The git blob sha1 of a file's content: what the Hub sends as the ETag of a non-LFS file."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def tree_entry(root: Path, path: str, commit: str) -> dict[str, Any]:
    """A file or directory as the tree endpoint lists it."""
    target = root / path
    if target.is_dir():
        return {"type": "directory", "oid": hashlib.sha1(f"tree {commit} {path}".encode()).hexdigest(), "path": path}
    content = target.read_bytes()
    return {"type": "file", "oid": blob_sha(content), "size": len(content), "path": path}


def listing(root: Path, directory: str, recursive: bool) -> list[str]:
    """Paths (relative to root) under directory: its children, or everything below it when recursive."""
    base = root / directory
    children = base.rglob("*") if recursive else base.iterdir()
    return sorted(child.relative_to(root).as_posix() for child in children)


def found(root: Path, path: str, is_dir: bool) -> bool:
    """Whether path is a file (or directory) inside root; `..` never escapes it."""
    target = root / path
    return target.resolve().is_relative_to(root.resolve()) and (target.is_dir() if is_dir else target.is_file())


# ---------------------------------------------------------------------------------------- replies


def json_reply(payload: Any) -> Reply:
    return Reply(200, {"Content-Type": "application/json"}, json.dumps(payload).encode())


def error_reply(status: int, code: str | None, message: str, **headers: str) -> Reply:
    code_header = {"X-Error-Code": code} if code is not None else {}
    body = json.dumps({"error": message}).encode()
    return Reply(status, {**code_header, "X-Error-Message": message, **headers}, body)


def file_reply(content: bytes, commit: str) -> Reply:
    """The file with the metadata headers hf_hub_download requires of a Hub."""
    headers = {"X-Repo-Commit": commit, "ETag": f'"{blob_sha(content)}"', "Content-Type": "application/octet-stream"}
    return Reply(200, headers, content)


def info_reply(repo: Repo, commit: str, root: Path) -> Reply:
    files = [path for path in listing(root, "", recursive=True) if (root / path).is_file()]
    return json_reply({
        "_id": commit, "id": repo.repo_id, "sha": commit, "private": repo.private, "gated": False,
        "disabled": False, "downloads": 0, "likes": 0, "tags": [], "createdAt": COMMIT_DATE,
        "lastModified": COMMIT_DATE, "siblings": [{"rfilename": path} for path in files],
    })


def snapshot_reply(repo: Repo, commit: str, root: Path, wanted: Route, query: Mapping[str, list[str]]) -> Reply:
    """The reply for a route of a repo at a known revision."""
    if wanted.action == "revision":
        return info_reply(repo, commit, root)
    is_tree = wanted.action == "tree"
    if not found(root, wanted.path, is_dir=is_tree):
        kind = "directory" if is_tree else "file"
        return error_reply(404, "EntryNotFound", f"{kind} {wanted.path} is not on this revision", **{
            "X-Repo-Commit": commit})
    if not is_tree:
        return file_reply((root / wanted.path).read_bytes(), commit)
    recursive = query.get("recursive", ["false"])[0].lower() == "true"
    return json_reply([tree_entry(root, path, commit) for path in listing(root, wanted.path, recursive)])


@dataclass(frozen=True)
class HubEmulation:
    """The repos the emulated Hub serves and the one token it knows, which reads its private repos."""

    repos: tuple[Repo, ...]
    token: str

    def answer(self, method: str, target: str, headers: Mapping[str, str]) -> Reply:
        """The Hub's reply to one request (headers keyed in lower case): pure, but for reading repo directories."""
        url = urlsplit(target)
        wanted = route(method, url.path)
        if wanted is None:
            return error_reply(501, None, f"the emulated Hub does not serve {method} {url.path}")
        credentials = headers.get("authorization")
        if credentials is not None and credentials != f"Bearer {self.token}":
            return error_reply(401, None, INVALID_CREDENTIALS)
        repo = next((r for r in self.repos if (r.kind, r.repo_id) == (wanted.kind, wanted.repo_id)), None)
        if repo is None or (repo.private and credentials is None):
            return error_reply(404 if credentials else 401, "RepoNotFound", "Repository not found")
        snapshot = repo.snapshot(wanted.revision)
        if snapshot is None:
            return error_reply(404, "RevisionNotFound", f"Invalid rev id: {wanted.revision}")
        return snapshot_reply(repo, *snapshot, wanted, parse_qs(url.query))


# ---------------------------------------------------------------------------------------- serving


def handler_for(hub: HubEmulation) -> type[BaseHTTPRequestHandler]:
    """The HTTP handler: the one I/O edge, reading a request and writing hub.answer's reply."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            headers = {name.lower(): value for name, value in self.headers.items()}
            reply = hub.answer(self.command, self.path, headers)
            self.send_response(reply.status)
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(reply.body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply.body)

        def do_HEAD(self) -> None:
            self.do_GET()  # the same headers, and do_GET leaves out the body

    return Handler


@contextmanager
def serving(hub: HubEmulation) -> Iterator[str]:
    """Serve the hub on 127.0.0.1 at a free port in a thread; yields its endpoint URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(hub))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def point_libraries_at(endpoint: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make huggingface_hub, transformers and datasets talk to endpoint, with caches and no token under home.

    The environment alone is not enough: both libraries read HF_ENDPOINT, HF_HOME and the cache paths into
    module constants at import, so those constants are patched too (huggingface_hub's module-level HfApi,
    which transformers uses for model_info and tree listings, keeps the endpoint it was built with).
    """
    import datasets.config
    import huggingface_hub.constants
    import huggingface_hub.hf_api
    import transformers.utils.hub

    hub_cache, datasets_cache = home / "hub", home / "datasets"
    for name, value in {"HF_ENDPOINT": endpoint, "HF_HOME": str(home), "HF_HUB_CACHE": str(hub_cache),
                        "HF_DATASETS_CACHE": str(datasets_cache)}.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    hub_constants: dict[str, object] = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(hub_cache),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
    }
    for name, constant in hub_constants.items():
        monkeypatch.setattr(huggingface_hub.constants, name, constant)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)
    # transformers keeps its own HfApi, built with the endpoint of its first use (e.g. an earlier test's
    # failed load): without a fresh one, each load first asks huggingface.co and waits for its retries.
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)
    datasets_constants: dict[str, object] = {
        "HF_ENDPOINT": endpoint,
        "HUB_DATASETS_URL": endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
        "HF_DATASETS_CACHE": datasets_cache,
        "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
        "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
        "HF_HUB_OFFLINE": False,
        # The parquet export is served by the dataset viewer at datasets-server.<endpoint host>, not emulated.
        "USE_PARQUET_EXPORT": False,
    }
    for name, constant in datasets_constants.items():
        monkeypatch.setattr(datasets.config, name, constant)
