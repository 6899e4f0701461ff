from __future__ import annotations

import os
import stat

import pytest

from tasks.errors import InvalidInput
from tasks.spool import private_dir, spool_file


def _mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_spool_file_is_0600_in_a_0700_dir(tmp_path):
    old = os.umask(0)  # even a permissive umask must not loosen the modes
    try:
        spool = spool_file(tmp_path / "spool" / "deep", suffix=".tar")
    finally:
        os.umask(old)
    with spool.file as f:
        f.write(b"secret memory")
    assert spool.path.parent == tmp_path / "spool" / "deep"
    assert spool.path.name.endswith(".tar")
    assert _mode(spool.path) == 0o600
    assert _mode(spool.path.parent) == 0o700
    assert spool.path.read_bytes() == b"secret memory"
    other = spool_file(spool.path.parent)
    other.file.close()
    assert other.path != spool.path


def test_existing_dir_is_tightened(tmp_path):
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    assert private_dir(loose) == loose
    assert _mode(loose) == 0o700


def test_symlink_and_file_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidInput):
        private_dir(tmp_path / "link")
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(InvalidInput):
        private_dir(tmp_path / "file")
