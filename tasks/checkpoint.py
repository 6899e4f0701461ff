"""Checkpointing a project: plain functions the Celery tasks call (see ``tasks.jobs``).

The order of events is what keeps the promise "a manifest exists only for a complete,
verified checkpoint":

1. :func:`plan_checkpoint` refuses before touching anything (no containers, a repeated
   service, a container not running) and records networks, images and the source node.
2. :func:`checkpoint_service` (one per service, in parallel) streams libpod's export into the
   store; in eviction mode it also tees the archive into a 0600 spool file, so an upload can
   be retried and the service brought back without a second dump. A backup is a stop-dump
   too, resumed in place as soon as Podman's archive is whole (see :func:`checkpoint_service`).
3. :func:`ship_image` stores each image the store does not have yet, content-addressed.
4. :func:`commit_manifest` verifies every object and writes the manifest with a conditional put.
5. On any failure :func:`abort_checkpoint` deletes this checkpoint's objects and open uploads
   and restores every stopped service on the source, from its spool file or its kept images.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from .errors import (
    CheckpointFailed,
    DeadlineExceeded,
    IntegrityError,
    ManifestExists,
    ObjectNotFound,
    PodchordError,
    PodmanNotFound,
    ProjectError,
    SpoolUnavailable,
    StoreError,
    StoreUnavailable,
)
from .keys import check_checkpoint_id, new_checkpoint_id
from .libpod import Libpod
from .libpod_types import CheckpointOptions, NetworkDef, RestoreOptions
from .manifest import ArchiveRecord, ImageRecord, Manifest, ServiceRecord, SourceInfo
from .names import check_name, check_node, check_project
from .options import CheckpointJobOptions
from .spool import private_dir, spool_errors
from .store import PutResult, Store

__all__ = [
    "abort_checkpoint",
    "checkpoint_service",
    "commit_manifest",
    "plan_checkpoint",
    "ship_image",
    "spool_path",
]

log = logging.getLogger(__name__)

COMPOSE_SERVICE = "com.docker.compose.service"
_UPLOAD_RETRIES = 3
# Every node has Podman's default network; it is never recreated or removed.
DEFAULT_NETWORK = "podman"

Progress = Callable[[int], None]


def plan_checkpoint(
    lp: Libpod,
    store: Store,
    project: str,
    node: str,
    opts: CheckpointJobOptions,
    *,
    now: float | None = None,
) -> dict[str, Any]:
    """Inspect a project and return the checkpoint plan (JSON), touching nothing.

    Raises:
        ProjectError: no containers, a repeated service name, or a container not running.
    """
    check_project(project)
    check_node(node)
    now = time.time() if now is None else now
    containers = lp.list_project(project)
    if not containers:
        raise ProjectError(
            f"project {project!r} has no containers on node {node!r} "
            "(label com.docker.compose.project)"
        )
    seen: dict[str, str] = {}
    for c in containers:
        service = c.service or c.name
        if service in seen:
            raise ProjectError(
                f"project {project!r}: service {service!r} repeats "
                f"(containers {seen[service]} and {c.name}); scale each service to one"
            )
        seen[service] = c.name
    idle = [f"{c.name} ({c.state})" for c in containers if c.state != "running"]
    if idle:
        raise ProjectError(f"project {project!r}: not running, nothing checkpointed: {idle}")
    info = lp.info()
    networks = sorted({n for c in containers for n in c.networks} - {DEFAULT_NETWORK})
    images = {c.image_id.removeprefix("sha256:"): c.image for c in containers}
    stored = {i: _stored_image(store, i) for i in images}
    checkpoint_id = new_checkpoint_id()
    services = [
        {
            "project": project,
            "checkpoint_id": checkpoint_id,
            "service": c.service or c.name,
            "container": c.name,
            "container_id": c.id,
            "image": c.image,
            "image_id": c.image_id,
            "labels": dict(c.labels),
            "networks": list(c.networks),
        }
        for c in sorted(containers, key=lambda c: c.service or c.name)
    ]
    # Every SourceInfo field but the node name is a NodeInfo field of the same name.
    source = SourceInfo(
        node=node,
        **{f.name: getattr(info, f.name) for f in fields(SourceInfo) if f.name != "node"},
    )
    return {
        "checkpoint_id": checkpoint_id,
        "project": project,
        "node": node,
        "mode": opts.mode,
        "created_at": now,
        "deadline_at": None if opts.deadline_s is None else now + opts.deadline_s,
        "options": {
            "leave_running": opts.leave_running,
            "tcp_established": opts.tcp_established,
            "file_locks": opts.file_locks,
            "compress": opts.compress,
        },
        "source": asdict(source),
        "networks": [lp.inspect_network(n).to_json() for n in networks],
        # Images the store already holds are recorded now; the others are shipped.
        "images": [{"id": i, "ref": ref} for i, ref in sorted(images.items()) if not stored[i]],
        "image_records": [r for _, r in sorted(stored.items()) if r],
        "services": services,
    }


def spool_path(spool_dir: Path, checkpoint_id: str, service: str) -> Path:
    """Where the eviction tee of one service's archive lives on the source node."""
    return Path(spool_dir) / check_checkpoint_id(checkpoint_id) / f"{check_name(service)}.tar"


