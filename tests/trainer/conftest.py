"""Fixtures of the trainer tests: one tiny model and tokenizer for the session, datasets in tmp dirs,
and specs that put them on a volume at /data (mapped to the tmp dir, as `kubetune train --mount`)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from kubetune.api import FineTuneJobSpec
from kubetune.plan import merge_patch
from kubetune.presets import effective_spec
from kubetune.validation import parse_spec
from kubetune_trainer import tiny
from kubetune_trainer.context import RunContext, with_local_mounts

MOUNT = "/data"

BASE_SPEC: dict[str, Any] = {
    "model": {"path": f"{MOUNT}/model", "dtype": "float32"},
    "dataset": {"path": f"{MOUNT}/instruction.jsonl"},
    "method": {"type": "lora", "lora": {"rank": 8, "dropout": 0.0}},
    "training": {
        "maxSteps": 30, "batchSize": 8, "gradientAccumulationSteps": 1, "learningRate": 3e-3,
        "lrScheduler": "constant", "warmupRatio": 0.0, "maxSeqLength": 64, "gradientCheckpointing": False,
        "loggingSteps": 5,
    },
    "resources": {"gpus": 0},
    "volumes": [{"claimName": "data", "mountPath": MOUNT}],
}


def merged(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """base with changes merged in key by key (a JSON merge patch: None deletes a key)."""
    return merge_patch(base, changes)


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model and every dataset, built once: what the /data volume holds."""
    root = tmp_path_factory.mktemp("data")
    tiny.save_tiny_model(root / "model")
    tiny.write_jsonl(root / "instruction.jsonl", tiny.instruction_rows(400))
    tiny.write_jsonl(root / "chat.jsonl", tiny.chat_rows(200))
    tiny.write_jsonl(root / "text.jsonl", tiny.text_rows(200))
    return root


SpecFactory = Callable[..., FineTuneJobSpec]


@pytest.fixture
def make_spec(data_root: Path) -> SpecFactory:
    """The effective spec of BASE_SPEC with changes, its /data paths read from data_root."""

    def make(changes: dict[str, Any] | None = None) -> FineTuneJobSpec:
        spec = effective_spec(parse_spec(merged(BASE_SPEC, changes or {})))
        return with_local_mounts(spec, {MOUNT: data_root})

    return make


ContextFactory = Callable[..., RunContext]


@pytest.fixture
def make_context(make_spec: SpecFactory, tmp_path: Path) -> ContextFactory:
    def make(changes: dict[str, Any] | None = None, **fields: Any) -> RunContext:
        fields.setdefault("output_dir", tmp_path / "output")
        fields.setdefault("termination_log", tmp_path / "termination-log")
        return RunContext(spec=make_spec(changes), **fields)

    return make
