"""Peek at one small member of a tar stream while the stream passes through untouched.

A restore uploads the checkpoint archive once, as a stream; to clean up after a failed restore
podchord must know the container's name, which sits in the archive's ``config.dump``. Reading
the tar headers of the bytes already on their way costs no second read of the archive.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["TarPeek"]

_BLOCK = 512


class TarPeek:
    """Pass chunks through and keep the content of the member called ``member``.

    Handles ustar, GNU and pax archives well enough to find a member by name: pax ``path``
    records and GNU long names are honoured; anything unparsable just ends the peeking.

    Attributes:
        content: the member's bytes once it has passed in full, else None.
    """

    def __init__(self, member: str, max_bytes: int = 4 << 20) -> None:
        self._member = member.lstrip("./")
        self._max_bytes = max_bytes
        self._buf = bytearray()
        self._skip = 0  # bytes of the current member (plus padding) still to pass
        self._want: int | None = None  # size of the member being captured
        self._long_name: str | None = None
        self._capture_name = False
        self._kind = b""
        self._size = 0
        self._padding = 0
        self._done = False
        self.content: bytes | None = None

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        """Yield every chunk of ``chunks`` unchanged, peeking at each."""
        for chunk in chunks:
            if not self._done:
                self._feed(chunk)
            yield chunk

    def _feed(self, chunk: bytes) -> None:
        self._buf += chunk
        while not self._done:
            if self._skip:
                n = min(self._skip, len(self._buf))
                del self._buf[:n]
                self._skip -= n
                if self._skip:
                    return
            if self._want is not None or self._capture_name:
                if not self._finish_member():
                    return
                continue
            if len(self._buf) < _BLOCK:
                return
            self._header(bytes(self._buf[:_BLOCK]))
            del self._buf[:_BLOCK]

    def _header(self, block: bytes) -> None:
        if block == bytes(_BLOCK):
            self._done = True  # end-of-archive marker (or an archive we cannot follow)
            return
        try:
            size = int(block[124:136].rstrip(b"\0 ").decode() or "0", 8)
        except ValueError:
            self._done = True
            return
        kind = block[156:157]
        name = block[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix and block[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        if self._long_name is not None:
            name, self._long_name = self._long_name, None
        self._size = size
        padded = -(-size // _BLOCK) * _BLOCK
        self._padding = padded - size
        if kind in (b"L", b"x") and size <= 1 << 20:
            self._capture_name = True
            self._kind = kind
            return
        if kind in (b"0", b"\0") and name.lstrip("./") == self._member:
            if size > self._max_bytes:
                self._done = True
                return
            self._want = size
            return
        self._skip = padded

    def _finish_member(self) -> bool:
        need = self._size + self._padding
        if len(self._buf) < need:
            return False
        data = bytes(self._buf[: self._size])
        del self._buf[:need]
        if self._capture_name:
            self._capture_name = False
            self._long_name = _long_name(self._kind, data)
        else:
            self._want = None
            self.content = data
            self._done = True
            self._buf.clear()
        return True


def _long_name(kind: bytes, data: bytes) -> str | None:
    if kind == b"L":
        return data.split(b"\0", 1)[0].decode("utf-8", "replace")
    # pax: records "LEN key=value\n"
    for line in data.decode("utf-8", "replace").splitlines():
        _, _, record = line.partition(" ")
        key, _, value = record.partition("=")
        if key == "path":
            return value
    return None
