"""The archive store against the file backend, moto in-process, and the test bed's moto server."""

from __future__ import annotations

import hashlib
import json
import os
import random
import secrets
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from moto import mock_aws

from tasks.errors import (
    IntegrityError,
    InvalidInput,
    ManifestExists,
    ObjectNotFound,
    ObjectTooLarge,
    StoreUnavailable,
)
from tasks.keys import new_checkpoint_id
from tasks.store import FileStore, S3Store, Store, StoreSettings, open_store, referenced_keys

MiB = 1024 * 1024
IMG_A, IMG_B, IMG_C, IMG_D = ("a" * 64, "b" * 64, "c" * 64, "d" * 64)


def chunks_of(data: bytes, size: int = 65_537) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def random_stream(total: int, *, seed: int = 7, chunk: int = 65_537) -> Iterator[bytes]:
    """``total`` pseudo-random bytes in odd-sized chunks (so full reads have to assemble)."""
    rng = random.Random(seed)
    sent = 0
    while sent < total:
        n = min(chunk, total - sent)
        yield rng.randbytes(n)
        sent += n


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Backend:
    """A store plus the back doors tests need (tampering, opening a raw upload)."""

    name: str
    store: Store
    overwrite: Callable[[str, bytes], None]
    open_upload: Callable[[str], None]
    upload_keys: Callable[[], list[str]]


def _s3_backend(name: str, client, bucket: str, prefix: str, settings: StoreSettings) -> Backend:
    store = open_store(f"s3://{bucket}/{prefix}", s3_client=client, settings=settings)

    def uploads() -> list[str]:
        return [u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]

    return Backend(
        name=name,
        store=store,
        overwrite=lambda key, data: client.put_object(Bucket=bucket, Key=key, Body=data),
        open_upload=lambda key: client.create_multipart_upload(Bucket=bucket, Key=key),
        upload_keys=uploads,
    )


def _empty_bucket(client, bucket: str) -> None:
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket):
        for u in page.get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=u["Key"], UploadId=u["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})
    client.delete_bucket(Bucket=bucket)


@pytest.fixture
def moto_client(monkeypatch) -> Iterator[object]:
    # The test bed fixture may have exported its endpoint; in-process moto must not use it.
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="podchord-unit")
        yield client


@pytest.fixture
def server_bucket(testbed) -> Iterator[tuple[object, str]]:
    # Two attempts per request, so injected failures exhaust retries deterministically.
    retries = Config(retries={"total_max_attempts": 2, "mode": "standard"})
    client = boto3.client(
        "s3", endpoint_url=testbed.s3_endpoint, region_name="us-east-1", config=retries
    )
    bucket = f"podchord-store-{secrets.token_hex(5)}"
    client.create_bucket(Bucket=bucket)
    yield client, bucket
    _empty_bucket(client, bucket)  # moto's server keeps everything in memory


def _file_backend(root: Path, settings: StoreSettings) -> Backend:
    store = open_store(f"file://{root}", settings=settings)

    def overwrite(key: str, data: bytes) -> None:
        root.joinpath(key).write_bytes(data)

    def open_upload(key: str) -> None:
        path = root.joinpath(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_name(f".{path.name}.{secrets.token_hex(6)}.part").write_bytes(b"partial")

    return Backend("file", store, overwrite, open_upload, lambda: store.list_upload_keys(""))


@pytest.fixture(
    params=["file", "moto", pytest.param("server", marks=pytest.mark.services)],
)
def backend(request, tmp_path) -> Backend:
    settings = StoreSettings(max_attempts=2)
    if request.param == "file":
        return _file_backend(tmp_path / "store", settings)
    if request.param == "moto":
        client = request.getfixturevalue("moto_client")
        return _s3_backend("moto", client, "podchord-unit", "pfx", settings)
    client, bucket = request.getfixturevalue("server_bucket")
    return _s3_backend("server", client, bucket, "pfx/sub", settings)


def _archive_key(store: Store, cid: str | None = None, service: str = "db") -> str:
    return store.layout.service_archive("web", cid or new_checkpoint_id(), service)


# -- round trips -------------------------------------------------------------------------------


def test_put_and_read_round_trip(backend):
    store = backend.store
    data = random.Random(1).randbytes(3 * MiB + 17)
    key = _archive_key(store)
    seen: list[int] = []
    put = store.put_stream(key, chunks_of(data), progress=seen.append)
    assert put.key == key
    assert (put.size_bytes, put.sha256) == (len(data), sha(data))
    assert (put.raw_size_bytes, put.raw_sha256, put.compression) == (len(data), sha(data), "none")
    assert sum(seen) == len(data)
    with store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256) as body:
        assert b"".join(body) == data
    assert store.head(key).size_bytes == len(data)
    assert store.exists(key)
    assert not store.exists(_archive_key(store))
    with pytest.raises(ObjectNotFound):
        store.head(_archive_key(store))


