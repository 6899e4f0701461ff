"""The test bed itself: raw libpod calls over httpx on the nodes' Unix sockets.

These tests deliberately use nothing of podchord: they prove the simulated nodes can really
checkpoint on one node and restore on the other, which every later test relies on.
"""

from __future__ import annotations

import io
import json
import secrets
import struct
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

pytestmark = pytest.mark.podman

API = "/v5.0.0/libpod"
COUNTER = "i=0; while :; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"


def client(sock: str) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=sock),
        base_url="http://d",
        timeout=httpx.Timeout(300, connect=5),
    )


def ok(r: httpx.Response) -> httpx.Response:
    assert r.status_code < 300, f"{r.request.method} {r.request.url}: {r.status_code} {r.text}"
    return r


def create(c: httpx.Client, **spec: object) -> str:
    return str(ok(c.post(f"{API}/containers/create", json=spec)).json()["Id"])


def exec_out(c: httpx.Client, name: str, *cmd: str) -> str:
    eid = ok(
        c.post(
            f"{API}/containers/{name}/exec",
            json={"Cmd": list(cmd), "AttachStdout": True, "AttachStderr": True},
        )
    ).json()["Id"]
    raw = ok(c.post(f"{API}/exec/{eid}/start", json={"Detach": False})).content
    out = b""
    # Non-tty exec output is multiplexed: 8-byte header (stream, 0, 0, 0, big-endian size).
    while len(raw) >= 8:
        size = struct.unpack(">I", raw[4:8])[0]
        out += raw[8 : 8 + size]
        raw = raw[8 + size :]
    return out.decode()


def state(c: httpx.Client, name: str) -> str:
    return str(ok(c.get(f"{API}/containers/{name}/json")).json()["State"]["Status"])


def wait_running(c: httpx.Client, name: str) -> None:
    for _ in range(100):
        if state(c, name) == "running":
            return
        time.sleep(0.1)
    raise AssertionError(f"{name} never ran")


def read_int(c: httpx.Client, name: str, path: str) -> int:
    text = exec_out(c, name, "cat", path).strip()
    return int(text) if text.isdigit() else 0


def counter(c: httpx.Client, name: str) -> int:
    return read_int(c, name, "/tmp/n")


