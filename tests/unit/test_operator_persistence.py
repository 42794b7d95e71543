"""kopf's bookkeeping in memory: per object, nothing written to it, a touch or a status write is no change."""

from __future__ import annotations

from typing import Any

import kopf
import pytest

from kubetune.api import GROUP, KIND
from kubetune.persistence import HandlerMemory

RECORD: Any = {"retries": 1, "success": False, "delayed": "2026-01-01T00:00:01"}


def finetunejob(uid: str = "u1", **extra: Any) -> kopf.Body:
    body = {
        "apiVersion": f"{GROUP}/v1alpha1",
        "kind": KIND,
        "metadata": {"name": "a", "namespace": "ns", "uid": uid, "labels": {"team": "x"}, "generation": 1},
        "spec": {"model": {"name": "Qwen/Qwen2.5-7B"}},
    }
    return kopf.Body({**body, **extra})


def with_metadata(**metadata: Any) -> kopf.Body:
    return finetunejob(metadata={**finetunejob()["metadata"], **metadata})


def test_progress_is_kept_per_object_and_never_written_to_it() -> None:
    memory, patch = HandlerMemory(prefix=GROUP, kind=KIND), kopf.Patch()
    memory.progress.store(key=kopf.HandlerId("on_apply"), record=RECORD, body=finetunejob("u1"), patch=patch)
    assert memory.progress.fetch(key=kopf.HandlerId("on_apply"), body=finetunejob("u1")) == RECORD
    assert memory.progress.fetch(key=kopf.HandlerId("on_apply"), body=finetunejob("u2")) is None
    assert not patch


@pytest.mark.parametrize(
    "drop",
    [
        lambda memory, body: memory.progress.purge(key=kopf.HandlerId("on_apply"), body=body, patch=kopf.Patch()),
        lambda memory, body: memory.forget(body.metadata.uid),
    ],
    ids=["a purged handler's progress is gone", "a deleted object's progress is gone"],
)
def test_progress_can_be_dropped(drop: Any) -> None:
    memory, body = HandlerMemory(prefix=GROUP, kind=KIND), finetunejob()
    memory.progress.store(key=kopf.HandlerId("on_apply"), record=RECORD, body=body, patch=kopf.Patch())
    drop(memory, body)
    assert memory.progress.fetch(key=kopf.HandlerId("on_apply"), body=body) is None


def test_the_diff_base_is_kept_per_object_until_it_is_forgotten() -> None:
    memory, patch = HandlerMemory(prefix=GROUP, kind=KIND), kopf.Patch()
    essence = memory.diffbase.build(body=finetunejob())
    memory.diffbase.store(body=finetunejob(), patch=patch, essence=essence)
    assert memory.diffbase.fetch(body=finetunejob()) == essence
    assert memory.diffbase.fetch(body=finetunejob("u2")) is None
    assert not patch
    memory.forget("u1")
    assert memory.diffbase.fetch(body=finetunejob()) is None


@pytest.mark.parametrize(
    ("changed", "is_change"),
    [
        (finetunejob(status={"phase": "Running", "attempt": 1}), False),
        (with_metadata(managedFields=[{"manager": "kubectl"}], resourceVersion="7", generation=2), False),
        (with_metadata(annotations={f"{GROUP}/kopf-managed": "yes", f"{GROUP}/touch-dummy": "t"}), False),
        (finetunejob(spec={"model": {"name": "Qwen/Qwen2.5-0.5B"}}), True),
        (with_metadata(labels={"team": "y"}), True),
        (with_metadata(annotations={"note": "hello"}), True),
    ],
    ids=[
        "a status write is no change",
        "system metadata is no change",
        "kopf's touch of a retry is no change",
        "a spec edit is a change",
        "a label edit is a change",
        "a user's annotation is a change",
    ],
)
def test_what_counts_as_a_change_of_a_finetunejob(changed: kopf.Body, is_change: bool) -> None:
    storage = HandlerMemory(prefix=GROUP, kind=KIND).diffbase
    assert (storage.build(body=changed) != storage.build(body=finetunejob())) == is_change


def test_other_kinds_get_an_empty_essence() -> None:
    job = kopf.Body({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "a-1"}, "spec": {"x": 1}})
    assert HandlerMemory(prefix=GROUP, kind=KIND).diffbase.build(body=job) == {}
