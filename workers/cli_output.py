"""Output helpers of the ``podchord`` CLI: results, one-line errors, live progress."""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

__all__ = ["ProgressLine", "emit", "error_line", "human_bytes"]


def emit(as_json: bool, data: Any, text: str) -> None:
    """Print the command's result: ``data`` as one JSON document, or ``text``."""
    print(json.dumps(data, sort_keys=True) if as_json else text, flush=True)


def error_line(as_json: bool, exc_type: str, message: str, code: int) -> None:
    """Print one error line on stderr (JSON with ``--json``)."""
    # Multi-line messages (a remote traceback's text) would break "one line".
    message = " ".join(message.split())
    if as_json:
        doc = {"error": {"type": exc_type, "message": message, "exit_code": code}}
        print(json.dumps(doc, sort_keys=True), file=sys.stderr, flush=True)
    else:
        print(f"podchord: error: {exc_type}: {message}", file=sys.stderr, flush=True)


def human_bytes(n: int) -> str:
    """1536 -> '1.5 KiB'."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"  # not reached


class ProgressLine:
    """Shows a changing status: one refreshing line on a terminal, plain lines otherwise.

    Off a terminal (logs, CI) a line is printed when what it says changes apart from the
    byte counts, or at most every ``every_s`` seconds, so logs stay readable.
    """

    def __init__(self, out: TextIO | None = None, *, enabled: bool = True,
                 every_s: float = 5.0) -> None:
        self._out = out or sys.stderr
        self._tty = self._out.isatty()
        self._enabled = enabled
        self._every_s = every_s
        self._last_text = ""
        self._last_shape = ""
        self._last_at = 0.0

    def show(self, text: str, shape: str | None = None) -> None:
        """Display ``text``; ``shape`` is ``text`` without the parts that always move."""
        if not self._enabled or text == self._last_text:
            return
        shape = text if shape is None else shape
        now = time.monotonic()
        if self._tty:
            self._out.write("\r" + text + "\x1b[K")
        elif shape != self._last_shape or now - self._last_at >= self._every_s:
            self._out.write(text + "\n")
        else:
            return
        self._out.flush()
        self._last_text, self._last_shape, self._last_at = text, shape, now

    def close(self) -> None:
        """End the refreshing line (terminal only)."""
        if self._enabled and self._tty and self._last_text:
            self._out.write("\n")
            self._out.flush()
