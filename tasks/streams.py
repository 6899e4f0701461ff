"""Stream adapters for the archive store: full reads, digests, zstd, verification.

Archives are never held whole in memory: they flow as iterators of ``bytes`` chunks, are
hashed and counted on the way, and only reach a file-like object at the s3transfer boundary.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Iterator
from typing import IO, cast

import zstandard

from .errors import IntegrityError

__all__ = [
    "Digest",
    "FullReader",
    "counted",
    "verified",
    "zstd_compress",
    "zstd_decompress",
]


class Digest:
    """Running sha256 and byte count of a stream."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.size_bytes = 0

    def update(self, data: bytes) -> None:
        self._sha.update(data)
        self.size_bytes += len(data)

    @property
    def sha256(self) -> str:
        """Hex digest of everything seen so far."""
        return self._sha.hexdigest()


def counted(chunks: Iterable[bytes], digest: Digest) -> Iterator[bytes]:
    """Yield ``chunks`` unchanged (empty ones dropped) while feeding ``digest``."""
    for chunk in chunks:
        if chunk:
            digest.update(chunk)
            yield chunk


class FullReader:
    """A read-only, non-seekable file object over an iterator of chunks.

    ``read(n)`` returns exactly ``n`` bytes unless the iterator is exhausted. s3transfer turns
    every read into one part, and S3 rejects non-final parts under 5 MiB; worse, a short
    *first* read makes s3transfer fall back to a single PutObject of ``read()`` -- the whole
    rest of the stream in memory. Buffering costs at most ``n`` plus one chunk.

    Args:
        chunks: the source; exceptions it raises propagate out of ``read``.
        on_bytes: called with the length of every chunk taken from the source.
    """

    def __init__(
        self, chunks: Iterable[bytes], on_bytes: Callable[[int], None] | None = None
    ) -> None:
        self._chunks = iter(chunks)
        self._on_bytes = on_bytes
        self._buf = bytearray()
        self._eof = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, size: int | None = -1) -> bytes:
        """Return ``size`` bytes (all remaining when ``size`` is None or negative)."""
        want = None if size is None or size < 0 else size
        while not self._eof and (want is None or len(self._buf) < want):
            try:
                chunk = next(self._chunks)
            except StopIteration:
                self._eof = True
                break
            if self._on_bytes is not None:
                self._on_bytes(len(chunk))
            self._buf += chunk
        take = len(self._buf) if want is None else min(want, len(self._buf))
        # One copy out of the buffer; the temporary slice view is released before the del.
        with memoryview(self._buf) as view:
            out = bytes(view[:take])
        del self._buf[:take]
        return out

    def close(self) -> None:
        self._buf = bytearray()


def zstd_compress(chunks: Iterable[bytes], level: int) -> Iterator[bytes]:
    """Yield a single zstd frame compressing ``chunks`` (memory: zstd's window, not the data)."""
    compressor = zstandard.ZstdCompressor(level=level).compressobj()
    for chunk in chunks:
        out = compressor.compress(chunk)
        if out:
            yield out
    tail = compressor.flush()
    if tail:
        yield tail


def zstd_decompress(chunks: Iterable[bytes], chunk_bytes: int) -> Iterator[bytes]:
    """Yield the decompressed content of zstd ``chunks`` in pieces of at most ``chunk_bytes``.

    Bounded output per step matters: a small hostile frame can expand enormously, and a
    ``decompress(whole_chunk)`` would materialise it at once.
    """
    source = FullReader(chunks)
    reader = zstandard.ZstdDecompressor().stream_reader(
        cast("IO[bytes]", source),  # duck-typed: zstandard only calls read()
        read_size=chunk_bytes,
        read_across_frames=True,
    )
    with reader:
        while out := reader.read(chunk_bytes):
            yield out
    # Whatever follows the last frame still has to pass through the verifying source.
    while source.read(chunk_bytes):
        pass


def verified(chunks: Iterable[bytes], *, key: str, size_bytes: int, sha256: str) -> Iterator[bytes]:
    """Yield ``chunks`` and raise :class:`IntegrityError` unless they match size and sha256.

    The size is checked as bytes arrive, so an over-long object fails without being read to
    its end; the digest can only be checked after the last chunk. Callers must treat what
    they received as untrusted until the iterator finishes without raising.
    """
    digest = Digest()
    for chunk in chunks:
        digest.update(chunk)
        if digest.size_bytes > size_bytes:
            raise IntegrityError(
                f"{key}: more than the recorded {size_bytes} bytes",
                key=key,
                expected=str(size_bytes),
                actual=f">{size_bytes}",
            )
        yield chunk
    if digest.size_bytes != size_bytes:
        raise IntegrityError(
            f"{key}: size {digest.size_bytes} != recorded {size_bytes}",
            key=key,
            expected=str(size_bytes),
            actual=str(digest.size_bytes),
        )
    if digest.sha256 != sha256.lower():
        raise IntegrityError(
            f"{key}: sha256 {digest.sha256} != recorded {sha256}",
            key=key,
            expected=sha256,
            actual=digest.sha256,
        )
