"""The shape of the Node and Pod fields the planner reads, for objects that come from a file
(`kubetune plan/render --nodes/--pods`): a file is input, and a wrong shape is an error naming the
field, not a crash in the planner. Everything else in the objects is left as it is."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from kubetune.api import LabelValue, ShortText

# A Kubernetes quantity as kubectl prints it, or a plain number; bounded like the API's quantities.
QuantityText = Annotated[str, StringConstraints(max_length=64)] | int | float


class Loose(BaseModel):
    """Only the fields named are checked; the rest of the object is kept as it is."""

    model_config = ConfigDict(extra="allow")


class Metadata(Loose):
    name: ShortText
    labels: dict[str, LabelValue] = Field(default_factory=dict)


class Taint(Loose):
    key: str = ""
    value: str | None = None
    effect: str | None = None


class NodeSpec(Loose):
    unschedulable: bool = False
    taints: list[Taint] = Field(default_factory=list)


class Condition(Loose):
    type: str
    status: str


class NodeStatus(Loose):
    allocatable: dict[str, QuantityText] = Field(default_factory=dict)
    conditions: list[Condition] = Field(default_factory=list)


class Node(Loose):
    metadata: Metadata
    spec: NodeSpec = Field(default_factory=NodeSpec)
    status: NodeStatus = Field(default_factory=NodeStatus)


class Resources(Loose):
    limits: dict[str, QuantityText] | None = None
    requests: dict[str, QuantityText] | None = None


class Container(Loose):
    resources: Resources | None = None


class PodSpec(Loose):
    node_name: str | None = Field(default=None, alias="nodeName")
    containers: list[Container] = Field(default_factory=list)
    init_containers: list[Container] | None = Field(default=None, alias="initContainers")


class PodStatus(Loose):
    phase: str | None = None


class Pod(Loose):
    spec: PodSpec = Field(default_factory=PodSpec)
    status: PodStatus = Field(default_factory=PodStatus)


SHAPES: dict[str, type[BaseModel]] = {"Node": Node, "Pod": Pod}
