"""The object-key layout of the archive store, and the checks that keep keys inside it.

Every key podchord writes is built here from validated parts::

    {prefix}/projects/{project}/{checkpoint_id}/manifest.json
    {prefix}/projects/{project}/{checkpoint_id}/services/{service}.tar[.zst]
    {prefix}/images/{image_id}.tar

The prefix may be empty (then keys start at ``projects/`` or ``images/``). Image archives are
content-addressed by the image id (sha256 hex) so checkpoints of any project share them.
Keys read back from a manifest are untrusted: :func:`check_checkpoint_key` and
:func:`check_image_key` confirm they stay inside the checkpoint's (or the images') prefix.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from .errors import InvalidInput
from .names import check_name, check_project

__all__ = [
    "KeyLayout",
    "ParsedKey",
    "check_checkpoint_id",
    "check_checkpoint_key",
    "check_image_id",
    "check_image_key",
    "check_key",
    "check_key_under",
    "check_prefix",
    "checkpoint_time",
    "new_checkpoint_id",
]

# Sortable UTC timestamp (milliseconds optional) plus a random hex tail against collisions.
# The tail is capped so an id can never grow a key past S3's 1,024-byte limit.
_CHECKPOINT_ID = re.compile(r"(\d{8}T\d{6})(\d{3})?Z-[0-9a-f]{6,64}")
_IMAGE_ID = re.compile(r"[0-9a-f]{64}")
# One prefix or key segment: no leading dot, so "." / ".." and hidden spool files never match.
_SEGMENT = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_MAX_KEY_BYTES = 1024


def new_checkpoint_id(now: datetime | None = None) -> str:
    """Return a new checkpoint id such as ``20261204T154012123Z-3f9a1c0b``.

    Ids sort by creation time (UTC, millisecond resolution); 32 random bits break ties.

    Args:
        now: the creation time; naive datetimes are taken as UTC. Defaults to now.
    """
    when = datetime.now(UTC) if now is None else _as_utc(now)
    return f"{when:%Y%m%dT%H%M%S}{when.microsecond // 1000:03d}Z-{secrets.token_hex(4)}"


def check_checkpoint_id(value: object) -> str:
    """Return ``value`` if it is a well-formed checkpoint id.

    Raises:
        InvalidInput: when it is not a string of the form ``YYYYMMDDTHHMMSS[mmm]Z-<hex>``.
    """
    if not isinstance(value, str) or not _CHECKPOINT_ID.fullmatch(value):
        raise InvalidInput(f"invalid checkpoint id {value!r}: expected YYYYMMDDTHHMMSS[mmm]Z-hex")
    checkpoint_time(value)  # rejects month 13 and the like
    return value


def checkpoint_time(checkpoint_id: str) -> datetime:
    """Return the (UTC, aware) creation time encoded in a checkpoint id.

    Raises:
        InvalidInput: when the id is malformed or names an impossible date.
    """
    match = _CHECKPOINT_ID.fullmatch(checkpoint_id)
    if not match:
        raise InvalidInput(f"invalid checkpoint id {checkpoint_id!r}")
    try:
        when = datetime.strptime(match.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    except ValueError as exc:
        raise InvalidInput(f"invalid checkpoint id {checkpoint_id!r}: {exc}") from exc
    millis = int(match.group(2) or 0)
    return when.replace(microsecond=millis * 1000)


def check_image_id(value: object) -> str:
    """Return the bare sha256 hex of an image id (``sha256:`` is stripped).

    Raises:
        InvalidInput: unless it is 64 lowercase hex digits, optionally after ``sha256:``.
    """
    if isinstance(value, str) and value.startswith("sha256:"):
        value = value[len("sha256:") :]
    if not isinstance(value, str) or not _IMAGE_ID.fullmatch(value):
        raise InvalidInput(f"invalid image id {value!r}: expected 64 lowercase hex digits")
    return value


def check_prefix(value: object) -> str:
    """Return a normalized key prefix (outer slashes stripped); ``""`` is allowed.

    Raises:
        InvalidInput: when a segment is empty, starts with a dot or holds other characters
            than letters, digits, ``_``, ``.`` and ``-``.
    """
    if not isinstance(value, str):
        raise InvalidInput(f"key prefix must be a string, got {type(value).__name__}")
    prefix = value.strip("/")
    if prefix and not all(_SEGMENT.fullmatch(s) for s in prefix.split("/")):
        raise InvalidInput(f"invalid key prefix {value!r}: use letters, digits, '_', '.', '-'")
    return prefix


def check_key(value: object) -> str:
    """Return ``value`` if it is a safe relative object key.

    A safe key is non-empty, at most 1,024 UTF-8 bytes, not absolute, and made of segments
    that are non-empty, do not start with a dot (so no ``.``/``..``) and hold no backslash,
    whitespace or control character. The file store maps keys to paths, so this is what keeps
    a key from walking out of its root.

    Raises:
        InvalidInput: naming the key and what is wrong with it.
    """
    if not isinstance(value, str) or not value:
        raise InvalidInput(f"object key must be a non-empty string, got {value!r}")
    if len(value.encode("utf-8")) > _MAX_KEY_BYTES:
        raise InvalidInput(f"object key longer than {_MAX_KEY_BYTES} bytes: {value[:80]!r}...")
    if value.startswith("/"):
        raise InvalidInput(f"object key must be relative: {value!r}")
    if not all(_SEGMENT.fullmatch(s) for s in value.split("/")):
        raise InvalidInput(
            f"invalid object key {value!r}: empty, dot-leading or non [A-Za-z0-9_.-] segment"
        )
    return value


def check_key_under(key: object, base: str) -> str:
    """Return ``key`` if it is safe (:func:`check_key`) and lies strictly under ``base``.

    ``base`` is a prefix such as ``"pfx/projects/web/<id>"``; the comparison adds the
    separator itself, so ``.../<id>0/x`` is not under ``.../<id>``. An empty base admits
    every safe key.

    Raises:
        InvalidInput: when the key is unsafe or outside ``base``.
    """
    checked = check_key(key)
    base = base.strip("/")
    if base and not checked.startswith(base + "/"):
        raise InvalidInput(f"object key {checked!r} is outside {base + '/'!r}")
    return checked


@dataclass(frozen=True)
class ParsedKey:
    """The parts of a key under ``{prefix}/projects/``."""

    project: str
    checkpoint_id: str
    rest: str  # "manifest.json", "services/web.tar.zst", ...


@dataclass(frozen=True)
class KeyLayout:
    """Builds and recognises the keys of one store prefix.

    Args:
        prefix: the store's key prefix; ``""`` for the bucket (or directory) root.
    """

    prefix: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", check_prefix(self.prefix))

    def _join(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)

    @property
    def projects_prefix(self) -> str:
        """``{prefix}/projects`` (no trailing slash)."""
        return self._join("projects")

    @property
    def images_prefix(self) -> str:
        """``{prefix}/images`` (no trailing slash)."""
        return self._join("images")

    def project_prefix(self, project: str) -> str:
        """``{prefix}/projects/{project}`` (no trailing slash)."""
        return self._join("projects", check_project(project))

    def checkpoint_prefix(self, project: str, checkpoint_id: str) -> str:
        """``{prefix}/projects/{project}/{checkpoint_id}`` (no trailing slash)."""
        return self._join("projects", check_project(project), check_checkpoint_id(checkpoint_id))

    def manifest(self, project: str, checkpoint_id: str) -> str:
        """The key of a checkpoint's manifest; its presence is what "committed" means."""
        return self.checkpoint_prefix(project, checkpoint_id) + "/manifest.json"

    def service_archive(
        self, project: str, checkpoint_id: str, service: str, *, compressed: bool = False
    ) -> str:
        """The key of one service's checkpoint archive (``.tar``, ``.tar.zst`` if compressed)."""
        name = check_name(service, "service name")
        suffix = ".tar.zst" if compressed else ".tar"
        return f"{self.checkpoint_prefix(project, checkpoint_id)}/services/{name}{suffix}"

    def image(self, image_id: str) -> str:
        """The content-addressed key of an exported image, shared across checkpoints."""
        return f"{self.images_prefix}/{check_image_id(image_id)}.tar"

    def parse(self, key: str) -> ParsedKey | None:
        """Split a key under ``projects/`` into project, checkpoint id and rest.

        Returns:
            None for keys outside ``projects/`` or whose project or id do not validate.
        """
        head = self.projects_prefix + "/"
        if not key.startswith(head):
            return None
        parts = key[len(head) :].split("/", 2)
        if len(parts) < 3 or not parts[2]:
            return None
        try:
            check_project(parts[0])
            check_checkpoint_id(parts[1])
        except InvalidInput:
            return None
        return ParsedKey(project=parts[0], checkpoint_id=parts[1], rest=parts[2])


def check_checkpoint_key(key: object, layout: KeyLayout, project: str, checkpoint_id: str) -> str:
    """Return ``key`` if it is safe and lies inside the given checkpoint's prefix.

    Used to validate archive keys read from a manifest before anything is fetched.

    Raises:
        InvalidInput: when the key is unsafe or points outside the checkpoint.
    """
    return check_key_under(key, layout.checkpoint_prefix(project, checkpoint_id))


def check_image_key(key: object, layout: KeyLayout) -> str:
    """Return ``key`` if it is exactly ``{prefix}/images/<sha256 hex>.tar``.

    Raises:
        InvalidInput: otherwise.
    """
    checked = check_key_under(key, layout.images_prefix)
    name = checked[len(layout.images_prefix) + 1 :]
    if not (name.endswith(".tar") and _IMAGE_ID.fullmatch(name[: -len(".tar")])):
        raise InvalidInput(f"object key {checked!r} is not an image archive key")
    return checked


def _as_utc(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)
