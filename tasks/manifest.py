"""The project manifest: the promise that a checkpoint is complete and restorable.

A manifest is versioned JSON (``schema_version``), written once per checkpoint with a
conditional put, and only after every archive it names was verified in the store. It is read
back as untrusted input: :func:`parse_manifest` validates every field (keys stay inside this
checkpoint's prefix, sizes are sane, services are unique) before anything is touched.
The format is documented in ``docs/manifest.md``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from .errors import ManifestInvalid
from .keys import KeyLayout, check_checkpoint_id, check_image_id, check_key_under
from .libpod_types import NetworkDef
from .names import check_image_ref, check_name, check_node, check_project

__all__ = [
    "MANIFEST_MAX_BYTES",
    "SCHEMA_VERSION",
    "ArchiveRecord",
    "ImageRecord",
    "Manifest",
    "Mode",
    "ServiceRecord",
    "SourceInfo",
    "parse_manifest",
]

SCHEMA_VERSION = 1
MANIFEST_MAX_BYTES = 4 * 1024 * 1024
# One archive holds one container's memory: 1 TiB is far above any real container.
_MAX_ARCHIVE_BYTES = 1 << 40
_SHA256 = re.compile(r"[0-9a-f]{64}")
PRIMARY_LABEL = "dev.containers.id"

Mode = Literal["backup", "eviction"]


@dataclass(frozen=True)
class ArchiveRecord:
    """One stored object: its key, stored size and digest, and the raw (uncompressed) ones."""

    key: str
    size_bytes: int
    sha256: str
    raw_size_bytes: int
    raw_sha256: str
    compression: Literal["zstd", "none"]


@dataclass(frozen=True)
class ImageRecord:
    """An image the project's containers run, shipped content-addressed by id."""

    id: str
    names: tuple[str, ...]
    archive: ArchiveRecord


@dataclass(frozen=True)
class ServiceRecord:
    """One checkpointed service (container)."""

    name: str
    container: str
    container_id: str
    image: str
    image_id: str
    labels: Mapping[str, str]
    networks: tuple[str, ...]
    archive: ArchiveRecord
    checkpoint_started_at: float  # epoch seconds
    checkpoint_ended_at: float


