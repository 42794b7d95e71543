"""The speed benchmark's plumbing on the tiny CPU configuration: three sides, each in its own process, on the same
rows; tokens/s, ratios and kubetune's kernel choices come back (tests/benchmarks/trainer_speed.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tests" / "benchmarks" / "trainer_speed.py"


@pytest.mark.slow
@pytest.mark.extended  # a benchmark's plumbing, not the product
def test_the_speed_benchmark_runs_every_side_on_the_tiny_configuration(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(REPO / p) for p in ("operator", "trainer", "."))}
    process = subprocess.run(
        [sys.executable, str(SCRIPT), "--config", "tiny", "--warmup", "2", "--steps", "3",
         "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")],
        env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]

    lines = (tmp_path / "out" / "speed_results.jsonl").read_text().splitlines()
    results = {r["side"]: r for r in map(json.loads, lines)}
    assert set(results) == {"kubetune", "plain", "trl"}
    assert all(r["timed_steps"] == 3 and r["timed_tokens"] > 0 and r["tokens_per_second"] > 0
               for r in results.values())
    assert results["plain"]["timed_tokens"] == results["trl"]["timed_tokens"]  # same rows, same batches, unpacked
    assert results["kubetune"]["timed_tokens"] > results["plain"]["timed_tokens"]  # packed: more rows per step
    assert results["plain"]["tokens_per_second_vs_plain"] == 1.0
    assert results["kubetune"]["kernels"] == {"liger": False, "reason": "no CUDA GPU", "packing": "rows",
                                              "optimizer": "adamw_torch", "loraInputs": "peft default"}
    assert "config | side | tokens/s" in process.stdout
    assert not (tmp_path / "work" / "tiny").exists()  # the model and rows are removed after the configuration
