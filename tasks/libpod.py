"""A typed, synchronous client of Podman's libpod REST API over its Unix socket.

I/O goes through an injected :class:`httpx.Client` (unit tests hand it a ``MockTransport``);
:meth:`Libpod.from_socket` builds the real one. Names are validated and URL-quoted before any
request, large bodies (checkpoint archives, images) are streamed both ways, and every httpx
error or Podman error answer becomes a :class:`~tasks.errors.PodmanError` here and nowhere else.
The libpod API version is negotiated on first use: Podman older than 4.4 and Docker Engine
sockets are refused.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx

from . import libpod_wire as wire
from .errors import (
    CheckpointFailed,
    CheckpointUnsupported,
    DeadlineExceeded,
    InvalidInput,
    PodmanError,
    PodmanNotFound,
    PodmanUnreachable,
    RestoreFailed,
)
from .libpod_base import CHUNK_BYTES, Archive, qbool, upload_body
from .libpod_resources import ImagesAndNetworks
from .libpod_types import (
    CheckpointOptions,
    ContainerSummary,
    ExecResult,
    NodeInfo,
    ProbeResult,
    RestoreOptions,
    RestoreResult,
    Timeouts,
)
from .names import check_image_ref, check_name, check_project
from .tarpeek import TarPeek

__all__ = ["Archive", "Libpod"]

_PROJECT_LABEL = "com.docker.compose.project"
_SERVICE_LABEL = "com.docker.compose.service"
_Refusal = TypeVar("_Refusal", bound=PodmanError)


class Libpod(ImagesAndNetworks):
    """Client of one node's libpod API (see :class:`~tasks.libpod_base.LibpodBase` for args)."""

    @classmethod
    def from_socket(
        cls, path: str | os.PathLike[str], *, timeouts: Timeouts | None = None
    ) -> Libpod:
        """Return a client of the libpod socket at ``path`` (no I/O happens yet)."""
        t = timeouts or Timeouts()
        client = httpx.Client(
            transport=httpx.HTTPTransport(uds=os.fspath(path)),
            timeout=httpx.Timeout(
                connect=t.connect_s, read=t.read_s, write=t.write_s, pool=t.pool_s
            ),
        )
        return cls(client, socket_path=os.fspath(path), cpuinfo_path="/proc/cpuinfo")

    # -- node ----------------------------------------------------------------------------

    def info(self) -> NodeInfo:
        """Return what the node runs.

        libpod's info holds no CPU model or flags. A Unix socket only connects processes on
        one kernel, so the CPU this process sees in ``/proc/cpuinfo`` is the node's CPU; that
        file is read instead of starting a container to read the same file. (A socket
        forwarded from another machine, e.g. over ssh, would break this: the fields would
        describe the wrong CPU.)
        """
        data = self._json("GET", self._url("/info"), "info")
        host = data.get("host") or {}
        version = data.get("version") or {}
        runtime = host.get("ociRuntime") or {}
        model, flags = _read_cpuinfo(self._cpuinfo)
        return NodeInfo(
            hostname=str(host.get("hostname", "")),
            podman_version=str(version.get("Version", "")),
            api_version=str(version.get("APIVersion", "")),
            oci_runtime=str(runtime.get("name", "")),
            runc_version=_first_line(runtime.get("version")),
            conmon_version=_first_line((host.get("conmon") or {}).get("version")),
            criu_version=_first_line(host.get("criuVersion")),
            kernel=str(host.get("kernel", "")),
            arch=str(host.get("arch", "")),
            cgroup_version=str(host.get("cgroupVersion", "")),
            cpus=int(host.get("cpus") or 0),
            cpu_model=model,
            cpu_flags=flags,
        )

    def probe_checkpoint(self, image: str) -> ProbeResult:
        """Really checkpoint a throwaway container from ``image`` (present on the node).

        The container runs ``sleep``, is checkpointed without export and is always removed.

        Returns:
            ok=True, or ok=False with Podman's message as the reason.

        Raises:
            PodmanNotFound: ``image`` is not on the node (the probe does not pull).
            PodmanUnreachable: the node does not answer.
        """
        check_image_ref(image)
        if not self.image_exists(image):
            raise PodmanNotFound(f"probe image {image} is not present on {self._socket}")
        name = f"podchord-probe-{secrets.token_hex(4)}"
        spec = {"name": name, "image": image, "command": ["sleep", "3600"]}
        try:
            self.create_container(spec)
            self.start(name)
            self._call("POST", self._url("/containers/{}/checkpoint", name), f"probe {name}")
        except PodmanError as exc:
            if isinstance(exc, PodmanUnreachable):
                raise
            return ProbeResult(ok=False, reason=exc.podman_message or str(exc))
        finally:
            with suppress(PodmanNotFound):
                self.remove(name, force=True)
        return ProbeResult(ok=True, reason="checkpoint of a running container succeeded")

    def require_checkpoint(self, image: str) -> None:
        """Probe like :meth:`probe_checkpoint`; raise CheckpointUnsupported on a no."""
        result = self.probe_checkpoint(image)
        if not result.ok:
            raise CheckpointUnsupported(
                f"checkpoint does not work on {self._socket}: {result.reason}",
                podman_message=result.reason,
            )

    # -- containers ----------------------------------------------------------------------

    def list_project(self, project: str) -> list[ContainerSummary]:
        """Return every container (any state) labelled with compose project ``project``."""
        check_project(project)
        filters = json.dumps({"label": [f"{_PROJECT_LABEL}={project}"]})
        rows = self._json(
            "GET",
            self._url("/containers/json"),
            f"list project {project}",
            params={"all": "true", "filters": filters},
        )
        return [_summary(row) for row in rows or []]

    def inspect_container(self, name: str) -> dict[str, Any]:
        """Return libpod's raw inspect JSON of container ``name``."""
        check_name(name, "container name")
        data: dict[str, Any] = self._json(
            "GET", self._url("/containers/{}/json", name), f"inspect container {name}"
        )
        return data

    def container_state(self, name: str) -> str:
        """Return the state of container ``name`` (``running``, ``exited``, ``created``...)."""
        return str((self.inspect_container(name).get("State") or {}).get("Status", ""))

    def create_container(self, spec: Mapping[str, Any]) -> str:
        """Create a container from a libpod SpecGenerator ``spec``; return its id."""
        if "name" in spec:
            check_name(spec["name"], "container name")
        if "image" in spec:
            check_image_ref(spec["image"])
        data = self._json(
            "POST", self._url("/containers/create"), "create container", json=dict(spec)
        )
        return str(data["Id"])

    def start(self, name: str) -> None:
        """Start container ``name`` (a no-op if it runs)."""
        check_name(name, "container name")
        self._call("POST", self._url("/containers/{}/start", name), f"start {name}")

    def stop(self, name: str, timeout_s: int = 10) -> None:
        """Stop container ``name``, killing it after ``timeout_s`` (a no-op if stopped)."""
        check_name(name, "container name")
        params = {"timeout": str(int(timeout_s))}
        self._call("POST", self._url("/containers/{}/stop", name), f"stop {name}", params=params)

    def remove(self, name: str, *, force: bool = False, volumes: bool = False) -> None:
        """Remove container ``name``; its named volumes stay unless ``volumes`` is set."""
        check_name(name, "container name")
        params = {"force": qbool(force), "v": qbool(volumes), "timeout": "0"}
        what = f"remove {name}"
        reports = self._json("DELETE", self._url("/containers/{}", name), what, params=params)
        for report in reports or []:
            if isinstance(report, dict) and report.get("Err"):
                raise PodmanError(f"{what}: {report['Err']}", podman_message=str(report["Err"]))

    def remove_if_created(self, name: str) -> bool:
        """Remove ``name`` if it is in the ``created`` state a failed restore leaves behind.

        Returns:
            True if a container was removed.
        """
        try:
            if self.container_state(name) not in ("created", "configured"):
                return False
            self.remove(name, force=True)
        except PodmanNotFound:
            return False
        return True

    def wait_state(
        self, name: str, states: Iterable[str], timeout_s: float, poll_s: float = 0.1
    ) -> str:
        """Poll until container ``name`` is in one of ``states``; return that state.

        Raises:
            DeadlineExceeded: ``timeout_s`` passed first (the message names the last state).
        """
        wanted = frozenset(states)
        deadline = time.monotonic() + timeout_s
        while True:
            state = self.container_state(name)
            if state in wanted:
                return state
            if time.monotonic() >= deadline:
                raise DeadlineExceeded(
                    f"container {name} still {state!r} after {timeout_s}s, wanted {sorted(wanted)}"
                )
            time.sleep(poll_s)

    def exec(self, name: str, cmd: Sequence[str], timeout_s: float = 30.0) -> ExecResult:
        """Run ``cmd`` in container ``name`` and return its exit code and output.

        Output is read whole: this is for short commands, not for data transfers.
        """
        check_name(name, "container name")
        if isinstance(cmd, str) or not cmd:
            raise InvalidInput("cmd must be a non-empty sequence of strings")
        body = {"AttachStdout": True, "AttachStderr": True, "Cmd": list(cmd)}
        what = f"exec in {name}"
        exec_id = self._json("POST", self._url("/containers/{}/exec", name), what, json=body)["Id"]
        start = {"Detach": False, "Tty": False}
        raw = self._call("POST", self._url("/exec/{}/start", exec_id), what, json=start).content
        stdout, stderr = wire.demux(raw)
        deadline = time.monotonic() + timeout_s
        # The stream ends when the process does, but ExitCode may lag behind by a moment.
        while True:
            state = self._json("GET", self._url("/exec/{}/json", exec_id), what)
            if not state.get("Running") or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        return ExecResult(exit_code=int(state.get("ExitCode", -1)), stdout=stdout, stderr=stderr)

    # -- checkpoint / restore ------------------------------------------------------------

    @contextmanager
    def checkpoint_export(
        self, name: str, opts: CheckpointOptions | None = None
    ) -> Iterator[Iterator[bytes]]:
        """Checkpoint container ``name`` and stream the archive (an uncompressed tar).

        Use as ``with lp.checkpoint_export("web") as chunks: for c in chunks: ...``; the
        answer is closed on exit, read or not.

        Raises:
            CheckpointFailed: Podman refused or failed the checkpoint; raised before any chunk.
            PodmanUnreachable: the socket broke, also while chunks are read.
        """
        check_name(name, "container name")
        params = (opts or CheckpointOptions()).to_params()
        url = self._url("/containers/{}/checkpoint", name)
        response = self._send("POST", url, params=params, stream=True)
        try:
            if response.status_code != 200:
                response.read()
                raise _refused(CheckpointFailed, response, f"checkpoint of {name}", container=name)
            yield wire.guard_stream(response.iter_bytes(CHUNK_BYTES), self._socket)
        finally:
            response.close()

    def restore(
        self,
        archive: Archive,
        opts: RestoreOptions | None = None,
        *,
        cleanup_on_failure: bool = True,
    ) -> RestoreResult:
        """Restore a checkpoint archive, streamed from a file or from chunks.

        Args:
            archive: a path, or an iterable of byte chunks (read once).
            opts: restore options; ``opts.name`` renames the container.
            cleanup_on_failure: after a failed restore, remove the container it left in the
                ``created`` state (only one this restore made: a container that existed
                before under that name is never touched).

        Raises:
            RestoreFailed: Podman refused or failed the restore.
            InvalidInput: ``archive`` is a path that is not a file.
        """
        opts = opts or RestoreOptions()
        peek = TarPeek("config.dump")
        url = self._url("/containers/{}/restore", "import")
        with upload_body(archive) as (label, chunks, headers):
            # Ids before the restore tell a container this restore made from one it must keep.
            before = self._container_ids() if cleanup_on_failure else set()
            response = self._send(
                "POST", url, params=opts.to_params(), content=peek.wrap(chunks), headers=headers
            )
        if response.status_code == 200:
            data = self._json_of(response, f"restore of {label}")
            return RestoreResult(
                id=str(data["Id"]),
                runtime_restore_duration_us=int(data.get("runtime_restore_duration") or 0),
                criu_statistics=data.get("criu_statistics"),
            )
        note = ""
        if cleanup_on_failure:
            name = opts.name or _config_name(peek.content)
            if name is not None and self._remove_new(name, before):
                note = f" (removed the half-restored container {name})"
        raise _refused(RestoreFailed, response, f"restore of {label}", note, archive=label)

    def restore_kept(self, name: str, *, tcp_established: bool = False) -> None:
        """Restore ``name`` in place from the CRIU images a ``keep`` checkpoint left.

        A backup resumes its container this way once the archive is whole; it is also the
        rollback when an export stream broke: the container is dumped and stopped, no
        complete archive exists anywhere, but its checkpoint does.

        Raises:
            RestoreFailed: no kept checkpoint, or Podman failed the restore.
        """
        check_name(name, "container name")
        # Without keep, Podman deletes the kept images only once the restore succeeded:
        # a failed attempt leaves them for the next one.
        params: dict[str, str] = {}
        if tcp_established:
            params["tcpEstablished"] = "true"
        response = self._send("POST", self._url("/containers/{}/restore", name), params=params)
        if response.status_code != 200:
            raise _refused(
                RestoreFailed,
                response,
                f"restore of {name} from its kept checkpoint",
                archive=f"kept checkpoint of {name}",
            )

    def _container_ids(self) -> set[str]:
        rows = self._json(
            "GET", self._url("/containers/json"), "list containers", params={"all": "true"}
        )
        return {str(row.get("Id")) for row in rows or []}

    def _remove_new(self, name: str, before: set[str]) -> bool:
        try:
            cid = str(self.inspect_container(name).get("Id", ""))
        except (PodmanNotFound, InvalidInput):
            return False
        if cid in before:
            return False
        self.remove(cid, force=True)
        return True


