"""Plumbing of the libpod client: requests, error mapping and version negotiation.

:class:`LibpodBase` owns the injected :class:`httpx.Client`; every request goes through
``_send``, the one place where httpx errors become :class:`~tasks.errors.PodmanUnreachable`,
and ``_call``, where Podman's error answers become the errors of :mod:`tasks.errors`.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from . import libpod_wire as wire
from .errors import InvalidInput, PodmanError

__all__ = ["CHUNK_BYTES", "Archive", "LibpodBase", "qbool", "upload_body"]

#: A checkpoint or image archive: a file path, or an iterable of byte chunks.
Archive = str | os.PathLike[str] | Iterable[bytes]

CHUNK_BYTES = 1 << 20  # memory per stream: one chunk in flight, whatever the archive size
_ORIGIN = "http://podman"  # the host part means nothing on a Unix socket
_TAR = {"Content-Type": "application/x-tar"}


class LibpodBase:
    """Requests to one node's libpod API; :class:`tasks.libpod.Libpod` adds the operations.

    Args:
        client: the HTTP client; its transport decides where requests go.
        socket_path: named in errors (``PodmanUnreachable`` says which socket failed).
        cpuinfo_path: where ``Libpod.info`` reads the CPU model and flags; None leaves them
            empty.
    """

    def __init__(
        self,
        client: httpx.Client,
        *,
        socket_path: str = "<injected client>",
        cpuinfo_path: str | None = None,
    ) -> None:
        self._client = client
        self._socket = socket_path
        self._cpuinfo = cpuinfo_path
        self._version: tuple[int, int, int] | None = None

    def close(self) -> None:
        """Close the HTTP client and its connections."""
        self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing ------------------------------------------------------------------------

    def api_version(self) -> tuple[int, int, int]:
        """Return the server's libpod API version, asking it once.

        Raises:
            NotLibpod: the socket is Docker Engine or something else that is not libpod.
            PodmanTooOld: Podman is older than 4.4.
            PodmanUnreachable: nothing answers on the socket.
        """
        if self._version is None:
            # Every Podman since 4.0 serves this versioned path; the answer's headers say
            # which version it really is.
            resp = self._send("GET", _ORIGIN + "/v4.0.0/libpod/version")
            self._version = wire.server_version(resp, self._socket)
        return self._version

    def ping(self) -> None:
        """Check that the socket answers as libpod (negotiating the version on first use)."""
        self._version = None
        self.api_version()
        self._call("GET", _ORIGIN + "/_ping", "ping")

    def _url(self, template: str, *parts: str) -> str:
        prefix = wire.api_prefix(self.api_version())
        return _ORIGIN + prefix + template.format(*(quote(p, safe="") for p in parts))

    def _send(self, method: str, url: str, *, stream: bool = False, **kw: Any) -> httpx.Response:
        request = self._client.build_request(method, url, **kw)
        try:
            response = self._client.send(request, stream=stream)
        except (httpx.TransportError, ConnectionError, FileNotFoundError) as exc:
            raise wire.unreachable(self._socket, exc) from exc
        return response

    def _call(self, method: str, url: str, what: str, **kw: Any) -> httpx.Response:
        response = self._send(method, url, **kw)
        # 304 is Podman's "already started/stopped": the state asked for holds.
        if not (response.is_success or response.status_code == 304):
            raise wire.error_from(response, what)
        return response

    def _json(self, method: str, url: str, what: str, **kw: Any) -> Any:
        return self._json_of(self._call(method, url, what, **kw), what)

    @staticmethod
    def _json_of(response: httpx.Response, what: str) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise PodmanError(f"{what}: answer is not JSON", status=response.status_code) from exc

    @contextmanager
    def _download(self, url: str, what: str) -> Iterator[Iterator[bytes]]:
        response = self._send("GET", url, stream=True)
        try:
            if not response.is_success:
                response.read()
                raise wire.error_from(response, what)
            yield wire.guard_stream(response.iter_bytes(CHUNK_BYTES), self._socket)
        finally:
            response.close()


@contextmanager
def upload_body(archive: Archive) -> Iterator[tuple[str, Iterator[bytes], dict[str, str]]]:
    """Yield a label, the body chunks and the headers of an upload; close the file on exit."""
    if isinstance(archive, bytes | bytearray | memoryview):
        raise InvalidInput("pass an archive as a path or an iterable of chunks, not one bytes")
    if not isinstance(archive, str | os.PathLike):
        yield "<stream>", iter(archive), dict(_TAR)
        return
    path = Path(archive)
    if not path.is_file():
        raise InvalidInput(f"archive {path} is not a file")
    # A known length spares Podman a chunked body; the file is read chunk by chunk.
    headers = {**_TAR, "Content-Length": str(path.stat().st_size)}
    chunks = _file_chunks(path)
    try:
        yield str(path), chunks, headers
    finally:
        chunks.close()


def _file_chunks(path: Path) -> Generator[bytes, None, None]:
    with path.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            yield chunk


def qbool(value: bool) -> str:
    """Return a bool as libpod query parameters spell it."""
    return "true" if value else "false"
