"""Restoring a committed checkpoint on a node: plain functions the Celery tasks call.

Order matters for "safe to fail": everything that can be checked is checked before Podman is
changed (manifest, replace-guard, CPU flags; these checks run while the archives download),
and every archive is downloaded to a 0600 spool file and verified before Podman sees it. Only
then are images loaded, networks created and services restored; if any of that fails, every
container and network this restore created is removed again and the error names the service
and Podman's message.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar, cast

from .errors import (
    InvalidInput,
    ManifestInvalid,
    ObjectNotFound,
    PodchordError,
    PodmanConflict,
    PodmanError,
    PodmanNotFound,
    PodmanUnreachable,
    RestoreFailed,
)
from .keys import check_checkpoint_id
from .libpod import Libpod
from .libpod_types import NetworkDef, NodeInfo, RestoreOptions
from .manifest import ArchiveRecord, Manifest, parse_manifest
from .names import check_project
from .options import RestoreJobOptions
from .spool import private_dir, spool_errors
from .store import Store

__all__ = ["load_manifest", "resolve_checkpoint", "restore_project", "split_ref"]

Phase = Callable[[str], None]

# A node that checkpointed a throwaway container minutes ago still can: the probe's success
# is remembered per worker process, so back-to-back restores do not each pay one more full
# checkpoint (~0.7 s idle, seconds under load); so is the node's /info (CPU flags and kernel
# do not change while a node is up). A failure is never remembered. Should CRIU break within
# the window, the restore itself fails and is rolled back as usual.
_REMEMBER_S = 600.0
_remembered: dict[tuple[str, ...], tuple[float, Any]] = {}
_T = TypeVar("_T")

# Downloads at once. Each holds one 1 MiB chunk in memory; more than a few only queue for
# the same disk and cores.
_PARALLEL = 4


def resolve_checkpoint(store: Store, ref: str) -> tuple[str, str]:
    """Turn ``PROJECT/CHECKPOINT_ID`` or ``PROJECT`` (newest committed) into both parts.

    Raises:
        InvalidInput: a malformed reference.
        ObjectNotFound: no such committed checkpoint.
    """
    project, checkpoint_id = split_ref(ref)
    if checkpoint_id:
        check_checkpoint_id(checkpoint_id)
        if not store.exists(store.layout.manifest(project, checkpoint_id)):
            raise ObjectNotFound(
                f"no committed checkpoint {project}/{checkpoint_id} in {store.url}",
                key=store.layout.manifest(project, checkpoint_id),
            )
        return project, checkpoint_id
    for entry in store.list_checkpoints(project):
        if entry.committed:
            return project, entry.checkpoint_id
    raise ObjectNotFound(f"project {project!r} has no committed checkpoint in {store.url}")


def split_ref(ref: object) -> tuple[str, str]:
    """``PROJECT/CHECKPOINT_ID`` -> (project, id); ``PROJECT`` -> (project, "").

    Raises:
        InvalidInput: not a string, or not a valid project name.
    """
    if not isinstance(ref, str):
        # str(None) would pass as a (wrong) project name; say what was wrong instead.
        raise InvalidInput(f"checkpoint reference must be a string, got {type(ref).__name__}")
    project, _, checkpoint_id = ref.partition("/")
    return check_project(project), checkpoint_id


def load_manifest(store: Store, ref: str) -> Manifest:
    """Read and validate the manifest a checkpoint reference names."""
    project, checkpoint_id = resolve_checkpoint(store, ref)
    manifest = parse_manifest(store.read_manifest(project, checkpoint_id), store.layout)
    # A manifest copied under another id or project would restore someone else's archives.
    if (manifest.project, manifest.checkpoint_id) != (project, checkpoint_id):
        raise ManifestInvalid(
            f"manifest at {project}/{checkpoint_id} describes "
            f"{manifest.project}/{manifest.checkpoint_id}; refused"
        )
    return manifest


@dataclass
class _Undo:
    """What this restore created on the node, to remove again on failure."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @contextlib.contextmanager
    def timed(self, phase: str, on_phase: Phase | None) -> Iterator[None]:
        if on_phase is not None:
            on_phase(phase)
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings[f"{phase}_s"] = round(time.monotonic() - start, 3)


