"""No host syncs in a training step that is not logged.

Every call that copies a tensor's value to Python (.item(), .tolist(), .cpu(), bool(), float(), int()) between a
step's start and its end is counted, on steps the Trainer does not log, and traced to the code that made it. On a
GPU each one stalls the host until the GPU has caught up. What may remain:
- torch.optim's reads of its step counters: on a CPU they are CPU tensors; on CUDA the fused AdamW kernels
  kubetune picks keep them on the GPU and never read them;
- transformers' attention-mask construction, once per forward: whether a padded batch has any padding (sdpa's
  causal-only fast path), or where the documents of a packed row start. Both are in transformers' model code.
"""

from __future__ import annotations

import collections
import traceback
from typing import Any

import pytest
import torch
from transformers import TrainerCallback

from kubetune_trainer import train
from kubetune_trainer.progress import ProgressTracker

from .conftest import ContextFactory, merged

SYNCING_METHODS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__")
OPTIMIZER_BOOKKEEPING = "torch/optim/"
MASK_CONSTRUCTION = "transformers/masking_utils.py"


class SyncCounter(TrainerCallback):
    """Counts syncing calls during the steps the Trainer will not log, by the file that made each call (the
    innermost frame outside torch's tensor code)."""

    def __init__(self) -> None:
        self.counting = False
        self.counted_steps = 0
        self.by_file: collections.Counter[str] = collections.Counter()

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.counting = not train.is_logged_step(state.global_step + 1, state.logging_steps, args.logging_first_step)
        self.counted_steps += self.counting

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.counting = False

    def record(self) -> None:
        if not self.counting:
            return
        caller = traceback.extract_stack()[-3]  # [-1] is here, [-2] the patched method
        self.by_file[caller.filename.split("site-packages/")[-1]] += 1


def count_syncs(monkeypatch: pytest.MonkeyPatch) -> SyncCounter:
    counter = SyncCounter()
    for name in SYNCING_METHODS:
        original = getattr(torch.Tensor, name)

        def counting(self: torch.Tensor, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            counter.record()
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)
    return counter


@pytest.mark.parametrize(
    "changes",
    [{}, {"training": {"packing": True}}],
    ids=["a padded batch's step syncs only in transformers' mask construction",
         "a packed step (rows of documents) syncs only in transformers' mask construction"],
)
def test_unlogged_steps_do_not_sync(make_context: ContextFactory, monkeypatch: pytest.MonkeyPatch,
                                    changes: dict[str, Any]) -> None:
    accumulation = 2
    context = make_context(merged({"training": {"maxSteps": 6, "loggingSteps": 5,
                                                "gradientAccumulationSteps": accumulation}}, changes))
    built = train.build_run(context, ProgressTracker())
    counter = count_syncs(monkeypatch)
    built.trainer.add_callback(counter)

    train.train(built)

    assert counter.counted_steps == 4  # steps 2, 3, 4 and 6: 1 and 5 are logged
    elsewhere = {name: n for name, n in counter.by_file.items()
                 if not name.startswith(OPTIMIZER_BOOKKEEPING) and name != MASK_CONSTRUCTION}
    assert elsewhere == {}
    assert counter.by_file[MASK_CONSTRUCTION] == counter.counted_steps * accumulation  # one per forward
