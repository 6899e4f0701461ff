"""What a node can do: its Podman, OCI runtime and (optionally probed) checkpoint support.

``podchord status`` queues :func:`node_report` on each node's queue (task
``podchord.node_info``), so the answer comes from the worker that would do the work, through
the same Podman socket.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .libpod import Libpod
from .names import check_node

__all__ = ["node_report"]


def node_report(lp: Libpod, node: str, probe_image: str | None = None) -> dict[str, Any]:
    """Return the node's versions, known problems and (with ``probe_image``) a real probe.

    Args:
        probe_image: an image present on the node whose ``sleep`` the probe may run; None
            skips the probe (it starts and checkpoints a throwaway container).

    Returns:
        JSON: ``node``, ``podman_version``, ``api_version``, ``oci_runtime``, ``runc_version``,
        ``criu_version`` (empty: libpod does not report it), ``kernel``, ``cgroup_version``,
        ``problems`` (list of sentences), ``probe`` (``{"ok": bool|None, "reason": str}``)
        and ``checkpoint_ready`` (no problems and the probe did not fail).

    Raises:
        PodmanUnreachable / NotLibpod / PodmanTooOld: the node's Podman cannot be used.
    """
    check_node(node)
    info = asdict(lp.info())
    flags = info.pop("cpu_flags")
    problems: list[str] = []
    # Measured on the test bed's kind of host: crun refuses cgroup v1 hybrid mode.
    if info["cgroup_version"] == "v1" and info["oci_runtime"] not in ("runc", ""):
        problems.append(
            f"OCI runtime {info['oci_runtime']} on cgroup v1: use runc "
            "(containers.conf [engine] runtime = \"runc\")"
        )
    if probe_image is None:
        probe: dict[str, Any] = {"ok": None, "reason": "not probed (give a probe image)"}
    else:
        result = lp.probe_checkpoint(probe_image)
        probe = {"ok": result.ok, "reason": result.reason}
        if not result.ok:
            problems.append(f"checkpoint probe failed: {result.reason}")
    return {
        "node": node,
        **info,
        "cpu_flag_count": len(flags),
        "problems": problems,
        "probe": probe,
        "checkpoint_ready": not problems and probe["ok"] is not False,
    }
