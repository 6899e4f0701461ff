from __future__ import annotations

import hashlib

import pytest
import zstandard

from tasks.errors import IntegrityError
from tasks.streams import Digest, FullReader, verified, zstd_compress, zstd_decompress


def test_full_reader_returns_full_reads_across_odd_chunks():
    data = bytes(range(256)) * 1000
    chunks = [data[i : i + 65_537 % 1000 + 1] for i in range(0, len(data), 65_537 % 1000 + 1)]
    seen: list[int] = []
    reader = FullReader(iter(chunks), on_bytes=seen.append)
    parts = []
    while part := reader.read(10_000):
        parts.append(part)
    assert [len(p) for p in parts[:-1]] == [10_000] * (len(parts) - 1)
    assert 0 < len(parts[-1]) <= 10_000
    assert b"".join(parts) == data
    assert sum(seen) == len(data)
    assert reader.read(5) == b""
    assert reader.read() == b""


def test_full_reader_read_all_and_types():
    reader = FullReader([b"ab", bytearray(b"cd"), memoryview(b"ef").tobytes()])
    assert reader.read(1) == b"a"
    out = reader.read()
    assert out == b"bcdef"
    assert type(out) is bytes
    assert reader.readable()
    assert not reader.seekable()


def test_full_reader_propagates_source_errors():
    def source():
        yield b"x" * 10
        raise RuntimeError("source broke")

    reader = FullReader(source())
    with pytest.raises(RuntimeError, match="source broke"):
        reader.read(100)


def test_zstd_round_trip_with_bounded_output():
    data = b"\0" * (8 * 1024 * 1024)  # a tiny frame that expands a lot
    frame = b"".join(zstd_compress([data], level=3))
    assert len(frame) < 2048
    out = list(zstd_decompress([frame], chunk_bytes=65_536))
    assert max(len(o) for o in out) <= 65_536
    assert b"".join(out) == data
    assert zstandard.ZstdDecompressor().decompressobj().decompress(frame) == data


def test_verified():
    data = b"hello world"
    good = hashlib.sha256(data).hexdigest()
    assert b"".join(verified([data[:5], data[5:]], key="k", size_bytes=11, sha256=good)) == data
    with pytest.raises(IntegrityError) as caught:
        list(verified([data], key="k", size_bytes=11, sha256="0" * 64))
    assert (caught.value.key, caught.value.expected, caught.value.actual) == ("k", "0" * 64, good)
    with pytest.raises(IntegrityError, match="more than"):
        list(verified([data, b"!"], key="k", size_bytes=11, sha256=good))
    with pytest.raises(IntegrityError, match="size 5"):
        list(verified([data[:5]], key="k", size_bytes=11, sha256=good))


def test_digest():
    d = Digest()
    d.update(b"abc")
    assert (d.size_bytes, d.sha256) == (3, hashlib.sha256(b"abc").hexdigest())
