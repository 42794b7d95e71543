"""Loaded by every Python process of a trainer pod the e2e kubelet runs (kubelet.py puts this folder on
PYTHONPATH): the launcher, torchrun and each worker it starts.

The spec names the model and dataset by their paths in the container (under a volume's mountPath). Here
those volumes are local folders (KUBETUNE_E2E_MOUNTS: mountPath -> folder), so the spec read from the
mounted ConfigMap has those paths moved into them, by the function `kubetune train --mount` uses.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def _read_specs_with_local_mounts(mounts: dict[str, Path]) -> None:
    from kubetune_trainer import context

    read_spec_file = context.read_spec_file

    def read_with_mounts(path: Path) -> Any:
        return context.with_local_mounts(read_spec_file(path), mounts)

    context.read_spec_file = read_with_mounts  # type: ignore[assignment]


if "KUBETUNE_E2E_MOUNTS" in os.environ:
    _read_specs_with_local_mounts(
        {path: Path(folder) for path, folder in json.loads(os.environ["KUBETUNE_E2E_MOUNTS"]).items()}
    )