def test_empty_stream(backend):
    key = _archive_key(backend.store)
    put = backend.store.put_stream(key, iter(()))
    assert (put.size_bytes, put.sha256) == (0, sha(b""))
    with backend.store.open_read(key, size_bytes=0, sha256=sha(b"")) as body:
        assert b"".join(body) == b""


def test_zstd_round_trip_and_download(backend, tmp_path):
    store = backend.store
    data = b"".join(b"line %d of a very compressible archive\n" % i for i in range(200_000))
    key = _archive_key(store)
    put = store.put_stream(key, chunks_of(data, 10_001), compress=True)
    assert put.compression == "zstd"
    assert put.size_bytes < len(data) // 5
    assert (put.raw_size_bytes, put.raw_sha256) == (len(data), sha(data))
    with store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256, decompress=True) as b:
        assert b"".join(b) == data
    with store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256) as raw:
        assert sha(b"".join(raw)) == put.sha256
    dest = tmp_path / "out" / "db.tar"
    dest.parent.mkdir()
    got = store.download(
        key,
        dest,
        size_bytes=put.size_bytes,
        sha256=put.sha256,
        compression="zstd",
        raw_size_bytes=put.raw_size_bytes,
        raw_sha256=put.raw_sha256,
    )
    assert got == dest
    assert dest.read_bytes() == data
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert os.listdir(dest.parent) == ["db.tar"]


def test_flipped_byte_is_caught(backend, tmp_path):
    store = backend.store
    data = random.Random(2).randbytes(2 * MiB)
    key = _archive_key(store)
    put = store.put_stream(key, chunks_of(data))
    bad = bytearray(data)
    bad[MiB + 3] ^= 0x01
    backend.overwrite(key, bytes(bad))
    with (
        pytest.raises(IntegrityError) as caught,
        store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256) as body,
    ):
        for _ in body:
            pass
    assert caught.value.key == key
    assert caught.value.expected == put.sha256
    assert caught.value.actual == sha(bytes(bad))

    dest = tmp_path / "restore" / "db.tar"
    dest.parent.mkdir()
    with pytest.raises(IntegrityError) as caught:
        store.download(key, dest, size_bytes=put.size_bytes, sha256=put.sha256, compression="none")
    assert (caught.value.key, caught.value.expected) == (key, put.sha256)
    assert not dest.exists()
    assert os.listdir(dest.parent) == []


def test_size_mismatch_fails_before_reading(backend):
    store = backend.store
    key = _archive_key(store)
    put = store.put_stream(key, [b"x" * 1000])
    backend.overwrite(key, b"x" * 1001)
    with (
        pytest.raises(IntegrityError, match="stored size 1001"),
        store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256),
    ):
        pytest.fail("must not be reached")


def test_raw_digest_checked_on_download(backend, tmp_path):
    store = backend.store
    key = _archive_key(store)
    put = store.put_stream(key, [b"abc" * 1000], compress=True)
    with pytest.raises(IntegrityError, match="raw"):
        store.download(
            key,
            tmp_path / "x",
            size_bytes=put.size_bytes,
            sha256=put.sha256,
            compression="zstd",
            raw_size_bytes=put.raw_size_bytes - 1,
        )
    assert not (tmp_path / "x").exists()


def test_source_failure_leaves_nothing(backend):
    store = backend.store
    key = _archive_key(store)

    def failing() -> Iterator[bytes]:
        yield from random_stream(MiB)
        raise RuntimeError("podman export broke")

    with pytest.raises(RuntimeError, match="podman export broke"):
        store.put_stream(key, failing())
    assert not store.exists(key)
    assert backend.upload_keys() == []
    assert list(store.list_objects(store.layout.projects_prefix)) == []


# -- manifests, small objects, deletes ---------------------------------------------------------


