"""Private local spool files: checkpoint archives on local disk are readable by no one else.

Checkpoint archives hold process memory (keys, tokens, session data), so every local copy --
eviction-mode tees, restore downloads -- lives in a 0700 directory as a 0600 file, created
with ``O_EXCL`` so an attacker cannot pre-plant a file or symlink under the chosen name.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .errors import InvalidInput, SpoolUnavailable

__all__ = ["SpoolFile", "private_dir", "spool_errors", "spool_file"]


@dataclass(frozen=True)
class SpoolFile:
    """A freshly created 0600 file; the caller owns (closes and removes) it."""

    path: Path
    file: BinaryIO


def private_dir(directory: Path) -> Path:
    """Create ``directory`` (and parents) if needed and make it mode 0700.

    Raises:
        InvalidInput: when the path is a symlink, not a directory, or owned by another user.
    """
    directory = Path(directory)
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise InvalidInput(f"spool directory {directory} is not a directory") from exc
    st = directory.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise InvalidInput(f"spool directory {directory} is not a plain directory")
    if st.st_uid != os.geteuid():
        raise InvalidInput(f"spool directory {directory} is owned by uid {st.st_uid}")
    if stat.S_IMODE(st.st_mode) != 0o700:
        directory.chmod(0o700)
    return directory


def spool_file(directory: Path, *, prefix: str = "podchord-", suffix: str = "") -> SpoolFile:
    """Create a new, empty 0600 file in the private directory ``directory``.

    Args:
        directory: created 0700 if missing (see :func:`private_dir`).
        prefix: start of the random file name.
        suffix: end of the file name, e.g. ``".tar"``.

    Returns:
        The path and the file opened for binary read/write.
    """
    directory = private_dir(directory)
    # mkstemp creates with O_CREAT|O_EXCL and mode 0600 regardless of umask.
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=directory)
    return SpoolFile(path=Path(name), file=os.fdopen(fd, "w+b"))


@contextlib.contextmanager
def spool_errors(folder: Path, outcome: str) -> Iterator[None]:
    """Local disk trouble (full, read-only) inside becomes :class:`SpoolUnavailable`.

    Args:
        folder: the spool folder the message names.
        outcome: what the caller can promise, e.g. "nothing was restored".
    """
    try:
        yield
    except OSError as exc:
        raise SpoolUnavailable(
            f"spool folder {folder} cannot be written ({exc.strerror or exc}); {outcome}"
        ) from exc
