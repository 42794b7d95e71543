"""The operator's Prometheus metrics (names from contract.OPERATOR_METRICS), on their own registry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from kubetune import contract
from kubetune.api import Phase

RECONCILE_TOTAL, RECONCILE_DURATION, FINETUNEJOBS, API_ERRORS = contract.OPERATOR_METRICS
# Reconciles take milliseconds (pure planning + a few writes); the tail shows API trouble.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NO_PHASE = "None"


class OperatorMetrics:
    """Counters and gauges of one operator process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.reconciles = Counter(
            RECONCILE_TOTAL, "FineTuneJob reconciles, by outcome.", ["outcome"], registry=self.registry
        )
        self.duration = Histogram(
            RECONCILE_DURATION,
            "Seconds one FineTuneJob reconcile took.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.finetunejobs = Gauge(
            FINETUNEJOBS, "FineTuneJobs the operator sees, by phase.", ["phase"], registry=self.registry
        )
        self.api_errors = Counter(
            API_ERRORS,
            "Kubernetes API requests that failed, by HTTP status.",
            ["code"],
            registry=self.registry,
        )
        self._phases: dict[tuple[str, str], str] = {}
        for phase in [*Phase, NO_PHASE]:
            self.finetunejobs.labels(phase=str(phase)).set(0)

    @contextmanager
    def reconcile(self) -> Iterator[None]:
        """Time a reconcile and count it as ok or error."""
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.reconciles.labels(outcome="error").inc()
            raise
        finally:
            self.duration.observe(time.perf_counter() - start)
        self.reconciles.labels(outcome="ok").inc()

    def track_phase(self, key: tuple[str, str], phase: str | None, *, deleted: bool = False) -> None:
        """Keep the by-phase gauge in step with one FineTuneJob's latest phase."""
        old = self._phases.pop(key, None)
        if old is not None:
            self.finetunejobs.labels(phase=old).dec()
        if not deleted:
            new = phase or NO_PHASE
            self._phases[key] = new
            self.finetunejobs.labels(phase=new).inc()

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