def restore_project(
    lp: Libpod,
    store: Store,
    ref: str,
    node: str,
    opts: RestoreJobOptions,
    *,
    spool_dir: Path,
    on_phase: Phase | None = None,
    redelivered: bool = False,
) -> dict[str, Any]:
    """Restore every service of a committed checkpoint on this node.

    ``redelivered`` says an earlier delivery of this same restore died part-way: a running
    container that carries the checkpoint's own container id is then its work and is adopted
    (counted as restored, removed again on failure) rather than refused as a conflict —
    refusing would send a migration back to its source while it also runs here.

    Returns:
        checkpoint id, node, per service the new container id and state, the primary
        service, notes (e.g. a network recreated on another subnet) and timings per phase.

    Raises:
        ManifestInvalid, ObjectNotFound, IntegrityError: before anything was changed.
        PodmanConflict: a same-named container is running here; nothing was destroyed.
        RestoreFailed: naming the service; what this restore created was removed.
    """
    undo = _Undo()
    began = time.monotonic()
    with undo.timed("manifest", on_phase):
        manifest = load_manifest(store, ref)
    if redelivered:
        # A killed delivery never ran its cleanup: its verified archives (process memory)
        # would stay on disk for good.
        for stale in Path(spool_dir).glob(f"restore-{manifest.checkpoint_id}-*"):
            shutil.rmtree(stale, ignore_errors=True)
    spool = Path(spool_dir) / f"restore-{manifest.checkpoint_id}-{time.time_ns()}"
    try:
        with _spool_errors(spool):
            private_dir(spool.parent)  # the spool root too: names say what is moved
            private_dir(spool)
        adopted: set[str] = set()

        def checks() -> None:
            # Read-only: runs while the archives download; a failure only throws them away.
            with undo.timed("preflight", on_phase):
                adopted.update(_preflight(lp, node, manifest, opts, undo, redelivered=redelivered))

        with undo.timed("download", on_phase), _spool_errors(spool):
            archives = _download_services(store, manifest, spool, undo, meanwhile=checks)
        with undo.timed("images", on_phase), _spool_errors(spool):
            _ensure_images(lp, store, manifest, spool, undo)
        # Not overlapped with the download: with the probe run during the download (and
        # services restored in parallel), the restore of a client/server pair holding
        # established TCP connections that followed failed in 3 of 4 runs on the test
        # bed ("criu failed: type RESTORE"); run here, before the networks, it does not.
        with undo.timed("probe", on_phase):
            _probe(lp, node, manifest.services[0].image_id)
        with undo.timed("networks", on_phase):
            ignore_static = _ensure_networks(lp, manifest, undo)
        with undo.timed("restore", on_phase):
            services = _restore_services(
                lp, manifest, archives, opts, ignore_static, undo, adopted
            )
    except BaseException as exc:
        # Any failure, typed or not (a soft time limit, a bug): never leave half a project.
        # Before the first change this removes nothing but what a redelivery adopted.
        left = _roll_back(lp, undo)
        if left:
            exc.add_note(f"podchord: rollback could not remove {left}")
        raise
    finally:
        shutil.rmtree(spool, ignore_errors=True)
    undo.timings["total_s"] = round(time.monotonic() - began, 3)
    return {
        "checkpoint_id": manifest.checkpoint_id,
        "project": manifest.project,
        "node": node,
        "source_node": manifest.source.node,
        "services": services,
        "primary_service": manifest.primary_service,
        "notes": undo.notes,
        "timings": undo.timings,
    }


def _spool_errors(spool: Path) -> contextlib.AbstractContextManager[None]:
    """Local disk trouble under this restore's spool folder: a typed error naming it."""
    return spool_errors(spool.parent, "nothing was restored")