@dataclass(frozen=True)
class SourceInfo:
    """What the source node ran; the restore side compares CPU flags and kernel."""

    node: str
    podman_version: str = ""
    runc_version: str = ""
    conmon_version: str = ""
    criu_version: str = ""
    kernel: str = ""
    arch: str = ""
    cgroup_version: str = ""
    cpu_model: str = ""
    cpu_flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint of a whole project."""

    checkpoint_id: str
    project: str
    mode: Mode
    created_at: float  # epoch seconds, when the checkpoint was requested
    source: SourceInfo
    networks: tuple[NetworkDef, ...]
    images: tuple[ImageRecord, ...]
    services: tuple[ServiceRecord, ...]
    schema_version: int = SCHEMA_VERSION
    committed_at: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def primary_service(self) -> str | None:
        """The service labelled ``dev.containers.id`` (the dev container), if any."""
        for svc in self.services:
            if PRIMARY_LABEL in svc.labels:
                return svc.name
        return None

    def to_json(self) -> dict[str, Any]:
        """Return the JSON document (plain dicts and lists)."""
        doc = asdict(self)
        doc["networks"] = [n.to_json() for n in self.networks]
        doc["primary_service"] = self.primary_service
        return doc

    def dumps(self) -> bytes:
        """Return the manifest as UTF-8 JSON bytes."""
        return json.dumps(self.to_json(), indent=2, sort_keys=True).encode()


def parse_manifest(data: bytes, layout: KeyLayout) -> Manifest:
    """Parse and validate manifest bytes read from the store.

    Args:
        data: the manifest bytes (untrusted).
        layout: the store's key layout; archive keys must lie inside this checkpoint's
            prefix, image keys inside the images prefix.

    Raises:
        ManifestInvalid: naming the first field that is wrong.
    """
    if len(data) > MANIFEST_MAX_BYTES:
        raise ManifestInvalid(f"manifest is {len(data)} bytes, more than {MANIFEST_MAX_BYTES}")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestInvalid(f"manifest is not JSON: {exc}") from exc
    try:
        return _parse(_obj(doc, "manifest"), layout)
    except ManifestInvalid:
        raise
    except Exception as exc:  # an InvalidInput from a name check, or a type slip
        raise ManifestInvalid(f"manifest is invalid: {exc}") from exc


def _parse(doc: Mapping[str, Any], layout: KeyLayout) -> Manifest:
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ManifestInvalid(
            f"unknown manifest schema_version {version!r} (this podchord reads {SCHEMA_VERSION})"
        )
    project = check_project(_get(doc, "project", str))
    checkpoint_id = check_checkpoint_id(_get(doc, "checkpoint_id", str))
    mode = _get(doc, "mode", str)
    if mode not in ("backup", "eviction"):
        raise ManifestInvalid(f"manifest mode must be backup or eviction, got {mode!r}")
    base = layout.checkpoint_prefix(project, checkpoint_id)
    services = tuple(
        _service(_obj(s, "service"), base) for s in _get(doc, "services", list)
    )
    if not services:
        raise ManifestInvalid("manifest names no services")
    names = [s.name for s in services]
    if len(set(names)) != len(names):
        raise ManifestInvalid(f"manifest repeats a service name: {sorted(names)}")
    images = tuple(
        _image(_obj(i, "image"), layout.images_prefix) for i in _get(doc, "images", list)
    )
    # Every record must point at its own object: a record swapped or copied from another
    # service would restore the wrong container under this one's name.
    for svc in services:
        own = layout.service_archive(
            project, checkpoint_id, svc.name, compressed=svc.archive.compression == "zstd"
        )
        if svc.archive.key != own:
            raise ManifestInvalid(
                f"service {svc.name}: archive key {svc.archive.key!r} is not its own ({own!r})"
            )
    for image in images:
        if image.archive.key != layout.image(image.id):
            raise ManifestInvalid(
                f"image {image.id}: archive key {image.archive.key!r} is not its own "
                f"({layout.image(image.id)!r})"
            )
    networks = tuple(
        NetworkDef.from_json(_obj(n, "network")) for n in _get(doc, "networks", list)
    )
    for net in networks:
        check_name(net.name, "network name")
    return Manifest(
        checkpoint_id=checkpoint_id,
        project=project,
        mode=mode,
        created_at=_num(doc, "created_at"),
        committed_at=_num(doc, "committed_at"),
        source=_source(_obj(_get(doc, "source", dict), "source")),
        networks=networks,
        images=images,
        services=services,
    )


def _service(doc: Mapping[str, Any], base: str) -> ServiceRecord:
    labels = _get(doc, "labels", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ManifestInvalid("service labels must map strings to strings")
    return ServiceRecord(
        name=check_name(_get(doc, "name", str), "service name"),
        container=check_name(_get(doc, "container", str), "container name"),
        container_id=_get(doc, "container_id", str),
        image=check_image_ref(_get(doc, "image", str)),
        image_id=check_image_id(_get(doc, "image_id", str)),
        labels=dict(labels),
        networks=tuple(check_name(n, "network name") for n in _get(doc, "networks", list)),
        archive=_archive(_obj(_get(doc, "archive", dict), "archive"), base),
        checkpoint_started_at=_num(doc, "checkpoint_started_at"),
        checkpoint_ended_at=_num(doc, "checkpoint_ended_at"),
    )


def _image(doc: Mapping[str, Any], images_prefix: str) -> ImageRecord:
    return ImageRecord(
        id=check_image_id(_get(doc, "id", str)),
        names=tuple(check_image_ref(n) for n in _get(doc, "names", list)),
        archive=_archive(_obj(_get(doc, "archive", dict), "image archive"), images_prefix),
    )


def _archive(doc: Mapping[str, Any], base: str) -> ArchiveRecord:
    key = _get(doc, "key", str)
    try:
        check_key_under(key, base)
    except Exception as exc:
        raise ManifestInvalid(f"archive key {key!r} is not inside {base}/: {exc}") from exc
    sizes: dict[str, int] = {}
    for name in ("size_bytes", "raw_size_bytes"):
        value = doc.get(name)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 0 < value <= _MAX_ARCHIVE_BYTES
        ):
            raise ManifestInvalid(f"archive {key}: {name} {value!r} is not a sane size")
        sizes[name] = value
    digests: dict[str, str] = {}
    for name in ("sha256", "raw_sha256"):
        value = doc.get(name)
        if not isinstance(value, str) or not _SHA256.fullmatch(value):
            raise ManifestInvalid(f"archive {key}: {name} {value!r} is not a sha256 hex digest")
        digests[name] = value
    compression = doc.get("compression")
    if compression not in ("zstd", "none"):
        raise ManifestInvalid(f"archive {key}: unknown compression {compression!r}")
    return ArchiveRecord(
        key=key,
        size_bytes=sizes["size_bytes"],
        sha256=digests["sha256"],
        raw_size_bytes=sizes["raw_size_bytes"],
        raw_sha256=digests["raw_sha256"],
        compression=compression,
    )


def _source(doc: Mapping[str, Any]) -> SourceInfo:
    strings = {
        k: _get(doc, k, str)
        for k in (
            "podman_version", "runc_version", "conmon_version", "criu_version",
            "kernel", "arch", "cgroup_version", "cpu_model",
        )
    }
    flags = _get(doc, "cpu_flags", list)
    if not all(isinstance(f, str) for f in flags):
        raise ManifestInvalid("source.cpu_flags must be a list of strings")
    return SourceInfo(node=check_node(_get(doc, "node", str)), cpu_flags=tuple(flags), **strings)


def _obj(value: object, what: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise ManifestInvalid(f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def _get(doc: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in doc:
        raise ManifestInvalid(f"manifest field {name!r} is missing")
    value = doc[name]
    if not isinstance(value, kind):
        raise ManifestInvalid(f"manifest field {name!r} must be {kind.__name__}")
    return value


def _num(doc: Mapping[str, Any], name: str) -> float:
    value = doc.get(name)
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise ManifestInvalid(f"manifest field {name!r} must be a non-negative number")
    return float(value)