def test_manifest_is_create_only(backend):
    store = backend.store
    cid = new_checkpoint_id()
    key = store.layout.manifest("web", cid)
    first = store.put_manifest(key, b'{"n": 1}')
    assert first.sha256 == sha(b'{"n": 1}')
    with pytest.raises(ManifestExists) as caught:
        store.put_manifest(key, b'{"n": 2}')
    assert caught.value.key == key
    assert store.read_manifest("web", cid) == b'{"n": 1}'
    store.check_conditional_writes()
    assert backend.upload_keys() == []


def test_get_bytes_refuses_oversize(backend):
    store = backend.store
    key = _archive_key(store)
    store.put_stream(key, random_stream(10 * MiB))
    with pytest.raises(ObjectTooLarge) as caught:
        store.get_bytes(key, MiB)
    assert (caught.value.size_bytes, caught.value.max_bytes) == (10 * MiB, MiB)
    # A manifest slot filled with 10 MB of junk is refused the same way.
    cid = new_checkpoint_id()
    store.put_stream(store.layout.manifest("web", cid), random_stream(10 * MiB))
    small = StoreSettings(max_manifest_bytes=64 * 1024)
    store.settings = small
    with pytest.raises(ObjectTooLarge):
        store.read_manifest("web", cid)
    assert store.get_bytes(key, 10 * MiB) == b"".join(random_stream(10 * MiB))


def test_delete_and_delete_prefix(backend):
    store = backend.store
    cid = new_checkpoint_id()
    keys = [store.layout.service_archive("web", cid, s) for s in ("a", "b", "c")]
    other = store.layout.service_archive("web2", cid, "a")
    for key in [*keys, other]:
        store.put_stream(key, [b"data"])
    assert store.delete([keys[0], _archive_key(store)]) == 2
    assert not store.exists(keys[0])
    # "projects/web" is a directory: "projects/web2" survives.
    assert store.delete_prefix(store.layout.project_prefix("web")) == 2
    assert store.exists(other)
    assert [o.key for o in store.list_objects(store.layout.projects_prefix)] == [other]


def test_abort_uploads(backend):
    store = backend.store
    key = _archive_key(store)
    backend.open_upload(key)
    backend.open_upload(store.layout.service_archive("web2", new_checkpoint_id(), "x"))
    assert store.list_upload_keys(store.layout.project_prefix("web")) == [key]
    assert store.abort_uploads(store.layout.project_prefix("web")) == 1
    assert store.abort_uploads(store.layout.projects_prefix) == 1
    assert backend.upload_keys() == []


def test_keys_outside_the_store_are_refused(backend):
    store = backend.store
    for bad in ["../etc/passwd", "/abs", "a\\b", "pfx/../x"]:
        with pytest.raises(InvalidInput):
            store.put_stream(bad, [b"x"])
        with pytest.raises(InvalidInput):
            store.head(bad)
    if store.layout.prefix:
        with pytest.raises(InvalidInput):
            store.delete(["elsewhere/x"])


# Server-side encryption is an S3 feature: the file store is not asked.
@pytest.mark.parametrize(
    "backend", ["moto", pytest.param("server", marks=pytest.mark.services)], indirect=True
)
def test_sse_on_every_object(backend):
    store = backend.store
    cid = new_checkpoint_id()
    archive = store.put_stream(_archive_key(store, cid), random_stream(MiB))
    manifest = store.put_manifest(store.layout.manifest("web", cid), b"{}")
    image = store.put_stream(store.layout.image(IMG_A), [b"img"], compress=True)
    for key in (archive.key, manifest.key, image.key):
        assert store.head(key).sse == "AES256", key


# -- listing and retention ---------------------------------------------------------------------


def _manifest(store: Store, cid: str, project: str, images: list[str]) -> bytes:
    return json.dumps(
        {
            "checkpoint_id": cid,
            "services": [
                {"name": "db", "archive": {"key": store.layout.service_archive(project, cid, "db")}}
            ],
            "images": [{"key": store.layout.image(i)} for i in images],
        }
    ).encode()


def _checkpoint(store: Store, when: datetime, project: str = "web", images=(), commit=True) -> str:
    cid = new_checkpoint_id(when)
    store.put_stream(store.layout.service_archive(project, cid, "db"), [b"archive"])
    if commit:
        store.put_manifest(
            store.layout.manifest(project, cid), _manifest(store, cid, project, images)
        )
    return cid


