# ruff: noqa: F811  (the imported `backup` fixture is a parameter name, as pytest wants)
"""A node's Podman service dies and comes back in the middle of a restore.

The worker of node b talks to Podman through a Unix-socket proxy (tests/faults/proxies.py)
that cuts every connection at a chosen moment and refuses new ones for a few seconds, as a
killed and restarted ``podman system service`` would; the shared Podman service itself is
never killed. The restore must fail with a typed error and leave nothing half-restored.
"""

from __future__ import annotations

import pytest

from tasks.errors import PodmanError
from tests.faults.conftest import RESULT_TIMEOUT_S
from tests.faults.proxies import PodmanCutProxy
from tests.stack import spool_files
from tests.test_restore_flow import (
    assert_untouched,
    backup,  # noqa: F401  (a module-scoped fixture: one committed backup)
    clone_checkpoint,
)
from workers.sample import remove_sample

pytestmark = pytest.mark.podman


# "request" (cut while the archive uploads) is the milder case: Podman then sees a broken
# upload and creates nothing. It is left out to keep the suite short; the proxy supports it.
@pytest.mark.parametrize("when", ["response"], ids=["restore-done-answer-lost"])
def test_podman_dies_mid_restore_nothing_half_restored(
    stack, testbed, backup, mini_stack, tmp_path, node_b, when
):
    sample = backup.sample
    cid = clone_checkpoint(stack, testbed, backup)
    # Services restore in name order (client, db, web): the cut hits db, after client ran.
    cut = {f"cut_on_restore_{when}": 2}
    proxy = PodmanCutProxy(str(tmp_path / "b-proxy.sock"), testbed.socket("b"), **cut)
    try:
        with proxy:
            ms = mini_stack({"b": proxy.path}, bucket=stack.bucket)
            result = ms.app.send_task(
                "podchord.restore_project", args=(f"{sample.project}/{cid}", "b", {}),
                queue="podchord.node.b",
            )
            with pytest.raises(PodmanError) as info:
                result.get(timeout=RESULT_TIMEOUT_S)
            assert proxy.cuts == 1, "the fault never fired"
            exc = info.value
            assert type(exc).__name__ in {"RestoreFailed", "PodmanUnreachable"}, repr(exc)
            assert "service db" in str(exc) or "db" in str(exc), str(exc)
            # Rolled back once Podman answered again: no container, no network of it.
            assert_untouched(node_b, sample)
            assert spool_files(ms.workers["b"]) == []
    finally:
        remove_sample(node_b, sample)
