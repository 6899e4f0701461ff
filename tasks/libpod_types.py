"""Frozen value types exchanged with :class:`tasks.libpod.Libpod`.

They hold what podchord reads from or sends to libpod, already typed, so that no caller reads
Podman's JSON by string key. Everything here is plain data: no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInput
from .names import check_name

__all__ = [
    "CheckpointOptions",
    "ContainerSummary",
    "ExecResult",
    "ImageInfo",
    "NetworkDef",
    "NodeInfo",
    "ProbeResult",
    "RestoreOptions",
    "RestoreResult",
    "Subnet",
    "Timeouts",
]


@dataclass(frozen=True)
class Timeouts:
    """Socket timeouts of a libpod client, in seconds.

    ``read_s`` is long on purpose: a checkpoint with ``export=true`` sends no byte until CRIU
    has dumped the whole container and Podman has written the archive (about 3 s per 256 MB
    measured, far more for big containers on slow disks), and a restore answers only once the
    container runs again.

    Attributes:
        connect_s: time to connect to the Unix socket; short, a dead node should fail fast.
        read_s: longest wait for the next bytes of an answer.
        write_s: longest wait to hand the next bytes of an upload to the socket.
        pool_s: longest wait for a free connection of the client's pool.
    """

    connect_s: float = 5.0
    read_s: float = 1800.0
    write_s: float = 600.0
    pool_s: float = 60.0

    def __post_init__(self) -> None:
        for name in ("connect_s", "read_s", "write_s", "pool_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or value <= 0:
                raise InvalidInput(f"Timeouts.{name} must be a positive number, got {value!r}")


@dataclass(frozen=True)
class NodeInfo:
    """What a node runs, read from ``GET /libpod/info`` (plus the CPU, see ``Libpod.info``).

    A field is empty when the node does not report it. libpod reports no CRIU version, so
    ``criu_version`` is empty on every Podman seen so far; the capability probe
    (``Libpod.probe_checkpoint``) is what tells whether CRIU works.
    """

    hostname: str
    podman_version: str
    api_version: str
    oci_runtime: str
    runc_version: str
    conmon_version: str
    criu_version: str
    kernel: str
    arch: str
    cgroup_version: str
    cpus: int
    cpu_model: str
    cpu_flags: tuple[str, ...]


@dataclass(frozen=True)
class ProbeResult:
    """Outcome of a real checkpoint attempt on a node; ``reason`` is Podman's own words."""

    ok: bool
    reason: str


@dataclass(frozen=True)
class ContainerSummary:
    """One container of a compose project, from ``GET /libpod/containers/json``."""

    id: str
    name: str
    service: str
    state: str
    image: str
    image_id: str
    labels: Mapping[str, str]
    networks: tuple[str, ...]


@dataclass(frozen=True)
class CheckpointOptions:
    """How to checkpoint a container (libpod query parameters in brackets).

    Attributes:
        leave_running: keep the container running after the dump [leaveRunning].
        tcp_established: dump established TCP connections [tcpEstablished].
        file_locks: dump file locks [fileLocks].
        ignore_rootfs: leave root file-system changes out of the archive [ignoreRootFS].
        keep: keep CRIU's images in the container's storage after the export [keep], so
            the container can be restored in place (:meth:`Libpod.restore_kept`) even when
            the exported stream was lost half-way.
    """

    leave_running: bool = False
    tcp_established: bool = False
    file_locks: bool = False
    ignore_rootfs: bool = False
    keep: bool = False

    def to_params(self) -> dict[str, str]:
        """Return libpod's query parameters for an exported checkpoint."""
        params = {"export": "true"}
        params.update(
            _flags(
                leaveRunning=self.leave_running,
                tcpEstablished=self.tcp_established,
                fileLocks=self.file_locks,
                ignoreRootFS=self.ignore_rootfs,
                keep=self.keep,
            )
        )
        return params


