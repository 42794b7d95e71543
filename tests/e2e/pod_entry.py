"""Runs a trainer container's `python -m MODULE` for the e2e kubelet (kubelet.py).

The spec names the model and dataset by their paths in the container (under a volume's mountPath). Here
those volumes are local folders, so the spec read from the mounted ConfigMap has those paths moved into
them, by the function `kubetune train --mount` uses; then MODULE runs as `python -m` would run it.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path
from typing import Any

from kubetune_trainer import context


def main() -> None:
    mounts = {path: Path(folder) for path, folder in json.loads(os.environ.pop("KUBETUNE_E2E_MOUNTS")).items()}
    read_spec_file = context.read_spec_file

    def read_with_mounts(path: Path) -> Any:
        return context.with_local_mounts(read_spec_file(path), mounts)

    context.read_spec_file = read_with_mounts  # type: ignore[assignment]
    module = sys.argv[1]
    sys.argv = [module, *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
