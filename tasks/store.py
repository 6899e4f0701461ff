"""The archive store, selected by URL: ``s3://bucket/prefix`` or ``file:///path``.

    store = open_store("s3://archives/podchord", settings=StoreSettings(max_concurrency=8))
    put = store.put_stream(store.layout.service_archive("web", cid, "db"), chunks, compress=True)
    with store.open_read(put.key, size_bytes=put.size_bytes, sha256=put.sha256) as body: ...

See docs/store.md for the key layout, memory formulas, SSE, commits and retention.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from .errors import InvalidInput
from .keys import KeyLayout
from .retention import CheckpointEntry, PruneReport, referenced_keys
from .store_base import Compression, ListedObject, ObjectInfo, PutResult, Store, StoreSettings
from .store_file import FileStore
from .store_s3 import S3Store, make_s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = [
    "CheckpointEntry",
    "Compression",
    "FileStore",
    "ListedObject",
    "ObjectInfo",
    "PruneReport",
    "PutResult",
    "S3Store",
    "Store",
    "StoreSettings",
    "open_store",
    "referenced_keys",
]

# S3 bucket naming rules (lowercase, 3-63 chars, no leading/trailing dot or dash).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


def open_store(
    url: str, *, s3_client: S3Client | None = None, settings: StoreSettings | None = None
) -> Store:
    """Return the store a URL names. Nothing is contacted until the first request.

    Args:
        url: ``s3://bucket[/prefix]`` or ``file:///absolute/path``.
        s3_client: the client to use for ``s3://`` (default: one made from ``settings``,
            whose endpoint falls back to ``AWS_ENDPOINT_URL``).
        settings: transfer and encryption settings (default :class:`StoreSettings()`).

    Raises:
        InvalidInput: unknown scheme, bad bucket name, prefix or path.
    """
    settings = StoreSettings() if settings is None else settings
    if not isinstance(url, str):
        raise InvalidInput(f"store URL must be a string, got {type(url).__name__}")
    parts = urlsplit(url)
    if parts.query or parts.fragment:
        raise InvalidInput(f"store URL takes no query or fragment: {url!r}")
    if parts.scheme == "s3":
        if not _BUCKET.fullmatch(parts.netloc) or ".." in parts.netloc:
            raise InvalidInput(f"invalid S3 bucket name {parts.netloc!r} in {url!r}")
        client = make_s3_client(settings) if s3_client is None else s3_client
        return S3Store(client, parts.netloc, layout=KeyLayout(parts.path), settings=settings)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise InvalidInput(f"file store URL must be local (file:///path): {url!r}")
        path = unquote(parts.path)
        if not path.startswith("/") or "\x00" in path or ".." in path.split("/"):
            raise InvalidInput(f"file store URL needs an absolute path: {url!r}")
        return FileStore(Path(path), settings=settings)
    raise InvalidInput(f"unsupported store URL {url!r}: use s3://bucket/prefix or file:///path")