def test_list_checkpoints(backend):
    store = backend.store
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    old = _checkpoint(store, t0)
    new = _checkpoint(store, t0 + timedelta(hours=1), commit=False)
    backend.open_upload(store.layout.service_archive("web", new, "api"))
    entries = store.list_checkpoints("web")
    assert [e.checkpoint_id for e in entries] == [new, old]
    assert [e.committed for e in entries] == [False, True]
    assert entries[0].open_uploads == 1
    assert entries[1].created == t0
    assert entries[1].object_count == 2
    assert entries[1].size_bytes == len(b"archive") + len(
        store.get_bytes(store.layout.manifest("web", old), 1 << 20)
    )
    assert store.list_checkpoints("nothing") == []
    store.abort_uploads(store.layout.projects_prefix)


def test_prune(backend):
    store = backend.store
    # Objects written now are 2h old from prune's point of view; grace is 1h.
    now = datetime.now(UTC) + timedelta(hours=2)
    grace_s = 3600.0
    for img in (IMG_A, IMG_B, IMG_C, IMG_D):
        store.put_stream(store.layout.image(img), [img.encode()])
    c = [
        _checkpoint(store, now - timedelta(hours=10 - i), images=[IMG_B] if i == 0 else [IMG_A])
        for i in range(5)
    ]  # c[0] oldest ... c[4] newest
    other = _checkpoint(store, now - timedelta(days=3), project="api", images=[IMG_D])
    stale = _checkpoint(store, now - timedelta(hours=3), commit=False)
    backend.open_upload(store.layout.service_archive("web", stale, "api"))
    young = _checkpoint(store, now - timedelta(seconds=10), commit=False)
    backend.open_upload(store.layout.service_archive("web", young, "api"))

    report = store.prune("web", keep=2, grace_s=grace_s, now=now)

    assert report.kept == (c[4], c[3])
    assert set(report.deleted) == {c[0], c[1], c[2]}
    assert report.deleted_uncommitted == (stale,)
    assert report.young_uncommitted == (young,)
    assert report.deleted_images == (store.layout.image(IMG_B), store.layout.image(IMG_C))
    assert report.image_gc_skipped is None
    assert report.aborted_uploads == 1
    left = store.list_checkpoints("web")
    assert [(e.checkpoint_id, e.committed) for e in left] == [
        (young, False),
        (c[4], True),
        (c[3], True),
    ]
    assert [e.checkpoint_id for e in store.list_checkpoints("api")] == [other]
    for img, kept in ((IMG_A, True), (IMG_B, False), (IMG_C, False), (IMG_D, True)):
        assert store.exists(store.layout.image(img)) is kept
    for cid in c[:3]:
        assert list(store.list_objects(store.layout.checkpoint_prefix("web", cid))) == []
    assert store.list_upload_keys(store.layout.projects_prefix) == [
        store.layout.service_archive("web", young, "api")
    ]
    # Idempotent: a second run changes nothing.
    again = store.prune("web", keep=2, grace_s=grace_s, now=now)
    assert (again.deleted, again.deleted_uncommitted, again.deleted_images) == ((), (), ())
    store.abort_uploads(store.layout.projects_prefix)


def test_prune_keeps_images_when_a_manifest_is_unreadable(backend):
    store = backend.store
    now = datetime.now(UTC) + timedelta(hours=2)
    store.put_stream(store.layout.image(IMG_C), [b"c"])
    _checkpoint(store, now - timedelta(hours=5))
    broken = new_checkpoint_id(now - timedelta(hours=4))
    store.put_manifest(store.layout.manifest("api", broken), b"{not json")
    report = store.prune("web", keep=1, grace_s=60, now=now)
    assert report.deleted_images == ()
    assert report.image_gc_skipped is not None
    assert "unreadable manifest" in report.image_gc_skipped
    assert store.exists(store.layout.image(IMG_C))


def test_prune_spares_young_images(tmp_path):
    store = open_store(f"file://{tmp_path}")
    store.put_stream(store.layout.image(IMG_A), [b"a"])
    report = store.prune("web", keep=1, grace_s=3600)
    assert report.deleted_images == ()
    assert store.exists(store.layout.image(IMG_A))


def test_prune_validates_arguments(tmp_path):
    store = open_store(f"file://{tmp_path}")
    with pytest.raises(InvalidInput):
        store.prune("web", keep=0, grace_s=1)
    with pytest.raises(InvalidInput):
        store.prune("web", keep=1, grace_s=-1)


