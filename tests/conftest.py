"""Shared pytest set-up: tests marked `gpu` are skipped unless CUDA is available; each test process has its own
cache of model code loaded with trustRemoteCode (transformers copies it there), so parallel workers never
write the same file at once and nothing lands in the user's cache."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile

import pytest

# Read by transformers when it is first imported, which is after this file; every process that loads this file
# (each xdist worker too, which would otherwise inherit its controller's) gets its own.
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="kubetune-test-hf-modules-")
atexit.register(shutil.rmtree, os.environ["HF_MODULES_CACHE"], ignore_errors=True)


@functools.cache
def cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if gpu_items and not cuda_available():
        skip = pytest.mark.skip(reason="needs a CUDA GPU (none here)")
        for item in gpu_items:
            item.add_marker(skip)