def _preflight(
    lp: Libpod,
    node: str,
    manifest: Manifest,
    opts: RestoreJobOptions,
    undo: _Undo,
    *,
    redelivered: bool,
) -> set[str]:
    """Check the node can take the checkpoint; return the services to adopt as restored."""
    info = _node_info(lp, node)
    missing = sorted(set(manifest.source.cpu_flags) - set(info.cpu_flags))
    if missing and info.cpu_flags:
        if not opts.force_cpu:
            raise RestoreFailed(
                f"node {info.hostname} lacks CPU features the source had: {missing[:12]}; "
                "a restored process would die with SIGILL (use force_cpu to override)",
                archive=manifest.checkpoint_id,
            )
        undo.notes.append(f"forced despite missing CPU flags {missing[:12]}")
    if manifest.source.kernel and info.kernel and manifest.source.kernel != info.kernel:
        undo.notes.append(f"kernel differs: source {manifest.source.kernel}, here {info.kernel}")
    # Replace-guard, checked for every service before anything is changed.
    adopted: set[str] = set()
    for svc in manifest.services:
        try:
            state = lp.container_state(svc.container)
        except PodmanNotFound:
            continue
        if state not in ("running", "paused"):
            continue
        live_id = lp.inspect_container(svc.container).get("Id")
        if redelivered and state == "running" and live_id == svc.container_id:
            adopted.add(svc.name)
            undo.containers.append(svc.container)
            undo.notes.append(f"adopted {svc.container}, restored by an earlier delivery")
            continue
        raise PodmanConflict(
            f"container {svc.container} is {state} on this node; nothing was changed "
            "(stop it, or restore elsewhere)"
        )
    return adopted


def _node_info(lp: Libpod, node: str) -> NodeInfo:
    """This node's CPU flags and kernel (Podman's ``/info``, remembered).

    ``/info`` spawns the runtimes to report their versions: 0.2-0.5 s, on the critical path
    of a small restore.
    """
    return _remember(("info", node), lp.info)


def _remember(key: tuple[str, ...], compute: Callable[[], _T]) -> _T:
    """``compute()``, or its value from less than ``_REMEMBER_S`` ago in this process."""
    hit = _remembered.get(key)
    if hit is not None and time.monotonic() - hit[0] < _REMEMBER_S:
        return cast(_T, hit[1])
    value = compute()  # raises: nothing is remembered
    _remembered[key] = (time.monotonic(), value)
    return value


def _download_services(
    store: Store,
    manifest: Manifest,
    spool: Path,
    undo: _Undo,
    *,
    meanwhile: Callable[[], None],
) -> dict[str, Path]:
    """Download every service's archive, ``_PARALLEL`` at a time, running ``meanwhile``.

    Each download is verified before its file appears. Parallel streams keep the network
    and the disk busy while another stream's sha256 is being computed. If ``meanwhile``
    raises, pending downloads are cancelled, running ones finish, and the error propagates.
    """
    with ThreadPoolExecutor(min(_PARALLEL, len(manifest.services))) as pool:
        futures = {
            s.name: pool.submit(_download, store, s.archive, spool / f"{s.name}.tar", undo)
            for s in manifest.services
        }
        try:
            meanwhile()
            return {name: f.result() for name, f in futures.items()}
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _probe(lp: Libpod, node: str, image_id: str) -> None:
    """Probe that checkpoints work on this node, unless that succeeded recently here."""
    _remember(("probe", node, image_id), lambda: lp.require_checkpoint(image_id))


def _download(store: Store, arch: ArchiveRecord, dest: Path, undo: _Undo) -> Path:
    undo.files.append(dest)
    # No fsync: Podman reads the file within seconds and it is deleted after the restore;
    # after a crash the restore is repeated anyway.
    return store.download(
        arch.key,
        dest,
        size_bytes=arch.size_bytes,
        sha256=arch.sha256,
        compression=arch.compression,
        raw_size_bytes=arch.raw_size_bytes,
        raw_sha256=arch.raw_sha256,
        fsync=False,
    )


def _ensure_images(
    lp: Libpod, store: Store, manifest: Manifest, spool: Path, undo: _Undo
) -> None:
    for image in manifest.images:
        if lp.image_exists(image.id):
            continue
        path = _download(store, image.archive, spool / f"image-{image.id}.tar", undo)
        lp.load_image(path)
        path.unlink(missing_ok=True)
        undo.notes.append(f"loaded image {image.names[0] if image.names else image.id}")


