"""Fault-injecting proxies in front of the test bed's real services (127.0.0.1 / Unix only).

* :class:`S3FaultProxy`: an HTTP reverse proxy in front of the moto S3 server; a rule decides
  per request whether to forward it, answer with an S3 error, or drop the connection.
* :class:`PodmanCutProxy`: a Unix-socket proxy in front of a node's libpod socket that can
  "kill" the Podman service for a while: every open connection is cut and new ones are
  closed at once, as when the service dies and is started again.

The real services are never touched: only what passes through the proxy is disturbed.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Seen:
    """One request the S3 proxy received and what it did with it."""

    method: str
    path: str
    query: dict[str, list[str]]
    action: str  # "forward", "status <code>", "drop"

    @property
    def op(self) -> str:
        """The S3 operation, as far as the tests need it."""
        q = self.query
        if self.method == "PUT" and "partNumber" in q:
            return "UploadPart"
        if self.method == "POST" and "uploads" in q:
            return "CreateMultipartUpload"
        if self.method == "POST" and "uploadId" in q:
            return "CompleteMultipartUpload"
        if self.method == "DELETE" and "uploadId" in q:
            return "AbortMultipartUpload"
        if self.method == "PUT":
            return "PutObject"
        return self.method


# A rule gets (method, path, query) and returns None (forward), an int (answer that HTTP
# status with an S3 error body) or "drop" (close the connection without an answer).
Rule = Callable[[str, str, dict[str, list[str]]], "int | str | None"]

_CODES = {500: "InternalError", 503: "SlowDown"}


class S3FaultProxy:
    """Reverse proxy to ``upstream`` (http://host:port) that applies ``rule`` per request."""

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rule: Rule = lambda method, path, query: None
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def _handle(self) -> None:
                proxy._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> S3FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def ops(self, op: str, action: str | None = None) -> list[Seen]:
        with self._lock:
            return [s for s in self.seen if s.op == op and (action is None or s.action == action)]

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(h.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        body = _read_body(h)
        decision = self.rule(h.command, parts.path, query)
        action = "forward" if decision is None else (
            "drop" if decision == "drop" else f"status {decision}"
        )
        with self._lock:
            self.seen.append(Seen(h.command, parts.path, query, action))
        if decision == "drop":
            h.close_connection = True
            with contextlib.suppress(OSError):
                h.connection.shutdown(socket.SHUT_RDWR)
            return
        if isinstance(decision, int):
            code = _CODES.get(decision, "InternalError")
            xml = (
                f"<?xml version='1.0' encoding='UTF-8'?><Error><Code>{code}</Code>"
                "<Message>injected by the podchord fault proxy</Message></Error>"
            ).encode()
            h.send_response(decision)
            h.send_header("Content-Type", "application/xml")
            h.send_header("Content-Length", str(len(xml)))
            h.end_headers()
            h.wfile.write(xml)
            return
        conn = http.client.HTTPConnection(*self.upstream, timeout=60)
        try:
            headers = {k: v for k, v in h.headers.items() if k.lower() != "transfer-encoding"}
            headers["Content-Length"] = str(len(body))
            conn.request(h.command, h.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            h.send_response(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in ("transfer-encoding", "content-length", "connection"):
                    h.send_header(k, v)
            # A HEAD answer has no body but announces the object's length.
            length = resp.getheader("Content-Length") if h.command == "HEAD" else None
            h.send_header("Content-Length", length or str(len(data)))
            h.end_headers()
            if h.command != "HEAD":
                h.wfile.write(data)
        finally:
            conn.close()


def _read_body(h: BaseHTTPRequestHandler) -> bytes:
    if h.headers.get("Transfer-Encoding", "").lower() == "chunked":
        out = bytearray()
        while True:
            size = int(h.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                while h.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass
                return bytes(out)
            out += h.rfile.read(size)
            h.rfile.readline()
    length = int(h.headers.get("Content-Length") or 0)
    return h.rfile.read(length) if length else b""


@dataclass
class _Conn:
    client: socket.socket
    upstream: socket.socket
    restore_requests: int = 0
    closed: bool = False


@dataclass
class PodmanCutProxy:
    """A Unix-socket proxy to a libpod socket that can cut Podman off for a while.

    ``cut_on_restore_request = n`` cuts while the n-th restore request's upload has only
    begun. ``cut_on_restore_response = n`` cuts when the answer to the n-th restore request
    (``/containers/import/restore``) starts: Podman has done the restore, the worker never
    hears of it -- what a Podman service killed at that moment looks like from the worker.
    The outage then lasts ``outage_s``: new connections are closed without an answer.
    """

    path: str
    upstream: str
    cut_on_restore_response: int | None = None
    cut_on_restore_request: int | None = None
    outage_s: float = 3.0
    cuts: int = 0
    restore_requests: int = 0
    _down_until: float = 0.0
    _conns: list[_Conn] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _sock: socket.socket | None = None
    _stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> PodmanCutProxy:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(64)
        self._sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for c in self._conns:
                self._close(c)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def cut(self) -> None:
        """Kill every open connection and refuse new ones for ``outage_s``."""
        with self._lock:
            self.cuts += 1
            self._down_until = time.monotonic() + self.outage_s
            for c in self._conns:
                self._close(c)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if time.monotonic() < self._down_until:
                client.close()  # the service is "down"
                continue
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                upstream.connect(self.upstream)
            except OSError:
                client.close()
                continue
            conn = _Conn(client, upstream)
            with self._lock:
                self._conns.append(conn)
            threading.Thread(target=self._pump_up, args=(conn,), daemon=True).start()
            threading.Thread(target=self._pump_down, args=(conn,), daemon=True).start()

    def _pump_up(self, conn: _Conn) -> None:
        def on_request(data: bytes) -> bool:
            if b"/containers/import/restore" not in data:
                return False
            with self._lock:
                self.restore_requests += 1
                conn.restore_requests = self.restore_requests
            n = self.cut_on_restore_request
            if n is None or conn.restore_requests != n or self.cuts != 0:
                return False
            # Podman gets the request line and a first piece of the upload.
            with contextlib.suppress(OSError):
                conn.upstream.sendall(data)
            return True

        self._pump(conn, conn.client, conn.upstream, on_request)

    def _pump_down(self, conn: _Conn) -> None:
        def on_response(data: bytes) -> bool:
            n = self.cut_on_restore_response
            return n is not None and conn.restore_requests == n and self.cuts == 0

        self._pump(conn, conn.upstream, conn.client, on_response)

    def _pump(
        self, conn: _Conn, src: socket.socket, dst: socket.socket,
        cut_here: Callable[[bytes], bool],
    ) -> None:
        """Copy ``src`` to ``dst`` until either closes, or cut everything when ``cut_here``."""
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                self._close(conn)
                return
            if cut_here(data):
                self.cut()
                return
            try:
                dst.sendall(data)
            except OSError:
                self._close(conn)
                return

    @staticmethod
    def _close(conn: _Conn) -> None:
        if conn.closed:
            return
        conn.closed = True
        for s in (conn.client, conn.upstream):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
