"""Time and cost before the run: FLOPs per token, efficiency and its calibration, tokens, ETA, cost."""

from __future__ import annotations

from typing import Any

import pytest

from kubetune.catalog import resolve_architecture
from kubetune.forecast import (
    DEFAULT_MFU,
    ThroughputRecord,
    duration,
    efficiency,
    flops_per_token,
    forecast,
    record_of_run,
    run_tokens,
)
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec

LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
H100 = "NVIDIA-H100-80GB-HBM3"
A100 = "NVIDIA-A100-SXM4-80GB"
# 6N + 12·L·d·s for Llama-3.1-8B at 2048 tokens, by hand: N = 32 x (2·4096·4096 + 2·4096·1024 +
# 3·4096·14336) + 4096·128256 = 7,504,658,432; 12·32·4096·2048 = 3,221,225,472.
LLAMA_8B_FLOPS_2048 = 6 * 7_504_658_432 + 3_221_225_472


def spec(method: str = "qlora", *, steps: int | None = 1000, gpus: int = 1, nodes: int = 1, **training: Any) -> Any:
    body: dict[str, Any] = {
        "model": {"name": LLAMA_8B}, "dataset": {"name": "tatsu-lab/alpaca"},
        "method": {"type": method, **({"quantization": {"bits": 4}} if method == "qlora" else {})},
        "training": {"batchSize": 4, "gradientAccumulationSteps": 4, "maxSeqLength": 2048, **training},
        "resources": {"gpus": gpus, "nodes": nodes, **({"gpuProduct": H100} if nodes > 1 else {})},
    }
    if steps is not None:
        body["training"]["maxSteps"] = steps
    return effective_spec(parse_spec(body))


def record(product: str = H100, mfu: float = 0.25, *, method: str = "qlora", key: str = LLAMA_8B, gpus: int = 1,
           checkpointing: bool = True) -> ThroughputRecord:
    """A run that reached this MFU on this product (H100 989, A100 312 TFLOP/s)."""
    peak = {H100: 989e12, A100: 312e12}[product]
    return ThroughputRecord(product, method, key, mfu * peak * gpus / LLAMA_8B_FLOPS_2048, gpus,
                            LLAMA_8B_FLOPS_2048, checkpointing)


def test_flops_per_token_follow_the_benchmarks_convention() -> None:
    assert flops_per_token(resolve_architecture(spec()), 2048) == LLAMA_8B_FLOPS_2048


@pytest.mark.parametrize(
    ("records", "mfu", "basis"),
    [
        ([], DEFAULT_MFU[("qlora", True)], "assumed"),
        ([record(mfu=0.2), record(mfu=0.3), record(mfu=0.4)], 0.3, "calibrated: 3 run(s) of this model on"),
        ([record(mfu=0.2, key="other/model"), record(mfu=0.3, key="other/model")], 0.25, "calibrated: 2 run(s) of "
         "NVIDIA-H100"),
        ([record(mfu=0.2, key="other/model"), record(mfu=0.4)], 0.4, "this model"),
        ([record(A100, mfu=0.35)], 0.35, "calibrated: 1 run(s) of other GPUs"),
        ([record(mfu=0.3, gpus=8)], 0.3, "calibrated"),
        ([record(mfu=0.3, method="lora")], DEFAULT_MFU[("qlora", True)], "assumed"),
        ([record(mfu=0.3, checkpointing=False)], DEFAULT_MFU[("qlora", True)], "assumed"),
        ([record(mfu=3.0)], DEFAULT_MFU[("qlora", True)], "assumed"),
    ],
    ids=[
        "no measured runs: the default from the benchmarks",
        "runs of this model on this GPU: their median",
        "runs of other models on this GPU: their median",
        "runs of this model count before runs of others",
        "runs on another GPU only: their MFU carries over",
        "an 8-GPU run's tokens/s is per world",
        "runs of another method do not count",
        "runs without checkpointing do not count for a run with it",
        "an impossible MFU (a broken record) is ignored",
    ],
)
def test_efficiency_is_calibrated_from_measured_runs(records: list[ThroughputRecord], mfu: float,
                                                      basis: str) -> None:
    found, source = efficiency(H100, "qlora", True, LLAMA_8B, records)
    assert found == pytest.approx(mfu, rel=1e-9) and basis in source


@pytest.mark.parametrize(
    ("job", "dataset_tokens", "expected"),
    [
        (spec(steps=1000, packing=True), None, (1000 * 4 * 4 * 2048, "maxSteps")),
        (spec(steps=1000), None, (1000 * 4 * 4 * 2048, "maxSteps; at most, without packing")),
        (spec("lora", steps=10, gpus=2, nodes=2, packing=True), None, (10 * 4 * 4 * 2048 * 4, "maxSteps")),
        (spec(steps=None, epochs=2), 5_000_000, (10_000_000, "epochs x dataset tokens")),
        (spec(steps=None), None, (None, "unknown")),
    ],
    ids=["maxSteps x batch x accumulation x sequence", "without packing that is an upper bound",
         "every rank of a multi-node run adds its batches",
         "epochs x the dataset's tokens when known", "epochs without the dataset's size: unknown"],
)
def test_run_tokens(job: Any, dataset_tokens: int | None, expected: tuple[int | None, str]) -> None:
    assert run_tokens(job, dataset_tokens) == expected


