"""What one training run needs from outside: the effective spec and the pod's environment."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kubetune import contract
from kubetune.api import FineTuneJobSpec
from kubetune.presets import effective_spec
from kubetune.validation import SpecError, parse_effective_spec
from kubetune_trainer.errors import ConfigError

# Overrides the Kubernetes API base URL (tests point it at a fake API server on loopback).
ENV_API_URL = "KUBETUNE_API_URL"
# Overrides where the termination message goes (tests; the kubelet reads contract.TERMINATION_LOG).
ENV_TERMINATION_LOG = "KUBETUNE_TERMINATION_LOG"


@dataclass(frozen=True)
class RunContext:
    """Everything a run reads from its surroundings, decided once at start."""

    spec: FineTuneJobSpec
    output_dir: Path
    job_name: str | None = None
    namespace: str | None = None
    metrics_port: int | None = None
    status_interval_seconds: float = contract.DEFAULT_STATUS_INTERVAL_SECONDS
    hf_token: str | None = None
    api_url: str | None = None
    interactive: bool = False
    termination_log: Path | None = Path(contract.TERMINATION_LOG)
    local_mounts: Mapping[str, Path] = field(default_factory=dict)
    """`--mount MOUNT_PATH=DIR` of a local run (with_local_mounts applied them): messages name them."""

    @property
    def reports_status(self) -> bool:
        return self.job_name is not None and self.namespace is not None


def spec_from_document(document: Any, source: str) -> FineTuneJobSpec:
    """The effective spec from a document holding the spec itself (the operator's ConfigMap writes that),
    `spec: ...`, or a whole FineTuneJob. The operator validated the FineTuneJob before it wrote the spec:
    only the field rules are checked again here (see parse_effective_spec)."""
    if not isinstance(document, Mapping):
        raise ConfigError(f"{source}: must be a mapping: the spec, or a FineTuneJob holding it under 'spec'")
    spec = document.get("spec", document)
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{source}: 'spec' must be a mapping, not {type(spec).__name__}")
    try:
        return effective_spec(parse_effective_spec(spec))
    except SpecError as exc:
        raise ConfigError(f"{source}: invalid spec: {exc}") from None


def parse_document(text: str) -> Any:
    """JSON (what the operator writes) or YAML (what people write).

    JSON is read as JSON first: PyYAML follows YAML 1.1, where a number such as 2e-05 is a string.
    """
    try:
        return json.loads(text)
    except ValueError:
        return yaml.safe_load(text)


def read_spec_file(path: Path) -> FineTuneJobSpec:
    try:
        document = parse_document(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return spec_from_document(document, str(path))


def _int_env(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, "")
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r}: must be an integer") from None


def termination_log_path(env: Mapping[str, str]) -> Path:
    return Path(env.get(ENV_TERMINATION_LOG) or contract.TERMINATION_LOG)


def context_from_env(env: Mapping[str, str]) -> RunContext:
    """The run as the operator's Job describes it in the pod's environment."""
    spec_path = Path(env.get(contract.ENV_SPEC_PATH) or contract.SPEC_PATH)
    return RunContext(
        spec=read_spec_file(spec_path),
        output_dir=Path(env.get(contract.ENV_OUTPUT_DIR) or contract.OUTPUT_DIR),
        job_name=env.get(contract.ENV_JOB_NAME) or None,
        namespace=env.get(contract.ENV_JOB_NAMESPACE) or None,
        metrics_port=_int_env(env, contract.ENV_METRICS_PORT, contract.DEFAULT_METRICS_PORT),
        status_interval_seconds=_int_env(
            env, contract.ENV_STATUS_INTERVAL_SECONDS, contract.DEFAULT_STATUS_INTERVAL_SECONDS
        ),
        hf_token=env.get(contract.ENV_HF_TOKEN) or None,
        api_url=env.get(ENV_API_URL) or None,
        termination_log=termination_log_path(env),
    )


def local_path(path: str, mounts: Mapping[str, Path]) -> str:
    """A path under a volume's mountPath moved to the local directory that --mount maps it to; others as they are."""
    for mount_path, directory in mounts.items():
        prefix = mount_path.rstrip("/")
        if path == prefix or path.startswith(prefix + "/"):
            return str(directory.resolve()) + path[len(prefix):]
    return path


def with_local_mounts(spec: FineTuneJobSpec, mounts: Mapping[str, Path]) -> FineTuneJobSpec:
    """The spec with model.path, dataset.path and the page font under a volume's mountPath moved to a local
    directory (`kubetune train --mount /data=./here` runs a cluster spec on this machine). Image paths inside the
    rows are mapped when they are read (data.load_training_data's local_mounts)."""

    def local(path: str | None) -> str | None:
        return None if path is None else local_path(path, mounts)

    update: dict[str, Any] = {
        "model": spec.model.model_copy(update={"path": local(spec.model.path)}),
        "dataset": spec.dataset.model_copy(update={"path": local(spec.dataset.path)}),
    }
    if spec.vision is not None and spec.vision.render is not None:
        render = spec.vision.render.model_copy(update={"font": local(spec.vision.render.font)})
        update["vision"] = spec.vision.model_copy(update={"render": render})
    return spec.model_copy(update=update)


def is_main_process() -> bool:
    """Rank 0 of a torchrun launch, or a single process."""
    return os.environ.get("RANK", "0") == "0"
