"""Security promises, checked on the real stack.

* every object podchord writes carries server-side encryption (moto reports it on HEAD);
* spool files are 0600 in 0700 folders, and gone after use;
* no credential (the AWS secret key, the Redis password) shows up in task arguments,
  results, worker logs, manifests or stored objects;
* a worker refuses a Podman socket or a store URL outside what its settings allow.

Flower's API refusing unauthenticated calls is tested with Flower itself (issue 7's tests).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import redis

from tasks import api
from tasks.errors import InvalidInput
from tasks.settings import Settings
from tests.conftest import REPO
from tests.faults.conftest import RESULT_TIMEOUT_S, states
from tests.stack import s3, spool_files

pytestmark = pytest.mark.podman


class ModeWatcher:
    """Polls spool folders while work runs and records the mode of everything in them."""

    def __init__(self, roots: list[Path]) -> None:
        self.roots = roots
        self.seen: dict[Path, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ModeWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for root in self.roots:
                for dirpath, dirnames, filenames in os.walk(root):
                    for name in [*dirnames, *filenames, ""]:
                        path = Path(dirpath) / name
                        with contextlib.suppress(FileNotFoundError):
                            self.seen[path] = os.lstat(path).st_mode
            self._stop.wait(0.005)


def test_migration_encrypts_every_object_keeps_spool_private_and_leaks_no_secret(
    own_redis, mini_stack, testbed, sample, node_a, node_b
):
    aws_secret = f"podchord-secret-{secrets.token_hex(16)}"  # moto accepts any key
    redis_password = f"pw-{secrets.token_hex(12)}"
    own_redis.kill()
    own_redis.password = redis_password
    own_redis.start()
    ms = mini_stack(
        {"a": testbed.socket("a"), "b": testbed.socket("b")},
        env={"AWS_SECRET_ACCESS_KEY": aws_secret},
        redis_base=own_redis.base_url,
    )
    spools = [w.spool for w in ms.workers.values()]
    for spool in spools:
        spool.mkdir(mode=0o755, parents=True, exist_ok=True)  # as a package might make it
        spool.chmod(0o755)
    with ModeWatcher(spools) as watch:
        value = api.migrate(ms.app, sample.project, "a", "b").get(timeout=RESULT_TIMEOUT_S)
    # The roots were seen first as made above; what counts is how they were when used.
    for spool in spools:
        watch.seen[spool] = os.lstat(spool).st_mode
    assert set(states(node_b, sample).values()) == {"running"}

    # Spool: private while used, gone after.
    files = {p: m for p, m in watch.seen.items() if stat.S_ISREG(m)}
    dirs = {p: m for p, m in watch.seen.items() if stat.S_ISDIR(m)}
    assert any(p.name.endswith(".tar") for p in files), f"no spool file seen: {watch.seen}"
    bad = {str(p): oct(stat.S_IMODE(m)) for p, m in files.items() if stat.S_IMODE(m) != 0o600}
    assert not bad, f"spool files not 0600: {bad}"
    bad = {str(p): oct(stat.S_IMODE(m)) for p, m in dirs.items() if stat.S_IMODE(m) != 0o700}
    assert not bad, f"spool folders not 0700: {bad}"
    for w in ms.workers.values():
        assert spool_files(w) == [], f"spool of {w.node} not cleaned"

    # SSE on every object written (archives, records, images, manifest).
    client = s3(testbed)
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=ms.bucket).get("Contents", [])]
    assert any(k.endswith("manifest.json") for k in keys), keys
    assert any("/images/" in k for k in keys), keys
    for key in keys:
        head = client.head_object(Bucket=ms.bucket, Key=key)
        assert head.get("ServerSideEncryption") == "AES256", (key, head)

    # No secret anywhere: results (with args, result_extended), the broker, logs, objects.
    haystacks: dict[str, bytes] = {}
    for db in (0, 1):
        r = redis.Redis.from_url(f"{own_redis.base_url}/{db}")
        for key in r.scan_iter(count=1000):
            kind = r.type(key)
            if kind == b"string":
                haystacks[f"redis/{db}/{key!r}"] = r.get(key) or b""
            elif kind == b"list":
                haystacks[f"redis/{db}/{key!r}"] = b"".join(r.lrange(key, 0, -1))
            elif kind == b"hash":
                haystacks[f"redis/{db}/{key!r}"] = b"".join(
                    k + v for k, v in r.hgetall(key).items()
                )
            elif kind == b"zset":
                haystacks[f"redis/{db}/{key!r}"] = b"".join(r.zrange(key, 0, -1))
    assert any(b"podchord.checkpoint_service" in v for v in haystacks.values()), "no task data"
    for w in ms.workers.values():
        haystacks[f"log/{w.node}"] = w.log.read_bytes()
    for key in keys:
        if not key.endswith(".tar") and not key.endswith(".zst"):
            haystacks[f"s3/{key}"] = client.get_object(Bucket=ms.bucket, Key=key)["Body"].read()
    haystacks["result"] = repr(value).encode()
    for secret in (aws_secret, redis_password):
        leaks = [where for where, text in haystacks.items() if secret.encode() in text]
        assert not leaks, f"secret found in {leaks}"


def run_worker_cli(env: dict[str, str], socket: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "workers.cli", "worker", "--node", "a", "--podman-socket", socket],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=60, cwd=REPO,
    )


def test_worker_refuses_a_socket_outside_its_socket_root(testbed, tmp_path):
    real = testbed.socket("a")
    root = tmp_path / "sockets"
    root.mkdir()
    link = root / "a.sock"
    link.symlink_to(real)  # inside the root by name, outside by its real path
    env = {**testbed.env, "PODCHORD_STORE_URL": "s3://bucket/pc", "PODCHORD_SOCKET_ROOT": str(root)}
    for socket in (real, str(link), str(root / ".." / "elsewhere.sock")):
        done = run_worker_cli(env, socket)
        assert done.returncode == 2, (socket, done.stdout, done.stderr)
        assert "outside PODCHORD_SOCKET_ROOT" in done.stderr, done.stderr
    # Inside the root: accepted by the settings.
    inside = Settings.from_env({**env, "PODCHORD_PODMAN_SOCKET": real,
                                "PODCHORD_SOCKET_ROOT": str(Path(real).parent)})
    assert inside.podman_socket == real


@pytest.mark.parametrize(
    "store_url",
    ["s3://other/pc", "s3://archives-evil/pc", "s3://archivesx", "file:///tmp/x"],
)
def test_worker_refuses_a_store_outside_its_allowed_stores(testbed, store_url):
    env = {**testbed.env, "PODCHORD_STORE_URL": store_url,
           "PODCHORD_ALLOWED_STORES": "s3://archives,s3://backups/podchord/"}
    done = run_worker_cli(env, testbed.socket("a"))
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "outside PODCHORD_ALLOWED_STORES" in done.stderr, done.stderr


def test_allowed_store_boundaries():
    env = {"PODCHORD_BROKER_URL": "redis://127.0.0.1:1/0",
           "PODCHORD_ALLOWED_STORES": "s3://archives,s3://backups/podchord/"}
    for ok in ("s3://archives", "s3://archives/pc", "s3://backups/podchord/x"):
        assert Settings.from_env({**env, "PODCHORD_STORE_URL": ok}).store_url == ok
    for bad in ("s3://archives-evil/pc", "s3://backups/podchordx", "s3://backups"):
        with pytest.raises(InvalidInput, match="ALLOWED_STORES"):
            Settings.from_env({**env, "PODCHORD_STORE_URL": bad})