def checkpoint_service(
    lp: Libpod,
    store: Store,
    plan: Mapping[str, Any],
    service: Mapping[str, Any],
    *,
    spool_dir: Path,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Checkpoint one service and stream its archive into the store.

    Idempotent for redelivery: when this service's result record is already in the store
    (a previous delivery finished the upload), that record is returned unchanged.

    Returns:
        The service's manifest record (JSON).

    Raises:
        CheckpointFailed: Podman/CRIU refused (the container keeps running).
        StoreUnavailable: the upload failed and could not be retried.
        DeadlineExceeded: the deadline passed.
    """
    _check_deadline(plan)
    opts = plan["options"]
    name = check_name(service["service"], "service name")
    layout = store.layout
    key = layout.service_archive(
        plan["project"], plan["checkpoint_id"], name, compressed=opts["compress"]
    )
    record_key = f"{key}.json"
    previous = _read_record(store, record_key)
    if previous is not None:
        return previous
    eviction = not opts["leave_running"]
    spool = spool_path(spool_dir, plan["checkpoint_id"], name) if eviction else None
    started = time.time()
    if spool is not None and spool.exists():
        # A previous delivery dumped the container but did not finish the upload.
        result = _upload_file(store, key, spool, opts["compress"], plan, progress)
    else:
        _revive_if_dumped(lp, service["container"], opts["tcp_established"])
        copts = CheckpointOptions(
            # Never Podman's leaveRunning, even for a backup: it tars the root file system
            # and volumes AFTER the processes resumed, so a file a process writes meanwhile
            # no longer has the size CRIU recorded and the archive cannot be restored
            # ("File tmp/n has bad size 3 (expect 0)"). A stopped container cannot drift.
            leave_running=False,
            tcp_established=opts["tcp_established"],
            file_locks=opts["file_locks"],
            # The kept CRIU images bring the container back in place: right away for a
            # backup, and on rollback if an eviction's export stream breaks half-way.
            keep=True,
        )
        # The spool file is opened before the dump: a spool folder that cannot be written
        # refuses the eviction while the container still runs.
        part = None if spool is None else _open_spool(spool)
        try:
            with lp.checkpoint_export(service["container"], copts) as chunks:
                if not eviction:
                    # Podman answers only once its archive is whole (in a temp file), so
                    # the backup's container can run again while the archive streams out.
                    _resume(lp, service["container"], opts["tcp_established"])
                if spool is None or part is None:
                    result = store.put_stream(
                        key, chunks, compress=opts["compress"], progress=progress
                    )
                else:
                    fd, part = part, None  # _put_teed closes it
                    result = _put_teed(
                        store, key, chunks, spool, fd, opts["compress"], plan, progress
                    )
        finally:
            if part is not None:  # the dump failed before the tee began
                os.close(part)
    ended = time.time()
    record = ServiceRecord(
        name=name,
        container=service["container"],
        container_id=service["container_id"],
        image=service["image"],
        image_id=service["image_id"].removeprefix("sha256:"),
        labels=service["labels"],
        networks=tuple(service["networks"]),
        archive=_archive(result),
        checkpoint_started_at=started,
        checkpoint_ended_at=ended,
    )
    doc = asdict(record)
    store.put_stream(record_key, [json.dumps(doc).encode()])
    return doc


def _resume(lp: Libpod, container: str, tcp_established: bool) -> None:
    """Restore a container in place from its kept checkpoint and wait until it runs.

    Raises:
        CheckpointFailed: it could not be brought back (its kept images stay for rollback).
    """
    try:
        lp.restore_kept(container, tcp_established=tcp_established)
        lp.wait_state(container, ("running",), timeout_s=60)
    except PodchordError as exc:
        raise CheckpointFailed(
            f"{container} was dumped but did not run again in place: {exc}", container=container
        ) from exc


def _revive_if_dumped(lp: Libpod, container: str, tcp_established: bool) -> None:
    """Bring back a container an earlier delivery dumped without a complete spool file.

    The plan saw it running; "exited" now means a killed delivery's export stopped it. Its
    kept checkpoint restores it, and this delivery checkpoints it again from the start.
    """
    if lp.container_state(container) != "exited":
        return
    log.warning("%s was dumped by an earlier delivery: restoring its kept checkpoint", container)
    _resume(lp, container, tcp_established)


def drop_husks(lp: Libpod, plan: Mapping[str, Any]) -> list[str]:
    """After an eviction commit, remove the source's dumped containers (volumes stay).

    The committed archives are the durable copy; each husk would keep its CRIU images (as
    large as its memory) on the source's disk until removed.

    Returns:
        The containers removed.
    """
    removed = []
    for service in plan["services"]:
        name = service["container"]
        try:
            if lp.container_state(name) in ("running", "paused"):
                continue  # restored meanwhile (never remove a live workload)
            lp.remove(name, force=True, volumes=False)
        except PodchordError as exc:
            log.warning("could not remove the dumped %s: %s", name, exc)
            continue
        removed.append(name)
    return removed


def _stored_image(store: Store, image_id: str) -> dict[str, Any] | None:
    """The record of an image the store already holds intact, else None."""
    key = store.layout.image(image_id)
    record = _read_record(store, f"{key}.json")
    if record is None:
        return None
    try:
        intact = store.head(key).size_bytes == record["archive"]["size_bytes"]
    except ObjectNotFound:
        return None
    return record if intact else None


def ship_image(lp: Libpod, store: Store, image_id: str, ref: str) -> dict[str, Any]:
    """Store an image (by id) unless the store has it; return its manifest record (JSON)."""
    image_id = image_id.removeprefix("sha256:")
    key = store.layout.image(image_id)
    record_key = f"{key}.json"
    previous = _stored_image(store, image_id)
    if previous is not None:
        return previous
    info = lp.inspect_image(image_id)
    # Export by name so the tags travel with it; the id stays the same either way.
    export_ref = next(iter(info.names), ref) or image_id
    with lp.export_image(export_ref) as chunks:
        result = store.put_stream(key, chunks)
    doc = {"id": image_id, "names": list(info.names), "archive": asdict(_archive(result))}
    store.put_stream(record_key, [json.dumps(doc).encode()])
    return doc


def commit_manifest(
    store: Store,
    plan: Mapping[str, Any],
    services: Iterable[Mapping[str, Any]],
    images: Iterable[Mapping[str, Any]],
    *,
    spool_dir: Path | None = None,
    claim: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Verify every archive object and write the manifest (conditional put).

    ``claim``, if given, runs after the verification and right before the put; it raises to
    stop the commit (the deadline watchdog decided to abort first).

    Raises:
        IntegrityError / ObjectNotFound: an archive is missing or has the wrong size.
        ManifestExists: a different manifest is committed under this checkpoint id.
        DeadlineExceeded: past the deadline; nothing is written.
    """
    _check_deadline(plan)
    svc = sorted((dict(s) for s in services), key=lambda s: s["name"])
    img = sorted(
        (dict(i) for i in [*plan.get("image_records", []), *images]), key=lambda i: i["id"]
    )
    for record in [*svc, *img]:
        arch = record["archive"]
        info = store.head(arch["key"])
        if info.size_bytes != arch["size_bytes"]:
            raise IntegrityError(
                f"{arch['key']}: stored size {info.size_bytes} != recorded {arch['size_bytes']}",
                key=arch["key"],
                expected=str(arch["size_bytes"]),
                actual=str(info.size_bytes),
            )
    manifest = Manifest(
        checkpoint_id=plan["checkpoint_id"],
        project=plan["project"],
        mode=plan["mode"],
        created_at=plan["created_at"],
        committed_at=time.time(),
        source=SourceInfo(**{**plan["source"], "cpu_flags": tuple(plan["source"]["cpu_flags"])}),
        networks=tuple(NetworkDef.from_json(n) for n in plan["networks"]),
        images=tuple(_image_record(i) for i in img),
        services=tuple(_service_record(s) for s in svc),
    )
    key = store.layout.manifest(plan["project"], plan["checkpoint_id"])
    if claim is not None:
        claim()
    try:
        store.put_manifest(key, manifest.dumps())
    except ManifestExists:
        # A redelivered commit whose first run put the manifest and died before reporting:
        # the same archives mean the same checkpoint, committed once.
        if not _same_archives(store.read_manifest(plan["project"], plan["checkpoint_id"]),
                              manifest):
            raise
        log.warning("manifest %s was already committed by an earlier delivery", key)
    if spool_dir is not None:
        _drop_spool(spool_dir, plan["checkpoint_id"])
    starts = [s["checkpoint_started_at"] for s in svc]
    return {
        "checkpoint_id": plan["checkpoint_id"],
        "project": plan["project"],
        "node": plan["node"],
        "mode": plan["mode"],
        "manifest_key": key,
        "services": [s["name"] for s in svc],
        "bytes": sum(s["archive"]["size_bytes"] for s in svc),
        "cut_skew_s": (max(starts) - min(starts)) if starts else 0.0,
        "duration_s": manifest.committed_at - plan["created_at"],
    }


def _same_archives(stored: bytes, manifest: Manifest) -> bool:
    try:
        doc = json.loads(stored)
        keys = {(s["archive"]["key"], s["archive"]["sha256"]) for s in doc["services"]}
    except (ValueError, KeyError, TypeError):
        return False
    return keys == {(s.archive.key, s.archive.sha256) for s in manifest.services}


def abort_checkpoint(
    lp: Libpod | None,
    store: Store,
    plan: Mapping[str, Any],
    error: str,
    *,
    spool_dir: Path | None,
) -> dict[str, Any]:
    """Undo a failed checkpoint: no manifest, no objects, services back where they were.

    Never touches a committed checkpoint. In either mode, every service whose container was
    dumped (now exited) is restored in place on the source: from its spool file when that is
    complete, else from the CRIU images its checkpoint kept.

    Returns:
        What failed, what was deleted and which services were brought back (or not, and why).
    """
    project, checkpoint_id = plan["project"], plan["checkpoint_id"]
    layout = store.layout
    summary: dict[str, Any] = {
        "checkpoint_id": checkpoint_id,
        "project": project,
        "node": plan["node"],
        "error": error,
        "committed": False,
        "deleted_objects": 0,
        "aborted_uploads": 0,
        "rolled_back": [],
        "not_rolled_back": {},
    }
    # The store may be what failed: its cleanup is best effort (prune removes uncommitted
    # leftovers later), the rollback of the workload below must happen regardless.
    try:
        if store.exists(layout.manifest(project, checkpoint_id)):
            summary["committed"] = True  # a late failure after the commit: keep everything
            return summary
        prefix = layout.checkpoint_prefix(project, checkpoint_id)
        summary["aborted_uploads"] = store.abort_uploads(prefix)
        summary["deleted_objects"] = store.delete_prefix(prefix)
    except StoreError as exc:
        summary["store_error"] = f"store cleanup failed, left for prune: {exc}"
    if lp is not None and spool_dir is not None:
        for service in plan["services"]:
            outcome = _roll_back(lp, plan, service, spool_dir)
            if outcome is None:
                summary["rolled_back"].append(service["service"])
            elif outcome:
                summary["not_rolled_back"][service["service"]] = outcome
        _drop_spool(spool_dir, checkpoint_id)
    return summary


def _roll_back(
    lp: Libpod, plan: Mapping[str, Any], service: Mapping[str, Any], spool_dir: Path
) -> str | None:
    """Bring one service back on the source; None when restored, "" when nothing to do."""
    name = service["container"]
    try:
        state = lp.container_state(name)
    except PodmanNotFound:
        state = "missing"
    if state in ("running", "paused"):
        return ""  # never dumped: it kept running
    spool = spool_path(spool_dir, plan["checkpoint_id"], service["service"])
    tcp = plan["options"]["tcp_established"]
    if not spool.exists():
        if state == "missing":
            return "container is gone and no complete spool file exists"
        try:  # the export broke half-way: the kept CRIU images are the only copy
            lp.restore_kept(name, tcp_established=tcp)
            lp.wait_state(name, ("running",), timeout_s=60)
        except PodchordError as exc:
            return f"container is {state}, no complete spool file, kept checkpoint: {exc}"
        return None
    try:
        if state != "missing":
            lp.remove(name, force=True, volumes=False)  # the dumped husk; volumes stay
        lp.restore(
            spool,
            RestoreOptions(tcp_established=tcp, ignore_volumes=True),
        )
        lp.wait_state(name, ("running",), timeout_s=60)
    except PodchordError as exc:
        return f"restore from spool failed: {exc}"
    return None


def _open_spool(spool: Path) -> int:
    """Create the spool's ``.part`` file (0600 in a 0700 folder); return its descriptor.

    Raises:
        SpoolUnavailable: the folder cannot be written; nothing was dumped yet.
    """
    with spool_errors(spool.parent, "nothing was dumped"):
        private_dir(spool.parent.parent)  # the spool root too: names say what is moved
        private_dir(spool.parent)
        part = spool.with_name(spool.name + ".part")
        return os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)