def _ensure_networks(lp: Libpod, manifest: Manifest, undo: _Undo) -> bool:
    """Create missing networks; True when one had to move to another subnet."""
    moved = False
    for net in manifest.networks:
        if lp.network_exists(net.name):
            continue
        try:
            lp.create_network(net)
        except PodmanError as exc:
            if not net.subnets:
                raise
            # The recorded subnet is taken here: let Podman pick a free one.
            lp.create_network(NetworkDef.from_json({**net.to_json(), "subnets": []}))
            undo.notes.append(f"network {net.name} recreated on another subnet ({exc})")
            moved = True
        undo.networks.append(net.name)
    return moved


def _restore_services(
    lp: Libpod,
    manifest: Manifest,
    archives: dict[str, Path],
    opts: RestoreJobOptions,
    ignore_static: bool,
    undo: _Undo,
    adopted: set[str],
) -> dict[str, Any]:
    base = RestoreOptions(
        tcp_established=opts.tcp_established,
        ignore_volumes=opts.ignore_volumes,
        ignore_static_ip=ignore_static,
        ignore_static_mac=ignore_static,
    )
    out: dict[str, Any] = {}
    for svc in sorted(manifest.services, key=lambda s: s.name):
        if svc.name in adopted:
            out[svc.name] = {"container": svc.container, "id": svc.container_id,
                             "state": "running"}
            continue
        with contextlib.suppress(PodmanNotFound):
            lp.container_state(svc.container)
            lp.remove(svc.container, force=True, volumes=False)  # stopped husk; volumes kept
            undo.notes.append(f"replaced the stopped container {svc.container}")
        # Recorded before the call: if Podman dies while it restores, the container may
        # exist although the answer never came (a same-named one was removed just above).
        undo.containers.append(svc.container)
        try:
            result = lp.restore(archives[svc.name], replace(base))
            lp.wait_state(svc.container, ("running",), timeout_s=opts.start_timeout_s)
        except PodchordError as exc:
            if isinstance(exc, RestoreFailed) and ignore_static:
                # Seen with runc: CRIU cannot bind a connected socket to the old address
                # ("Can't bind inet socket ... Cannot assign requested address"), and runc
                # has no --tcp-close to restore such connections closed.
                raise RestoreFailed(
                    f"service {svc.name}: {exc} (its network moved to another subnet here: "
                    "established TCP connections cannot be restored on a new address)",
                    archive=svc.archive.key, service=svc.name, status=exc.status,
                    cause=exc.cause, podman_message=exc.podman_message,
                ) from exc
            if isinstance(exc, RestoreFailed):
                exc.service = svc.name
                raise
            raise RestoreFailed(
                f"service {svc.name}: {exc}", archive=svc.archive.key, service=svc.name
            ) from exc
        out[svc.name] = {"container": svc.container, "id": result.id, "state": "running"}
    return out


def _roll_back(lp: Libpod, undo: _Undo) -> list[str]:
    """Remove what this restore created; every step tried. Returns what it could not remove.

    A Podman service that just died (the likely cause of the failure) is given
    ``_ROLLBACK_WAIT_S`` to come back, or the restored half of the project stays behind.
    """
    deadline = time.monotonic() + _ROLLBACK_WAIT_S
    left: list[str] = []
    for name in reversed(undo.containers):
        if not _retry(functools.partial(lp.remove, name, force=True, volumes=False), deadline):
            left.append(f"container {name}")
    for name in reversed(undo.networks):
        if not _retry(functools.partial(lp.remove_network, name, force=True), deadline):
            left.append(f"network {name}")
    for path in undo.files:
        path.unlink(missing_ok=True)
    return left


_ROLLBACK_WAIT_S = 60.0


def _retry(step: Callable[[], None], deadline: float) -> bool:
    """Run ``step`` until it succeeds (or finds nothing to remove); retry while unreachable."""
    delay_s = 0.2
    while True:
        try:
            step()
            return True
        except PodmanNotFound:
            return True
        except PodmanUnreachable:
            if time.monotonic() + delay_s > deadline:
                return False
            time.sleep(delay_s)
            delay_s = min(delay_s * 2, 5.0)
        except PodchordError:
            return False