def _refused(
    kind: Callable[..., _Refusal], response: httpx.Response, what: str, note: str = "",
    **fields: str,
) -> _Refusal:
    """Podman's refusal of ``what`` as ``kind``, with Podman's own cause and message."""
    cause, message, text = wire.error_fields(response)
    return kind(
        f"{what} failed: HTTP {response.status_code}: {text}{note}",
        status=response.status_code,
        cause=cause,
        podman_message=message,
        **fields,
    )


def _config_name(config_dump: bytes | None) -> str | None:
    if not config_dump:
        return None
    try:
        name = json.loads(config_dump).get("name")
    except (ValueError, AttributeError):
        return None
    return name if isinstance(name, str) else None


def _summary(row: Mapping[str, Any]) -> ContainerSummary:
    labels = {str(k): str(v) for k, v in (row.get("Labels") or {}).items()}
    names = row.get("Names") or [""]
    return ContainerSummary(
        id=str(row.get("Id", "")),
        name=str(names[0]),
        service=labels.get(_SERVICE_LABEL, ""),
        state=str(row.get("State", "")),
        image=str(row.get("Image", "")),
        image_id=str(row.get("ImageID", "")),
        labels=labels,
        networks=tuple(str(n) for n in row.get("Networks") or ()),
    )


def _read_cpuinfo(path: str | None) -> tuple[str, tuple[str, ...]]:
    if path is None:
        return "", ()
    try:
        text = Path(path).read_text()
    except OSError:
        return "", ()
    model, flags = "", ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and not model:
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = value.strip()
    return model, tuple(sorted(set(flags.split())))


def _first_line(value: object) -> str:
    return str(value).strip().splitlines()[0] if value else ""
