"""The operator's Prometheus metrics (names from contract.OPERATOR_METRICS), on their own registry."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from kubetune import contract
from kubetune.api import Phase

RECONCILE_TOTAL, RECONCILE_DURATION, FINETUNEJOBS, API_ERRORS, ESTIMATE_ACCURACY = contract.OPERATOR_METRICS
# Reconciles take milliseconds (pure planning + a few writes); the tail shows API trouble.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
NO_PHASE = "None"
# Measured / estimated peak GPU memory: 1 is exact, above 1 the estimate was low.
ACCURACY_BUCKETS = (0.5, 0.7, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.5, 2.0, 3.0)


class PhaseCollector(Collector):
    """FineTuneJobs by phase, counted at scrape time from what the operator sees."""

    def __init__(self, phases: Callable[[], Iterable[str | None]]) -> None:
        self._phases = phases

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts = dict.fromkeys([*map(str, Phase), NO_PHASE], 0)
        for phase in self._phases():
            counts[phase or NO_PHASE] = counts.get(phase or NO_PHASE, 0) + 1
        family = GaugeMetricFamily(
            FINETUNEJOBS, "FineTuneJobs the operator sees, by phase.", labels=["phase"]
        )
        for phase, count in counts.items():
            family.add_metric([phase], count)
        yield family


class OperatorMetrics:
    """Counters of one operator process, and the by-phase gauge read from `phases` at scrape time."""

    def __init__(self, phases: Callable[[], Iterable[str | None]]) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(PhaseCollector(phases))
        self.reconciles = Counter(
            RECONCILE_TOTAL, "FineTuneJob reconciles, by outcome.", ["outcome"], registry=self.registry
        )
        self.duration = Histogram(
            RECONCILE_DURATION,
            "Seconds one FineTuneJob reconcile took.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.api_errors = Counter(
            API_ERRORS,
            "Kubernetes API requests that failed, by HTTP status.",
            ["code"],
            registry=self.registry,
        )

        self.estimate_accuracy = Histogram(
            ESTIMATE_ACCURACY,
            "Measured over estimated peak GPU memory of finished attempts (analytic estimate), by method.",
            ["method"],
            buckets=ACCURACY_BUCKETS,
            registry=self.registry,
        )

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

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
