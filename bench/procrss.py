"""Peak RSS of process trees (a worker and its prefork children), sampled from /proc."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from types import TracebackType

__all__ = ["TreeRss", "tree"]

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def tree(root: int) -> list[int]:
    pids, todo = [], [root]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        todo += _children(pid)
    return pids


def _rss(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


class TreeRss:
    """Sample every ``interval_s`` the RSS of each process under ``roots``; keep the peaks.

    Use as a context manager around one measured run. ``growth`` is reported two ways:
    per process (the largest peak-minus-start of any single process: what one task costs)
    and for the whole tree (peak of the sum minus the sum at the start).
    """

    def __init__(self, roots: dict[str, int], interval_s: float = 0.05) -> None:
        self._roots = roots
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.start: dict[int, int] = {}
        self.peak: dict[int, int] = {}
        self.start_total: dict[str, int] = {}
        self.peak_total: dict[str, int] = {}
        self.samples = 0

    def _sample(self) -> None:
        for label, root in self._roots.items():
            total = 0
            for pid in tree(root):
                rss = _rss(pid)
                if rss is None:
                    continue
                total += rss
                self.start.setdefault(pid, rss)
                self.peak[pid] = max(self.peak.get(pid, 0), rss)
            self.start_total.setdefault(label, total)
            self.peak_total[label] = max(self.peak_total.get(label, 0), total)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            self._sample()

    def __enter__(self) -> TreeRss:
        self._sample()
        self._thread.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def report(self) -> dict[str, object]:
        growth = {pid: self.peak[pid] - self.start[pid] for pid in self.peak}
        return {
            "samples": self.samples,
            "interval_s": self._interval_s,
            "processes": len(self.peak),
            "peak_process_bytes": max(self.peak.values(), default=0),
            "max_process_growth_bytes": max(growth.values(), default=0),
            "tree_start_bytes": dict(self.start_total),
            "tree_peak_bytes": dict(self.peak_total),
            "tree_growth_bytes": {
                k: self.peak_total[k] - self.start_total[k] for k in self.peak_total
            },
        }
