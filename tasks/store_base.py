"""The archive store interface, its settings and its result types.

:class:`Store` is the one interface the checkpoint and restore code talks to. Backends
(:mod:`tasks.store_s3`, :mod:`tasks.store_file`) implement a handful of primitives; the
integrity-checked reads, downloads, listing and retention are written once, here.
"""

from __future__ import annotations

import math
import os
import secrets
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from . import retention as retention
from .errors import (
    IntegrityError,
    InvalidInput,
    ManifestExists,
    ObjectNotFound,
    StoreUnavailable,
)
from .keys import KeyLayout, check_key_under
from .streams import Digest, counted, verified, zstd_compress, zstd_decompress

__all__ = [
    "Compression",
    "ListedObject",
    "ObjectInfo",
    "PutResult",
    "Store",
    "StoreSettings",
]

MiB = 1024 * 1024
Compression = Literal["zstd", "none"]
SSE = Literal["AES256", "aws:kms"]

_MIN_PART_BYTES = 8 * MiB  # S3 allows 5 MiB; 8 MiB keeps 10,000 parts >= 78 GiB
_MAX_PART_BYTES = 5 * 1024 * MiB  # S3 limit
_MAX_PARTS = 10_000  # S3 limit
_MAX_OBJECT_BYTES = 5 * 1024 * 1024 * MiB  # S3 limit: 5 TiB


@dataclass(frozen=True)
class StoreSettings:
    """How the store transfers and protects objects.

    Upload memory: s3transfer reads each part fully into memory before submitting it. We cap
    its in-memory parts (``max_in_memory_upload_chunks``) at ``max_concurrency``; its
    submission thread may hold one more part while it waits for a slot, and the full-read
    adapter holds up to one part (plus one source chunk) while assembling the next. Peak::

        upload RSS  ~= part_size_bytes * (max_concurrency + 2)  [+ zstd window if compressed]

    i.e. 48 MiB with the defaults (8 MiB x (4 + 2)); ``bench/store_upload_rss.py`` measures it.
    Download memory is ``read_chunk_bytes`` (one response chunk; reads are sequential so the
    sha256 can be checked).

    Attributes:
        part_size_bytes: multipart part size, >= 8 MiB. Raised per upload (to a MiB multiple)
            when ``expected_size_bytes`` would need more than S3's 10,000 parts.
        max_concurrency: UploadPart requests in flight, and parts held in memory, per upload.
        sse: server-side encryption for every object written: ``"AES256"`` (SSE-S3),
            ``"aws:kms"`` (with ``kms_key_id``), or None to explicitly write unencrypted.
        kms_key_id: the KMS key for ``sse="aws:kms"``; None uses the bucket/account default.
        compression_level: zstd level (1-22) for ``put_stream(compress=True)``; level 3
            holds a few MiB of window, 19+ holds tens of MiB.
        endpoint_url: S3 endpoint; None lets boto3 resolve it (``AWS_ENDPOINT_URL`` env).
        region_name: S3 region; None lets boto3 resolve it.
        read_chunk_bytes: chunk size of reads and downloads (memory per concurrent read).
        max_manifest_bytes: refuse to read manifests larger than this.
        connect_timeout_s: TCP connect timeout per S3 request.
        read_timeout_s: socket read timeout per S3 request.
        max_attempts: botocore attempts per request (standard retry mode).
    """

    part_size_bytes: int = 8 * MiB
    max_concurrency: int = 3
    sse: SSE | None = "AES256"
    kms_key_id: str | None = None
    compression_level: int = 3
    endpoint_url: str | None = None
    region_name: str | None = None
    read_chunk_bytes: int = 1 * MiB
    max_manifest_bytes: int = 4 * MiB
    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0
    max_attempts: int = 5

    def __post_init__(self) -> None:
        _bounded("part_size_bytes", self.part_size_bytes, _MIN_PART_BYTES, _MAX_PART_BYTES)
        _bounded("max_concurrency", self.max_concurrency, 1, 64)
        _bounded("compression_level", self.compression_level, 1, 22)
        _bounded("read_chunk_bytes", self.read_chunk_bytes, 4096, 64 * MiB)
        _bounded("max_manifest_bytes", self.max_manifest_bytes, 1024, 256 * MiB)
        _bounded("max_attempts", self.max_attempts, 1, 20)
        if self.sse not in ("AES256", "aws:kms", None):
            raise InvalidInput(f"sse must be 'AES256', 'aws:kms' or None, got {self.sse!r}")
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise InvalidInput("kms_key_id is only valid with sse='aws:kms'")
        if not (self.connect_timeout_s > 0 and self.read_timeout_s > 0):
            raise InvalidInput("timeouts must be positive seconds")

    def part_size_for(self, expected_size_bytes: int | None) -> int:
        """Return the part size for an upload of about ``expected_size_bytes``.

        Raises:
            InvalidInput: when the expected size is negative or beyond S3's 5 TiB.
        """
        if expected_size_bytes is None:
            return self.part_size_bytes
        if not 0 <= expected_size_bytes <= _MAX_OBJECT_BYTES:
            raise InvalidInput(f"expected_size_bytes out of range: {expected_size_bytes}")
        needed = math.ceil(expected_size_bytes / _MAX_PARTS / MiB) * MiB
        return min(max(self.part_size_bytes, needed), _MAX_PART_BYTES)


