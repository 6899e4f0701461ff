"""Task options as frozen dataclasses, decoded strictly from the JSON that callers send.

Other services queue podchord tasks by name with JSON arguments, so every option is checked
at the task boundary: an unknown option or a wrong type is an :class:`InvalidInput` naming it,
raised before anything is touched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, get_type_hints

from .errors import InvalidInput

__all__ = ["CheckpointJobOptions", "MigrateOptions", "RestoreJobOptions", "decode_options"]

T = TypeVar("T")


@dataclass(frozen=True)
class CheckpointJobOptions:
    """Options of ``podchord.checkpoint_project``.

    Attributes:
        leave_running: backup mode (the project keeps running); False is eviction mode
            (services stop when dumped, and are brought back on the source if anything fails).
        tcp_established: dump established TCP connections too.
        file_locks: dump file locks.
        compress: zstd-compress archives on the way to the store.
        deadline_s: the eviction window in seconds from the request; header tasks expire at
            it and the checkpoint fails clean by then instead of hanging. None: no deadline.
    """

    leave_running: bool = False
    tcp_established: bool = True
    file_locks: bool = False
    compress: bool = False
    deadline_s: float | None = None

    def __post_init__(self) -> None:
        if self.deadline_s is not None and not 0 < self.deadline_s <= 86400:
            raise InvalidInput(f"deadline_s must be in (0, 86400], got {self.deadline_s!r}")

    @property
    def mode(self) -> str:
        return "backup" if self.leave_running else "eviction"


@dataclass(frozen=True)
class RestoreJobOptions:
    """Options of ``podchord.restore_project``.

    Attributes:
        tcp_established: restore established TCP connections.
        ignore_volumes: keep the target's existing volumes (restore in place on the source).
        force_cpu: restore even if the target lacks CPU flags the source had.
        start_timeout_s: how long each service may take to reach "running".
    """

    tcp_established: bool = True
    ignore_volumes: bool = False
    force_cpu: bool = False
    start_timeout_s: float = 60.0

    def __post_init__(self) -> None:
        if not 0 < self.start_timeout_s <= 3600:
            raise InvalidInput(
                f"start_timeout_s must be in (0, 3600], got {self.start_timeout_s!r}"
            )


@dataclass(frozen=True)
class MigrateOptions:
    """Options of ``podchord.migrate``: an eviction checkpoint, then a restore."""

    tcp_established: bool = True
    compress: bool = False
    deadline_s: float | None = None
    force_cpu: bool = False

    def __post_init__(self) -> None:
        CheckpointJobOptions(deadline_s=self.deadline_s)  # same bounds


def decode_options(cls: type[T], data: object) -> T:
    """Build ``cls`` from a JSON object, rejecting unknown names and wrong types.

    Raises:
        InvalidInput: naming the option that is unknown or of the wrong type.
    """
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise InvalidInput(f"options must be a JSON object, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise InvalidInput(f"unknown option(s) {unknown}; known: {sorted(known)}")
    values: dict[str, Any] = {}
    for name, value in data.items():
        values[name] = _coerce(name, hints[name], value)
    return cls(**values)


def _coerce(name: str, hint: object, value: object) -> object:
    text = str(hint)
    if value is None and "None" in text:
        return None
    if "bool" in text:
        if isinstance(value, bool):
            return value
    elif "float" in text:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif "str" in text and isinstance(value, str):
        return value
    raise InvalidInput(f"option {name!r} must be {_describe(text)}, got {value!r}")


def _describe(hint: str) -> str:
    """A JSON caller's words for a type hint ("true or false", not "<class 'bool'>")."""
    base = "true or false" if "bool" in hint else "a number" if "float" in hint else "a string"
    return f"{base} or null" if "None" in hint else base
