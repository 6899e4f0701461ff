"""The libpod client against the test bed's real Podman + CRIU nodes."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import secrets
import signal
import socketserver
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import httpx
import pytest

from tasks.errors import (
    CheckpointFailed,
    CheckpointUnsupported,
    NotLibpod,
    PodmanConflict,
    PodmanNotFound,
    RestoreFailed,
)
from tasks.libpod import Libpod
from tasks.libpod_types import CheckpointOptions, NetworkDef, RestoreOptions

pytestmark = pytest.mark.podman

COUNTER = "i=0; while true; do i=$((i+1)); echo $i > /tmp/n; sleep 0.1; done"
IMAGE_TAR = Path("/var/lib/podchord-testbed/busybox-image.tar")


@dataclass
class Cleanup:
    """Things created on the nodes, removed at teardown whatever the test did."""

    actions: list[Callable[[], None]] = field(default_factory=list)

    def container(self, lp: Libpod, name: str) -> str:
        def undo() -> None:
            with contextlib.suppress(PodmanNotFound):
                lp.remove(name, force=True)

        self.actions.append(undo)
        return name

    def network(self, lp: Libpod, name: str) -> str:
        def undo() -> None:
            with contextlib.suppress(PodmanNotFound):
                lp.remove_network(name, force=True)

        self.actions.append(undo)
        return name

    def image(self, lp: Libpod, ref: str) -> str:
        def undo() -> None:
            with contextlib.suppress(PodmanNotFound):
                lp.remove_image(ref)

        self.actions.append(undo)
        return ref

    def run(self) -> None:
        errors = []
        for undo in reversed(self.actions):
            try:
                undo()
            except Exception as exc:  # report them all, then fail
                errors.append(exc)
        assert not errors, errors


@pytest.fixture
def cleanup() -> Iterator[Cleanup]:
    c = Cleanup()
    yield c
    c.run()


@pytest.fixture
def uid(request: pytest.FixtureRequest) -> str:
    short = request.node.name.removeprefix("test_")[:20].replace("_", "-")
    return f"{short}-{secrets.token_hex(3)}"


def run_counter(lp: Libpod, cleanup: Cleanup, name: str, image: str, **extra) -> None:
    spec = {"name": cleanup.container(lp, name), "image": image, "command": ["sh", "-c", COUNTER]}
    spec.update(extra)
    lp.create_container(spec)
    lp.start(name)
    lp.wait_state(name, {"running"}, timeout_s=30)


def read_counter(lp: Libpod, name: str, at_least: int = 1, timeout_s: float = 30) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        result = lp.exec(name, ["cat", "/tmp/n"])
        value = int(result.output.strip() or 0) if result.exit_code == 0 else 0
        if value >= at_least or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def export_to(lp: Libpod, name: str, path: Path, opts: CheckpointOptions | None = None) -> str:
    digest = hashlib.sha256()
    with lp.checkpoint_export(name, opts) as chunks, path.open("wb") as f:
        for chunk in chunks:
            digest.update(chunk)
            f.write(chunk)
    return digest.hexdigest()


class ChunkReader(io.RawIOBase):
    """A read-only file over an iterator of chunks, for tarfile's stream mode."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        while not self._buf:
            self._buf = next(self._chunks, b"")
            if not self._buf:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


# -- the whole cross-node path -------------------------------------------------------------


