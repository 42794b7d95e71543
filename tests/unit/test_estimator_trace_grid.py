"""The analytic estimator against a traced training step (tests/unit/memtrace.py), over a grid of shapes.

Each row builds the real transformers model (real widths, heads, head_dim, vocabulary; 2 and 3 layers,
extrapolated to the real depth), trains one micro-batch as the kubetune trainer does (LoRA from the
trainer's own code, TRL's fused LM head, bf16 autocast, checkpointing when asked, foreach AdamW) under
FakeTensorMode and PyTorch's MemTracker, and compares:
- the peak (persistent state + the higher of the forward/backward pass and the optimizer step) with what
  the estimate counts (its breakdown without the CUDA context and fragmentation, which no CPU trace sees);
- the persistent terms (weights + adapters, gradients, optimizer states) with the traced ones;
- the pass's activations and temporaries with the estimate's activations + logits.

Tolerances (relative to traced), each a little wider than the grid's worst row (docs/estimator.md):
- persistent terms: 1% (they are counted exactly);
- peak: -5% .. +6% (the issue's goal is no row more than 9% under a measured peak; the trace leaves out
  only CUDA-side effects that add memory, so the counted part must not be more than 5% under it);
- activations + loss: -6% .. +10% (low: one block's backward temporaries and the rotary tables are not
  counted; high: Gemma 3 1B's row, +8%, not attributed).
One row runs by default (about 10 s on 2 shared cores); the rest of the grid is marked slow and runs only
when slow tests are selected (`pytest -m slow tests/unit/test_estimator_trace_grid.py`, a few minutes):
the default run does not deselect `slow`, so tests/unit/conftest.py skips those rows there.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("peft")
pytest.importorskip("trl")

from tests.unit.memtrace import Counted, Run, Shape, Traced, grid_params, traced_peak

from kubetune.estimate import GIB, estimate

PERSISTENT_TOLERANCE = 0.01
PEAK_UNDER, PEAK_OVER = 0.05, 0.06
STEP_UNDER, STEP_OVER = 0.06, 0.10
MEDIAN_PEAK_GOAL = 0.05

LLAMA_8B = Shape("llama", 4096, 32, 8, 128, 14336, 128256, 32, tied=False)
LLAMA_1B = Shape("llama", 2048, 32, 8, 64, 8192, 128256, 16, tied=True)
MISTRAL_7B = Shape("mistral", 4096, 32, 8, 128, 14336, 32768, 32, tied=False)
QWEN_05B = Shape("qwen2", 896, 14, 2, 64, 4864, 151936, 24, tied=True)
GEMMA2_2B = Shape("gemma2", 2304, 8, 4, 256, 9216, 256000, 26, tied=True, attention="eager")
GEMMA3_1B = Shape("gemma3_text", 1152, 4, 1, 256, 6912, 262144, 26, tied=True)


@dataclass(frozen=True)
class Row:
    title: str
    shape: Shape
    run: Run
    fast: bool = False


ROWS = [
    Row("Llama 3.1 8B, LoRA, 4 x 2048 with checkpointing", LLAMA_8B, Run("lora", 4, 2048, True)),
    Row("Llama 3.1 8B, LoRA, 4 x 2048 without checkpointing", LLAMA_8B, Run("lora", 4, 2048, False)),
    Row("Llama 3.1 8B, LoRA, one 8k sequence with checkpointing", LLAMA_8B, Run("lora", 1, 8192, True)),
    Row("Llama 3.1 8B, LoRA, one 8k sequence without checkpointing", LLAMA_8B, Run("lora", 1, 8192, False)),
    Row("Llama 3.1 8B, full, 2 x 2048 with checkpointing", LLAMA_8B, Run("full", 2, 2048, True)),
    Row("Llama 3.2 1B (head_dim 64, tied), LoRA, 16 x 1024 without checkpointing", LLAMA_1B,
        Run("lora", 16, 1024, False), fast=True),
    Row("Llama 3.2 1B, LoRA, one 32k sequence with checkpointing", LLAMA_1B, Run("lora", 1, 32768, True)),
    Row("Llama 3.2 1B, full, 4 x 2048 with checkpointing", LLAMA_1B, Run("full", 4, 2048, True)),
    Row("Mistral 7B (32k vocabulary), LoRA, 32 x 512 with checkpointing", MISTRAL_7B, Run("lora", 32, 512, True)),
    Row("Qwen2.5 0.5B (152k vocabulary, tied), full, 8 x 1024 without checkpointing", QWEN_05B,
        Run("full", 8, 1024, False)),
    Row("Gemma 2 2B (256k vocabulary, head_dim 256), LoRA, 4 x 2048 with checkpointing", GEMMA2_2B,
        Run("lora", 4, 2048, True)),
    Row("Gemma 2 2B, LoRA, 2 x 2048 without checkpointing", GEMMA2_2B, Run("lora", 2, 2048, False)),
    Row("Gemma 3 1B (262k vocabulary, one kv head), LoRA, 2 x 4096 with checkpointing", GEMMA3_1B,
        Run("lora", 2, 4096, True)),
]


PARAMS = grid_params(ROWS)


@dataclass(frozen=True)
class Comparison(Counted):
    traced: Traced

    @property
    def step_error(self) -> float:
        analytic = self.breakdown["activations"] + self.breakdown["logits"]
        return analytic / (self.traced.passes.step / GIB) - 1


_CACHE: dict[str, Comparison] = {}


def compare(row: Row) -> Comparison:
    if row.title not in _CACHE:
        result = estimate(row.run.spec(row.shape), row.shape.architecture())
        _CACHE[row.title] = Comparison(traced_peak(row.shape, row.run), result.breakdown)
    return _CACHE[row.title]


@pytest.mark.parametrize("row", PARAMS)
def test_the_counted_peak_is_within_tolerance_of_the_traced_peak(row: Row) -> None:
    assert -PEAK_UNDER <= compare(row).peak_error <= PEAK_OVER


@pytest.mark.parametrize("row", PARAMS)
def test_weights_gradients_and_optimizer_states_match_the_trace(row: Row) -> None:
    comparison = compare(row)
    traced, counted = comparison.traced.passes, comparison.breakdown
    pairs = [
        (traced.parameters, counted["weights"] + counted["adapters"]),
        (traced.gradients, counted["gradients"]),
        (traced.optimizer, counted["optimizer"]),
    ]
    for traced_bytes, counted_gib in pairs:
        assert counted_gib == pytest.approx(traced_bytes / GIB, rel=PERSISTENT_TOLERANCE, abs=0.002)


@pytest.mark.parametrize("row", PARAMS)
def test_activations_and_loss_are_within_tolerance_of_the_traced_pass(row: Row) -> None:
    assert -STEP_UNDER <= compare(row).step_error <= STEP_OVER


@pytest.mark.slow
def test_the_median_peak_error_over_the_grid_is_at_most_5_percent() -> None:
    assert statistics.median(abs(compare(row).peak_error) for row in ROWS) <= MEDIAN_PEAK_GOAL


if __name__ == "__main__":
    for row in ROWS:
        c = compare(row)
        print(f"{row.title}\ttraced {c.traced.total / GIB:.2f}\tcounted {c.counted_gib:.2f}\t"
              f"{100 * c.peak_error:+.1f}%\tpass traced {c.traced.passes.step / GIB:.2f}\t"
              f"activations+logits {c.breakdown['activations'] + c.breakdown['logits']:.2f}\t"
              f"{100 * c.step_error:+.1f}%", flush=True)
