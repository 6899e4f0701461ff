"""Listing checkpoints and pruning them: which archives a store keeps, and in what order.

Rules of :func:`prune`, per project:

1. The newest ``keep`` *committed* checkpoints (manifest present) are kept.
2. Older committed checkpoints are deleted manifest FIRST, then their archives: a crash in
   between leaves an uncommitted leftover (swept by rule 3), never a manifest that points
   at deleted archives.
3. Uncommitted checkpoints (no manifest: in flight, failed or half-pruned) are deleted with
   their open multipart uploads once their id's timestamp is older than ``grace_s``;
   younger ones may still be uploading and are left alone.
4. Image archives under ``images/`` that no remaining committed manifest of ANY project
   references are deleted, once their last-modified time is older than ``grace_s`` (a
   checkpoint in flight may have uploaded one and not committed yet). If any manifest
   cannot be read or parsed, image collection is skipped: unknown references are not
   assumed absent.

``grace_s`` must exceed the longest checkpoint upload, or rule 3 can sweep a live upload.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .errors import InvalidInput, ManifestInvalid, ObjectNotFound, ObjectTooLarge
from .keys import checkpoint_time

if TYPE_CHECKING:
    from .store_base import Store

__all__ = ["CheckpointEntry", "PruneReport", "list_checkpoints", "prune", "referenced_keys"]

_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CheckpointEntry:
    """One checkpoint of a project as found in the store."""

    project: str
    checkpoint_id: str
    committed: bool  # its manifest exists
    created: datetime  # from the checkpoint id (UTC)
    size_bytes: int  # total of its objects (images are shared and not counted)
    object_count: int
    open_uploads: int  # unfinished multipart uploads under it


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` did (checkpoint ids, image keys and counts)."""

    project: str
    kept: tuple[str, ...]
    deleted: tuple[str, ...]  # committed checkpoints beyond ``keep``
    deleted_uncommitted: tuple[str, ...]  # leftovers older than the grace period
    young_uncommitted: tuple[str, ...]  # leftovers still within the grace period
    deleted_images: tuple[str, ...]
    deleted_objects: int
    aborted_uploads: int
    image_gc_skipped: str | None = None  # why image collection did not run, if it didn't


def referenced_keys(manifest: Mapping[str, Any]) -> set[str]:
    """Return the object keys a manifest references.

    The contract with the manifest format: ``services[*].archive.key`` and ``images[*].key``;
    ``images[*].archive.key`` is accepted too (tasks/manifest.py nests image archives like
    service ones). ``services``/``images`` may be lists or name-keyed mappings.

    Raises:
        ManifestInvalid: when those fields exist but have the wrong shape.
    """
    keys: set[str] = set()
    for field_name in ("services", "images"):
        for item in _items(manifest, field_name):
            keys |= _key_of(item, f"{field_name}[*]")
            archive = item.get("archive")
            if archive is not None:
                if not isinstance(archive, Mapping):
                    raise ManifestInvalid(f"manifest {field_name}[*].archive must be an object")
                keys |= _key_of(archive, f"{field_name}[*].archive")
    return keys


def _items(manifest: Mapping[str, Any], field: str) -> list[Mapping[str, Any]]:
    value = manifest.get(field, [])
    if isinstance(value, Mapping):
        value = list(value.values())
    if not isinstance(value, list) or not all(isinstance(v, Mapping) for v in value):
        raise ManifestInvalid(f"manifest {field} must be a list of objects")
    return value


def _key_of(item: Mapping[str, Any], where: str) -> set[str]:
    key = item.get("key")
    if key is None:
        return set()
    if not isinstance(key, str):
        raise ManifestInvalid(f"manifest {where}.key must be a string")
    return {key}


