"""Known-harmless warnings of the libraries under the trainer, silenced narrowly: each by its logger or warning
category and the start of its exact message, so every other warning (a real one) still shows.

Installed when `kubetune_trainer` is imported, before peft (and with it bitsandbytes) is: the first of them is
logged while bitsandbytes is being imported.
"""

from __future__ import annotations

import logging
import warnings

# bitsandbytes (0.50), on a CPU with AVX512-BF16, asks the Hugging Face Hub for a CPU 4-bit matmul kernel while it
# is imported (peft imports it even for plain LoRA), and logs this when the Hub cannot vouch for it (offline, or an
# untrusted publisher). bitsandbytes then uses its own CPU kernel; nothing about training changes and the user
# cannot act on it. Other messages of that logger still show.
BITSANDBYTES_CPU_OPS_LOGGER = "bitsandbytes.backends.cpu.ops"
BITSANDBYTES_HUB_KERNEL_MESSAGE = "Failed to load CPU gemm_4bit_forward from kernels-community"

# Warnings by category and the start of their message (a regular expression).
# transformers 5 renamed `PreTrainedModel.is_gradient_checkpointing`; peft (0.21) and TRL (1.16) still read the old
# name, on every model they wrap, whether checkpointing is on or off. kubetune itself uses the new names.
# torch.distributed.checkpoint (2.13) warns on every save and load outside a process group, where kubetune writes a
# single process's checkpoints in the background on purpose (checkpoint_writes.py).
HARMLESS_WARNINGS: tuple[tuple[type[Warning], str], ...] = (
    (FutureWarning, r"`is_gradient_checkpointing` is deprecated and will be removed in v6"),
    (UserWarning, r"torch\.distributed is disabled, unavailable or uninitialized, assuming the intent is to "
                  r"(save|load) in a single process"),
)


class DropMessagesStartingWith(logging.Filter):
    """Drops log records whose message starts with one of the given prefixes."""

    def __init__(self, *prefixes: str) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefixes)


def silence_known_library_noise() -> None:
    """Installs the filters above (once: a second call adds nothing)."""
    bitsandbytes_logger = logging.getLogger(BITSANDBYTES_CPU_OPS_LOGGER)
    if not any(isinstance(existing, DropMessagesStartingWith) for existing in bitsandbytes_logger.filters):
        bitsandbytes_logger.addFilter(DropMessagesStartingWith(BITSANDBYTES_HUB_KERNEL_MESSAGE))
    for category, message in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