def test_referenced_keys():
    manifest = {
        "services": [{"archive": {"key": "s1"}}, {"name": "no-archive"}],
        "images": [{"key": "i1"}, {"archive": {"key": "i2"}}],
    }
    assert referenced_keys(manifest) == {"s1", "i1", "i2"}
    assert referenced_keys({"services": {"db": {"archive": {"key": "s"}}}}) == {"s"}
    assert referenced_keys({}) == set()
    for bad in ({"services": "x"}, {"images": [1]}, {"images": [{"key": 3}]}):
        with pytest.raises(InvalidInput):
            referenced_keys(bad)


# -- settings and URLs -------------------------------------------------------------------------


def test_settings_validation_and_part_size():
    s = StoreSettings()
    assert (s.part_size_bytes, s.sse) == (8 * MiB, "AES256")
    assert s.part_size_for(None) == 8 * MiB
    assert s.part_size_for(10 * 1024 * MiB) == 8 * MiB
    big = 200 * 1024**3  # 200 GiB needs > 8 MiB parts to stay within 10,000
    part = s.part_size_for(big)
    assert part % MiB == 0
    assert part * 10_000 >= big > (part - MiB) * 10_000
    for bad in [
        {"part_size_bytes": 5 * MiB},
        {"max_concurrency": 0},
        {"sse": "aws:fsx"},
        {"kms_key_id": "k"},
        {"compression_level": 30},
        {"read_timeout_s": 0},
    ]:
        with pytest.raises(InvalidInput):
            StoreSettings(**bad)
    assert StoreSettings(sse="aws:kms", kms_key_id="alias/x").kms_key_id == "alias/x"
    assert StoreSettings(sse=None).sse is None
    with pytest.raises(InvalidInput):
        s.part_size_for(-1)


def test_open_store_urls(tmp_path, moto_client):
    store = open_store("s3://my-bucket/a/b/", s3_client=moto_client)
    assert isinstance(store, S3Store)
    assert (store.url, store.layout.prefix) == ("s3://my-bucket/a/b", "a/b")
    assert open_store("s3://my-bucket", s3_client=moto_client).layout.prefix == ""
    assert isinstance(open_store(f"file://{tmp_path}/s"), FileStore)
    assert stat.S_IMODE((tmp_path / "s").stat().st_mode) == 0o700
    for bad in [
        "http://x/y",
        "s3://Bad_Bucket/x",
        "s3://b/../x",
        "s3://bucket/x?y=1",
        "file://host/x",
        "file://relative",
        "file:///a/../b",
        "gs://x",
    ]:
        with pytest.raises(InvalidInput):
            open_store(bad, s3_client=moto_client)


def test_sse_kms_arguments(moto_client):
    settings = StoreSettings(sse="aws:kms", kms_key_id="alias/podchord")
    store = open_store("s3://podchord-unit", s3_client=moto_client, settings=settings)
    put = store.put_manifest(store.layout.manifest("web", new_checkpoint_id()), b"{}")
    info = store.head(put.key)
    assert info.sse == "aws:kms"
    assert info.kms_key_id is not None
    assert info.kms_key_id.endswith("alias/podchord")


def test_unreachable_endpoint_is_store_unavailable(tmp_path):
    settings = StoreSettings(endpoint_url="http://127.0.0.1:9", max_attempts=1, connect_timeout_s=1)
    store = open_store("s3://bucket", settings=settings)
    with pytest.raises(StoreUnavailable):
        store.head("x")
    with pytest.raises(StoreUnavailable):
        store.put_stream("x", [b"data"])


def test_file_store_modes(tmp_path):
    store = open_store(f"file://{tmp_path}/s")
    key = _archive_key(store)
    store.put_stream(key, [b"x"])
    store.put_manifest(store.layout.manifest("web", key.split("/")[2]), b"{}")
    for path in (tmp_path / "s").rglob("*"):
        want = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == want, path


# -- the real multi-process path: the test bed's moto server -----------------------------------


@pytest.fixture
def server_store(server_bucket) -> tuple[object, str, Store]:
    client, bucket = server_bucket
    settings = StoreSettings(max_attempts=2)
    return client, bucket, open_store(f"s3://{bucket}/pfx", s3_client=client, settings=settings)


def _open_uploads(client, bucket: str) -> list[dict]:
    return client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])