@dataclass(frozen=True)
class RestoreOptions:
    """How to restore an exported checkpoint (libpod query parameters in brackets).

    Attributes:
        name: a new container name [name]; Podman then also gives it a new id. Without it the
            container keeps its name and id, which collide with a same-named one on the node.
        tcp_established: restore established TCP connections [tcpEstablished].
        file_locks: restore file locks [fileLocks].
        ignore_static_ip: drop a static IP (needed when the subnet differs) [ignoreStaticIP].
        ignore_static_mac: drop a static MAC [ignoreStaticMAC].
        ignore_volumes: do not restore volume contents from the archive [ignoreVolumes].
        ignore_rootfs: do not restore root file-system changes [ignoreRootFS].
        pod: restore into this pod [pod].
        publish_ports: ``"[[ip:]host:]container[/proto]"`` specs as for ``podman run -p``
            [publishPorts; Podman splits one space-separated value, so none may hold a space].
    """

    name: str | None = None
    tcp_established: bool = False
    file_locks: bool = False
    ignore_static_ip: bool = False
    ignore_static_mac: bool = False
    ignore_volumes: bool = False
    ignore_rootfs: bool = False
    pod: str | None = None
    publish_ports: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.name is not None:
            check_name(self.name, "container name")
        if self.pod is not None:
            check_name(self.pod, "pod name")
        for spec in self.publish_ports:
            if not isinstance(spec, str) or not spec or any(c.isspace() for c in spec):
                raise InvalidInput(f"invalid publish_ports entry {spec!r}")

    def to_params(self) -> dict[str, str]:
        """Return libpod's query parameters for ``/containers/import/restore``."""
        params = {"import": "true"}
        if self.name is not None:
            params["name"] = self.name
        if self.pod is not None:
            params["pod"] = self.pod
        if self.publish_ports:
            params["publishPorts"] = " ".join(self.publish_ports)
        params.update(
            _flags(
                tcpEstablished=self.tcp_established,
                fileLocks=self.file_locks,
                ignoreStaticIP=self.ignore_static_ip,
                ignoreStaticMAC=self.ignore_static_mac,
                ignoreVolumes=self.ignore_volumes,
                ignoreRootFS=self.ignore_rootfs,
            )
        )
        return params


@dataclass(frozen=True)
class RestoreResult:
    """Podman's answer to a successful restore.

    Attributes:
        id: the restored container's id.
        runtime_restore_duration_us: time the OCI runtime spent restoring, in microseconds
            (0 unless Podman was asked for statistics).
        criu_statistics: CRIU's restore statistics, when Podman reports them.
    """

    id: str
    runtime_restore_duration_us: int
    criu_statistics: Mapping[str, Any] | None


@dataclass(frozen=True)
class ImageInfo:
    """An image as ``GET /libpod/images/{name}/json`` describes it."""

    id: str
    names: tuple[str, ...]
    size_bytes: int
    digest: str


@dataclass(frozen=True)
class ExecResult:
    """Exit code and output of a command run with ``Libpod.exec``."""

    exit_code: int
    stdout: bytes
    stderr: bytes

    @property
    def output(self) -> str:
        """Return stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode("utf-8", "replace")


@dataclass(frozen=True)
class Subnet:
    """One subnet of a network; ``gateway`` is empty when Podman picked none."""

    subnet: str
    gateway: str = ""


@dataclass(frozen=True)
class NetworkDef:
    """What it takes to recreate a user network on another node.

    The id, interface name and creation time are left out on purpose: they belong to the node
    that made the network, and the target picks its own.
    """

    name: str
    driver: str = "bridge"
    subnets: tuple[Subnet, ...] = ()
    dns_enabled: bool = False
    internal: bool = False
    ipv6_enabled: bool = False
    labels: Mapping[str, str] = field(default_factory=dict)
    options: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_name(self.name, "network name")

    def to_json(self) -> dict[str, Any]:
        """Return a JSON-safe dict; libpod's ``/networks/create`` accepts it as is."""
        return {
            "name": self.name,
            "driver": self.driver,
            "subnets": [{"subnet": s.subnet, "gateway": s.gateway} for s in self.subnets],
            "dns_enabled": self.dns_enabled,
            "internal": self.internal,
            "ipv6_enabled": self.ipv6_enabled,
            "labels": dict(self.labels),
            "options": dict(self.options),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> NetworkDef:
        """Build a definition from :meth:`to_json` output or from libpod's network JSON.

        Raises:
            InvalidInput: when a field has the wrong type.
        """
        try:
            subnets = tuple(
                Subnet(subnet=str(s["subnet"]), gateway=str(s.get("gateway") or ""))
                for s in data.get("subnets") or ()
            )
            return cls(
                name=data["name"],
                driver=str(data.get("driver") or "bridge"),
                subnets=subnets,
                dns_enabled=bool(data.get("dns_enabled", False)),
                internal=bool(data.get("internal", False)),
                ipv6_enabled=bool(data.get("ipv6_enabled", False)),
                labels=_str_map(data.get("labels")),
                options=_str_map(data.get("options")),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise InvalidInput(f"not a network definition: {exc!r}") from exc


def _flags(**flags: bool) -> dict[str, str]:
    # Only true flags are sent: an absent flag is Podman's default, which keeps URLs short.
    return {key: "true" for key, on in flags.items() if on}


def _str_map(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError(f"expected a mapping, got {type(value).__name__}")
    return {str(k): str(v) for k, v in value.items()}
