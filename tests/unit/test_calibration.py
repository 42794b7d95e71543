"""Calibration: measured runs correct later estimates of the same shape, within bounds, from a bounded store."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kubetune import calibration
from kubetune.calibration import CalibrationRecord, Store, calibrate, correction, measured_record, shape_key
from kubetune.estimate import estimate
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec


def spec_of(**training: Any) -> Any:
    return effective_spec(parse_spec({
        "model": {"name": "meta-llama/Llama-3.2-1B"}, "dataset": {"name": "tatsu-lab/alpaca"},
        "resources": {"gpus": 1}, "training": {"batchSize": 4, "maxSeqLength": 2048, **training},
    }))


def record(
    ratio: float, *, shape: str = "s", tokens: int = 8192, lower_bound: bool = False, n: int = 0
) -> CalibrationRecord:
    return CalibrationRecord(id=f"uid-{ratio}-{n}-{shape}", shape=shape, tokens=tokens, method="lora",
                             estimateGiB=10.0, measuredGiB=10.0 * ratio, lowerBound=lower_bound,
                             outcome="OutOfMemory" if lower_bound else "Succeeded")


@pytest.mark.parametrize(
    ("ratios", "expected"),
    [
        ([], 10.0),
        ([1.3], 13.0),
        ([0.8, 1.2], 12.0),
        ([0.8], 10.0),
        ([0.8, 0.82], 10.0),
        ([0.85, 0.86, 0.88], 9.0),
        ([0.95, 0.96, 0.97], 9.7),
        ([0.6, 0.95, 0.96], 10.0),
        ([10.0], 30.0),
    ],
    ids=[
        "no record keeps the analytic estimate",
        "one record above the estimate raises it by its ratio",
        "the highest ratio wins when records disagree",
        "one record below the estimate does not lower it",
        "two agreeing records below the estimate do not lower it",
        "three agreeing records lower it, but never past the safety margin",
        "three agreeing records lower it to their highest ratio",
        "records that disagree by more than ten percent do not lower it",
        "a forged ratio is clamped to three times the estimate",
    ],
)
def test_correction_follows_the_rule(ratios: list[float], expected: float) -> None:
    result = correction(10.0, [record(r, n=i) for i, r in enumerate(ratios)])
    assert result.calibrated_gib == pytest.approx(expected)
    assert result.analytic_gib == 10.0
    assert result.records == len(ratios)


def test_a_record_raises_only_estimates_of_its_shape_and_size() -> None:
    spec = spec_of()
    analytic = estimate(spec)
    shape = shape_key(spec, analytic)
    records = [
        record(1.5, shape=shape, tokens=8192),
        record(3.0, shape=shape + "-other", tokens=8192),  # another model or method
        record(3.0, shape=shape, tokens=8192 * 4),  # four times the tokens: too far to speak for this size
    ]
    calibrated = calibrate(analytic, spec, records)
    assert calibrated.per_gpu_gib == pytest.approx(analytic.per_gpu_gib * 1.5, rel=1e-3)
    assert calibrated.analytic_gib == analytic.per_gpu_gib
    assert calibrated.calibration_records == 1
    wire = calibrated.to_status().to_wire()
    assert wire["analyticGiB"] == analytic.per_gpu_gib and wire["calibrationRecords"] == 1
    assert "raised" in wire["calibration"]


@pytest.mark.parametrize(
    ("changes", "same"),
    [
        ({"learningRate": 1e-5}, True),
        ({"batchSize": 8}, True),
        ({"gradientCheckpointing": False}, False),
        ({"packing": True}, False),
        ({"kernels": "none"}, False),
    ],
    ids=["the learning rate does not change the shape", "the micro-batch is matched by size, not by shape",
         "gradient checkpointing changes the shape", "packing changes the shape (the attention mask spans the batch)",
         "the kernels change the shape"],
)
def test_shape_key_holds_what_changes_memory_behaviour(changes: dict[str, Any], same: bool) -> None:
    base, other = spec_of(), spec_of(**changes)
    assert (shape_key(base, estimate(base)) == shape_key(other, estimate(other))) is same


@pytest.mark.parametrize(
    ("outcome", "peak", "gpu", "expected_measured", "lower_bound"),
    [
        ("Succeeded", 12.0, 80.0, 12.6, False),
        ("OutOfMemory", None, 24.0, 24.0, True),
        ("OutOfMemory", 30.0, 24.0, 30.6, True),
        ("OOMKilled", 40.0, 80.0, 40.6, True),
    ],
    ids=["a success records the trainer's peak plus the CUDA context",
         "an out-of-memory records at least the GPU's memory",
         "an out-of-memory keeps a larger peak the trainer reported",
         "a host OOM kill records the peak reported before as a lower bound"],
)
def test_measured_record_says_what_was_learned(outcome: Any, peak: float | None, gpu: float,
                                               expected_measured: float, lower_bound: bool) -> None:
    spec = spec_of()
    made = measured_record(uid="u", attempt=2, spec=spec,
                           estimate=estimate(spec).calibrated(1.0, 0, "x"), outcome=outcome, peak_gib=peak,
                           gpu_memory_gib=gpu, gpu_product="NVIDIA-L4")
    assert made is not None
    assert made.id == "u/2" and made.measured_gib == pytest.approx(expected_measured)
    assert made.lower_bound is lower_bound
    assert made.estimate_gib == estimate(spec).per_gpu_gib  # the analytic value, not the calibrated one


def test_an_oom_kill_without_a_peak_teaches_nothing() -> None:
    spec = spec_of()
    assert measured_record(uid="u", attempt=1, spec=spec,
                           estimate=estimate(spec), outcome="OOMKilled", peak_gib=None, gpu_memory_gib=80.0,
                           gpu_product=None) is None


def test_the_store_is_idempotent_and_bounded() -> None:
    store = Store()
    assert store.add(record(1.1, n=1)) and not store.add(record(1.1, n=1))
    for n in range(calibration.RECORDS_PER_SHAPE + 5):
        store.add(record(1.0 + n / 100, n=n + 10))
    assert len([r for r in store.records if r.shape == "s"]) == calibration.RECORDS_PER_SHAPE
    for shape in range(calibration.MAX_SHAPES + 20):
        store.add(record(1.2, shape=f"shape-{shape}"))
    assert len({r.shape for r in store.records}) == calibration.MAX_SHAPES
    assert len(store.dumps()) <= calibration.MAX_STORE_BYTES
    assert "shape-0" not in {r.shape for r in store.records}  # the oldest shapes went first


def test_the_store_round_trips_and_drops_records_that_do_not_validate() -> None:
    store = Store([record(1.2, n=1), record(0.9, n=2)])
    data = json.loads(store.dumps())
    data["records"].append({"id": "bad", "estimateGiB": -1})
    data["records"].append("not a record")
    loaded = Store.loads(json.dumps(data))
    assert [r.id for r in loaded.records] == [r.id for r in store.records]


@pytest.mark.parametrize(
    "text",
    ['{"records": 5}', "[", '{"records": [' + ",".join(["{}"] * 10) + "]}"],
    ids=["records that are not a list are refused", "broken JSON is refused",
         "records without fields are dropped"],
)
def test_hostile_store_text_never_raises_past_a_value_error(text: str) -> None:
    try:
        store = Store.loads(text)
    except ValueError:
        return
    assert store.records == ()


def test_a_configmap_file_gives_the_same_store() -> None:
    import yaml

    store = Store([record(1.4, n=1)])
    as_yaml = yaml.safe_dump(store.configmap("kubetune-system"))
    assert calibration.store_from_file_text(as_yaml).records == store.records
    assert calibration.store_from_file_text(store.dumps()).records == store.records
