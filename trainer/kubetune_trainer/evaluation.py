"""Evaluation after training: perplexity from the eval loss, ROUGE-1/2/L on generated responses."""

from __future__ import annotations

import math
from typing import Any

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")
# exp() of a loss above this overflows a float; such a model has no meaningful perplexity anyway.
MAX_LOG_PERPLEXITY = 700.0


def perplexity(eval_loss: float | None) -> float | None:
    if eval_loss is None or math.isnan(eval_loss):
        return None
    return math.exp(min(eval_loss, MAX_LOG_PERPLEXITY))


def prompt_text(row: dict[str, Any], tokenizer: Any) -> str:
    """The prompt of a prompt-completion row as the model sees it (chat template for messages; a vision row's
    images as placeholders in its first user message, where TRL puts them in training)."""
    prompt = row["prompt"]
    if isinstance(prompt, list):
        if row.get("images"):
            from trl.data_utils import prepare_multimodal_messages

            prompt = prepare_multimodal_messages(prompt, images=row["images"])
        return str(tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True))
    return str(prompt)


def reference_text(row: dict[str, Any]) -> str:
    completion = row["completion"]
    return str(completion[-1]["content"] if isinstance(completion, list) else completion)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean F1 of ROUGE-1, ROUGE-2 and ROUGE-L over the pairs."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references, strict=True):
        scores = scorer.score(reference, prediction)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    count = max(1, len(predictions))
    return {name: round(total / count, 4) for name, total in totals.items()}


def generate_responses(model: Any, tokenizer: Any, prompts: list[str], max_new_tokens: int,
                       images: list[list[Any]] | None = None) -> list[str]:
    """Greedy completions of each prompt, without the prompt; with a processor, each prompt reads its images."""
    import torch

    model.eval()
    responses = []
    device = next(model.parameters()).device
    pad_token_id = getattr(tokenizer, "tokenizer", tokenizer).pad_token_id
    with torch.no_grad():
        for index, prompt in enumerate(prompts):
            pictures = {"images": images[index]} if images is not None and images[index] else {}
            encoded = tokenizer(text=prompt, return_tensors="pt", add_special_tokens=False, **pictures).to(device)
            output = model.generate(
                **encoded, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad_token_id
            )
            new_tokens = output[0, encoded["input_ids"].shape[1]:]
            responses.append(tokenizer.decode(new_tokens, skip_special_tokens=True).strip())
    return responses


def rouge_on(model: Any, tokenizer: Any, rows: Any, max_new_tokens: int) -> dict[str, float]:
    """ROUGE of the model's responses to the eval rows' prompts against their completions."""
    prompts = [prompt_text(row, tokenizer) for row in rows]
    references = [reference_text(row) for row in rows]
    images = [row["images"] for row in rows] if "images" in rows.column_names else None
    return rouge_scores(generate_responses(model, tokenizer, prompts, max_new_tokens, images), references)
