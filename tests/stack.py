"""Helpers for tests that run real `podchord worker` processes."""

from __future__ import annotations

from pathlib import Path

import boto3

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
