"""Packed rows: TRL's best-fit-decreasing packs, laid out as rows for attention kernels that need a mask.

TRL 1.16 always flattens a packed micro-batch into one padding-free row. That suits flash attention's varlen
kernel, which takes the document boundaries. sdpa and eager take a mask instead, and transformers builds it from
the position ids over the whole row: (batch x seq) squared, and every query is computed against the whole
micro-batch. Kept as rows of maxSeqLength, each row gets its own per-document mask (batch x seq x seq) and the
attention work of unpacked rows, while the rows stay full of real tokens.

A packed row has no attention mask (transformers reads the document boundaries from position ids only when
there is none); its pads, at the end of the row, have labels -100 and position 0, i.e. each pad is a document of
its own that nothing attends to. The row's count of real tokens travels in the batch under REAL_TOKENS and is
taken out before the model sees the batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

REAL_TOKENS = "kubetune_real_tokens"


@dataclass
class PackedRowsCollator(DataCollatorForLanguageModeling):
    """Packed examples (with TRL's seq_lengths) as padded rows with per-document position ids and no mask."""

    padding_free: bool = False
    return_position_ids: bool = True

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = super().torch_call(examples)
        batch[REAL_TOKENS] = batch.pop("attention_mask").sum()
        return batch


def as_rows(collator: Any) -> PackedRowsCollator:
    """TRL's padding-free collator for packed examples, as packed rows with the same padding."""
    if not isinstance(collator, DataCollatorForLanguageModeling):
        raise TypeError(f"packed rows replace TRL's language-modeling collator, not {type(collator).__name__}")
    return PackedRowsCollator(pad_token_id=collator.pad_token_id, pad_to_multiple_of=collator.pad_to_multiple_of,
                              return_tensors=collator.return_tensors)


def take_token_count(inputs: dict[str, Any]) -> Any:
    """A micro-batch's non-padding tokens, counted without a host sync (a device tensor, or an int for a
    padding-free row); a packed-rows count is taken out of the batch."""
    if REAL_TOKENS in inputs:
        return inputs.pop(REAL_TOKENS)
    if "attention_mask" in inputs:
        return inputs["attention_mask"].sum()
    return inputs["position_ids"].size(1)
