"""The S3 archive store: boto3 multipart uploads with SSE, verified reads, conditional commits.

botocore errors are translated here, once, into the :class:`~tasks.errors.StoreError` tree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import IO, TYPE_CHECKING, Any, cast

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from .errors import (
    IntegrityError,
    ManifestExists,
    ObjectNotFound,
    ObjectTooLarge,
    StoreError,
    StoreUnavailable,
)
from .keys import KeyLayout
from .store_base import ListedObject, ObjectInfo, PutResult, Store, StoreSettings
from .streams import Digest, FullReader

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Store", "make_s3_client"]

_NOT_FOUND = {"NoSuchKey", "404", "NotFound"}
# 412: the object exists. 409: another conditional write to the key is in flight (real S3).
_CONDITION_FAILED = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_DELETE_BATCH = 1000  # DeleteObjects limit


def make_s3_client(settings: StoreSettings) -> S3Client:
    """Return an S3 client configured from ``settings`` (endpoint: settings, else the env)."""
    config = Config(
        retries={"total_max_attempts": settings.max_attempts, "mode": "standard"},
        connect_timeout=settings.connect_timeout_s,
        read_timeout=settings.read_timeout_s,
        # One connection per concurrent part, plus reads/heads running beside an upload.
        max_pool_connections=settings.max_concurrency + 4,
    )
    # A fresh session per client: boto3's default session is not thread-safe to create.
    return boto3.session.Session().client(
        "s3",
        endpoint_url=settings.endpoint_url,
        region_name=settings.region_name,
        config=config,
    )


class S3Store(Store):
    """A :class:`~tasks.store_base.Store` on one S3 bucket and key prefix.

    Args:
        client: the S3 client (injected, so tests can point it at moto).
        bucket: an existing bucket.
    """

    def __init__(
        self,
        client: S3Client,
        bucket: str,
        *,
        layout: KeyLayout,
        settings: StoreSettings,
    ) -> None:
        prefix = f"/{layout.prefix}" if layout.prefix else ""
        super().__init__(url=f"s3://{bucket}{prefix}", layout=layout, settings=settings)
        self._client = client
        self._bucket = bucket

    # -- writes ------------------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size_bytes: int | None = None,
        compress: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PutResult:
        key = self._key(key)
        part_size = self.settings.part_size_for(expected_size_bytes)
        pipe = self._pipeline(chunks, compress, progress)
        watch = _FailFast(self._client, self._bucket, key)
        reader = FullReader(watch.guard(pipe.stored))
        try:
            with watch:
                self._client.upload_fileobj(
                    cast("IO[bytes]", reader),  # duck-typed: s3transfer only calls read()
                    self._bucket,
                    key,
                    ExtraArgs={**self._sse_args(), "ContentType": "application/octet-stream"},
                    Config=self._transfer_config(part_size),
                )
        except BaseException as exc:
            # s3transfer aborts the upload itself on failure, but that abort can fail too.
            self._abort_key(key, exc)
            if isinstance(exc, _StopUpload):
                raise StoreUnavailable(f"S3 upload of {key} failed", key=key) from exc
            if isinstance(exc, ClientError | BotoCoreError):
                raise _translate(exc, key, "upload") from exc
            raise
        result = self._result(key, pipe, compress)
        self._check_written(key, result.size_bytes)
        return result

    def put_manifest(self, key: str, data: bytes) -> PutResult:
        key = self._key(key)
        try:
            self._client.put_object(
                Bucket=self._bucket,
                Key=key,
                Body=data,
                IfNoneMatch="*",
                ContentType="application/json",
                **self._sse_args(),  # type: ignore[arg-type]
            )
        except ClientError as exc:
            if _code(exc) in _CONDITION_FAILED:
                raise ManifestExists(f"{key} is already committed", key=key) from exc
            raise _translate(exc, key, "put") from exc
        except BotoCoreError as exc:
            raise _translate(exc, key, "put") from exc
        digest = Digest()
        digest.update(data)
        return PutResult(key, len(data), digest.sha256, len(data), digest.sha256, "none")

    def delete(self, keys: Iterable[str]) -> int:
        checked = [self._key(k) for k in keys]
        for start in range(0, len(checked), _DELETE_BATCH):
            batch = checked[start : start + _DELETE_BATCH]
            with _s3_errors(batch[0], "delete"):
                response = self._client.delete_objects(
                    Bucket=self._bucket,
                    Delete={"Objects": [{"Key": k} for k in batch], "Quiet": True},
                )
            if errors := response.get("Errors"):
                first = errors[0]
                raise StoreUnavailable(
                    f"S3 refused to delete {len(errors)} objects, e.g. {first.get('Key')}: "
                    f"{first.get('Code')} {first.get('Message')}",
                    key=first.get("Key"),
                )
        return len(checked)

    def abort_uploads(self, prefix: str) -> int:
        count = 0
        for key, upload_id in self._uploads(prefix):
            with _s3_errors(key, "abort upload"):
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=key, UploadId=upload_id
                )
            count += 1
        return count

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        key = self._key(key)
        with _s3_errors(key, "head"):
            r = self._client.head_object(Bucket=self._bucket, Key=key)
        return ObjectInfo(
            key=key,
            size_bytes=r["ContentLength"],
            sse=r.get("ServerSideEncryption"),
            kms_key_id=r.get("SSEKMSKeyId"),
            etag=r.get("ETag"),
            modified=r.get("LastModified"),
        )

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        key = self._key(key)
        with _s3_errors(key, "get"):
            r = self._client.get_object(Bucket=self._bucket, Key=key)
            body = r["Body"]
            try:
                size = r["ContentLength"]
                if size > max_bytes:
                    raise ObjectTooLarge(
                        f"{key} is {size} bytes, more than the {max_bytes} allowed",
                        key=key,
                        size_bytes=size,
                        max_bytes=max_bytes,
                    )
                data = body.read(max_bytes + 1)  # bounded even if the length header lied
            finally:
                body.close()
        if len(data) > max_bytes:
            raise ObjectTooLarge(
                f"{key} is larger than {max_bytes} bytes",
                key=key,
                size_bytes=len(data),
                max_bytes=max_bytes,
            )
        return data

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        directory = self._dir(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        with _s3_errors(directory, "list"):
            pages = paginator.paginate(Bucket=self._bucket, Prefix=_slash(directory))
            for page in pages:
                for obj in page.get("Contents", []):
                    yield ListedObject(obj["Key"], obj["Size"], obj["LastModified"])

    def list_upload_keys(self, prefix: str) -> list[str]:
        return [key for key, _ in self._uploads(prefix)]

    @contextmanager
    def _open_stored(self, key: str) -> Iterator[tuple[int, Iterator[bytes]]]:
        with _s3_errors(key, "get"):
            r = self._client.get_object(Bucket=self._bucket, Key=key)
        body = r["Body"]
        try:
            chunks = body.iter_chunks(self.settings.read_chunk_bytes)
            yield r["ContentLength"], self._chunks(key, chunks)
        finally:
            body.close()

    # -- helpers -----------------------------------------------------------------------------

    def _chunks(self, key: str, chunks: Iterator[bytes]) -> Iterator[bytes]:
        # Errors surface while iterating the body (timeouts, truncated responses).
        while True:
            with _s3_errors(key, "read"):
                chunk = next(chunks, None)
            if chunk is None:
                return
            yield chunk

    def _sse_args(self) -> dict[str, str]:
        args: dict[str, str] = {}
        if self.settings.sse is not None:
            args["ServerSideEncryption"] = self.settings.sse
        if self.settings.kms_key_id is not None:
            args["SSEKMSKeyId"] = self.settings.kms_key_id
        return args

    def _transfer_config(self, part_size: int) -> TransferConfig:
        config = TransferConfig(
            # A stream of at least one full part goes multipart; a shorter one is a single
            # PutObject of what was read (< one part, so memory stays bounded either way).
            multipart_threshold=part_size,
            multipart_chunksize=part_size,
            max_concurrency=self.settings.max_concurrency,
            use_threads=True,
            # The CRT client ignores most of these settings; stay on s3transfer.
            preferred_transfer_client="classic",
        )
        # Not exposed by boto3's constructor; without it 10 parts may queue in memory.
        config.max_in_memory_upload_chunks = self.settings.max_concurrency
        return config

    def _uploads(self, prefix: str) -> Iterator[tuple[str, str]]:
        directory = self._dir(prefix)
        paginator = self._client.get_paginator("list_multipart_uploads")
        with _s3_errors(directory, "list uploads"):
            for page in paginator.paginate(Bucket=self._bucket, Prefix=_slash(directory)):
                for upload in page.get("Uploads", []):
                    yield upload["Key"], upload["UploadId"]

    def _abort_key(self, key: str, failure: BaseException) -> None:
        """Abort leftover uploads of exactly ``key`` (keys are unique per checkpoint)."""
        try:
            paginator = self._client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=self._bucket, Prefix=key):
                for upload in page.get("Uploads", []):
                    if upload["Key"] == key:
                        self._client.abort_multipart_upload(
                            Bucket=self._bucket, Key=key, UploadId=upload["UploadId"]
                        )
        except (ClientError, BotoCoreError) as exc:
            failure.add_note(f"podchord: could not abort leftover uploads of {key}: {exc}")

    def _check_written(self, key: str, size_bytes: int) -> None:
        info = self.head(key)
        problem: StoreError | None = None
        if info.size_bytes != size_bytes:
            problem = IntegrityError(
                f"{key}: S3 stored {info.size_bytes} bytes, {size_bytes} were sent",
                key=key,
                expected=str(size_bytes),
                actual=str(info.size_bytes),
            )
        elif self.settings.sse is not None and info.sse != self.settings.sse:
            problem = StoreUnavailable(
                f"{key}: S3 stored it with SSE {info.sse!r}, not {self.settings.sse!r}", key=key
            )
        if problem is not None:
            self.delete([key])
            raise problem


class _StopUpload(Exception):
    """Raised into s3transfer's reader to stop draining the source after S3 failed."""


