"""The metrics endpoint serves every contracted name; status patches reach a Kubernetes API on
loopback, and an API that fails does not stop training."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kubetune.contract import TRAINER_METRICS, TRAINER_RANK_METRICS
from kubetune_trainer import status, train
from kubetune_trainer.metrics import TrainerMetrics
from kubetune_trainer.progress import Progress

from .conftest import ContextFactory

TRAINER_STATUS_FIELDS = {"training", "lastCheckpoint", "output"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_metrics_endpoint_serves_every_contracted_name(make_context: ContextFactory) -> None:
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    scraped: dict[str, tuple[int, str]] = {}

    def scrape_at_end(progress: Progress, milestone: str | None) -> None:
        if milestone == "end":
            scraped.update({path: _get(base + path) for path in ("/metrics", "/healthz", "/readyz")})

    train.run(make_context({"training": {"maxSteps": 10, "saveSteps": 5}}, metrics_port=port),
              listeners=(scrape_at_end,))

    status, text = scraped["/metrics"]
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    names = {line.split()[0] for line in samples}
    declared = {line.split()[2] for line in text.splitlines() if line.startswith("# HELP ")}
    assert status == 200
    assert set(TRAINER_METRICS) <= declared
    # A CPU run without evaluation data measures neither GPU memory nor an eval loss: no sample for them.
    not_measured = {"kubetune_train_eval_loss", "kubetune_train_gpu_utilization_ratio",
                    "kubetune_train_gpu_memory_allocated_bytes", "kubetune_train_gpu_memory_reserved_bytes",
                    "kubetune_train_gpu_memory_peak_bytes", *TRAINER_RANK_METRICS}
    assert names == set(TRAINER_METRICS) - not_measured
    assert not any("{" in line for line in samples if line.startswith("kubetune_")), "no labels on values"
    values = {line.split()[0]: float(line.split()[1]) for line in samples}
    assert values["kubetune_train_step"] == 10
    assert values["kubetune_train_checkpoints_saved_total"] == 2
    assert values["kubetune_train_tokens_total"] > 0
    assert scraped["/healthz"][0] == 200 and scraped["/readyz"][0] == 200


def test_a_metric_has_no_sample_until_its_value_is_known() -> None:
    metrics = TrainerMetrics()
    before = metrics.exposition().decode()
    assert [line for line in before.splitlines() if not line.startswith("#")] == []
    assert all(f"# HELP {name} " in before for name in TRAINER_METRICS)
    metrics.update(Progress(step=3, loss=2.5, started=True))
    after = [line for line in metrics.exposition().decode().splitlines() if not line.startswith("#")]
    assert "kubetune_train_loss 2.5" in after and "kubetune_train_step 3.0" in after
    assert not any(line.startswith("kubetune_train_eval_loss") for line in after)


@dataclass
class FakeKubeApi:
    """Records PATCH requests to FineTuneJob status; answers 200, or 500 when failing."""

    failing: bool = False
    requests: list[dict[str, Any]] = field(default_factory=list)

    def handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.requests.append({"path": self.path, "content_type": self.headers["Content-Type"],
                                     "authorization": self.headers.get("Authorization"), "body": body})
                code = 500 if api.failing else 200
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"kind": "Status"}' if api.failing else json.dumps(body).encode())

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@pytest.fixture(params=[False, True], ids=["a healthy API", "an API that answers 500"])
def kube_api(request: pytest.FixtureRequest) -> Iterator[tuple[FakeKubeApi, str]]:
    api = FakeKubeApi(failing=request.param)
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield api, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_status_patches_reach_the_api_and_failures_never_stop_training(
    make_context: ContextFactory, kube_api: tuple[FakeKubeApi, str]
) -> None:
    api, url = kube_api
    context = make_context({"training": {"maxSteps": 10, "saveSteps": 5}}, job_name="demo", namespace="team-a",
                           api_url=url, status_interval_seconds=0.2)

    report = train.run(context)

    assert report["steps"] == 10
    assert len(api.requests) >= 3  # start, checkpoints, end
    for request in api.requests:
        assert request["path"] == "/apis/kubetune.io/v1alpha1/namespaces/team-a/finetunejobs/demo/status"
        assert request["content_type"] == "application/merge-patch+json"
        assert set(request["body"]["status"]) <= TRAINER_STATUS_FIELDS
    final = api.requests[-1]["body"]["status"]
    assert final["training"]["step"] == 10 and final["training"]["progress"] == "100%"
    assert final["lastCheckpoint"]["step"] == 10
    assert final["output"]["path"].endswith("/final")


def test_each_patch_reads_the_rotated_service_account_token(tmp_path: Path) -> None:
    api = FakeKubeApi()
    server = ThreadingHTTPServer(("127.0.0.1", 0), api.handler())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    token_file = tmp_path / "token"
    url = status.status_url(f"http://127.0.0.1:{server.server_port}", "ns", "job")
    client = status.KubeClient(url, token_file, None)
    try:
        token_file.write_text("first\n")
        client.patch({"status": {}})
        token_file.write_text("rotated\n")
        client.patch({"status": {}})
    finally:
        server.shutdown()

    assert [request["authorization"] for request in api.requests] == ["Bearer first", "Bearer rotated"]
