"""The demo migration: a three-service project moves from node a to node b, memory and all.

Run by ``scripts/demo`` against the test bed (``scripts/testbed env`` in the environment):
starts one worker per node, creates the sample project on node a, runs
``podchord migrate demo --from a --to b --wait`` and shows that the counters continued, the
volume's data is there and the client still reaches the web server by name.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import boto3

from tasks.libpod import Libpod
from tasks.settings import Settings
from workers.app import create_app
from workers.launch import start_worker, wait_ready
from workers.sample import (
    SampleProject,
    container_exists,
    create_sample,
    read_counter,
    remove_sample,
)

__all__ = ["main"]


def _show(lp: Libpod, sample: SampleProject, node: str) -> dict[str, int]:
    c = sample.containers
    values = {
        "db counter": read_counter(lp, c["db"]),
        "web counter": read_counter(lp, c["web"]),
        "client fetches ok": read_counter(lp, c["client"], "/tmp/ok"),
    }
    seed = lp.exec(c["db"], ["cat", "/data/seed"]).stdout.decode().strip()
    print(f"  on node {node}: " + ", ".join(f"{k}={v}" for k, v in values.items())
          + f", volume seed={seed}")
    return values


def main() -> int:
    """Run the demo; returns a process exit code."""
    env = os.environ
    nodes = env["PODCHORD_TESTBED_NODES"].split()
    sockets = {n: env[f"PODCHORD_SOCKET_{n.upper()}"] for n in nodes[:2]}
    bucket = f"podchord-demo-{secrets.token_hex(3)}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    store_url = f"s3://{bucket}/demo"
    workdir = Path(tempfile.mkdtemp(prefix="podchord-demo-"))
    settings = Settings(broker_url=env["PODCHORD_BROKER_URL"],
                        result_backend=env["PODCHORD_RESULT_BACKEND"], store_url=store_url)
    wenv = {"PODCHORD_STORE_URL": store_url}
    workers = [start_worker(n, sockets[n], wenv, workdir) for n in sockets]
    a, b = (Libpod.from_socket(sockets[n]) for n in ("a", "b"))
    project = f"demo{secrets.token_hex(2)}"
    sample = None
    try:
        wait_ready(create_app(settings), workers)
        print(f"workers for nodes {', '.join(sockets)} are up (logs in {workdir})")
        sample = create_sample(a, project, env["PODCHORD_TESTBED_IMAGE"])
        print(f"sample project {project!r} running on node a: services db, web, client")
        time.sleep(3)
        before = _show(a, sample, "a")
        cmd = [sys.executable, "-m", "workers.cli", "migrate", project, "--from", "a",
               "--to", "b", "--wait"]
        print("$ podchord migrate " + " ".join(cmd[4:]))
        started = time.monotonic()
        done = subprocess.run(cmd, env={**env, **wenv})
        if done.returncode != 0:
            print("migration failed", file=sys.stderr)
            return 1
        print(f"migration took {time.monotonic() - started:.1f} s end to end")
        time.sleep(2)
        after = _show(b, sample, "b")
        left = [c for c in sample.containers.values() if container_exists(a, c)]
        print(f"  containers left on node a: {left or 'none'}")
        survived = all(after[k] >= before[k] for k in ("db counter", "web counter"))
        reaching = after["client fetches ok"] > before["client fetches ok"]
        print("memory survived (counters continued): " + ("YES" if survived else "NO"))
        print("client still reaches web by name on b: " + ("YES" if reaching else "NO"))
        return 0 if survived and reaching else 1
    finally:
        if sample is not None:
            remove_sample(a, sample)
            remove_sample(b, sample)
        for w in workers:
            w.stop()
        a.close()
        b.close()


if __name__ == "__main__":
    sys.exit(main())
