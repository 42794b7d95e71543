"""FSDP as the trainer asks for it: the Trainer's FSDP plugin arguments, and sharded checkpoints that count
as complete only once torch.distributed.checkpoint has committed them. (The 2-node FSDP runs, with a kill
and resume, are in test_distributed_multinode.py.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kubetune_trainer.checkpoints import is_complete
from kubetune_trainer.kernels import KernelChoice
from kubetune_trainer.model import Precision
from kubetune_trainer.sharding import SHARDED_WEIGHTS_MARKER
from kubetune_trainer.train import Environment, training_arguments

from .conftest import SpecFactory

FSDP_PLUGIN = {
    "fsdp_version": 2,
    "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
    "reshard_after_forward": True,
    "state_dict_type": "SHARDED_STATE_DICT",
}


def arguments(make_spec: SpecFactory, tmp_path: Path, strategy: str, world_size: int) -> Any:
    return training_arguments(
        make_spec(), tmp_path, precision=Precision("float32"), environment=Environment("cpu", None, False, None,
                                                                                       world_size),
        has_eval=False, interactive=False, strategy=strategy,
        kernel_choice=KernelChoice(liger=False, reason="no CUDA GPU", packing="off", optimizer="adamw_torch"),
    )


@pytest.mark.parametrize(
    ("strategy", "world_size", "expected"),
    [("fsdp", 4, FSDP_PLUGIN), ("ddp", 4, None), ("single", 1, None)],
    ids=[
        "fsdp shards each decoder layer with FSDP2 and checkpoints sharded state",
        "ddp gives the Trainer no FSDP plugin",
        "one process gives the Trainer no FSDP plugin",
    ],
)
def test_the_trainers_fsdp_plugin(make_spec: SpecFactory, tmp_path: Path, strategy: str, world_size: int,
                                  expected: dict[str, Any] | None) -> None:
    plugin = arguments(make_spec, tmp_path, strategy, world_size).fsdp_plugin_args

    assert (None if plugin is None else {key: plugin[key] for key in FSDP_PLUGIN}) == expected


def sharded_checkpoint(root: Path, step: int, state_step: int, *, committed: bool) -> Path:
    checkpoint = root / f"checkpoint-{step}"
    (checkpoint / SHARDED_WEIGHTS_MARKER).parent.mkdir(parents=True)
    (checkpoint / SHARDED_WEIGHTS_MARKER).parent.joinpath("__0_0.distcp").write_bytes(b"shard")
    if committed:
        (checkpoint / SHARDED_WEIGHTS_MARKER).write_bytes(b"metadata")
    (checkpoint / "trainer_state.json").write_text(json.dumps({"global_step": state_step}))
    return checkpoint


@pytest.mark.parametrize(
    ("state_step", "committed", "expected"),
    [(10, True, True), (10, False, False), (5, True, False)],
    ids=[
        "a sharded checkpoint with its metadata written is complete",
        "shards without torch.distributed.checkpoint's metadata are a half-written checkpoint",
        "a sharded checkpoint whose trainer state names another step is incomplete",
    ],
)
def test_sharded_checkpoint_completeness(tmp_path: Path, state_step: int, committed: bool, expected: bool) -> None:
    assert is_complete(sharded_checkpoint(tmp_path, 10, state_step, committed=committed)) is expected