def wait_int_above(c: httpx.Client, name: str, path: str, floor: int, timeout_s: float) -> int:
    """Poll a counter file until it exceeds ``floor``; return the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read_int(c, name, path)
    while value <= floor and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read_int(c, name, path)
    return value


def checkpoint(c: httpx.Client, name: str, dest: Path, **params: str) -> Path:
    q = {"export": "true", **params}
    with c.stream("POST", f"{API}/containers/{name}/checkpoint", params=q) as r:
        if r.status_code != 200:
            r.read()
            ok(r)
        with dest.open("wb") as f:
            for chunk in r.iter_bytes():
                f.write(chunk)
    return dest


def restore(c: httpx.Client, archive: Path, **params: str) -> str:
    with archive.open("rb") as f:
        r = c.post(
            f"{API}/containers/import/restore",
            params={"import": "true", **params},
            content=f,
            headers={"Content-Type": "application/x-tar"},
        )
    return str(ok(r).json()["Id"])


def ship_image(src: httpx.Client, dst: httpx.Client, image: str) -> None:
    ref = quote(image, safe="")
    # The target has never seen this image: restore must not depend on a registry.
    assert dst.get(f"{API}/images/{ref}/exists").status_code == 404
    buf = io.BytesIO()
    with src.stream("GET", f"{API}/images/{ref}/get") as r:
        for chunk in r.iter_bytes():
            buf.write(chunk)
    ok(dst.post(f"{API}/images/load", content=buf.getvalue()))


def remove(c: httpx.Client, name: str) -> None:
    c.delete(f"{API}/containers/{name}", params={"force": "true", "timeout": "0"})


@pytest.fixture
def image(testbed) -> Iterator[str]:
    """A freshly imported image on node a only (its own id), removed from both nodes after."""
    ref = f"localhost/tb-{secrets.token_hex(4)}:test"
    with client(testbed.socket("a")) as a, open(testbed.image_tar, "rb") as f:
        ok(a.post(f"{API}/images/import", params={"reference": ref}, content=f.read(),
                  headers={"Content-Type": "application/x-tar"}))
    yield ref
    for node in ("a", "b"):
        with client(testbed.socket(node)) as c:
            c.delete(f"{API}/images/{quote(ref, safe='')}", params={"force": "true"})


@pytest.fixture
def nodes(testbed) -> Iterator[tuple[httpx.Client, httpx.Client, list[str]]]:
    a, b = client(testbed.socket("a")), client(testbed.socket("b"))
    made: list[str] = []
    yield a, b, made
    for c in (a, b):
        for name in made:
            if name.startswith("net-"):
                c.delete(f"{API}/networks/{name}", params={"force": "true"})
            else:
                remove(c, name)
        c.close()


def test_versions_are_the_measured_ones(testbed):
    with client(testbed.socket("a")) as c:
        info = ok(c.get(f"{API}/info")).json()
    assert info["version"]["Version"].startswith("5.")
    assert info["host"]["ociRuntime"]["name"] == "runc"


def test_nodes_are_separate(nodes):
    a, b, made = nodes
    name = f"only-on-a-{secrets.token_hex(3)}"
    made.append(name)
    create(a, name=name, image="localhost/busybox:test", command=["sleep", "30"])
    assert a.get(f"{API}/containers/{name}/exists").status_code == 204
    assert b.get(f"{API}/containers/{name}/exists").status_code == 404


def test_counter_survives_migration(nodes, image, tmp_path):
    a, b, made = nodes
    name = f"counter-{secrets.token_hex(3)}"
    made.append(name)
    create(a, name=name, image=image, command=["sh", "-c", COUNTER])
    ok(a.post(f"{API}/containers/{name}/start"))
    wait_running(a, name)
    time.sleep(1.0)
    before = counter(a, name)
    assert before > 0
    archive = checkpoint(a, name, tmp_path / "ckpt.tar")
    assert state(a, name) == "exited"
    with tarfile.open(archive) as tar:
        assert "checkpoint/inventory.img" in tar.getnames()
    ship_image(a, b, image)
    restore(b, archive)
    wait_running(b, name)
    time.sleep(0.5)
    after = counter(b, name)
    # Continues from memory: a cold boot would restart at 1 and be far below `before`.
    assert after >= before, (before, after)


def test_dns_client_keeps_reaching_server_after_tcp_migration(nodes, image, tmp_path):
    a, b, made = nodes
    tag = secrets.token_hex(3)
    net, web, cli = f"net-{tag}", f"web-{tag}", f"cli-{tag}"
    made += [web, cli, net]
    netdef = {"name": net, "dns_enabled": True, "driver": "bridge"}
    ok(a.post(f"{API}/networks/create", json=netdef))
    serve = "mkdir -p /www && echo hello-from-web > /www/index.html && exec httpd -f -p 80 -h /www"
    fetch = (
        "ok=0; while :; do "
        f"if wget -q -O /tmp/body http://{web}/; then ok=$((ok+1)); echo $ok > /tmp/ok; fi; "
        "sleep 0.2; done"
    )
    for name, cmd in ((web, serve), (cli, fetch)):
        create(a, name=name, image=image, command=["sh", "-c", cmd],
               networks={net: {}})
        ok(a.post(f"{API}/containers/{name}/start"))
        wait_running(a, name)
    before = wait_int_above(a, cli, "/tmp/ok", 0, timeout_s=20)
    assert before > 0, "the client never reached the server by name on node a"
    recorded = ok(a.get(f"{API}/networks/{net}/json")).json()
    archives = {
        n: checkpoint(a, n, tmp_path / f"{n}.tar", tcpEstablished="true") for n in (web, cli)
    }
    ship_image(a, b, image)
    ok(b.post(f"{API}/networks/create", json={
        "name": recorded["name"], "driver": recorded["driver"],
        "dns_enabled": recorded["dns_enabled"], "subnets": recorded["subnets"],
    }))
    for n in (web, cli):
        restore(b, archives[n], tcpEstablished="true")
        wait_running(b, n)
    after = wait_int_above(b, cli, "/tmp/ok", before, timeout_s=20)
    assert after > before, (before, after)
    assert exec_out(b, cli, "cat", "/tmp/body").strip() == "hello-from-web"
    assert json.loads(b.get(f"{API}/networks/{net}/json").text)["dns_enabled"] is True
