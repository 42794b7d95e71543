"""Packed rows: TRL's packed examples laid out as rows for sdpa and eager, with documents that never see each other
and a count of the real tokens in them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from kubetune_trainer import tiny, train
from kubetune_trainer.packing import REAL_TOKENS, PackedRowsCollator, take_token_count
from kubetune_trainer.progress import ProgressTracker

from .conftest import MOUNT, ContextFactory

PAD = 0
# Two packed examples as TRL's best-fit decreasing makes them: input ids and the lengths of their documents.
PACKED = [
    {"input_ids": [5, 6, 7, 8, 9, 10, 11], "seq_lengths": [4, 3]},
    {"input_ids": [12, 13, 14, 15], "seq_lengths": [4]},
]


@pytest.fixture(scope="module")
def tiny_model() -> Any:
    model = tiny.build_model(tiny.build_tokenizer())
    return model.eval()


def test_packed_examples_become_rows_with_restarting_positions_and_no_mask() -> None:
    batch = PackedRowsCollator(pad_token_id=PAD)(PACKED)

    assert "attention_mask" not in batch  # transformers reads document boundaries from position ids only without one
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 10, 11], [12, 13, 14, 15, PAD, PAD, PAD]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0]]
    assert batch["labels"][1].tolist()[4:] == [-100, -100, -100]
    assert int(batch[REAL_TOKENS]) == 11


@pytest.mark.parametrize(
    ("batch", "expected"),
    [
        ({"input_ids": torch.ones(2, 5), "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}, 8),
        ({"input_ids": torch.ones(1, 9), "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 0, 1]])}, 9),
        ({"input_ids": torch.ones(2, 4), "position_ids": torch.zeros(2, 4), REAL_TOKENS: torch.tensor(6)}, 6),
    ],
    ids=[
        "a padded batch counts its mask",
        "a padding-free row is all real tokens",
        "packed rows count what the collator counted, and the count leaves the batch",
    ],
)
def test_real_tokens_are_counted_for_every_layout(batch: dict[str, Any], expected: int) -> None:
    assert int(take_token_count(batch)) == expected
    assert REAL_TOKENS not in batch


@pytest.mark.parametrize("attention", ["sdpa", "eager"], ids=["with sdpa", "with eager attention"])
def test_a_document_in_a_packed_row_is_scored_as_if_it_were_alone(tiny_model: Any, attention: str) -> None:
    tiny_model.config._attn_implementation = attention
    batch = PackedRowsCollator(pad_token_id=PAD)(PACKED)
    batch.pop(REAL_TOKENS)
    batch.pop("labels")
    with torch.no_grad():
        packed = tiny_model(**batch, use_cache=False).logits  # as in training (TRL sets it)
        second_alone = tiny_model(input_ids=torch.tensor([[9, 10, 11]])).logits
        first_alone = tiny_model(input_ids=torch.tensor([[5, 6, 7, 8]])).logits
        next_row_alone = tiny_model(input_ids=torch.tensor([[12, 13, 14, 15]])).logits
        second_after_first = tiny_model(input_ids=torch.tensor([[5, 6, 7, 8, 9, 10, 11]])).logits

    torch.testing.assert_close(packed[0, :4], first_alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[0, 4:7], second_alone[0], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(packed[1, :4], next_row_alone[0], rtol=1e-4, atol=1e-5)
    # The test can tell: read as one document, the second one's scores depend on the first.
    assert not torch.allclose(second_after_first[0, 4:7], second_alone[0], rtol=1e-4, atol=1e-5)


def test_a_packed_run_trains_on_rows_and_counts_every_real_token(make_context: ContextFactory) -> None:
    context = make_context({"dataset": {"path": f"{MOUNT}/text.jsonl"},
                            "training": {"packing": True, "maxSteps": None, "epochs": 1}})
    built = train.build_run(context, ProgressTracker())

    train.train(built)

    packed = built.trainer.train_dataset
    assert built.kernels.packing == "rows"
    assert isinstance(built.trainer.data_collator, PackedRowsCollator)
    assert max(map(len, packed["input_ids"])) <= 64 and any(len(docs) > 1 for docs in packed["seq_lengths"])
    assert built.trainer.state.num_input_tokens_seen == sum(map(sum, packed["seq_lengths"]))