def test_migrate_counter_with_its_image_and_network_from_a_to_b(
    node_a: Libpod, node_b: Libpod, testbed, cleanup: Cleanup, uid: str, tmp_path: Path
):
    # A name the target has never seen: b must get the image from a, not from its own store.
    repo, tag = f"localhost/podchord-{uid}", "v1"
    ref = f"{repo}:{tag}"
    node_a.tag_image(testbed.image, repo, tag)
    cleanup.image(node_a, ref)
    assert not node_b.image_exists(ref)

    net = cleanup.network(node_a, f"net-{uid}")
    node_a.create_network(NetworkDef(name=net, dns_enabled=True, labels={"podchord.test": uid}))
    defn = node_a.inspect_network(net)
    assert defn.dns_enabled
    assert defn.subnets
    assert defn.labels == {"podchord.test": uid}

    name = f"ctr-{uid}"
    labels = {"com.docker.compose.project": uid.replace("-", ""), "com.docker.compose.service": "c"}
    run_counter(node_a, cleanup, name, ref, networks={net: {}}, labels=labels)
    (summary,) = node_a.list_project(labels["com.docker.compose.project"])
    assert (summary.name, summary.service, summary.state) == (name, "c", "running")
    assert summary.networks == (net,)
    before = read_counter(node_a, name, at_least=20)

    archive = tmp_path / "ck.tar"
    export_to(node_a, name, archive)
    assert node_a.container_state(name) == "exited"
    with tarfile.open(archive, mode="r|") as tar:
        members = [m.name for m in tar]
    assert "checkpoint/inventory.img" in members
    assert "config.dump" in members

    # Ship the image (streamed both ways) and the network, then restore on b.
    with node_a.export_image(ref) as chunks:
        cleanup.image(node_b, ref)
        assert ref in node_b.load_image(chunks)
    assert node_b.inspect_image(ref).id == node_a.inspect_image(ref).id
    cleanup.network(node_b, net)
    node_b.create_network(NetworkDef.from_json(json.loads(json.dumps(defn.to_json()))))
    assert node_b.inspect_network(net).subnets == defn.subnets

    cleanup.container(node_b, name)
    result = node_b.restore(archive)
    assert result.id == node_a.inspect_container(name)["Id"]
    assert node_b.wait_state(name, {"running"}, timeout_s=30) == "running"
    # The shell's counter lives in memory: a fresh start would begin again at 1.
    after = read_counter(node_b, name, at_least=before)
    assert after >= before >= 20
    assert node_b.inspect_container(name)["State"].get("Restored") is True


def test_checkpoint_streams_and_tar_stream_mode_reads_it(
    node_a: Libpod, testbed, cleanup: Cleanup, uid: str
):
    name = f"ctr-{uid}"
    run_counter(node_a, cleanup, name, testbed.image)
    opts = CheckpointOptions(leave_running=True)
    with (
        node_a.checkpoint_export(name, opts) as chunks,
        tarfile.open(fileobj=io.BufferedReader(ChunkReader(chunks)), mode="r|") as tar,
    ):
        names = [m.name for m in tar]
    assert "checkpoint/inventory.img" in names
    assert node_a.container_state(name) == "running"


# -- refusals and failures -----------------------------------------------------------------


def test_checkpoint_of_a_stopped_container_fails_with_podmans_message(
    node_a: Libpod, testbed, cleanup: Cleanup, uid: str
):
    name = cleanup.container(node_a, f"ctr-{uid}")
    node_a.create_container({"name": name, "image": testbed.image, "command": ["true"]})
    node_a.start(name)
    node_a.wait_state(name, {"exited"}, timeout_s=30)
    with pytest.raises(CheckpointFailed) as info, node_a.checkpoint_export(name):
        pytest.fail("no chunk may be yielded")
    err = info.value
    assert (err.container, err.status, err.cause) == (name, 500, "container state improper")
    assert "cannot checkpoint" in (err.podman_message or "")


def test_errors_of_the_real_node_map_to_the_tree(node_a: Libpod, uid: str):
    with pytest.raises(PodmanNotFound):
        node_a.inspect_container(f"absent-{uid}")
    with pytest.raises(PodmanNotFound):
        node_a.inspect_network(f"absent-{uid}")
    assert not node_a.network_exists(f"absent-{uid}")
    with pytest.raises(PodmanConflict):
        node_a.create_network(NetworkDef(name="podman"))


def corrupt(src: Path, dst: Path, member: str) -> None:
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin:
            f = tin.extractfile(m) if m.isfile() else None
            if m.name == member:
                f = io.BytesIO(b"\xff" * m.size)
            tout.addfile(m, f)