@pytest.mark.parametrize(
    ("product", "records", "prices", "expected"),
    [
        (H100, [], {}, (2500.73, 13103.4, 3.640, None)),
        (A100, [], {"nvidia-a100-sxm4-80gb": 1.5}, (788.90, 41536.1, 11.538, 17.31)),
        (H100, [record(mfu=0.25)], {H100: 4.0}, (5124.44, 6394.5, 1.776, 7.10)),
    ],
    ids=["QLoRA 8B on an H100 with the default MFU, no price: no cost",
         "on an A100 at 1.50 per GPU-hour (price names match like products)",
         "calibrated to 25% MFU, at 4.00 per GPU-hour"],
)
def test_forecast_eta_gpu_hours_and_cost(product: str, records: list[ThroughputRecord], prices: dict[str, float],
                                         expected: tuple[float, float, float, float | None]) -> None:
    """expected: tokens/s, ETA seconds, GPU-hours, cost (computed by hand from 6N + 12·L·d·s)."""
    tokens_per_second, eta_seconds, gpu_hours, cost = expected
    job = spec()
    result = forecast(job, resolve_architecture(job), product, records=records, prices=prices)
    assert result is not None and result.tokens == 32_768_000
    assert result.tokens_per_second == pytest.approx(tokens_per_second, abs=0.01)
    assert result.eta_seconds == pytest.approx(eta_seconds, abs=0.1)
    assert result.gpu_hours == pytest.approx(gpu_hours, abs=0.001)
    assert result.cost == (None if cost is None else pytest.approx(cost, abs=0.01))
    status = result.to_status().to_wire()
    assert status["gpuProduct"] == product and status["etaSeconds"] == round(eta_seconds)


def test_eight_gpus_take_an_eighth_of_the_time_and_the_same_gpu_hours() -> None:
    one, eight = spec(), spec(gpus=8, steps=125)
    a = forecast(one, resolve_architecture(one), H100)
    b = forecast(eight, resolve_architecture(eight), H100)
    assert a is not None and b is not None and a.tokens == b.tokens
    assert b.eta_seconds == pytest.approx(a.eta_seconds / 8) and b.gpu_hours == pytest.approx(a.gpu_hours)


@pytest.mark.parametrize(
    ("product", "job"),
    [("ACME-GPU-9000", spec()), (H100, spec("lora", gpus=0))],
    ids=["a product without a known peak has no forecast", "a CPU run has no GPU forecast"],
)
def test_no_forecast(product: str, job: Any) -> None:
    assert forecast(job, resolve_architecture(job), product) is None


def test_an_unknown_token_count_gives_an_unknown_eta_not_a_guess() -> None:
    job = spec(steps=None)
    result = forecast(job, resolve_architecture(job), H100, prices={H100: 4.0})
    assert result is not None and (result.eta_seconds, result.gpu_hours, result.cost) == (None, None, None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "unknown"), (40, "40s"), (720, "12m"), (3900, "1h 05m"), (3 * 86400 + 4 * 3600, "3d 4h")],
    ids=str,
)
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    "wire",
    [{"gpuProduct": H100, "method": "lora", "architectureKey": "k", "tokensPerSecond": 0, "gpus": 1,
      "flopsPerToken": 1e9},
     {"gpuProduct": H100, "method": "lora", "architectureKey": "k", "tokensPerSecond": "fast", "gpus": 1,
      "flopsPerToken": 1e9},
     {"gpuProduct": H100, "method": "lora"}],
    ids=["zero tokens per second", "tokens per second that is not a number", "missing fields"],
)
def test_malformed_records_are_refused(wire: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        ThroughputRecord.from_wire(wire)


def test_a_record_survives_its_wire_form() -> None:
    original = record()
    assert ThroughputRecord.from_wire(original.to_wire()) == original


@pytest.mark.parametrize(
    ("product", "tokens_per_second", "mfu"),
    [(H100, 2382.0, 0.1162), (H100, 0.0, None), ("ACME-GPU-9000", 2382.0, None), (H100, 1e9, None)],
    ids=["the 8B QLoRA H100 row of docs/benchmarks.md: 11.6% MFU", "no throughput: no record",
         "a product without a known peak: no record", "an impossible throughput: no record"],
)
def test_a_finished_run_becomes_a_record_that_calibrates_the_next_forecast(
    product: str, tokens_per_second: float, mfu: float | None
) -> None:
    job = spec(batchSize=1, gradientAccumulationSteps=1)
    made = record_of_run(job, resolve_architecture(job), product, tokens_per_second)
    if mfu is None:
        assert made is None
        return
    assert made is not None and made.flops_per_token == LLAMA_8B_FLOPS_2048
    found, basis = efficiency(H100, "qlora", True, made.architecture_key, [made])
    assert found == pytest.approx(mfu, abs=1e-4) and "this model" in basis
