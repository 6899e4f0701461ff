# ruff: noqa: F811  (the imported `backup` fixture is a parameter name, as pytest wants)
"""Corrupted archives and hostile manifests: refused before Podman is touched.

Extends tests/test_restore_flow.py (flipped byte, traversal keys, unknown schema, 10 MB
manifest) with truncated and swapped archives and the manifest faults it does not cover. Each
case restores a *clone* of one committed backup (its archives copied under a fresh id), so
the original stays intact for the others.
"""

from __future__ import annotations

import json
import secrets

import pytest

from tests.stack import spool_files
from tests.test_restore_flow import (
    assert_remote_type,
    assert_untouched,
    backup,  # noqa: F401  (a module-scoped fixture: one committed backup)
    clone_checkpoint,
    restore_error,
)

pytestmark = pytest.mark.podman


def check_refused(stack, testbed, backup, node_b, type_name: str, words: list[str], **clone):
    cid = clone_checkpoint(stack, testbed, backup, **clone)
    exc = restore_error(stack, f"{backup.sample.project}/{cid}", "b")
    for word in words:
        assert word.replace("{cid}", cid) in str(exc), str(exc)
    assert_untouched(node_b, backup.sample)
    assert spool_files(stack.workers["b"]) == [], "spool files left behind"
    assert_remote_type(exc, type_name)


@pytest.mark.parametrize(
    ("cut", "words"),
    [
        (lambda body: body[: len(body) // 2], ["{cid}/services/web.tar", "size"]),
    ],
    ids=["truncated-half"],
)
def test_truncated_or_padded_archive(stack, testbed, backup, node_b, cut, words):
    check_refused(
        stack, testbed, backup, node_b, "IntegrityError", words,
        edit_archive=lambda svc, body: cut(body) if svc == "web" else body,
    )


def test_archives_swapped_between_services(stack, testbed, backup, node_b):
    # The bytes of db's and web's archives trade places; the manifest is unchanged.
    client = __import__("boto3").client("s3", endpoint_url=testbed.s3_endpoint)
    bodies = {
        s["name"]: client.get_object(Bucket=stack.bucket, Key=s["archive"]["key"])["Body"].read()
        for s in backup.manifest["services"]
    }
    swap = {"db": "web", "web": "db"}
    check_refused(
        stack, testbed, backup, node_b, "IntegrityError", ["{cid}/services/", "recorded"],
        edit_archive=lambda svc, body: bodies[swap[svc]] if svc in swap else body,
    )


def test_archive_records_swapped_in_the_manifest(stack, testbed, backup, node_b):
    # Each record matches its object, but db's record names web's archive: restoring it
    # would bring up web's container in db's place.
    def edit(doc):
        by_name = {s["name"]: s for s in doc["services"]}
        by_name["db"]["archive"], by_name["web"]["archive"] = (
            by_name["web"]["archive"], by_name["db"]["archive"]
        )

    check_refused(
        stack, testbed, backup, node_b, "ManifestInvalid", ["service db", "is not its own"],
        edit_manifest=edit,
    )


def test_manifest_copied_under_another_id(stack, testbed, backup, node_b):
    # A valid manifest of another checkpoint, stored under this id.
    def edit(doc):
        return json.loads(json.dumps(backup.manifest))

    check_refused(
        stack, testbed, backup, node_b, "ManifestInvalid", [backup.checkpoint_id, "refused"],
        edit_manifest=edit,
    )


def _drop(path: list[str | int]):
    def edit(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return edit


def _set(path: list[str | int], value):
    def edit(doc):
        target = doc
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return edit


# Field checks are pure parsing: all of them run through the worker's parser here, and a
# few representative ones go through a real restore on node b below.
MALFORMED = [
    (_drop(["services"]), ["'services' is missing"]),
    (_drop(["project"]), ["'project' is missing"]),
    (_drop(["source"]), ["'source' is missing"]),
    (_drop(["services", 0, "archive", "sha256"]), ["sha256 None"]),
    (_drop(["services", 0, "container"]), ["'container' is missing"]),
    (_drop(["schema_version"]), ["schema_version None"]),
    (_set(["services"], []), ["names no services"]),
    (_set(["services", 0, "archive", "size_bytes"], 10**15), ["not a sane size"]),
    (_set(["services", 0, "archive", "size_bytes"], -1), ["not a sane size"]),
    (_set(["services", 0, "archive", "raw_size_bytes"], "12"), ["not a sane size"]),
    (_set(["services", 0, "archive", "size_bytes"], True), ["not a sane size"]),
    (_set(["services", 0, "archive", "compression"], "gzip"), ["unknown compression"]),
    (_set(["services", 0, "name"], "../db"), ["service name"]),
    (_set(["services", 0, "container"], "x/y"), ["container name"]),
    (_set(["services", 0, "labels"], {"a": 1}), ["labels"]),
    (_set(["networks", 0, "name"], "../../etc"), ["network name"]),
    (_set(["images", 0, "archive", "key"], "pc/images/../../etc/passwd"), ["archive key"]),
    (_set(["images", 0, "id"], "not-a-digest"), ["image"]),
    (_set(["created_at"], "yesterday"), ["created_at"]),
    (_set(["mode"], "teleport"), ["mode"]),
]
JUNK = [
    (secrets.token_bytes(2048), ["not JSON"]),
    (b"[1, 2, 3]", ["must be a JSON object"]),
    (b'{"schema_version": 1}', ["missing"]),
    (b"", ["not JSON"]),
]


@pytest.mark.parametrize(("edit", "words"), MALFORMED, ids=[w[0] for _, w in MALFORMED])
def test_malformed_manifest_fields_are_refused_by_the_parser(stack, backup, edit, words):
    from tasks.errors import ManifestInvalid
    from tasks.manifest import parse_manifest
    from tasks.store import open_store

    doc = json.loads(json.dumps(backup.manifest))
    edit(doc)
    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(json.dumps(doc).encode(), open_store(stack.store_url).layout)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(("raw", "words"), JUNK, ids=["binary", "list", "nearly-empty", "empty"])
def test_junk_manifest_is_refused_by_the_parser(stack, backup, raw, words):
    from tasks.errors import ManifestInvalid
    from tasks.manifest import parse_manifest
    from tasks.store import open_store

    with pytest.raises(ManifestInvalid) as info:
        parse_manifest(raw, open_store(stack.store_url).layout)
    for word in words:
        assert word in str(info.value), str(info.value)


@pytest.mark.parametrize(
    ("edit", "words"),
    [MALFORMED[0], MALFORMED[7], MALFORMED[15]],
    ids=["missing-services", "absurd-size", "network-traversal"],
)
def test_malformed_manifest_restore_touches_nothing(stack, testbed, backup, node_b, edit, words):
    check_refused(stack, testbed, backup, node_b, "ManifestInvalid", words, edit_manifest=edit)


def test_junk_manifest_restore_touches_nothing(stack, testbed, backup, node_b):
    raw, words = JUNK[0]
    check_refused(stack, testbed, backup, node_b, "ManifestInvalid", words, raw_manifest=raw)
