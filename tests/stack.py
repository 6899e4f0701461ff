"""Helpers for tests that run real `podchord worker` processes."""

from __future__ import annotations

import os
from pathlib import Path

import boto3
import redis

from tasks.settings import Settings
from workers.app import create_app
from workers.launch import WorkerProcess
from workers.launch import start_worker as _start


def make_bucket(endpoint: str, name: str) -> None:
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def start_worker(testbed, node: str, store_url: str, tmp: Path, concurrency: int = 4,
                 extra: dict[str, str] | None = None) -> WorkerProcess:
    env = {**testbed.env, "PODCHORD_STORE_URL": store_url, **(extra or {})}
    return _start(node, testbed.socket(node), env, tmp, concurrency=concurrency)


def client_app(store_url: str, broker_url: str, result_backend: str):
    return create_app(Settings(broker_url=broker_url, result_backend=result_backend,
                               store_url=store_url))


def s3(testbed):
    """A boto3 S3 client on the test bed's S3 server."""
    return boto3.client("s3", endpoint_url=testbed.s3_endpoint)


def objects_under(testbed, bucket: str, prefix: str) -> list[str]:
    resp = s3(testbed).list_objects_v2(Bucket=bucket, Prefix=prefix)
    return [o["Key"] for o in resp.get("Contents", [])]


def open_uploads(testbed, bucket: str, prefix: str) -> list[str]:
    resp = s3(testbed).list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [u["Key"] for u in resp.get("Uploads", [])]


def spool_files(worker: WorkerProcess) -> list[Path]:
    """Every file left in a worker's spool folder."""
    return [p for p in worker.spool.rglob("*") if p.is_file()] if worker.spool.exists() else []


# Database 0/1 are the test bed's defaults; sessions claim pairs (2k, 2k+1) above them.
_DB_PAIRS = range(2, 64, 2)
_CLAIM_TTL_S = 3 * 3600  # outlives any session; a crashed session's claim expires on its own


def claim_db_pair(redis_base: str) -> int:
    """Claim a free (broker, result) database pair so concurrent test sessions never share one.

    The claim is a SET NX in database 0, keyed by the pair and holding this pid: two sessions
    (parallel worktrees, a developer next to CI) cannot both win it.
    """
    r = redis.Redis.from_url(f"{redis_base}/0")
    try:
        for db in _DB_PAIRS:
            if r.set(f"podchord-test:db-claim:{db}", os.getpid(), nx=True, ex=_CLAIM_TTL_S):
                for n in (db, db + 1):
                    redis.Redis.from_url(f"{redis_base}/{n}").flushdb()
                return db
    finally:
        r.close()
    raise RuntimeError("no free Redis database pair for this test session (all 31 claimed)")


def release_db_pair(redis_base: str, db: int) -> None:
    r = redis.Redis.from_url(f"{redis_base}/0")
    try:
        r.delete(f"podchord-test:db-claim:{db}")
    finally:
        r.close()
