"""Operator settings from the environment: the one place their names and defaults live.

The env names are a contract with the Helm chart (helm/kubetune), which sets them on the operator's
Deployment.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from kubetune import __version__, contract
from kubetune.capacity import CapacityError, NodeType, node_groups
from kubetune.gpus import DiscoveryError, LabelProduct, label_products
from kubetune.plan import DEFAULT_SAFETY_MARGIN

ENV_TRAINER_IMAGE = "KUBETUNE_TRAINER_IMAGE"
ENV_WATCH_NAMESPACES = "KUBETUNE_WATCH_NAMESPACES"
ENV_SAFETY_MARGIN = "KUBETUNE_SAFETY_MARGIN"
ENV_REPLAN_INTERVAL_SECONDS = "KUBETUNE_REPLAN_INTERVAL_SECONDS"
ENV_OPERATOR_METRICS_PORT = "KUBETUNE_OPERATOR_METRICS_PORT"
ENV_HEALTH_PORT = "KUBETUNE_HEALTH_PORT"
ENV_PEERING_NAME = "KUBETUNE_PEERING_NAME"
ENV_LOG_FORMAT = "KUBETUNE_LOG_FORMAT"
ENV_TRAINER_STATUS_INTERVAL_SECONDS = "KUBETUNE_TRAINER_STATUS_INTERVAL_SECONDS"
ENV_GPU_LABEL_PRODUCTS = "KUBETUNE_GPU_LABEL_PRODUCTS"
ENV_GPU_PRICES = "KUBETUNE_GPU_PRICES"
ENV_CAPACITY_MODE = "KUBETUNE_CAPACITY_MODE"
ENV_NODE_GROUPS = "KUBETUNE_NODE_GROUPS"
CAPACITY_MODES = ("fixed", "autoscale")
# Where the calibration ConfigMap lives (the chart sets the operator's own namespace); unset: memory only.
ENV_CALIBRATION_NAMESPACE = "KUBETUNE_CALIBRATION_NAMESPACE"

DEFAULT_TRAINER_IMAGE = f"ghcr.io/kubetune/trainer:{__version__}"
DEFAULT_REPLAN_INTERVAL_SECONDS = 60.0
DEFAULT_OPERATOR_METRICS_PORT = 8080
DEFAULT_HEALTH_PORT = 8081
DEFAULT_PEERING_NAME = "kubetune"
DEFAULT_TRAINER_STATUS_INTERVAL_SECONDS = contract.DEFAULT_STATUS_INTERVAL_SECONDS  # the trainer's own default
LOG_FORMATS = ("json", "text")

LogFormat = Literal["json", "text"]
CapacityMode = Literal["fixed", "autoscale"]


class SettingsError(ValueError):
    """An operator setting that cannot be used; the message names the variable and the fix."""


@dataclass(frozen=True)
class OperatorSettings:
    trainer_image: str = DEFAULT_TRAINER_IMAGE
    watch_namespaces: tuple[str, ...] = ()
    safety_margin: float = DEFAULT_SAFETY_MARGIN
    replan_interval_seconds: float = DEFAULT_REPLAN_INTERVAL_SECONDS
    metrics_port: int = DEFAULT_OPERATOR_METRICS_PORT
    health_port: int = DEFAULT_HEALTH_PORT
    peering_name: str = DEFAULT_PEERING_NAME
    log_format: LogFormat = "json"
    trainer_status_interval_seconds: int = DEFAULT_TRAINER_STATUS_INTERVAL_SECONDS
    gpu_label_products: tuple[LabelProduct, ...] = ()
    gpu_prices: Mapping[str, float] = field(default_factory=dict)  # product -> price per GPU-hour
    capacity_mode: CapacityMode = "fixed"
    node_groups: tuple[NodeType, ...] = ()  # cluster-autoscaler node groups (autoscale mode)
    calibration_namespace: str | None = None

    @property
    def clusterwide(self) -> bool:
        return not self.watch_namespaces


def _number(env: Mapping[str, str], name: str, default: float, *, low: float, high: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r}: must be a number between {low} and {high}") from None
    if not low <= value <= high:
        raise SettingsError(f"{name}={raw!r}: must be between {low} and {high}")
    return value


def _port(env: Mapping[str, str], name: str, default: int) -> int:
    return int(_number(env, name, default, low=1, high=65535))


def _log_format(env: Mapping[str, str]) -> LogFormat:
    raw = env.get(ENV_LOG_FORMAT, "").strip() or "json"
    if raw == "json":
        return "json"
    if raw == "text":
        return "text"
    raise SettingsError(f"{ENV_LOG_FORMAT}={raw!r}: must be one of {', '.join(LOG_FORMATS)}")


def gpu_label_products(env: Mapping[str, str]) -> tuple[LabelProduct, ...]:
    """The chart's gpuDiscovery.labelProducts: a JSON list of {label: key=value, product | memoryGiB}."""
    items = _json(env, ENV_GPU_LABEL_PRODUCTS)
    try:
        return () if items is None else label_products(items, ENV_GPU_LABEL_PRODUCTS)
    except DiscoveryError as error:
        raise SettingsError(str(error)) from None