def _bounded(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name} must be an integer in [{low}, {high}], got {value!r}")


@dataclass(frozen=True)
class PutResult:
    """What was stored: the stored bytes' size and digest, and those of the raw input."""

    key: str
    size_bytes: int
    sha256: str
    raw_size_bytes: int
    raw_sha256: str
    compression: Compression


@dataclass(frozen=True)
class ObjectInfo:
    """Metadata of a stored object (``sse`` is None when unencrypted or not applicable)."""

    key: str
    size_bytes: int
    sse: str | None = None
    kms_key_id: str | None = None
    etag: str | None = None
    modified: datetime | None = None


@dataclass(frozen=True)
class ListedObject:
    """One entry of a listing."""

    key: str
    size_bytes: int
    modified: datetime


@dataclass
class _Pipeline:
    """The put-side stream: raw chunks -> [zstd] -> stored chunks, digested on both sides."""

    stored: Iterator[bytes]
    raw: Digest = field(default_factory=Digest)
    out: Digest = field(default_factory=Digest)


class Store(ABC):
    """An archive store: integrity-checked streaming puts and gets under one key prefix.

    Keys passed to every method are full keys (as written into manifests) and must lie
    under :attr:`layout`'s prefix; build them with :attr:`layout`. Prefix arguments are
    directories: ``delete_prefix("a/b")`` never touches ``a/bc``.
    """

    def __init__(self, *, url: str, layout: KeyLayout, settings: StoreSettings) -> None:
        self.url = url
        self.layout = layout
        self.settings = settings

    # -- primitives, per backend -------------------------------------------------------------

    @abstractmethod
    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size_bytes: int | None = None,
        compress: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PutResult:
        """Store ``chunks`` under ``key``; all or nothing.

        Args:
            key: the destination (overwritten if present).
            chunks: the raw content; if it raises, nothing is left behind and the exception
                propagates unchanged.
            expected_size_bytes: raw size estimate, used to size the parts.
            compress: zstd-compress on the way (at ``settings.compression_level``).
            progress: called, from a transfer thread, with the number of raw bytes taken
                from ``chunks`` since the previous call.

        Raises:
            StoreUnavailable: the store failed or refused; no object and no upload remain.
        """

    @abstractmethod
    def put_manifest(self, key: str, data: bytes) -> PutResult:
        """Write ``data`` under ``key`` only if no object exists there yet.

        Raises:
            ManifestExists: an object (a committed manifest) is already there.
        """

    @abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Return the object's metadata.

        Raises:
            ObjectNotFound: no such object.
        """

    @abstractmethod
    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        """Return a small object's content.

        Raises:
            ObjectNotFound: no such object.
            ObjectTooLarge: the object is larger than ``max_bytes`` (nothing was read).
        """

    @abstractmethod
    def delete(self, keys: Iterable[str]) -> int:
        """Delete ``keys`` (missing ones are fine); return how many were requested."""

    @abstractmethod
    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        """Yield the objects under the directory ``prefix`` (in no particular order)."""

    @abstractmethod
    def list_upload_keys(self, prefix: str) -> list[str]:
        """Return the keys of unfinished uploads under the directory ``prefix``."""

    @abstractmethod
    def abort_uploads(self, prefix: str) -> int:
        """Abort every unfinished upload under the directory ``prefix``; return the count."""

    @abstractmethod
    def _open_stored(self, key: str) -> AbstractContextManager[tuple[int, Iterator[bytes]]]:
        """Context manager yielding (stored size, chunks) of an object; ObjectNotFound."""

    # -- written once ------------------------------------------------------------------------

    def exists(self, key: str) -> bool:
        """Return whether an object exists under ``key``."""
        try:
            self.head(key)
        except ObjectNotFound:
            return False
        return True

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under the directory ``prefix``; return how many."""
        return self.delete([obj.key for obj in self.list_objects(prefix)])

    @contextmanager
    def open_read(
        self, key: str, *, size_bytes: int, sha256: str, decompress: bool = False
    ) -> Iterator[Iterator[bytes]]:
        """Yield an iterator of the object's chunks, verified against size and sha256.

        ``size_bytes`` and ``sha256`` describe the *stored* bytes (``PutResult.size_bytes``
        and ``.sha256``). A size mismatch is raised before any byte is yielded; a digest
        mismatch when the iterator reaches the end.

        Args:
            decompress: yield the zstd-decompressed content instead of the stored bytes.

        Raises:
            ObjectNotFound: no such object.
            IntegrityError: (from the iterator) size or sha256 differs.
        """
        key = self._key(key)
        with self._open_stored(key) as (stored_size, chunks):
            if stored_size != size_bytes:
                raise IntegrityError(
                    f"{key}: stored size {stored_size} != recorded {size_bytes}",
                    key=key,
                    expected=str(size_bytes),
                    actual=str(stored_size),
                )
            checked = verified(chunks, key=key, size_bytes=size_bytes, sha256=sha256)
            if decompress:
                checked = zstd_decompress(checked, self.settings.read_chunk_bytes)
            yield checked

    def download(
        self,
        key: str,
        dest: Path,
        *,
        size_bytes: int,
        sha256: str,
        compression: Compression,
        raw_size_bytes: int | None = None,
        raw_sha256: str | None = None,
        fsync: bool = True,
    ) -> Path:
        """Download ``key`` to ``dest`` (mode 0600), verified before ``dest`` appears.

        The content goes to a 0600 temporary file beside ``dest`` and is renamed over
        ``dest`` only after the stored bytes (and, if given, the raw bytes) verified.
        ``fsync=False`` skips forcing the file to disk: for a file consumed and deleted
        right away, whose loss in a crash costs only a retry.

        Raises:
            ObjectNotFound: no such object.
            IntegrityError: size or sha256 differs; no file is left behind.
        """
        dest = Path(dest)
        tmp = dest.with_name(f".{dest.name}.{secrets.token_hex(6)}.part")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                # Uncompressed, the raw bytes are the stored bytes, whose sha256 open_read
                # verifies: hashing them a second time would only burn CPU.
                raw: Digest | _KnownDigest = (
                    Digest() if compression == "zstd" else _KnownDigest(sha256)
                )
                with self.open_read(
                    key, size_bytes=size_bytes, sha256=sha256, decompress=compression == "zstd"
                ) as chunks:
                    for chunk in chunks:
                        raw.update(chunk)
                        _check_raw_growth(key, raw, raw_size_bytes)
                        out.write(chunk)
                out.flush()
                if fsync:
                    os.fsync(out.fileno())
            _check_raw(key, raw, raw_size_bytes, raw_sha256)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def read_manifest(self, project: str, checkpoint_id: str) -> bytes:
        """Return a checkpoint's manifest bytes (at most ``settings.max_manifest_bytes``).

        Raises:
            ObjectNotFound: the checkpoint is not committed.
            ObjectTooLarge: the manifest is implausibly large.
        """
        key = self.layout.manifest(project, checkpoint_id)
        return self.get_bytes(key, self.settings.max_manifest_bytes)

    def list_checkpoints(self, project: str) -> list[retention.CheckpointEntry]:
        """Return the project's checkpoints, newest first (see :mod:`tasks.retention`)."""
        return retention.list_checkpoints(self, project)

    def prune(
        self, project: str, *, keep: int, grace_s: float, now: datetime | None = None
    ) -> retention.PruneReport:
        """Apply the retention rules to ``project`` (see :func:`tasks.retention.prune`)."""
        return retention.prune(self, project, keep=keep, grace_s=grace_s, now=now)

    def check_conditional_writes(self) -> None:
        """Probe that the store honours create-only writes (``If-None-Match: *``).

        Some S3-compatible servers silently ignore the condition; on those a second commit
        of the same checkpoint would overwrite the first. Run this once at worker start.

        Raises:
            StoreUnavailable: the second create-only write of a probe key succeeded.
        """
        key = "/".join(p for p in (self.layout.prefix, "probes", secrets.token_hex(8)) if p)
        self.put_manifest(key, b"probe")
        try:
            self.put_manifest(key, b"probe")
        except ManifestExists:
            return
        finally:
            self.delete([key])
        raise StoreUnavailable(f"{self.url} ignores create-only (If-None-Match) writes")

    # -- helpers for backends ----------------------------------------------------------------

    def _key(self, key: str) -> str:
        return check_key_under(key, self.layout.prefix)

    def _dir(self, prefix: str) -> str:
        """Validate a directory prefix; ``""`` (the whole store) only for an empty layout."""
        prefix = prefix.strip("/")
        if prefix == self.layout.prefix:
            return prefix
        return self._key(prefix)

    def _pipeline(
        self, chunks: Iterable[bytes], compress: bool, progress: Callable[[int], None] | None
    ) -> _Pipeline:
        pipe = _Pipeline(stored=iter(()))
        source: Iterator[bytes] = counted(chunks, pipe.raw)
        if progress is not None:
            source = _reporting(source, progress)
        if compress:
            pipe.stored = counted(zstd_compress(source, self.settings.compression_level), pipe.out)
        else:
            # Stored bytes are the raw bytes: one sha256 serves both (a second pass over
            # every archive costs ~0.3 s of CPU per 100 MB on a loaded 2-core node).
            pipe.out = pipe.raw
            pipe.stored = source
        return pipe

    @staticmethod
    def _result(key: str, pipe: _Pipeline, compress: bool) -> PutResult:
        return PutResult(
            key=key,
            size_bytes=pipe.out.size_bytes,
            sha256=pipe.out.sha256,
            raw_size_bytes=pipe.raw.size_bytes,
            raw_sha256=pipe.raw.sha256,
            compression="zstd" if compress else "none",
        )


