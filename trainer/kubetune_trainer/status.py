"""Progress onto the FineTuneJob: JSON merge patches of status.training, status.lastCheckpoint and
status.output, from a background thread, every interval and at milestones (start, checkpoint, end).

A failed write is logged and retried with the next patch; it never fails or slows training.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from kubetune.api import API_VERSION, PLURAL, CheckpointStatus, OutputStatus, TrainingStatus, now_rfc3339
from kubetune_trainer.progress import GIB, Progress

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT_SECONDS = 10  # a slow API server must not hold the reporter thread for long


def training_status(progress: Progress) -> dict[str, Any]:
    """status.training (wire form) for a progress snapshot."""
    peak = progress.gpu_peak_bytes
    training = TrainingStatus(
        step=progress.step,
        total_steps=progress.total_steps,
        epoch=round(progress.epoch, 4) if progress.epoch is not None else None,
        progress=progress.percent,
        loss=progress.loss,
        eval_loss=progress.eval_loss,
        learning_rate=progress.learning_rate,
        tokens_per_second=round(progress.tokens_per_second, 1) if progress.tokens_per_second is not None else None,
        peak_gpu_memory_gib=round(peak / GIB, 2) if peak is not None else None,
        eta_seconds=round(progress.eta_seconds) if progress.eta_seconds is not None else None,
        updated_at=now_rfc3339(),
    )
    return training.to_wire()


def status_patch(progress: Progress, output: OutputStatus | None = None) -> dict[str, Any]:
    """The merge patch of the trainer's own status fields; nothing the operator owns."""
    status: dict[str, Any] = {"training": training_status(progress)}
    checkpoint = progress.last_checkpoint
    if checkpoint is not None:
        status["lastCheckpoint"] = CheckpointStatus(
            step=checkpoint.step, path=checkpoint.path, time=checkpoint.time
        ).to_wire()
    if output is not None:
        status["output"] = output.to_wire()
    return {"status": status}


def status_url(api_url: str, namespace: str, name: str) -> str:
    return f"{api_url.rstrip('/')}/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"


class KubeClient:
    """Merge-patches one object's status with the pod's service-account credentials."""

    def __init__(self, url: str, token_file: Path | None, ssl_context: ssl.SSLContext | None) -> None:
        self.url, self.token_file, self.ssl_context = url, token_file, ssl_context

    def token(self) -> str | None:
        """The service-account token, read for each request: the kubelet rotates projected tokens."""
        if self.token_file is None or not self.token_file.is_file():
            return None
        return self.token_file.read_text().strip()

    @classmethod
    def in_cluster(cls, namespace: str, name: str, api_url: str | None) -> KubeClient:
        """In-cluster credentials; api_url (tests) overrides KUBERNETES_SERVICE_HOST/PORT."""
        token_file, ca_file = SERVICE_ACCOUNT_DIR / "token", SERVICE_ACCOUNT_DIR / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca_file)) if ca_file.is_file() else None
        if api_url is None:
            host = os.environ.get("KUBERNETES_SERVICE_HOST", "kubernetes.default.svc")
            port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
            api_url = f"https://{host}:{port}"
        return cls(status_url(api_url, namespace, name), token_file, context)

    def patch(self, body: dict[str, Any]) -> None:
        request = urllib.request.Request(self.url, data=json.dumps(body).encode(), method="PATCH")
        request.add_header("Content-Type", MERGE_PATCH)
        token = self.token()
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_SECONDS, context=self.ssl_context) as response:
            response.read()


class StatusReporter:
    """Sends the newest patch every interval, at once on a milestone; holds only the latest one."""

    def __init__(self, client: KubeClient, interval_seconds: float) -> None:
        self.client, self.interval = client, interval_seconds
        self._pending: dict[str, Any] | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kubetune-status", daemon=True)
        self.sent = 0
        self.failures = 0

    def start(self) -> StatusReporter:
        self._thread.start()
        return self

    def offer(self, patch: dict[str, Any], urgent: bool = False) -> None:
        with self._lock:
            self._pending = patch
        if urgent:
            self._wake.set()

    def on_progress(self, progress: Progress, milestone: str | None) -> None:
        self.offer(status_patch(progress), urgent=milestone is not None)

    def _send_pending(self) -> None:
        with self._lock:
            patch, self._pending = self._pending, None
        if patch is None:
            return
        try:
            self.client.patch(patch)
            self.sent += 1
        except (urllib.error.URLError, OSError, ValueError) as exc:
            self.failures += 1
            log.warning("status update failed (retried with the next one): %s", exc)
            with self._lock:
                if self._pending is None:
                    self._pending = patch

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self._send_pending()

    def stop(self, final_patch: dict[str, Any] | None = None) -> None:
        """Send the final patch (one try) and stop the thread."""
        if final_patch is not None:
            self.offer(final_patch)
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_SECONDS * 2)
        self._send_pending()
