"""podchord's task library: checkpoint, ship and restore multi-service Podman projects."""

from __future__ import annotations

from .errors import (
    CheckpointFailed,
    CheckpointUnsupported,
    DeadlineExceeded,
    IntegrityError,
    InvalidInput,
    LockHeld,
    ManifestExists,
    ManifestInvalid,
    NotLibpod,
    ObjectNotFound,
    PodchordError,
    PodmanConflict,
    PodmanError,
    PodmanNotFound,
    PodmanTooOld,
    PodmanUnreachable,
    ProjectError,
    RestoreFailed,
    StoreError,
    StoreUnavailable,
)

__all__ = [
    "CheckpointFailed",
    "CheckpointUnsupported",
    "DeadlineExceeded",
    "IntegrityError",
    "InvalidInput",
    "LockHeld",
    "ManifestExists",
    "ManifestInvalid",
    "NotLibpod",
    "ObjectNotFound",
    "PodchordError",
    "PodmanConflict",
    "PodmanError",
    "PodmanNotFound",
    "PodmanTooOld",
    "PodmanUnreachable",
    "ProjectError",
    "RestoreFailed",
    "StoreError",
    "StoreUnavailable",
]
