"""The single-host archive store: a directory tree, written atomically, readable by no one else.

Objects are files under the root (dirs 0700, files 0600). A write goes to a hidden
``.<name>.<token>.part`` file beside its key, is fsynced, and then appears atomically: by
``os.replace`` for archives, by ``os.link`` for manifests (which fails if the manifest
exists, making the commit create-only). Unfinished ``.part`` files play the role of S3's
open multipart uploads. Keys never hold dot-leading segments, so ``.part`` files and
``..`` can never be named by a key.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from .errors import ManifestExists, ObjectNotFound, ObjectTooLarge, StoreUnavailable
from .keys import KeyLayout
from .store_base import ListedObject, ObjectInfo, PutResult, Store, StoreSettings
from .streams import Digest

__all__ = ["FileStore"]

_PART = re.compile(r"\.(.+)\.[0-9a-f]{12}\.part")
_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW


class FileStore(Store):
    """A :class:`~tasks.store_base.Store` in a local directory (``file:///path``).

    Server-side encryption does not apply (``ObjectInfo.sse`` is None); protect the
    directory with filesystem encryption if the host needs it.
    """

    def __init__(self, root: Path, *, settings: StoreSettings) -> None:
        super().__init__(url=f"file://{root}", layout=KeyLayout(""), settings=settings)
        self._root = Path(root)
        with _fs_errors(str(root), "create store root"):
            self._root.mkdir(mode=0o700, parents=True, exist_ok=True)

    # -- writes ------------------------------------------------------------------------------

    def put_stream(
        self,
        key: str,
        chunks: Iterable[bytes],
        *,
        expected_size_bytes: int | None = None,
        compress: bool = False,
        progress: Callable[[int], None] | None = None,
    ) -> PutResult:
        key = self._key(key)
        self.settings.part_size_for(expected_size_bytes)  # same validation as S3
        pipe = self._pipeline(chunks, compress, progress)
        final = self._path(key)
        tmp, out = self._create_part(key, final)
        try:
            with out:
                for chunk in pipe.stored:  # the source's own exceptions pass through
                    with _fs_errors(key, "write"):
                        out.write(chunk)
                with _fs_errors(key, "write"):
                    out.flush()
                    os.fsync(out.fileno())
            with _fs_errors(key, "write"):
                os.replace(tmp, final)
                _fsync_dir(final.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return self._result(key, pipe, compress)

    def put_manifest(self, key: str, data: bytes) -> PutResult:
        key = self._key(key)
        final = self._path(key)
        tmp, out = self._create_part(key, final)
        try:
            with out, _fs_errors(key, "write"):
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(tmp, final)  # atomic create-only: fails if the manifest exists
            except FileExistsError as exc:
                raise ManifestExists(f"{key} is already committed", key=key) from exc
            with _fs_errors(key, "write"):
                _fsync_dir(final.parent)
        finally:
            tmp.unlink(missing_ok=True)
        digest = Digest()
        digest.update(data)
        return PutResult(key, len(data), digest.sha256, len(data), digest.sha256, "none")

    def delete(self, keys: Iterable[str]) -> int:
        count = 0
        for key in keys:
            path = self._path(self._key(key))
            with _fs_errors(key, "delete"):
                path.unlink(missing_ok=True)
            self._prune_dirs(path.parent)
            count += 1
        return count

    def abort_uploads(self, prefix: str) -> int:
        count = 0
        for path, _ in self._parts(prefix):
            with _fs_errors(str(path), "abort upload"):
                path.unlink(missing_ok=True)
            self._prune_dirs(path.parent)
            count += 1
        return count

    # -- reads -------------------------------------------------------------------------------

    def head(self, key: str) -> ObjectInfo:
        key = self._key(key)
        st = self._stat(key)
        return ObjectInfo(
            key=key, size_bytes=st.st_size, modified=datetime.fromtimestamp(st.st_mtime, UTC)
        )

    def get_bytes(self, key: str, max_bytes: int) -> bytes:
        key = self._key(key)
        with self._open(key) as f:
            size = os.fstat(f.fileno()).st_size
            if size > max_bytes:
                raise ObjectTooLarge(
                    f"{key} is {size} bytes, more than the {max_bytes} allowed",
                    key=key,
                    size_bytes=size,
                    max_bytes=max_bytes,
                )
            with _fs_errors(key, "read"):
                data = f.read(max_bytes + 1)
        if len(data) > max_bytes:  # grew since fstat
            raise ObjectTooLarge(
                f"{key} is larger than {max_bytes} bytes",
                key=key,
                size_bytes=len(data),
                max_bytes=max_bytes,
            )
        return data

    def list_objects(self, prefix: str) -> Iterator[ListedObject]:
        for path in self._walk(prefix):
            if path.name.startswith("."):
                continue
            with _fs_errors(str(path), "list"):
                st = path.stat()
            yield ListedObject(
                key=path.relative_to(self._root).as_posix(),
                size_bytes=st.st_size,
                modified=datetime.fromtimestamp(st.st_mtime, UTC),
            )

    def list_upload_keys(self, prefix: str) -> list[str]:
        return [key for _, key in self._parts(prefix)]

    @contextmanager
    def _open_stored(self, key: str) -> Iterator[tuple[int, Iterator[bytes]]]:
        with self._open(key) as f:
            yield os.fstat(f.fileno()).st_size, self._chunks(key, f)

    # -- helpers -----------------------------------------------------------------------------

    def _chunks(self, key: str, f: BinaryIO) -> Iterator[bytes]:
        while True:
            with _fs_errors(key, "read"):
                chunk = f.read(self.settings.read_chunk_bytes)
            if not chunk:
                return
            yield chunk

    def _path(self, key: str) -> Path:
        return self._root.joinpath(*key.split("/"))

    def _stat(self, key: str) -> os.stat_result:
        try:
            st = os.stat(self._path(key), follow_symlinks=False)
        except FileNotFoundError as exc:
            raise ObjectNotFound(f"no object {key}", key=key) from exc
        except OSError as exc:
            raise StoreUnavailable(f"stat {key}: {exc}", key=key) from exc
        if not stat.S_ISREG(st.st_mode):
            raise ObjectNotFound(f"no object {key} (not a regular file)", key=key)
        return st

    def _open(self, key: str) -> BinaryIO:
        try:
            fd = os.open(self._path(key), _OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise ObjectNotFound(f"no object {key}", key=key) from exc
        except OSError as exc:
            raise StoreUnavailable(f"open {key}: {exc}", key=key) from exc
        return os.fdopen(fd, "rb")

    def _create_part(self, key: str, final: Path) -> tuple[Path, BinaryIO]:
        with _fs_errors(key, "create"):
            _mkdirs(self._root, final.parent)
            tmp = final.with_name(f".{final.name}.{secrets.token_hex(6)}.part")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        return tmp, os.fdopen(fd, "wb")

    def _walk(self, prefix: str) -> Iterator[Path]:
        directory = self._dir(prefix)
        top = self._path(directory) if directory else self._root
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            for name in sorted(filenames):
                yield Path(dirpath, name)

    def _parts(self, prefix: str) -> Iterator[tuple[Path, str]]:
        for path in self._walk(prefix):
            match = _PART.fullmatch(path.name)
            if match:
                parent = path.parent.relative_to(self._root).as_posix()
                yield path, f"{parent}/{match.group(1)}" if parent != "." else match.group(1)

    def _prune_dirs(self, directory: Path) -> None:
        # Remove directories emptied by deletes, up to (not including) the root.
        while directory != self._root and self._root in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent


def _mkdirs(root: Path, directory: Path) -> None:
    missing = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def _fs_errors(key: str, action: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        raise StoreUnavailable(f"{action} {key}: {exc}", key=key) from exc
