"""The bench's own slice of the running test bed: a Redis db pair, a bucket, two workers.

Nothing here starts or stops the shared test bed: it reads its endpoints from
``scripts/testbed env``, claims a Redis database pair the way test sessions do (so no other
session's workers take our tasks), makes its own bucket and starts real ``podchord worker``
processes for nodes a and b, which it stops by pid at the end.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import boto3

from tasks.libpod import Libpod
from tasks.settings import Settings
from tasks.store import Store, open_store
from tests.stack import claim_db_pair, release_db_pair
from workers.app import create_app
from workers.launch import WorkerProcess, start_worker, wait_ready

__all__ = ["Bed", "testbed_env"]

REPO = Path(__file__).resolve().parent.parent
NODES = ("a", "b")


def testbed_env() -> dict[str, str]:
    """The running test bed's endpoints (``scripts/testbed env``)."""
    run = subprocess.run(
        [REPO / "scripts" / "testbed", "env"], capture_output=True, text=True, check=False
    )
    if run.returncode != 0:
        raise SystemExit(f"bench: the test bed is not up (scripts/testbed env): {run.stderr}")
    env: dict[str, str] = {}
    for line in run.stdout.splitlines():
        if line.startswith("export "):
            key, _, value = line[len("export ") :].partition("=")
            env[key] = value.strip('"')
    return env


@dataclass
class Bed:
    """Workers, client app, store and libpod clients for one bench session.

    Use as a context manager; everything it made is removed on exit.
    """

    concurrency: int = 6
    env: dict[str, str] = field(default_factory=testbed_env)
    bucket: str = field(default_factory=lambda: f"podchord-bench-{secrets.token_hex(4)}")
    workdir: Path = field(
        # On the host's disk (not a tmpfs): the baseline writes its archives here.
        default_factory=lambda: Path(tempfile.mkdtemp(prefix="podchord-bench-", dir="/var/tmp"))
    )
    workers: dict[str, WorkerProcess] = field(default_factory=dict)
    _db: int | None = None

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/pc"

    @property
    def image(self) -> str:
        return self.env["PODCHORD_TESTBED_IMAGE"]

    def pids(self) -> dict[str, int]:
        """The shared test bed's S3 server and Podman service pids (read only, never killed)."""
        out = {"s3": int(self.env["PODCHORD_S3_PID"])}
        state = Path(self.env["PODCHORD_TESTBED_STATE"]).read_text().splitlines()
        for node in NODES:
            for line in state:
                if line.startswith(f"NODE_{node}_PID="):
                    out[f"podman_{node}"] = int(line.split("=", 1)[1])
        return out

    def socket(self, node: str) -> str:
        return self.env[f"PODCHORD_SOCKET_{node.upper()}"]

    def __enter__(self) -> Bed:
        os.environ.update(self.env)  # boto3 and the store read the endpoint from here
        self.s3 = boto3.session.Session().client("s3", endpoint_url=self.env["AWS_ENDPOINT_URL"])
        self.s3.create_bucket(Bucket=self.bucket)
        base = self.env["PODCHORD_BROKER_URL"].rsplit("/", 1)[0]
        self._redis_base = base
        self._db = claim_db_pair(base)
        urls = {
            "PODCHORD_BROKER_URL": f"{base}/{self._db}",
            "PODCHORD_RESULT_BACKEND": f"{base}/{self._db + 1}",
        }
        try:
            for node in NODES:
                wenv = {**self.env, **urls, "PODCHORD_STORE_URL": self.store_url}
                self.workers[node] = start_worker(
                    node, self.socket(node), wenv, self.workdir, concurrency=self.concurrency
                )
            self.app: Any = create_app(
                Settings(
                    broker_url=urls["PODCHORD_BROKER_URL"],
                    result_backend=urls["PODCHORD_RESULT_BACKEND"],
                    store_url=self.store_url,
                )
            )
            wait_ready(self.app, list(self.workers.values()), timeout_s=120)
            self.store: Store = open_store(self.store_url)
            self.lp = {n: Libpod.from_socket(self.socket(n)) for n in NODES}
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        for w in self.workers.values():
            w.stop()
        for lp in getattr(self, "lp", {}).values():
            lp.close()
        if self._db is not None:
            release_db_pair(self._redis_base, self._db)
        self.empty_bucket(delete_bucket=True)
        shutil.rmtree(self.workdir, ignore_errors=True)

    def empty_bucket(self, *, delete_bucket: bool = False) -> None:
        """Delete every object and open upload (moto keeps objects in its memory)."""
        s3 = getattr(self, "s3", None)
        if s3 is None:
            return
        try:
            for page in s3.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket):
                for up in page.get("Uploads", []):
                    s3.abort_multipart_upload(
                        Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"]
                    )
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                if keys:
                    s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
            if delete_bucket:
                s3.delete_bucket(Bucket=self.bucket)
        except s3.exceptions.NoSuchBucket:
            pass
