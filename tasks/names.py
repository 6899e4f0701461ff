"""Validation of the names that end up in URLs, object keys, queue names and file paths.

Names are checked once, before any request is made, so that a hostile or mistaken name can
never walk out of a URL path segment or an object-key prefix.
"""

from __future__ import annotations

import re

from .errors import InvalidInput

__all__ = ["check_image_ref", "check_name", "check_node", "check_project"]

# Podman's own rule for container/network names, plus a length cap.
_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,252}")
# Compose project names: lowercase letters, digits, dashes and underscores.
_PROJECT = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# Node names become queue names (podchord.node.<name>) and env-var suffixes.
_NODE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# Image references may hold "/" and ":" and "@", but never "..", spaces or controls.
_IMAGE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_./:@-]{0,254}")


def _check(kind: str, value: object, pattern: re.Pattern[str], hint: str) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{kind} must be a string, got {type(value).__name__}")
    if not pattern.fullmatch(value) or ".." in value:
        raise InvalidInput(f"invalid {kind} {value!r}: {hint}")
    return value


def check_name(value: object, kind: str = "name") -> str:
    """Return ``value`` if it is a safe container or network name.

    Raises:
        InvalidInput: naming ``kind`` and the value, when it holds ``/``, ``..``, spaces,
            control characters or is empty or too long.
    """
    return _check(kind, value, _NAME, "use letters, digits, '_', '.', '-' (no '/', '..')")


def check_project(value: object) -> str:
    """Return ``value`` if it is a valid compose project name."""
    return _check("project name", value, _PROJECT, "use lowercase letters, digits, '_', '-'")


def check_node(value: object) -> str:
    """Return ``value`` if it is a valid node name."""
    return _check("node name", value, _NODE, "use lowercase letters, digits and '-'")


def check_image_ref(value: object) -> str:
    """Return ``value`` if it is a safe image reference or id."""
    return _check("image reference", value, _IMAGE, "no '..', spaces or control characters")
