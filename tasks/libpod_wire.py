"""Wire-level helpers of the libpod client: error mapping, version check, stream framing.

This is the one place where httpx errors and Podman's error bodies become podchord errors.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Iterator
from typing import Any

import httpx

from .errors import (
    NotLibpod,
    PodmanConflict,
    PodmanError,
    PodmanNotFound,
    PodmanTooOld,
    PodmanUnreachable,
)

__all__ = [
    "API_TARGET",
    "DOCKER_MESSAGE",
    "MIN_PODMAN",
    "api_prefix",
    "demux",
    "error_fields",
    "error_from",
    "guard_stream",
    "server_version",
    "unreachable",
]

# Podman 4.4 is the oldest whose REST restore takes import, name, ignoreStatic* and pod.
MIN_PODMAN = (4, 4)
# The libpod API this client was written and tested against; newer servers answer it as is.
API_TARGET = (5, 0, 0)
DOCKER_MESSAGE = (
    "this socket is Docker Engine, not Podman: checkpoint/restore needs Podman's libpod API "
    "(Docker's restore is broken upstream)"
)
_VERSION = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")
# Podman reports these as 500, but they mean the name or network is taken.
_CONFLICT_CAUSES = ("already in use", "already exists")


def unreachable(socket_path: str, exc: BaseException) -> PodmanUnreachable:
    """Return the error for a socket that cannot be reached or stopped answering."""
    kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "unreachable"
    return PodmanUnreachable(f"libpod socket {socket_path} {kind}: {exc}")


def error_fields(response: httpx.Response) -> tuple[str | None, str | None, str]:
    """Return Podman's ``cause`` and ``message`` and a short text of a read error answer."""
    text = response.text.strip()
    try:
        body = json.loads(text)
    except ValueError:
        return None, None, text[:500]
    if not isinstance(body, dict):
        return None, None, text[:500]
    cause = body.get("cause")
    message = body.get("message")
    cause = cause if isinstance(cause, str) else None
    message = message if isinstance(message, str) else None
    return cause, message, message or cause or text[:500]


def error_from(response: httpx.Response, what: str) -> PodmanError:
    """Map a read non-2xx answer to the podchord error for its status.

    Args:
        response: an answer whose body was read.
        what: what was being done, e.g. ``"inspect container web"``.
    """
    cause, message, text = error_fields(response)
    status = response.status_code
    cls: type[PodmanError] = PodmanError
    if status == 404:
        cls = PodmanNotFound
    elif status == 409 or any(c in (cause or "") for c in _CONFLICT_CAUSES):
        cls = PodmanConflict
    return cls(f"{what}: HTTP {status}: {text}", status=status, cause=cause, podman_message=message)


def _looks_like_docker(response: httpx.Response) -> bool:
    server = response.headers.get("server", "")
    if "docker" in server.lower():
        return True
    try:
        body = response.json()
    except ValueError:
        return False
    if isinstance(body, dict):
        if body.get("message") == "page not found":
            return True
        components = body.get("Components") or []
        names = [c.get("Name", "") for c in components if isinstance(c, dict)]
        return any("Docker" in str(n) for n in names)
    return False


def _podman_component_version(body: Any) -> str | None:
    if not isinstance(body, dict):
        return None
    for comp in body.get("Components") or []:
        if isinstance(comp, dict) and comp.get("Name") == "Podman Engine":
            details = comp.get("Details") or {}
            version = details.get("APIVersion") or comp.get("Version")
            return str(version) if version else None
    return None


def server_version(response: httpx.Response, socket_path: str) -> tuple[int, int, int]:
    """Return the libpod API version of a read ``/libpod/version`` answer.

    Raises:
        NotLibpod: when the server is not Podman (Docker Engine gets a message of its own).
        PodmanTooOld: when Podman is older than :data:`MIN_PODMAN`.
    """
    raw = response.headers.get("libpod-api-version")
    if raw is None and response.status_code == 200:
        try:
            raw = _podman_component_version(response.json())
        except ValueError:
            raw = None
    if raw is None:
        if _looks_like_docker(response):
            raise NotLibpod(f"{socket_path}: {DOCKER_MESSAGE}", status=response.status_code)
        raise NotLibpod(
            f"{socket_path} does not answer like Podman's libpod API "
            f"(GET /libpod/version: HTTP {response.status_code})",
            status=response.status_code,
        )
    match = _VERSION.match(raw.strip())
    if match is None:
        raise NotLibpod(f"{socket_path}: unreadable libpod API version {raw!r}")
    version = (int(match[1]), int(match[2]), int(match[3] or 0))
    if version[:2] < MIN_PODMAN:
        need = ".".join(map(str, MIN_PODMAN))
        raise PodmanTooOld(
            f"{socket_path} runs Podman {raw.strip()}; podchord needs Podman {need} or newer "
            "(REST checkpoint export and restore import with name/ignoreStatic*)"
        )
    return version


def api_prefix(version: tuple[int, int, int]) -> str:
    """Return the versioned path prefix to speak to a server of ``version``."""
    use = min(version, API_TARGET)
    return "/v{}.{}.{}/libpod".format(*use)


def guard_stream(chunks: Iterator[bytes], socket_path: str) -> Iterator[bytes]:
    """Yield from ``chunks``, turning a broken or stalled socket into PodmanUnreachable."""
    try:
        yield from chunks
    except httpx.TransportError as exc:
        raise unreachable(socket_path, exc) from exc


def demux(data: bytes) -> tuple[bytes, bytes]:
    """Split Docker's multiplexed stream into stdout and stderr.

    Each frame is an 8-byte header (stream id, three zero bytes, big-endian length) and the
    payload; stream 1 is stdout, 2 is stderr (0, stdin, is never sent back).

    Raises:
        PodmanError: when a frame is cut short.
    """
    out: list[bytes] = []
    err: list[bytes] = []
    pos = 0
    while pos < len(data):
        if len(data) - pos < 8:
            raise PodmanError(f"truncated exec stream header at byte {pos}")
        stream, size = struct.unpack_from(">BxxxI", data, pos)
        pos += 8
        if len(data) - pos < size:
            raise PodmanError(f"truncated exec stream frame at byte {pos}")
        (err if stream == 2 else out).append(data[pos : pos + size])
        pos += size
    return b"".join(out), b"".join(err)