def list_checkpoints(store: Store, project: str) -> list[CheckpointEntry]:
    """Return ``project``'s checkpoints in ``store``, newest first.

    A checkpoint is listed when any object or unfinished upload exists under its prefix.
    """
    layout = store.layout
    sizes: dict[str, list[int]] = {}  # id -> [bytes, objects, uploads]
    committed: set[str] = set()
    for obj in store.list_objects(layout.project_prefix(project)):
        parsed = layout.parse(obj.key)
        if parsed is None or parsed.project != project:
            continue
        entry = sizes.setdefault(parsed.checkpoint_id, [0, 0, 0])
        entry[0] += obj.size_bytes
        entry[1] += 1
        if parsed.rest == _MANIFEST:
            committed.add(parsed.checkpoint_id)
    for key in store.list_upload_keys(layout.project_prefix(project)):
        parsed = layout.parse(key)
        if parsed is not None and parsed.project == project:
            sizes.setdefault(parsed.checkpoint_id, [0, 0, 0])[2] += 1
    entries = [
        CheckpointEntry(
            project=project,
            checkpoint_id=cid,
            committed=cid in committed,
            created=checkpoint_time(cid),
            size_bytes=size,
            object_count=count,
            open_uploads=uploads,
        )
        for cid, (size, count, uploads) in sizes.items()
    ]
    entries.sort(key=lambda e: (e.created, e.checkpoint_id), reverse=True)
    return entries


def prune(
    store: Store, project: str, *, keep: int, grace_s: float, now: datetime | None = None
) -> PruneReport:
    """Apply the module's retention rules to ``project`` (images: across all projects).

    Args:
        keep: committed checkpoints to keep (>= 1: pruning never removes the last one).
        grace_s: age (seconds) before uncommitted leftovers and unreferenced images go.
        now: the current time (aware, or naive UTC); defaults to now.

    Raises:
        InvalidInput: bad ``keep`` or ``grace_s``.
        StoreUnavailable: the store failed; re-running prune continues where it stopped.
    """
    if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
        raise InvalidInput(f"keep must be an integer >= 1, got {keep!r}")
    if not grace_s >= 0:
        raise InvalidInput(f"grace_s must be >= 0 seconds, got {grace_s!r}")
    now = datetime.now(UTC) if now is None else _utc(now)
    layout = store.layout
    entries = list_checkpoints(store, project)
    done = _Tally()
    committed = [e for e in entries if e.committed]
    kept = [e.checkpoint_id for e in committed[:keep]]
    deleted: list[str] = []
    for entry in committed[keep:]:
        # Manifest first: from here on the checkpoint is uncommitted, never dangling.
        store.delete([layout.manifest(project, entry.checkpoint_id)])
        done.sweep(store, layout.checkpoint_prefix(project, entry.checkpoint_id))
        deleted.append(entry.checkpoint_id)
    old: list[str] = []
    young: list[str] = []
    for entry in entries:
        if entry.committed:
            continue
        if (now - entry.created).total_seconds() > grace_s:
            done.sweep(store, layout.checkpoint_prefix(project, entry.checkpoint_id))
            old.append(entry.checkpoint_id)
        else:
            young.append(entry.checkpoint_id)
    images, skipped = _collect_images(store, grace_s, now)
    return PruneReport(
        project=project,
        kept=tuple(kept),
        deleted=tuple(deleted),
        deleted_uncommitted=tuple(old),
        young_uncommitted=tuple(young),
        deleted_images=tuple(images),
        deleted_objects=done.objects + len(deleted) + len(images),
        aborted_uploads=done.uploads,
        image_gc_skipped=skipped,
    )


class _Tally:
    def __init__(self) -> None:
        self.objects = 0
        self.uploads = 0

    def sweep(self, store: Store, prefix: str) -> None:
        self.uploads += store.abort_uploads(prefix)
        self.objects += store.delete_prefix(prefix)


def _collect_images(store: Store, grace_s: float, now: datetime) -> tuple[list[str], str | None]:
    layout = store.layout
    refs: set[str] = set()
    for obj in store.list_objects(layout.projects_prefix):
        parsed = layout.parse(obj.key)
        if parsed is None or parsed.rest != _MANIFEST:
            continue
        try:
            data = store.get_bytes(obj.key, store.settings.max_manifest_bytes)
            manifest = json.loads(data)
            if not isinstance(manifest, Mapping):
                raise ManifestInvalid("manifest is not a JSON object")
            refs |= referenced_keys(manifest)
        except ObjectNotFound:
            continue  # deleted meanwhile: it references nothing any more
        except (ObjectTooLarge, ValueError) as exc:  # ValueError: JSON and ManifestInvalid
            return [], f"unreadable manifest {obj.key}: {exc}"
    doomed = [
        obj.key
        for obj in store.list_objects(layout.images_prefix)
        if obj.key not in refs and (now - _utc(obj.modified)).total_seconds() > grace_s
    ]
    store.delete(doomed)
    return doomed, None


def _utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
