from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest

from tasks.errors import InvalidInput
from tasks.keys import (
    KeyLayout,
    check_checkpoint_id,
    check_checkpoint_key,
    check_image_id,
    check_image_key,
    check_key,
    check_key_under,
    check_prefix,
    checkpoint_time,
    new_checkpoint_id,
)

CID = "20261204T154012123Z-3f9a1c0b"
IMG = "ab" * 32


def test_new_checkpoint_id_is_sortable_utc():
    when = datetime(2026, 12, 4, 15, 40, 12, 123456, tzinfo=UTC)
    cid = new_checkpoint_id(when)
    assert re.fullmatch(r"20261204T154012123Z-[0-9a-f]{8}", cid)
    assert checkpoint_time(cid) == when.replace(microsecond=123000)
    # Other time zones are converted; naive times are UTC.
    plus2 = when.astimezone(timezone(timedelta(hours=2)))
    assert new_checkpoint_id(plus2)[:19] == cid[:19]
    assert new_checkpoint_id(when.replace(tzinfo=None))[:19] == cid[:19]
    later = new_checkpoint_id(when + timedelta(milliseconds=1))
    assert later > cid
    assert new_checkpoint_id(when) != new_checkpoint_id(when)


def test_checkpoint_id_validation():
    assert check_checkpoint_id(CID) == CID
    assert check_checkpoint_id("20261204T154012Z-abcdef") == "20261204T154012Z-abcdef"
    assert checkpoint_time("20261204T154012Z-abcdef") == datetime(
        2026, 12, 4, 15, 40, 12, tzinfo=UTC
    )
    for bad in [
        "",
        "20261204T154012123Z-abc",  # tail too short
        "20261304T154012Z-abcdef",  # month 13
        "20261204T154012123Z-ABCDEF",
        "20261204T154012123-abcdef",
        "../20261204T154012Z-abcdef",
        "20261204T154012Z-" + "a" * 65,
        None,
    ]:
        with pytest.raises(InvalidInput):
            check_checkpoint_id(bad)


def test_layout_with_and_without_prefix():
    plain = KeyLayout("")
    assert plain.manifest("web", CID) == f"projects/web/{CID}/manifest.json"
    assert plain.image(IMG) == f"images/{IMG}.tar"
    pfx = KeyLayout("/tenant-a/podchord/")
    assert pfx.prefix == "tenant-a/podchord"
    assert pfx.manifest("web", CID) == f"tenant-a/podchord/projects/web/{CID}/manifest.json"
    assert (
        pfx.service_archive("web", CID, "db")
        == f"tenant-a/podchord/projects/web/{CID}/services/db.tar"
    )
    assert pfx.service_archive("web", CID, "db", compressed=True).endswith("/db.tar.zst")
    assert pfx.image("sha256:" + IMG) == f"tenant-a/podchord/images/{IMG}.tar"
    assert pfx.checkpoint_prefix("web", CID) == f"tenant-a/podchord/projects/web/{CID}"


@pytest.mark.parametrize(
    ("method", "args"),
    [
        ("manifest", ("Web", CID)),
        ("manifest", ("web/../x", CID)),
        ("manifest", ("web", "latest")),
        ("service_archive", ("web", CID, "../db")),
        ("service_archive", ("web", CID, "a/b")),
        ("service_archive", ("web", CID, ".hidden")),
        ("image", ("abc",)),
        ("image", ("AB" * 32,)),
    ],
)
def test_layout_rejects_bad_parts(method, args):
    with pytest.raises(InvalidInput):
        getattr(KeyLayout("p"), method)(*args)


@pytest.mark.parametrize("prefix", ["..", "a/../b", "a//b", ".x", "a b", "a\\b", "é"])
def test_bad_prefixes(prefix):
    with pytest.raises(InvalidInput):
        check_prefix(prefix)


def test_parse():
    layout = KeyLayout("p")
    parsed = layout.parse(f"p/projects/web/{CID}/services/db.tar.zst")
    assert parsed is not None
    assert (parsed.project, parsed.checkpoint_id, parsed.rest) == (
        "web",
        CID,
        "services/db.tar.zst",
    )
    assert layout.parse(f"p/projects/web/{CID}") is None
    assert layout.parse(f"q/projects/web/{CID}/manifest.json") is None
    assert layout.parse("p/projects/web/not-an-id/manifest.json") is None
    assert layout.parse(f"p/images/{IMG}.tar") is None


def test_key_checks():
    assert check_key("a/b.c/d-e_f") == "a/b.c/d-e_f"
    for bad in ["", "/abs", "a//b", "a/../b", "a/./b", "a\\b", "a/\x00", "a/\nb", "a b", "a/"]:
        with pytest.raises(InvalidInput):
            check_key(bad)
    with pytest.raises(InvalidInput):
        check_key("a" * 1025)
    assert check_key_under("p/x", "p") == "p/x"
    assert check_key_under("anything", "") == "anything"
    with pytest.raises(InvalidInput):
        check_key_under("p", "p")
    with pytest.raises(InvalidInput):
        check_key_under("px/y", "p")


def test_manifest_key_checks():
    layout = KeyLayout("p")
    base = layout.checkpoint_prefix("web", CID)
    good = f"{base}/services/db.tar"
    assert check_checkpoint_key(good, layout, "web", CID) == good
    other = "20261204T154012123Z-3f9a1c0c"
    for bad in [
        f"p/projects/web/{other}/services/db.tar",  # another checkpoint
        f"{base}0/services/db.tar",  # an id that merely starts with ours
        f"{base}/../{other}/services/db.tar",
        f"/{base}/services/db.tar",
        f"{base}/services\\db.tar",
        f"{base}/services/db\x7f.tar",
        f"p/projects/api/{CID}/services/db.tar",
        42,
    ]:
        with pytest.raises(InvalidInput):
            check_checkpoint_key(bad, layout, "web", CID)
    assert check_image_key(f"p/images/{IMG}.tar", layout) == f"p/images/{IMG}.tar"
    for bad in [f"p/images/{IMG}.tar.zst", "p/images/x.tar", f"q/images/{IMG}.tar"]:
        with pytest.raises(InvalidInput):
            check_image_key(bad, layout)


def test_image_id():
    assert check_image_id("sha256:" + IMG) == IMG
    with pytest.raises(InvalidInput):
        check_image_id("sha256:" + IMG[:-1])
