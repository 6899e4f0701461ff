"""Request shapes and error mapping of the libpod client, against httpx.MockTransport."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from tasks.errors import (
    CheckpointFailed,
    InvalidInput,
    NotLibpod,
    PodmanConflict,
    PodmanError,
    PodmanNotFound,
    PodmanTooOld,
    PodmanUnreachable,
    RestoreFailed,
)
from tasks.libpod import Libpod
from tasks.libpod_types import (
    CheckpointOptions,
    NetworkDef,
    RestoreOptions,
    Subnet,
    Timeouts,
)
from tasks.libpod_wire import demux
from tasks.tarpeek import TarPeek

Handler = Callable[[httpx.Request], httpx.Response]
LIBPOD_HEADERS = {"Libpod-Api-Version": "5.8.6", "Server": "Libpod/5.8.6 (linux)"}


def podman_error(status: int, cause: str, message: str) -> httpx.Response:
    body = {"cause": cause, "message": message, "response": status}
    return httpx.Response(status, json=body, headers=LIBPOD_HEADERS)


class Fake:
    """A libpod server double: answers the version probe, records every other request."""

    def __init__(self, handler: Handler, version: str = "5.8.6") -> None:
        self.handler = handler
        self.version = version
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/libpod/version"):
            return httpx.Response(200, json={}, headers={"Libpod-Api-Version": self.version})
        request.read()
        self.requests.append(request)
        return self.handler(request)


def make(handler: Handler, version: str = "5.8.6") -> tuple[Libpod, Fake]:
    fake = Fake(handler, version)
    client = httpx.Client(transport=httpx.MockTransport(fake))
    return Libpod(client, socket_path="/run/test.sock"), fake


def ok(request: httpx.Request) -> httpx.Response:
    return httpx.Response(204, headers=LIBPOD_HEADERS)


def tar_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# -- version negotiation and server recognition ------------------------------------------


def test_versioned_paths_and_version_from_header():
    lp, fake = make(ok)
    lp.start("web")
    assert lp.api_version() == (5, 8, 6)
    assert fake.requests[0].url.path == "/v5.0.0/libpod/containers/web/start"
    assert fake.requests[0].method == "POST"


def test_podman_4_uses_its_own_version_prefix():
    lp, fake = make(ok, version="4.9.3")
    lp.start("web")
    assert fake.requests[0].url.path == "/v4.9.3/libpod/containers/web/start"


def test_too_old_podman_is_refused():
    lp, fake = make(ok, version="4.3.1")
    with pytest.raises(PodmanTooOld, match=r"Podman 4\.3\.1.*needs Podman 4\.4"):
        lp.start("web")
    assert fake.requests == []


def test_version_from_body_without_header():
    def handler(request: httpx.Request) -> httpx.Response:
        body = {"Components": [{"Name": "Podman Engine", "Details": {"APIVersion": "5.2.0"}}]}
        return httpx.Response(200, json=body)

    lp = Libpod(httpx.Client(transport=httpx.MockTransport(handler)))
    assert lp.api_version() == (5, 2, 0)


def docker_engine(request: httpx.Request) -> httpx.Response:
    headers = {"Server": "Docker/27.3.1 (linux)", "Api-Version": "1.47"}
    if request.url.path == "/_ping":
        return httpx.Response(200, text="OK", headers=headers)
    return httpx.Response(404, json={"message": "page not found"}, headers=headers)


def test_docker_engine_is_not_libpod():
    lp = Libpod(httpx.Client(transport=httpx.MockTransport(docker_engine)), socket_path="/d.sock")
    with pytest.raises(NotLibpod, match="Docker Engine, not Podman") as info:
        lp.ping()
    assert "/d.sock" in str(info.value)


def test_docker_body_without_server_header_is_not_libpod():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"message": "page not found"})

    with pytest.raises(NotLibpod, match="Docker Engine"):
        Libpod(httpx.Client(transport=httpx.MockTransport(handler))).api_version()


def test_some_other_server_is_not_libpod():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, text="nope", headers={"Server": "nginx"})

    with pytest.raises(NotLibpod, match="does not answer like Podman"):
        Libpod(httpx.Client(transport=httpx.MockTransport(handler))).api_version()


# -- transport errors ----------------------------------------------------------------------


def test_connection_refused_is_unreachable_and_names_socket():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    lp = Libpod(httpx.Client(transport=httpx.MockTransport(handler)), socket_path="/x/a.sock")
    with pytest.raises(PodmanUnreachable, match=r"/x/a\.sock unreachable") as info:
        lp.inspect_container("web")
    assert isinstance(info.value.__cause__, httpx.ConnectError)


def test_read_timeout_is_unreachable():
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    lp = Libpod(httpx.Client(transport=httpx.MockTransport(handler)), socket_path="/x/a.sock")
    with pytest.raises(PodmanUnreachable, match="timed out"):
        lp.api_version()


def test_missing_socket_file_is_unreachable(tmp_path: Path):
    lp = Libpod.from_socket(tmp_path / "none.sock", timeouts=Timeouts(connect_s=1))
    with lp, pytest.raises(PodmanUnreachable, match=r"none\.sock"):
        lp.ping()


def test_timeouts_are_validated():
    with pytest.raises(InvalidInput):
        Timeouts(read_s=0)


# -- error answers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "cause", "cls"),
    [
        (404, "no such container", PodmanNotFound),
        (409, "network already exists", PodmanConflict),
        (500, "that name is already in use", PodmanConflict),
        (500, "container state improper", PodmanError),
    ],
)
def test_error_answers_map_to_the_tree(status: int, cause: str, cls: type[PodmanError]):
    lp, _ = make(lambda r: podman_error(status, cause, f"boom: {cause}"))
    with pytest.raises(cls) as info:
        lp.inspect_container("web")
    err = info.value
    assert type(err) is cls
    assert (err.status, err.cause, err.podman_message) == (status, cause, f"boom: {cause}")
    assert "inspect container web" in str(err)


def test_non_json_error_body_is_kept_as_text():
    lp, _ = make(lambda r: httpx.Response(500, text="internal mess"))
    with pytest.raises(PodmanError, match="internal mess") as info:
        lp.start("web")
    assert info.value.cause is None


def test_304_already_started_is_fine():
    lp, _ = make(lambda r: httpx.Response(304))
    lp.start("web")
    lp.stop("web", timeout_s=3)


# -- names ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["a/b", "..", "x..y", "web\n", "web\x00", "", " web", "a b"])
def test_bad_container_names_are_rejected_before_any_request(bad: str):
    calls: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(204, headers=LIBPOD_HEADERS)

    lp = Libpod(httpx.Client(transport=httpx.MockTransport(handler)))
    for op in (
        lp.inspect_container,
        lp.start,
        lp.remove,
        lp.network_exists,
        lp.remove_network,
    ):
        with pytest.raises(InvalidInput):
            op(bad)
    with pytest.raises(InvalidInput), lp.checkpoint_export(bad):
        pass
    with pytest.raises(InvalidInput):
        lp.list_project(bad)
    with pytest.raises(InvalidInput):
        lp.create_container({"name": bad, "image": "busybox"})
    assert calls == []


@pytest.mark.parametrize("bad", ["../etc", "img ref", "x\r\ny", "a/../b"])
def test_bad_image_refs_are_rejected(bad: str):
    lp, fake = make(ok)
    with pytest.raises(InvalidInput):
        lp.image_exists(bad)
    with pytest.raises(InvalidInput):
        lp.probe_checkpoint(bad)
    assert fake.requests == []


def test_image_refs_are_quoted_as_one_path_segment():
    lp, fake = make(ok)
    assert lp.image_exists("localhost/busybox:test")
    raw = fake.requests[0].url.raw_path.decode()
    assert raw == "/v5.0.0/libpod/images/localhost%2Fbusybox%3Atest/exists"


def test_missing_image_is_false():
    lp, _ = make(lambda r: podman_error(404, "failed to find image x", "failed to find image x"))
    assert lp.image_exists("x") is False


# -- containers ----------------------------------------------------------------------------


def test_list_project_filters_by_label_as_json():
    row = {
        "Id": "abc",
        "Names": ["demo-web-1"],
        "State": "running",
        "Image": "localhost/busybox:test",
        "ImageID": "578d",
        "Labels": {"com.docker.compose.project": "demo", "com.docker.compose.service": "web"},
        "Networks": ["demo_default"],
    }
    lp, fake = make(lambda r: httpx.Response(200, json=[row]))
    (c,) = lp.list_project("demo")
    req = fake.requests[0]
    assert req.url.path == "/v5.0.0/libpod/containers/json"
    assert req.url.params["all"] == "true"
    assert json.loads(req.url.params["filters"]) == {"label": ["com.docker.compose.project=demo"]}
    assert (c.id, c.name, c.service, c.state, c.image_id) == (
        "abc",
        "demo-web-1",
        "web",
        "running",
        "578d",
    )
    assert c.networks == ("demo_default",)


def test_create_container_posts_the_spec():
    lp, fake = make(lambda r: httpx.Response(201, json={"Id": "123", "Warnings": []}))
    spec = {"name": "web", "image": "localhost/busybox:test", "command": ["sleep", "1"]}
    assert lp.create_container(spec) == "123"
    assert fake.requests[0].url.path == "/v5.0.0/libpod/containers/create"
    assert json.loads(fake.requests[0].content) == spec


def test_remove_keeps_volumes_by_default():
    lp, fake = make(lambda r: httpx.Response(200, json=[{"Id": "1"}]))
    lp.remove("web", force=True)
    params = fake.requests[0].url.params
    assert fake.requests[0].method == "DELETE"
    assert (params["force"], params["v"]) == ("true", "false")


def test_remove_report_error_is_raised():
    lp, _ = make(lambda r: httpx.Response(200, json=[{"Id": "1", "Err": "it broke"}]))
    with pytest.raises(PodmanError, match="it broke"):
        lp.remove("web")


def test_exec_demultiplexes_and_reads_exit_code():
    frames = b"\x01\x00\x00\x00\x00\x00\x00\x021\n\x02\x00\x00\x00\x00\x00\x00\x04err\n"

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/containers/web/exec"):
            assert json.loads(request.content)["Cmd"] == ["cat", "/tmp/n"]
            return httpx.Response(201, json={"Id": "e1"})
        if path.endswith("/exec/e1/start"):
            assert json.loads(request.content) == {"Detach": False, "Tty": False}
            return httpx.Response(200, content=frames)
        assert path.endswith("/exec/e1/json")
        return httpx.Response(200, json={"Running": False, "ExitCode": 3})

    lp, _ = make(handler)
    result = lp.exec("web", ["cat", "/tmp/n"])
    assert (result.exit_code, result.stdout, result.stderr) == (3, b"1\n", b"err\n")
    assert result.output == "1\n"


def test_demux_rejects_truncated_frames():
    with pytest.raises(PodmanError):
        demux(b"\x01\x00\x00\x00\x00\x00\x00\x09short")


def test_info_reads_libpod_info_and_cpuinfo(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("model name\t: Test CPU\nflags\t\t: sse2 avx2 fpu\n\nmodel name\t: x\n")
    body = {
        "host": {
            "hostname": "node-a",
            "kernel": "6.18",
            "arch": "amd64",
            "cgroupVersion": "v1",
            "cpus": 2,
            "conmon": {"version": "conmon version 2.1.13, commit: unknown"},
            "ociRuntime": {"name": "runc", "version": "runc version 1.3.6\ncommit: x"},
        },
        "version": {"Version": "5.8.6", "APIVersion": "5.8.6"},
    }
    fake = Fake(lambda r: httpx.Response(200, json=body))
    lp = Libpod(httpx.Client(transport=httpx.MockTransport(fake)), cpuinfo_path=str(cpuinfo))
    info = lp.info()
    assert info.hostname == "node-a"
    assert info.runc_version == "runc version 1.3.6"
    assert info.cpu_model == "Test CPU"
    assert info.cpu_flags == ("avx2", "fpu", "sse2")
    assert info.criu_version == ""


# -- checkpoint ----------------------------------------------------------------------------


def test_checkpoint_export_streams_with_query_params():
    body = b"x" * (3 << 20)
    lp, fake = make(lambda r: httpx.Response(200, content=body))
    opts = CheckpointOptions(leave_running=True, tcp_established=True, ignore_rootfs=True)
    with lp.checkpoint_export("web", opts) as chunks:
        got = list(chunks)
    req = fake.requests[0]
    assert req.method == "POST"
    assert req.url.path == "/v5.0.0/libpod/containers/web/checkpoint"
    assert dict(req.url.params) == {
        "export": "true",
        "leaveRunning": "true",
        "tcpEstablished": "true",
        "ignoreRootFS": "true",
    }
    assert b"".join(got) == body


def test_checkpoint_failure_raises_before_the_first_chunk():
    lp, _ = make(lambda r: podman_error(500, "container state improper", "not running"))
    entered = False
    with pytest.raises(CheckpointFailed) as info, lp.checkpoint_export("web"):
        entered = True
    assert not entered
    err = info.value
    assert (err.container, err.status, err.cause) == ("web", 500, "container state improper")
    assert err.podman_message == "not running"


def test_keep_is_sent_and_restore_kept_restores_in_place_without_keep():
    lp, fake = make(lambda r: httpx.Response(200, json={"Id": "abc"}))
    with lp.checkpoint_export("web", CheckpointOptions(keep=True)) as chunks:
        list(chunks)
    assert dict(fake.requests[0].url.params) == {"export": "true", "keep": "true"}
    lp.restore_kept("web", tcp_established=True)
    req = fake.requests[1]
    assert (req.method, req.url.path) == ("POST", "/v5.0.0/libpod/containers/web/restore")
    # No keep: Podman drops the kept images once the restore succeeded.
    assert dict(req.url.params) == {"tcpEstablished": "true"}


def test_restore_kept_failure_names_the_container():
    lp, _ = make(lambda r: podman_error(500, "no checkpoint", "criu failed"))
    with pytest.raises(RestoreFailed, match="restore of web from its kept checkpoint failed"):
        lp.restore_kept("web")


# -- restore -------------------------------------------------------------------------------


def test_restore_streams_file_with_params_and_tar_type(tmp_path: Path):
    archive = tmp_path / "ck.tar"
    archive.write_bytes(tar_bytes({"config.dump": b'{"name": "web"}'}))
    answer = {"Id": "r1", "runtime_restore_duration": 1234, "criu_statistics": None}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/containers/json"):
            return httpx.Response(200, json=[])
        return httpx.Response(200, json=answer)

    lp, fake = make(handler)
    opts = RestoreOptions(
        name="web2",
        tcp_established=True,
        ignore_static_ip=True,
        ignore_static_mac=True,
        publish_ports=("8080:80", "53:53/udp"),
    )
    result = lp.restore(archive, opts)
    assert (result.id, result.runtime_restore_duration_us) == ("r1", 1234)
    req = fake.requests[-1]
    assert req.url.path == "/v5.0.0/libpod/containers/import/restore"
    assert req.headers["content-type"] == "application/x-tar"
    assert req.headers["content-length"] == str(archive.stat().st_size)
    assert dict(req.url.params) == {
        "import": "true",
        "name": "web2",
        "publishPorts": "8080:80 53:53/udp",
        "tcpEstablished": "true",
        "ignoreStaticIP": "true",
        "ignoreStaticMAC": "true",
    }
    assert req.content == archive.read_bytes()


def test_restore_failure_removes_only_the_container_it_left():
    data = tar_bytes({"artifacts": b"", "config.dump": b'{"name": "web", "id": "x"}'})
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        calls.append(f"{request.method} {path}")
        if path.endswith("/containers/json"):
            return httpx.Response(200, json=[{"Id": "old"}])
        if path.endswith("/restore"):
            return podman_error(500, "OCI runtime error", "criu failed")
        if path.endswith("/containers/web/json"):
            return httpx.Response(200, json={"Id": "new1", "State": {"Status": "created"}})
        return httpx.Response(200, json=[{"Id": "new1"}])

    lp, _ = make(handler)
    chunks = [data[i : i + 700] for i in range(0, len(data), 700)]
    with pytest.raises(RestoreFailed, match="removed the half-restored container web") as info:
        lp.restore(chunks)
    assert info.value.archive == "<stream>"
    assert info.value.podman_message == "criu failed"
    assert calls[-1] == "DELETE /v5.0.0/libpod/containers/new1"


def test_restore_failure_never_removes_a_container_that_was_there_before():
    data = tar_bytes({"config.dump": b'{"name": "web"}'})

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert request.method != "DELETE"
        if path.endswith("/containers/json"):
            return httpx.Response(200, json=[{"Id": "old"}])
        if path.endswith("/restore"):
            return podman_error(500, "that ID is already in use", "in use")
        return httpx.Response(200, json={"Id": "old", "State": {"Status": "running"}})

    lp, _ = make(handler)
    with pytest.raises(RestoreFailed):
        lp.restore([data])


def test_restore_of_a_missing_file_is_invalid(tmp_path: Path):
    lp, fake = make(ok)
    with pytest.raises(InvalidInput):
        lp.restore(tmp_path / "absent.tar")
    assert fake.requests == []


def test_restore_options_reject_bad_names():
    with pytest.raises(InvalidInput):
        RestoreOptions(name="../x")
    with pytest.raises(InvalidInput):
        RestoreOptions(publish_ports=("80 81",))


def test_tarpeek_finds_a_member_across_tiny_chunks():
    long_dir = "d" * 120
    data = tar_bytes({f"{long_dir}/a": b"A" * 1000, "config.dump": b'{"name": "w"}'})
    peek = TarPeek("config.dump")
    out = b"".join(peek.wrap(data[i : i + 7] for i in range(0, len(data), 7)))
    assert out == data
    assert peek.content == b'{"name": "w"}'


# -- images and networks -------------------------------------------------------------------


def test_export_image_streams_and_load_image_posts_tar():
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/get"):
            return httpx.Response(200, content=b"IMG" * 1000)
        return httpx.Response(200, json={"Names": ["localhost/busybox:test"]})

    lp, fake = make(handler)
    with lp.export_image("localhost/busybox:test") as chunks:
        data = b"".join(chunks)
    assert lp.load_image(iter([data])) == ["localhost/busybox:test"]
    get, load = fake.requests
    assert get.url.raw_path.endswith(b"/images/localhost%2Fbusybox%3Atest/get")
    assert load.url.path == "/v5.0.0/libpod/images/load"
    assert load.headers["content-type"] == "application/x-tar"
    assert load.content == data


def test_export_missing_image_is_not_found():
    lp, _ = make(lambda r: podman_error(404, "failed to find image", "no image"))
    with pytest.raises(PodmanNotFound), lp.export_image("nope"):
        pass


def test_network_def_round_trips_and_is_posted():
    libpod_json = {
        "name": "demo_default",
        "id": "10b7",
        "driver": "bridge",
        "network_interface": "podman1",
        "subnets": [{"subnet": "10.89.0.0/24", "gateway": "10.89.0.1"}],
        "ipv6_enabled": False,
        "internal": False,
        "dns_enabled": True,
        "labels": {"com.docker.compose.project": "demo"},
        "ipam_options": {"driver": "host-local"},
    }
    lp, fake = make(lambda r: httpx.Response(200, json=libpod_json))
    defn = lp.inspect_network("demo_default")
    assert defn.subnets == (Subnet("10.89.0.0/24", "10.89.0.1"),)
    assert defn.dns_enabled
    assert NetworkDef.from_json(json.loads(json.dumps(defn.to_json()))) == defn
    lp.create_network(defn)
    req = fake.requests[-1]
    assert req.url.path == "/v5.0.0/libpod/networks/create"
    assert json.loads(req.content) == defn.to_json()


def test_network_def_rejects_garbage():
    with pytest.raises(InvalidInput):
        NetworkDef.from_json({"driver": "bridge"})
    with pytest.raises(InvalidInput):
        NetworkDef.from_json({"name": "../x"})