def _fail_requests(client, match: Callable[[object], bool]) -> Callable[..., object]:
    """Make matching requests answer HTTP 500 (every attempt), the way a sick S3 would."""
    body = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"

    class _Raw:
        def stream(self, **_: object) -> Iterator[bytes]:
            yield body

    def handler(request, **_: object) -> AWSResponse | None:
        if match(request):
            return AWSResponse(request.url, 500, {"Content-Type": "application/xml"}, _Raw())
        return None

    client.meta.events.register("before-send.s3", handler)
    return handler


@pytest.mark.services
def test_multipart_upload_of_a_large_stream(server_store):
    client, bucket, store = server_store
    total = 64 * MiB + 12_345  # 9 parts of 8 MiB, the last one short
    expected = hashlib.sha256()
    for chunk in random_stream(total, seed=11):
        expected.update(chunk)
    key = _archive_key(store)
    parts_seen: list[int] = []
    counter = threading.Lock()

    def count_part(params, **_: object) -> None:
        with counter:
            parts_seen.append(len(params["body"]) if isinstance(params["body"], bytes) else -1)

    client.meta.events.register("before-call.s3.UploadPart", count_part)
    try:
        put = store.put_stream(key, random_stream(total, seed=11), expected_size_bytes=total)
    finally:
        client.meta.events.unregister("before-call.s3.UploadPart", count_part)
    assert (put.size_bytes, put.sha256) == (total, expected.hexdigest())
    info = store.head(key)
    assert info.size_bytes == total
    assert info.etag is not None
    assert info.etag.strip('"').endswith("-9")
    assert info.sse == "AES256"
    assert len(parts_seen) == 9
    assert _open_uploads(client, bucket) == []
    with store.open_read(key, size_bytes=put.size_bytes, sha256=put.sha256) as body:
        assert sum(len(c) for c in body) == total


@pytest.mark.services
def test_failed_part_aborts_the_upload_and_stops_reading(server_store):
    client, bucket, store = server_store
    key = _archive_key(store)
    handler = _fail_requests(client, lambda r: r.method == "PUT" and "partNumber=3&" in r.url + "&")
    consumed = 0
    total = 256 * MiB

    def source() -> Iterator[bytes]:
        nonlocal consumed
        for chunk in random_stream(total):
            consumed += len(chunk)
            yield chunk

    try:
        with pytest.raises(StoreUnavailable, match="InternalError") as caught:
            store.put_stream(key, source())
    finally:
        client.meta.events.unregister("before-send.s3", handler)
    assert caught.value.key == key
    assert _open_uploads(client, bucket) == []
    assert not store.exists(key)
    # Fail-fast: reading stopped soon after part 3 failed, not at the end of the stream.
    assert consumed < total // 2


@pytest.mark.services
def test_source_failure_after_20mb_aborts(server_store):
    client, bucket, store = server_store
    key = _archive_key(store)

    def source() -> Iterator[bytes]:
        yield from random_stream(20 * MiB)
        raise OSError("libpod stream reset")

    with pytest.raises(OSError, match="libpod stream reset"):
        store.put_stream(key, source())
    assert _open_uploads(client, bucket) == []
    assert not store.exists(key)


@pytest.mark.services
def test_leftover_upload_is_aborted_when_s3transfers_abort_fails(server_store):
    client, bucket, store = server_store
    key = _archive_key(store)
    aborts: list[str] = []

    def first_abort_fails(request) -> bool:
        if request.method == "DELETE" and "uploadId=" in request.url:
            aborts.append(request.url)
            return len(aborts) <= 2  # both attempts of s3transfer's own abort
        return False

    handler = _fail_requests(client, first_abort_fails)

    def source() -> Iterator[bytes]:
        yield from random_stream(17 * MiB)
        raise RuntimeError("boom")

    try:
        with pytest.raises(RuntimeError, match="boom"):
            store.put_stream(key, source())
    finally:
        client.meta.events.unregister("before-send.s3", handler)
    assert len(aborts) == 3
    assert _open_uploads(client, bucket) == []
    assert not store.exists(key)


@pytest.mark.services
def test_bucket_missing_is_store_unavailable(testbed):
    client = boto3.client("s3", endpoint_url=testbed.s3_endpoint, region_name="us-east-1")
    store = open_store(f"s3://podchord-missing-{secrets.token_hex(4)}", s3_client=client)
    with pytest.raises(StoreUnavailable, match="NoSuchBucket"):
        store.put_stream(_archive_key(store), [b"x"])
    with pytest.raises(StoreUnavailable):
        store.put_manifest(store.layout.manifest("web", new_checkpoint_id()), b"{}")
