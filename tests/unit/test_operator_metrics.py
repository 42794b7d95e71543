"""Operator metrics: names from the contract, the by-phase gauge counted at scrape time."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from kubetune import contract
from kubetune.metrics import OperatorMetrics


def scrape(metrics: OperatorMetrics) -> str:
    return generate_latest(metrics.registry).decode()


def test_every_contract_metric_is_exported() -> None:
    text = scrape(OperatorMetrics(list))
    assert all(f"# HELP {name}" in text for name in contract.OPERATOR_METRICS)


def test_phases_are_counted_from_the_source_at_scrape_time() -> None:
    phases: list[str | None] = ["Running", "Running", None]
    metrics = OperatorMetrics(lambda: phases)
    assert 'kubetune_operator_finetunejobs{phase="Running"} 2.0' in scrape(metrics)
    phases.append("Failed")
    text = scrape(metrics)
    assert 'kubetune_operator_finetunejobs{phase="Failed"} 1.0' in text
    assert 'kubetune_operator_finetunejobs{phase="None"} 1.0' in text


def test_reconciles_are_counted_by_outcome_and_timed() -> None:
    metrics = OperatorMetrics(list)
    with metrics.reconcile():
        pass
    with pytest.raises(RuntimeError), metrics.reconcile():
        raise RuntimeError
    text = scrape(metrics)
    assert 'kubetune_operator_reconcile_total{outcome="ok"} 1.0' in text
    assert 'kubetune_operator_reconcile_total{outcome="error"} 1.0' in text
    assert "kubetune_operator_reconcile_duration_seconds_count 2.0" in text