def test_failed_restore_leaves_no_container_when_cleaning_up(
    node_a: Libpod, testbed, cleanup: Cleanup, uid: str, tmp_path: Path
):
    name = f"ctr-{uid}"
    run_counter(node_a, cleanup, name, testbed.image)
    good = tmp_path / "good.tar"
    export_to(node_a, name, good, CheckpointOptions(leave_running=True))
    bad = tmp_path / "bad.tar"
    corrupt(good, bad, "checkpoint/inventory.img")

    # Without cleanup Podman leaves a "created" container: the reason the cleanup exists.
    left = cleanup.container(node_a, f"left-{uid}")
    with pytest.raises(RestoreFailed) as info:
        node_a.restore(bad, RestoreOptions(name=left), cleanup_on_failure=False)
    assert info.value.archive == str(bad)
    assert info.value.podman_message
    assert node_a.container_state(left) == "created"
    assert node_a.remove_if_created(left)

    # With cleanup, from a path and (name read from config.dump) from a stream.
    copy = cleanup.container(node_a, f"copy-{uid}")
    with pytest.raises(RestoreFailed, match="removed the half-restored container"):
        node_a.restore(bad, RestoreOptions(name=copy))
    with pytest.raises(PodmanNotFound):
        node_a.inspect_container(copy)

    node_a.stop(name, timeout_s=0)
    node_a.remove(name, force=True)
    with pytest.raises(RestoreFailed, match="removed the half-restored container"):
        node_a.restore(iter([bad.read_bytes()]))
    with pytest.raises(PodmanNotFound):
        node_a.inspect_container(name)

    # A truncated archive fails either while unpacking or, when the cut spares what
    # Podman reads first, in CRIU after the container was made: nothing is left either way.
    data = good.read_bytes()
    for cut in (50_000, len(data) // 3):
        with pytest.raises(RestoreFailed) as info:
            node_a.restore([data[:cut]], RestoreOptions(name=copy))
        assert info.value.archive == "<stream>"
        with pytest.raises(PodmanNotFound):
            node_a.inspect_container(copy)
    with pytest.raises(PodmanNotFound):
        node_a.inspect_container(copy)


def test_restore_without_the_network_fails_and_leaves_nothing(
    node_a: Libpod, node_b: Libpod, testbed, cleanup: Cleanup, uid: str, tmp_path: Path
):
    net = cleanup.network(node_a, f"net-{uid}")
    node_a.create_network(NetworkDef(name=net))
    name = f"ctr-{uid}"
    run_counter(node_a, cleanup, name, testbed.image, networks={net: {}})
    archive = tmp_path / "ck.tar"
    export_to(node_a, name, archive)
    cleanup.container(node_b, name)
    with pytest.raises(RestoreFailed) as info:
        node_b.restore(archive)
    assert info.value.cause == "network not found"
    with pytest.raises(PodmanNotFound):
        node_b.inspect_container(name)


# -- capability probe ----------------------------------------------------------------------


def test_probe_says_yes_on_a_working_node(node_a: Libpod, testbed):
    result = node_a.probe_checkpoint(testbed.image)
    assert result.ok, result.reason
    node_a.require_checkpoint(testbed.image)
    info = node_a.info()
    assert (info.hostname, info.oci_runtime) == ("node-a", "runc")
    assert info.podman_version
    assert info.kernel
    assert info.cpu_flags


def test_probe_needs_the_image_locally(node_a: Libpod, uid: str):
    with pytest.raises(PodmanNotFound):
        node_a.probe_checkpoint(f"localhost/absent-{uid}:v1")


@pytest.fixture
def nolo_node(testbed, tmp_path: Path) -> Iterator[str]:
    """A node like scripts/testbed's, but whose loopback interface stays down."""
    rootfs = Path(testbed.env["PODCHORD_TESTBED_ROOTFS"])
    name = f"nolo-{secrets.token_hex(3)}"
    sock = rootfs / "sockets" / f"{name}.sock"
    state = tmp_path / "node"
    (state / "containers").mkdir(parents=True)
    (state / "networks").mkdir()
    script = """
        set -e
        R=$1; N=$2; ND=$3
        hostname "node-$N"
        mount --bind "$R" "$R"
        mount -t proc proc "$R/proc"
        mount --rbind /sys "$R/sys"
        mount --rbind /dev "$R/dev"
        mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
        mount -t tmpfs tmpfs "$R/run"
        mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
        mount --bind "$ND/containers" "$R/var/lib/containers"
        mount --bind "$ND/networks" "$R/etc/containers/networks"
        cd "$R"
        pivot_root . oldroot
        cd /
        umount -l /oldroot
        exec podman system service --time=0 "unix:///sockets/$N.sock"
    """
    log = (tmp_path / "node.log").open("wb")
    proc = subprocess.Popen(
        [
            *("unshare", "--mount", "--net", "--uts", "--propagation", "private", "--"),
            *("/bin/sh", "-c", script, "sh", str(rootfs), name, str(state)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    mntns = None
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert proc.poll() is None, (tmp_path / "node.log").read_text()
            assert time.monotonic() < deadline, "nolo node did not come up"
            time.sleep(0.1)
        mntns = os.readlink(f"/proc/{proc.pid}/ns/mnt")
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, timeout=120) as client:
            for _ in range(50):
                try:
                    client.get("http://d/_ping").raise_for_status()
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
            with IMAGE_TAR.open("rb") as f:
                client.post(
                    f"http://d/v5.0.0/libpod/images/import?reference={testbed.image}",
                    content=f,
                    headers={"Content-Type": "application/x-tar"},
                ).raise_for_status()
        yield str(sock)
    finally:
        _stop_node(proc, mntns, sock)
        log.close()


def _stop_node(proc: subprocess.Popen, mntns: str | None, sock: Path) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # conmon and friends outlive the service: end what lives in the node's mount namespace.
    if mntns is not None:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                if os.readlink(p / "ns" / "mnt") == mntns:
                    os.kill(int(p.name), signal.SIGKILL)
            except OSError:
                pass
    sock.unlink(missing_ok=True)


def test_probe_says_no_when_criu_is_unusable(nolo_node: str, testbed):
    with Libpod.from_socket(nolo_node) as lp:
        result = lp.probe_checkpoint(testbed.image)
        assert not result.ok
        # Over REST Podman says only that runc's checkpoint failed; CRIU's own reason
        # ("kerndat_tcp_repair failed") goes to the service's log, not into the answer.
        assert "checkpoint" in result.reason
        assert "failed" in result.reason
        with pytest.raises(CheckpointUnsupported, match="checkpoint does not work"):
            lp.require_checkpoint(testbed.image)
        # The probe cleans up after itself, also when it says no.
        rows = httpx.Client(transport=httpx.HTTPTransport(uds=nolo_node)).get(
            "http://d/v5.0.0/libpod/containers/json?all=true"
        )
        assert rows.json() == []


# -- not Podman ----------------------------------------------------------------------------


class _DockerLike(BaseHTTPRequestHandler):
    """Answers like Docker Engine 27: /_ping and /version work, /libpod/* does not exist."""

    def do_GET(self) -> None:
        if self.path.endswith("/_ping"):
            self._send(200, b"OK", "text/plain")
        elif self.path.endswith("/version"):
            body = {"Components": [{"Name": "Engine", "Version": "27.3.1"}], "Version": "27.3.1"}
            self._send(200, json.dumps(body).encode(), "application/json")
        else:
            self._send(404, b'{"message":"page not found"}', "application/json")

    def _send(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Server", "Docker/27.3.1 (linux)")
        self.send_header("Api-Version", "1.47")
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


def test_docker_engine_socket_is_not_libpod(tmp_path: Path):
    sock = tmp_path / "docker.sock"
    server = socketserver.ThreadingUnixStreamServer(str(sock), _DockerLike)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with Libpod.from_socket(sock) as lp:
            with pytest.raises(NotLibpod, match="Docker Engine, not Podman") as info:
                lp.ping()
            assert str(sock) in str(info.value)
            with pytest.raises(NotLibpod):
                lp.list_project("demo")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
