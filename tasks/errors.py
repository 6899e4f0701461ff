"""The one exception tree of podchord.

Every error podchord raises on purpose derives from :class:`PodchordError`; lower-level
errors (httpx, botocore, OSError) are translated once, at the boundary that meets them, with
``raise ... from``. Each error carries what a caller needs to act on it.

    PodchordError
    ├── InvalidInput                 bad argument, name, option or settings value
    │   └── ManifestInvalid          a manifest fails validation (schema, keys, sizes)
    ├── PodmanError                  anything the libpod boundary reports
    │   ├── PodmanUnreachable        socket missing / connection refused / timed out
    │   ├── NotLibpod                the socket answers, but is not Podman's libpod API
    │   ├── PodmanTooOld             libpod API older than podchord supports
    │   ├── PodmanNotFound           404: container, image or network does not exist
    │   ├── PodmanConflict           409 or a name already in use
    │   ├── CheckpointFailed         Podman/CRIU refused or failed a checkpoint
    │   ├── RestoreFailed            Podman/CRIU refused or failed a restore
    │   └── CheckpointUnsupported    the node's capability probe failed
    ├── StoreError                   anything the archive store reports
    │   ├── StoreUnavailable         the store cannot be reached or refused the request
    │   ├── ObjectNotFound           a key that should exist does not
    │   ├── IntegrityError           size or sha256 differs from what was recorded
    │   ├── ManifestExists           a manifest for this checkpoint id is already committed
    │   └── ObjectTooLarge           a small object (manifest) is larger than allowed
    ├── ProjectError                 a project cannot be checkpointed as asked
    ├── SpoolUnavailable             the local spool folder cannot be written (full, read-only)
    ├── CheckpointAborted            a project checkpoint failed and was rolled back
    ├── MigrationFailed              a migration's restore failed; the source gets it back
    ├── LockHeld                     another operation on the same project is running
    └── DeadlineExceeded             the eviction window ran out
"""

from __future__ import annotations

# Every extra constructor argument has a default: Celery rebuilds a remote exception as
# cls(message), and one it cannot rebuild reaches the caller as a less precise parent class.

__all__ = [
    "CheckpointAborted",
    "CheckpointFailed",
    "CheckpointUnsupported",
    "DeadlineExceeded",
    "IntegrityError",
    "InvalidInput",
    "LockHeld",
    "ManifestExists",
    "ManifestInvalid",
    "MigrationFailed",
    "NotLibpod",
    "ObjectNotFound",
    "ObjectTooLarge",
    "PodchordError",
    "PodmanConflict",
    "PodmanError",
    "PodmanNotFound",
    "PodmanTooOld",
    "PodmanUnreachable",
    "ProjectError",
    "RestoreFailed",
    "SpoolUnavailable",
    "StoreError",
    "StoreUnavailable",
]


class PodchordError(Exception):
    """Raised for every failure podchord reports on purpose (root of the tree)."""


class InvalidInput(PodchordError, ValueError):
    """Raised when an argument, name, option or setting is not acceptable."""


class ManifestInvalid(InvalidInput):
    """Raised when a manifest fails validation; nothing has been touched."""


class PodmanError(PodchordError):
    """Raised for failures at the libpod REST boundary.

    Attributes:
        status: HTTP status Podman answered with, when there was an answer.
        cause: Podman's own ``cause`` field, when present.
        podman_message: Podman's own ``message`` field, when present.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        cause: str | None = None,
        podman_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause
        self.podman_message = podman_message


class PodmanUnreachable(PodmanError):
    """Raised when the libpod socket cannot be reached (missing, refused, timed out)."""


class NotLibpod(PodmanError):
    """Raised when the socket answers but is not Podman's libpod API (e.g. Docker Engine)."""


class PodmanTooOld(PodmanError):
    """Raised when the libpod API version is older than podchord supports."""


class PodmanNotFound(PodmanError):
    """Raised when Podman answers 404 for a container, image or network."""


class PodmanConflict(PodmanError):
    """Raised when Podman answers 409, or a name is already taken."""


class CheckpointFailed(PodmanError):
    """Raised when Podman or CRIU fails to checkpoint a container.

    Attributes:
        container: the container that was being checkpointed.
    """

    def __init__(self, message: str, *, container: str = "", **kw: object) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.container = container


class RestoreFailed(PodmanError):
    """Raised when Podman or CRIU fails to restore an archive.

    Attributes:
        archive: the archive (path or key) that was being restored.
        service: the service being restored, when known.
    """

    def __init__(
        self, message: str, *, archive: str = "", service: str | None = None, **kw: object
    ) -> None:
        super().__init__(message, **kw)  # type: ignore[arg-type]
        self.archive = archive
        self.service = service


class CheckpointUnsupported(PodmanError):
    """Raised when a node's checkpoint capability probe fails; the reason says why."""


class StoreError(PodchordError):
    """Raised for failures of the archive store.

    Attributes:
        key: the object key involved, when there is one.
    """

    def __init__(self, message: str, *, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


class StoreUnavailable(StoreError):
    """Raised when the store cannot be reached or refuses a request."""


class ObjectNotFound(StoreError):
    """Raised when an object that should exist is missing."""


class IntegrityError(StoreError):
    """Raised when an object's size or sha256 differs from what was recorded.

    Attributes:
        expected: the recorded digest (or size, as text).
        actual: the digest (or size) that was read.
    """

    def __init__(
        self, message: str, *, key: str | None = None, expected: str = "", actual: str = ""
    ) -> None:
        super().__init__(message, key=key)
        self.expected = expected
        self.actual = actual


class ManifestExists(StoreError):
    """Raised when a manifest for the same checkpoint id was already committed."""


class ObjectTooLarge(StoreError):
    """Raised when an object read whole (a manifest) is larger than allowed; nothing was read.

    Attributes:
        size_bytes: the object's size.
        max_bytes: the limit it exceeded.
    """

    def __init__(
        self, message: str, *, key: str | None = None, size_bytes: int = 0, max_bytes: int = 0
    ) -> None:
        super().__init__(message, key=key)
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes


class ProjectError(PodchordError):
    """Raised when a project cannot be checkpointed as asked (none, duplicates, not running)."""


class SpoolUnavailable(PodchordError):
    """Raised when a local spool file or folder cannot be written (disk full, read-only)."""


class LockHeld(PodchordError):
    """Raised when another operation holds the per-project lock."""


class DeadlineExceeded(PodchordError):
    """Raised when the deadline (eviction window) passed before the work finished."""


class CheckpointAborted(PodchordError):
    """Raised when a project checkpoint failed and was rolled back; the message says how.

    Attributes:
        summary: what failed, what was deleted and which services were brought back.
    """

    def __init__(self, message: str, summary: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.summary = summary or {}


class MigrationFailed(PodchordError):
    """Raised when a migration's restore failed; the workload is being restored on the source.

    Attributes:
        fallback_task_id: the restore task that brings the project back on the source node.
    """

    def __init__(self, message: str, fallback_task_id: str | None = None) -> None:
        # Both in args: Celery rebuilds a remote error as cls(*args), so the caller gets the
        # fallback's task id too, not only the message.
        super().__init__(message, fallback_task_id)
        self.fallback_task_id = fallback_task_id

    def __str__(self) -> str:
        return str(self.args[0])