def _reporting(chunks: Iterator[bytes], progress: Callable[[int], None]) -> Iterator[bytes]:
    for chunk in chunks:
        progress(len(chunk))
        yield chunk


class _KnownDigest:
    """A byte count standing in for a :class:`Digest` whose sha256 is checked elsewhere."""

    def __init__(self, sha256: str) -> None:
        self.sha256 = sha256.lower()
        self.size_bytes = 0

    def update(self, data: bytes) -> None:
        self.size_bytes += len(data)


def _check_raw_growth(key: str, raw: Digest | _KnownDigest, raw_size_bytes: int | None) -> None:
    # Stop a decompression bomb as soon as it outgrows the recorded raw size.
    if raw_size_bytes is not None and raw.size_bytes > raw_size_bytes:
        raise IntegrityError(
            f"{key}: content exceeds the recorded {raw_size_bytes} raw bytes",
            key=key,
            expected=str(raw_size_bytes),
            actual=f">{raw_size_bytes}",
        )


def _check_raw(
    key: str, raw: Digest | _KnownDigest, raw_size_bytes: int | None, raw_sha256: str | None
) -> None:
    if raw_size_bytes is not None and raw.size_bytes != raw_size_bytes:
        raise IntegrityError(
            f"{key}: raw size {raw.size_bytes} != recorded {raw_size_bytes}",
            key=key,
            expected=str(raw_size_bytes),
            actual=str(raw.size_bytes),
        )
    if raw_sha256 is not None and raw.sha256 != raw_sha256.lower():
        raise IntegrityError(
            f"{key}: raw sha256 {raw.sha256} != recorded {raw_sha256}",
            key=key,
            expected=raw_sha256,
            actual=raw.sha256,
        )
