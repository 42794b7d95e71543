"""Where kopf keeps its per-FineTuneJob bookkeeping: in this process's memory, not in annotations.

kopf's default storage writes handler progress and the last handled spec (the diff base) into
annotations: one more PATCH per FineTuneJob, and one more watch event that kopf processes in turn. The
operator does not need either to survive a restart: a reconcile reads its own progress from the
status (`attempt`, `jobName`) and the Job index, and adopts what exists, so after a restart kopf simply
sees every FineTuneJob as new and the reconcile is a no-op for those already handled. A change to a
frozen field made while no operator runs is refused by the CRD's validation rule instead.

The one thing still written is the touch that wakes a handler retry after its delay (an annotation):
a retry needs a watch event.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast

import kopf
from kopf import Body, BodyEssence, FieldSpec, HandlerId, Patch, ProgressRecord, RawBody

# The metadata kopf keeps in an essence.
ESSENTIAL_METADATA = ("labels", "annotations")


class MemoryProgressStorage(kopf.AnnotationsProgressStorage):
    """Handler progress (retries, delays) per object uid; touches are annotations, as kopf's default."""

    def __init__(self, *, prefix: str) -> None:
        super().__init__(prefix=prefix)
        self._records: dict[str, dict[HandlerId, ProgressRecord]] = {}

    def fetch(self, *, key: HandlerId, body: Body) -> ProgressRecord | None:
        return self._records.get(body.metadata.uid or "", {}).get(key)

    def store(self, *, key: HandlerId, record: ProgressRecord, body: Body, patch: Patch) -> None:
        self._records.setdefault(body.metadata.uid or "", {})[key] = record

    def purge(self, *, key: HandlerId, body: Body, patch: Patch) -> None:
        records = self._records.get(body.metadata.uid or "", {})
        records.pop(key, None)
        if not records:
            self.forget(body.metadata.uid or "")

    def forget(self, uid: str) -> None:
        self._records.pop(uid, None)

    def clear(self, *, essence: BodyEssence) -> BodyEssence:
        # No progress is stored in the object; the touch annotation carries the storage's marker, so
        # the diff base's build already leaves it out. (kopf's default deep-copies every essence here.)
        return essence


class MemoryDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """The last handled essence (spec, labels, annotations) per object uid.

    kopf builds an essence of every object on every event, by deep-copying the whole body. Only the
    kind with change-detecting handlers (`kind`) needs one; the others get an empty essence. What kopf
    would copy only to drop it (the status, metadata other than labels and annotations: managedFields
    can be most of an object) is left out before copying; the operator's handlers watch no field there.
    """

    def __init__(self, *, prefix: str, kind: str) -> None:
        super().__init__(prefix=prefix)
        self._kind = kind
        self._essences: dict[str, BodyEssence] = {}

    def build(self, *, body: Body, extra_fields: Iterable[FieldSpec] | None = None) -> BodyEssence:
        if body.get("kind") != self._kind:
            return cast(BodyEssence, {})
        return super().build(body=Body(_essential_part(body)), extra_fields=extra_fields)

    def fetch(self, *, body: Body) -> BodyEssence | None:
        return self._essences.get(body.metadata.uid or "")

    def store(self, *, body: Body, patch: Patch, essence: BodyEssence) -> None:
        self._essences[body.metadata.uid or ""] = essence

    def forget(self, uid: str) -> None:
        self._essences.pop(uid, None)


def _essential_part(body: Body) -> RawBody:
    metadata = body.get("metadata") or {}
    essential = {name: value for name, value in body.items() if name not in ("metadata", "status")}
    essential["metadata"] = {name: metadata[name] for name in ESSENTIAL_METADATA if name in metadata}
    return cast(RawBody, essential)


class HandlerMemory:
    """Both storages of one operator run; `forget` drops a deleted object's entries."""

    def __init__(self, *, prefix: str, kind: str) -> None:
        self.progress = MemoryProgressStorage(prefix=prefix)
        self.diffbase = MemoryDiffBaseStorage(prefix=prefix, kind=kind)

    def install(self, settings: kopf.OperatorSettings) -> None:
        settings.persistence.progress_storage = self.progress
        settings.persistence.diffbase_storage = self.diffbase

    def forget(self, uid: str) -> None:
        self.progress.forget(uid)
        self.diffbase.forget(uid)
