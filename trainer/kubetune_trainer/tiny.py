"""A tiny Llama-shaped model, a tokenizer trained here and small datasets, all made locally.

Nothing is downloaded: `kubetune demo` and the tests fine-tune these for real, in seconds on a CPU.
The model is random-initialised, so what it learns is only the pattern of the generated data.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Small enough to train in seconds on two CPU cores, shaped like Llama (GQA, SwiGLU, RoPE).
TINY_DIMS: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
}
# Big enough for every word of the generated data plus byte-level merges.
TINY_VOCAB_SIZE = 512
BOS, EOS, UNK = "<s>", "</s>", "<unk>"
# A minimal chat template: each message on its own role line; the prompt ends with the assistant tag.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

COLOURS = ["red", "green", "blue", "yellow", "black", "white", "orange", "purple", "brown", "grey"]
ANIMALS = ["cat", "dog", "horse", "bird", "fish", "mouse", "sheep", "goat", "fox", "bear"]
NUMBERS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]


def instruction_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    """Rows of a small, learnable task: name the colour and the count of an animal group."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        colour, animal, number = rng.choice(COLOURS), rng.choice(ANIMALS), rng.choice(NUMBERS)
        prompt = f"Describe the group: {number} {colour} {animal}s."
        response = f"There are {number} {animal}s and they are {colour}."
        rows.append({"prompt": prompt, "response": response})
    return rows


def chat_rows(count: int, seed: int = 0) -> list[dict[str, Any]]:
    return [
        {"messages": [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]}
        for row in instruction_rows(count, seed)
    ]


def text_rows(count: int, seed: int = 0) -> list[dict[str, str]]:
    return [{"text": f"{row['prompt']} {row['response']}"} for row in instruction_rows(count, seed)]


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


def _corpus(seed: int) -> Iterator[str]:
    for row in instruction_rows(2000, seed):
        yield f"{row['prompt']} {row['response']} <|user|> <|assistant|> <|system|>"


def build_tokenizer(vocab_size: int = TINY_VOCAB_SIZE, seed: int = 0) -> Any:
    """A byte-level BPE tokenizer trained on the generated data; it has no pad token, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, unk_token=UNK)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_model(tokenizer: Any, seed: int = 0, **dims: Any) -> Any:
    """A random-initialised LlamaForCausalLM with TINY_DIMS (overridable), sized to the tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        **{**TINY_DIMS, **dims},
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(directory: Path, seed: int = 0, **dims: Any) -> Path:
    """Build the tiny model and its tokenizer and save both where `model.path` can load them."""
    tokenizer = build_tokenizer(seed=seed)
    model = build_model(tokenizer, seed=seed, **dims)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