def _put_teed(
    store: Store,
    key: str,
    chunks: Iterator[bytes],
    spool: Path,
    fd: int,
    compress: bool,
    plan: Mapping[str, Any],
    progress: Progress | None,
) -> PutResult:
    """Upload while writing the spool; on an upload failure finish the spool and retry.

    The container is stopped once its dump streams, so the upload is what keeps it: a spool
    that fills up (or fails) mid-way is dropped and the upload goes on without it.
    """
    part = spool.with_name(spool.name + ".part")
    spool_error: OSError | None = None
    try:

        def tee() -> Iterator[bytes]:
            nonlocal spool_error
            for chunk in chunks:
                if spool_error is None:
                    try:
                        _write_all(fd, chunk)
                    except OSError as exc:
                        spool_error = exc
                        log.warning("spool %s failed (%s); uploading without it", part, exc)
                yield chunk

        teed = tee()
        try:
            result = store.put_stream(key, teed, compress=compress, progress=progress)
        except StoreUnavailable as exc:
            if spool_error is not None:
                raise
            log.warning("upload of %s failed (%s); finishing the spool file to retry", key, exc)
            for _ in teed:  # drain Podman's stream into the spool
                pass
            result = None
        if spool_error is None:
            try:
                os.fsync(fd)
            except OSError as exc:
                spool_error = exc
    finally:
        os.close(fd)
    if spool_error is not None:
        part.unlink(missing_ok=True)
        if result is None:
            raise SpoolUnavailable(
                f"upload of {key} failed and the spool {part} could not hold it "
                f"({spool_error.strerror or spool_error})"
            ) from spool_error
        return result
    os.replace(part, spool)
    if result is None:
        result = _upload_file(store, key, spool, compress, plan, progress)
    return result


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a short write is not an error by itself)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _upload_file(
    store: Store,
    key: str,
    path: Path,
    compress: bool,
    plan: Mapping[str, Any],
    progress: Progress | None,
) -> PutResult:
    delay_s = 1.0
    for attempt in range(1, _UPLOAD_RETRIES + 1):
        _check_deadline(plan)
        try:
            with path.open("rb") as f:
                return store.put_stream(
                    key, iter(lambda: f.read(1 << 20), b""), compress=compress, progress=progress
                )
        except StoreUnavailable:
            if attempt == _UPLOAD_RETRIES:
                raise
            time.sleep(delay_s)
            delay_s *= 2
    raise AssertionError("unreachable")


def _read_record(store: Store, key: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(store.get_bytes(key, 1 << 20))
    except ObjectNotFound:
        return None
    return doc if isinstance(doc, dict) else None


def _check_deadline(plan: Mapping[str, Any]) -> None:
    deadline = plan.get("deadline_at")
    if deadline is not None and time.time() > deadline:
        raise DeadlineExceeded(
            f"checkpoint {plan['checkpoint_id']} of {plan['project']}: deadline passed"
        )


def _drop_spool(spool_dir: Path, checkpoint_id: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(Path(spool_dir) / check_checkpoint_id(checkpoint_id))


def _archive(result: PutResult) -> ArchiveRecord:
    # A stored object's record is exactly what the store reported for it.
    return ArchiveRecord(**asdict(result))


def _service_record(doc: Mapping[str, Any]) -> ServiceRecord:
    return ServiceRecord(
        **{**doc, "networks": tuple(doc["networks"]), "archive": ArchiveRecord(**doc["archive"])}
    )


def _image_record(doc: Mapping[str, Any]) -> ImageRecord:
    return ImageRecord(
        id=doc["id"], names=tuple(doc["names"]), archive=ArchiveRecord(**doc["archive"])
    )
