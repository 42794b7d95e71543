"""The trainer silences exactly the library warnings it knows to be harmless; every other one still shows."""

from __future__ import annotations

import logging
import warnings

import pytest

from kubetune_trainer.library_noise import (
    BITSANDBYTES_CPU_OPS_LOGGER,
    BITSANDBYTES_HUB_KERNEL_MESSAGE,
    silence_known_library_noise,
)


@pytest.mark.parametrize(
    ("logger", "message", "shown"),
    [
        (BITSANDBYTES_CPU_OPS_LOGGER, f"{BITSANDBYTES_HUB_KERNEL_MESSAGE}: Kernel repository ... untrusted", False),
        (BITSANDBYTES_CPU_OPS_LOGGER, "CPU 4-bit kernel failed: out of memory", True),
        ("bitsandbytes.cextension", BITSANDBYTES_HUB_KERNEL_MESSAGE, True),
    ],
    ids=["bitsandbytes' hub-kernel message is dropped", "another message of the same logger shows",
         "the same words from another logger show"],
)
def test_log_records(logger: str, message: str, shown: bool, caplog: pytest.LogCaptureFixture) -> None:
    silence_known_library_noise()
    silence_known_library_noise()  # twice: still one filter

    with caplog.at_level(logging.WARNING):
        logging.getLogger(logger).warning(message)

    assert (message in caplog.text) == shown
    assert len(logging.getLogger(BITSANDBYTES_CPU_OPS_LOGGER).filters) == 1


@pytest.mark.parametrize(
    ("category", "message", "shown"),
    [
        (FutureWarning, "`is_gradient_checkpointing` is deprecated and will be removed in v6. Use ...", False),
        (FutureWarning, "`gradient_checkpointing` is deprecated and will be removed in v6.", True),
        (DeprecationWarning, "`is_gradient_checkpointing` is deprecated and will be removed in v6.", True),
        (UserWarning, "something the user can act on", True),
        (UserWarning, "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to save "
                      "in a single process.", False),
        (UserWarning, "torch.distributed is disabled, unavailable or uninitialized, assuming the intent is to load "
                      "in a single process.", False),
        (UserWarning, "torch.distributed is disabled, unavailable or uninitialized", True),
    ],
    ids=["peft and TRL reading the renamed property is silenced", "a deprecation kubetune could cause still shows",
         "the same words in another category show", "a real warning shows",
         "a single process's background checkpoint save is silenced", "its load is silenced",
         "another warning about torch.distributed shows"],
)
def test_warnings(category: type[Warning], message: str, shown: bool) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        silence_known_library_noise()
        warnings.warn(message, category, stacklevel=1)

    assert [str(w.message) for w in caught] == ([message] if shown else [])
