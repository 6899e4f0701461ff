"""CPU seconds spent during one measured run: the whole machine and the processes involved.

On this 2-core machine every party (CRIU, Podman, the workers, moto's S3 server, and other
sessions' tests) competes for the same cores; whether a run was CPU-bound shows here.
Podman's figure includes its reaped children (runc, CRIU): ``cutime``/``cstime``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from types import TracebackType

from .procrss import tree

__all__ = ["CpuMeter"]

_HZ = os.sysconf("SC_CLK_TCK")


def _machine() -> tuple[float, float]:
    """(busy, total) seconds of all CPUs since boot."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, already counted in user
    return (total - idle) / _HZ, total / _HZ


def _pid_cpu(pid: int, children: bool) -> float:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = raw.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime (reaped children)
    return ticks / _HZ


class CpuMeter:
    """CPU seconds of the machine, of process trees (``trees``) and single processes.

    Args:
        trees: label -> root pid, summed over the live tree (workers and prefork children).
        single: label -> pid, including that process's reaped children.
    """

    def __init__(self, trees: dict[str, int], single: dict[str, int]) -> None:
        self._trees = trees
        self._single = single

    def _read(self) -> dict[str, float]:
        now = {
            f"{k}_cpu_s": sum(_pid_cpu(p, False) for p in tree(r)) for k, r in self._trees.items()
        }
        now.update({f"{k}_cpu_s": _pid_cpu(p, True) for k, p in self._single.items()})
        return now

    def __enter__(self) -> CpuMeter:
        self._t = time.monotonic()
        self._m = _machine()
        self._p = self._read()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        wall = time.monotonic() - self._t
        busy, total = _machine()
        after = self._read()
        self.result = {
            "wall_s": round(wall, 3),
            "machine_busy_cpu_s": round(busy - self._m[0], 2),
            # 1.0 = every core busy for the whole run.
            "machine_busy_fraction": round((busy - self._m[0]) / max(total - self._m[1], 1e-9), 3),
            **{k: round(v - self._p.get(k, 0.0), 2) for k, v in after.items()},
        }
