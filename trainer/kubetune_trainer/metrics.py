"""The trainer's Prometheus endpoint: /metrics with every name in contract.TRAINER_METRICS, plus
/healthz and /readyz. Served by rank 0 only, from a daemon thread. No label carries a value; the one
label is `rank` on the per-rank GPU memory families (contract.TRAINER_RANK_METRICS)."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from kubetune.contract import RANK_LABEL, TRAINER_METRICS, TRAINER_RANK_METRICS
from kubetune_trainer.progress import GIB, Progress
from kubetune_trainer.ranks import RankMemory

log = logging.getLogger(__name__)

# Contract name -> (help text, the Progress field it shows). Counters end in _total.
DESCRIPTIONS: dict[str, tuple[str, str | None]] = {
    "kubetune_train_loss": ("Latest training loss.", "loss"),
    "kubetune_train_eval_loss": ("Latest evaluation loss.", "eval_loss"),
    "kubetune_train_learning_rate": ("Current learning rate.", "learning_rate"),
    "kubetune_train_grad_norm": ("Gradient norm before clipping at the latest log.", "grad_norm"),
    "kubetune_train_step": ("Optimizer steps done.", "step"),
    "kubetune_train_total_steps": ("Optimizer steps planned.", "total_steps"),
    "kubetune_train_epoch": ("Epochs done (fractional).", "epoch"),
    "kubetune_train_tokens_total": ("Input tokens trained on (padding excluded).", "tokens_total"),
    "kubetune_train_tokens_per_second": ("Training throughput since the previous log, in tokens/s.",
                                         "tokens_per_second"),
    "kubetune_train_samples_per_second": ("Training throughput since the previous log, in samples/s.",
                                          "samples_per_second"),
    "kubetune_train_eta_seconds": ("Estimated seconds to the end of training.", "eta_seconds"),
    "kubetune_train_gpu_memory_allocated_bytes": ("GPU memory held by tensors on this rank.", "gpu_allocated_bytes"),
    "kubetune_train_gpu_memory_reserved_bytes": ("GPU memory reserved by the caching allocator.", "gpu_reserved_bytes"),
    "kubetune_train_gpu_memory_peak_bytes": ("Peak GPU memory reserved since start.", "gpu_peak_bytes"),
    "kubetune_train_gpu_utilization_ratio": ("GPU utilisation from NVML (0 to 1).", None),
    "kubetune_train_estimated_gpu_memory_bytes": ("kubetune's estimate of the peak GPU memory per GPU.", None),
    "kubetune_train_trainable_parameters": ("Parameters that receive gradients.", None),
    "kubetune_train_checkpoints_saved_total": ("Checkpoints saved by this process.", "checkpoints_saved"),
    "kubetune_train_rank_gpu_memory_allocated_bytes": ("GPU memory held by tensors, per rank.", None),
    "kubetune_train_rank_gpu_memory_reserved_bytes": ("GPU memory reserved by the caching allocator, per rank.", None),
    "kubetune_train_rank_gpu_memory_peak_bytes": ("Peak GPU memory reserved since start, per rank.", None),
}
# A rank family's name -> the RankMemory field it shows.
RANK_FIELDS = dict(zip(TRAINER_RANK_METRICS, ("allocated_bytes", "reserved_bytes", "peak_bytes"), strict=True))


@functools.cache
def _nvml_handle() -> Any:
    """NVML's handle of this process's GPU, or None without NVML or a GPU."""
    try:
        import pynvml
    except ImportError:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    try:
        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    except pynvml.NVMLError as exc:
        log.info("no GPU utilisation metric: NVML: %s", exc)
        return None


def _nvml_utilization() -> float | None:
    """Utilisation of this process's GPU (0..1), or None."""
    handle = _nvml_handle()
    if handle is None:
        return None
    import pynvml

    try:
        return float(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100.0
    except pynvml.NVMLError:
        return None


# The one contracted counter. tokens_total stays a gauge: a resumed attempt restarts it from its
# checkpoint's count, which can be below the last value served (tokens after that checkpoint).
COUNTERS = frozenset({"kubetune_train_checkpoints_saved_total"})


class TrainerMetrics:
    """Every contracted metric, as a collector of its own registry.

    Each family is always declared (HELP and TYPE), but carries a sample only once its value is
    known: a dashboard never draws a loss of 0 before the first log, nor GPU memory on a CPU.
    `update` copies a Progress snapshot in.
    """

    def __init__(self) -> None:
        self.values: dict[str, float] = {}
        self.ranks: list[RankMemory] = []
        self.ready = threading.Event()
        self.registry = CollectorRegistry()
        self.registry.register(self)

    def collect(self) -> Iterator[Metric]:
        for name in TRAINER_METRICS:
            description, _ = DESCRIPTIONS[name]
            family: Metric
            if name in COUNTERS:
                family = CounterMetricFamily(name.removesuffix("_total"), description)
            elif name in RANK_FIELDS:
                family = GaugeMetricFamily(name, description, labels=[RANK_LABEL])
                for memory in self.ranks:
                    family.add_metric([str(memory.rank)], float(getattr(memory, RANK_FIELDS[name])))
            else:
                family = GaugeMetricFamily(name, description)
            value = self.values.get(name)
            if value is not None:
                family.add_metric([], value)
            yield family

    def set_static(self, trainable_parameters: int, estimated_gib: float | None) -> None:
        self.values["kubetune_train_trainable_parameters"] = float(trainable_parameters)
        if estimated_gib is not None:
            self.values["kubetune_train_estimated_gpu_memory_bytes"] = estimated_gib * GIB

    def update(self, progress: Progress, milestone: str | None = None) -> None:
        for name, (_, attribute) in DESCRIPTIONS.items():
            value = getattr(progress, attribute) if attribute else None
            if value is not None:
                self.values[name] = float(value)
        if milestone is None:
            utilization = _nvml_utilization()
            if utilization is not None:
                self.values["kubetune_train_gpu_utilization_ratio"] = utilization
        if progress.started:
            self.ready.set()

    def set_ranks(self, memories: list[RankMemory]) -> None:
        """Every rank's GPU memory at the latest log (RankMemoryCallback on rank 0)."""
        self.ranks = memories

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))


def _handler(metrics: TrainerMetrics) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/metrics":
                self._answer(200, metrics.exposition(), CONTENT_TYPE_LATEST)
            elif self.path == "/healthz":
                self._answer(200, b"ok\n")
            elif self.path == "/readyz":
                ready = metrics.ready.is_set()
                self._answer(200 if ready else 503, b"ready\n" if ready else b"loading\n")
            else:
                self._answer(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _answer(self, code: int, body: bytes, content_type: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
            return

    return Handler


def serve(metrics: TrainerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Start the endpoint on a daemon thread; port 0 picks a free one (server.server_port)."""
    server = ThreadingHTTPServer((host, port), _handler(metrics))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="kubetune-metrics", daemon=True).start()
    return server