class _FailFast:
    """Stops reading the source as soon as a request of this upload has failed.

    s3transfer keeps reading the whole source after a part failed (it only skips the
    remaining requests), which would drain a multi-GB checkpoint stream for nothing. The
    client's events are shared, so requests are matched to this upload by bucket and key.
    """

    _OPS = ("CreateMultipartUpload", "UploadPart")

    def __init__(self, client: S3Client, bucket: str, key: str) -> None:
        self._events = client.meta.events
        self._bucket = bucket
        self._key = key
        self._tag = object()
        self.failed = threading.Event()

    def __enter__(self) -> _FailFast:
        for op in self._OPS:
            self._events.register(f"before-parameter-build.s3.{op}", self._mark)
            self._events.register(f"after-call.s3.{op}", self._after)
            self._events.register(f"after-call-error.s3.{op}", self._error)
        return self

    def __exit__(self, *exc: object) -> None:
        for op in self._OPS:
            self._events.unregister(f"before-parameter-build.s3.{op}", self._mark)
            self._events.unregister(f"after-call.s3.{op}", self._after)
            self._events.unregister(f"after-call-error.s3.{op}", self._error)

    def guard(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            if self.failed.is_set():
                raise _StopUpload(self._key)
            yield chunk

    def _mark(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if params.get("Bucket") == self._bucket and params.get("Key") == self._key:
            context["podchord_upload"] = self._tag

    def _after(self, http_response: Any, context: dict[str, Any], **_: Any) -> None:
        if context.get("podchord_upload") is self._tag and http_response.status_code >= 300:
            self.failed.set()

    def _error(self, context: dict[str, Any], **_: Any) -> None:
        if context.get("podchord_upload") is self._tag:
            self.failed.set()


@contextmanager
def _s3_errors(key: str, action: str) -> Iterator[None]:
    try:
        yield
    except (ClientError, BotoCoreError) as exc:
        raise _translate(exc, key, action) from exc


def _translate(exc: ClientError | BotoCoreError, key: str, action: str) -> StoreError:
    if isinstance(exc, ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message", "")
        if code in _NOT_FOUND:
            return ObjectNotFound(f"no object {key}", key=key)
        return StoreUnavailable(f"S3 {action} {key}: {code} {message}".rstrip(), key=key)
    return StoreUnavailable(f"S3 {action} {key}: {exc}", key=key)


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _slash(directory: str) -> str:
    return f"{directory}/" if directory else ""