def _json(env: Mapping[str, str], name: str) -> object:
    try:
        return json.loads(env.get(name, "").strip() or "null")
    except json.JSONDecodeError as error:
        raise SettingsError(f"{name}: not JSON ({error.msg})") from None


def gpu_prices(env: Mapping[str, str]) -> dict[str, float]:
    """The chart's pricing.gpuHour: a JSON object of GPU product -> price per GPU-hour."""
    prices = _json(env, ENV_GPU_PRICES) or {}
    if not isinstance(prices, dict):
        raise SettingsError(f"{ENV_GPU_PRICES}: must be a JSON object of GPU product -> price per GPU-hour")
    for product, price in prices.items():
        if isinstance(price, bool) or not isinstance(price, int | float) or price < 0:
            raise SettingsError(f"{ENV_GPU_PRICES}[{product!r}]: must be a number, 0 or more (price per GPU-hour)")
    return {str(product): float(price) for product, price in prices.items()}


def _capacity_mode(env: Mapping[str, str]) -> CapacityMode:
    raw = env.get(ENV_CAPACITY_MODE, "").strip() or "fixed"
    if raw == "fixed":
        return "fixed"
    if raw == "autoscale":
        return "autoscale"
    raise SettingsError(f"{ENV_CAPACITY_MODE}={raw!r}: must be one of {', '.join(CAPACITY_MODES)}")


def _node_groups(env: Mapping[str, str]) -> tuple[NodeType, ...]:
    items = _json(env, ENV_NODE_GROUPS)
    try:
        return () if items is None else node_groups(items, ENV_NODE_GROUPS)
    except CapacityError as error:
        raise SettingsError(str(error)) from None


def load_settings(env: Mapping[str, str] | None = None) -> OperatorSettings:
    """The settings in `env` (default: the process environment), defaults for the unset ones."""
    env = os.environ if env is None else env
    namespaces = tuple(ns.strip() for ns in env.get(ENV_WATCH_NAMESPACES, "").split(",") if ns.strip())
    return OperatorSettings(
        trainer_image=env.get(ENV_TRAINER_IMAGE, "").strip() or DEFAULT_TRAINER_IMAGE,
        watch_namespaces=namespaces,
        # A margin of 1 or more would leave nothing to schedule on.
        safety_margin=_number(env, ENV_SAFETY_MARGIN, DEFAULT_SAFETY_MARGIN, low=0.0, high=0.9),
        replan_interval_seconds=_number(
            env, ENV_REPLAN_INTERVAL_SECONDS, DEFAULT_REPLAN_INTERVAL_SECONDS, low=0.1, high=86400
        ),
        # 0 turns the metrics endpoint off (tests run several operators in one process).
        metrics_port=int(_number(env, ENV_OPERATOR_METRICS_PORT, DEFAULT_OPERATOR_METRICS_PORT, low=0, high=65535)),
        health_port=_port(env, ENV_HEALTH_PORT, DEFAULT_HEALTH_PORT),
        peering_name=env.get(ENV_PEERING_NAME, "").strip() or DEFAULT_PEERING_NAME,
        log_format=_log_format(env),
        gpu_label_products=gpu_label_products(env),
        gpu_prices=gpu_prices(env),
        capacity_mode=_capacity_mode(env),
        node_groups=_node_groups(env),
        calibration_namespace=env.get(ENV_CALIBRATION_NAMESPACE, "").strip() or None,
        trainer_status_interval_seconds=int(
            _number(
                env,
                ENV_TRAINER_STATUS_INTERVAL_SECONDS,
                DEFAULT_TRAINER_STATUS_INTERVAL_SECONDS,
                low=1,
                high=86400,
            )
        ),
    )
