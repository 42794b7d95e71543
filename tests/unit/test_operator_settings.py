"""Operator settings from the environment (the Helm chart sets these names)."""

from __future__ import annotations

import pytest

from kubetune import settings
from kubetune.gpus import LabelProduct
from kubetune.plan import DEFAULT_SAFETY_MARGIN


def test_defaults_without_environment() -> None:
    loaded = settings.load_settings({})
    assert loaded.trainer_image.startswith("ghcr.io/kubetune/trainer:")
    assert loaded.clusterwide and loaded.safety_margin == DEFAULT_SAFETY_MARGIN
    assert (loaded.metrics_port, loaded.health_port, loaded.peering_name) == (8080, 8081, "kubetune")
    assert loaded.replan_interval_seconds == 60 and loaded.trainer_status_interval_seconds == 30


@pytest.mark.parametrize(
    ("env", "field", "value"),
    [
        ({"KUBETUNE_WATCH_NAMESPACES": "a, b,,c"}, "watch_namespaces", ("a", "b", "c")),
        ({"KUBETUNE_TRAINER_IMAGE": "registry/trainer:9"}, "trainer_image", "registry/trainer:9"),
        ({"KUBETUNE_SAFETY_MARGIN": "0.2"}, "safety_margin", 0.2),
        ({"KUBETUNE_REPLAN_INTERVAL_SECONDS": "5"}, "replan_interval_seconds", 5.0),
        ({"KUBETUNE_OPERATOR_METRICS_PORT": "0"}, "metrics_port", 0),
        ({"KUBETUNE_LOG_FORMAT": "text"}, "log_format", "text"),
        ({"KUBETUNE_TRAINER_STATUS_INTERVAL_SECONDS": "10"}, "trainer_status_interval_seconds", 10),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": '[{"label": "pool=a100", "product": "NVIDIA-A100-SXM4-80GB"}, '
                                         '{"label": "pool=big", "memoryGiB": 94}]'},
         "gpu_label_products", (LabelProduct("pool", "a100", "NVIDIA-A100-SXM4-80GB"),
                                LabelProduct("pool", "big", None, 94.0))),
        ({"KUBETUNE_GPU_PRICES": '{"NVIDIA-H100-80GB-HBM3": 4, "NVIDIA-L4": 0.8}'}, "gpu_prices",
         {"NVIDIA-H100-80GB-HBM3": 4.0, "NVIDIA-L4": 0.8}),
    ],
    ids=[
        "watched namespaces are a comma-separated list",
        "the trainer image can be replaced",
        "the safety margin is a fraction",
        "the re-plan interval is in seconds",
        "metrics port 0 turns the endpoint off",
        "logs can be plain text",
        "the trainer's status interval is passed through",
        "node labels map to GPU products or memory",
        "prices per GPU-hour by product",
    ],
)
def test_each_variable_sets_its_field(env: dict[str, str], field: str, value: object) -> None:
    assert getattr(settings.load_settings(env), field) == value


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KUBETUNE_SAFETY_MARGIN": "0.95"}, "KUBETUNE_SAFETY_MARGIN"),
        ({"KUBETUNE_HEALTH_PORT": "http"}, "KUBETUNE_HEALTH_PORT"),
        ({"KUBETUNE_LOG_FORMAT": "xml"}, "KUBETUNE_LOG_FORMAT"),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": "{"}, "KUBETUNE_GPU_LABEL_PRODUCTS: not JSON"),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": '[{"label": "pool"}]'}, r"KUBETUNE_GPU_LABEL_PRODUCTS\[0\].label"),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": '[{"label": "a=b", "product": "ACME-9000"}]'}, r"\[0\].product"),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": '[{"label": "a=b", "memoryGiB": -1}]'}, r"\[0\].memoryGiB"),
        ({"KUBETUNE_GPU_LABEL_PRODUCTS": '[{"label": "a=b"}]'}, "give product or memoryGiB"),
        ({"KUBETUNE_GPU_PRICES": '{"NVIDIA-L4": "cheap"}'}, r"KUBETUNE_GPU_PRICES\['NVIDIA-L4'\]"),
        ({"KUBETUNE_GPU_PRICES": '[1, 2]'}, "must be a JSON object"),
        ({"KUBETUNE_CAPACITY_MODE": "elastic"}, "KUBETUNE_CAPACITY_MODE='elastic': must be one of fixed, autoscale"),
        ({"KUBETUNE_NODE_GROUPS": '[{"name": "a", "gpuProduct": "NVIDIA-L4", "gpusPerNode": 1}]'},
         r"KUBETUNE_NODE_GROUPS\[0\].nodeSelector"),
    ],
    ids=[
        "a margin that leaves no memory is refused",
        "a port that is not a number is refused",
        "an unknown log format is refused",
        "label products that are not JSON are refused",
        "a label mapping without key=value is refused",
        "a label mapped to a product kubetune does not know is refused",
        "a negative GPU memory is refused",
        "a label mapped to nothing is refused",
        "a price that is not a number is refused",
        "prices that are not an object are refused",
        "an unknown capacity mode is refused",
        "a node group without the labels to pin to is refused",
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(settings.SettingsError, match=named):
        settings.load_settings(env)


def test_autoscale_mode_with_node_groups() -> None:
    loaded = settings.load_settings({
        "KUBETUNE_CAPACITY_MODE": "autoscale",
        "KUBETUNE_NODE_GROUPS": '[{"name": "l4", "gpuProduct": "NVIDIA-L4", "gpusPerNode": 1, "maxNodes": 4, '
                                '"nodeSelector": {"cloud.google.com/gke-nodepool": "l4"}}]',
    })
    assert loaded.capacity_mode == "autoscale"
    [group] = loaded.node_groups
    assert (group.product, group.gpus_per_node, group.max_nodes) == ("NVIDIA-L4", 1, 4)
    assert settings.load_settings({}).capacity_mode == "fixed"
