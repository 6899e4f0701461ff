"""A per-project lock, so that two checkpoints or migrations of one project never interleave.

The lock is one Redis key per project (``podchord:lock:<project>``), set with ``SET NX PX``
in the result backend's Redis: every worker and client of one deployment shares it. Its value
(the token) is the id of the task that took it -- the same id the caller waits on -- so that:

* whoever writes that task's final result (commit, abort, restore, deadline watchdog) can
  release it, knowing only the id;
* a redelivered task (late acks: its worker died) finds its own token and goes on;
* a release by a stale holder, after the lock expired and someone else took it, deletes
  nothing (compare-and-delete in one Lua script).

The lock expires on its own, so a holder that died without releasing blocks the project only
until the expiry, never forever.
"""

from __future__ import annotations

from typing import Any, Protocol

from .errors import LockHeld
from .names import check_project

__all__ = [
    "LOCK_PREFIX", "RedisLike", "acquire", "hand_over", "holder", "lock_ttl_s", "release",
    "restore_lock_ttl_s",
]

LOCK_PREFIX = "podchord:lock:"
# Beyond the eviction window: the commit and the restore that follow a checkpoint.
_MARGIN_S = 60

# Deletes the key only if it still holds the caller's token.
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('del', KEYS[1])
end
return 0
"""

# Gives the lock to a new token only if it still holds the caller's: no gap between the two.
_HAND_OVER = """
if redis.call('get', KEYS[1]) == ARGV[1] then
    return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3])
end
return false
"""


class RedisLike(Protocol):
    """The part of ``redis.Redis`` the lock uses (Celery's Redis result backend client)."""

    def set(self, name: str, value: str, *, nx: bool = ..., px: int | None = ...) -> Any: ...

    def get(self, name: str) -> Any: ...

    def pttl(self, name: str) -> Any: ...

    def eval(self, script: str, numkeys: int, *keys_and_args: str) -> Any: ...


def lock_ttl_s(deadline_s: float | None, task_timeout_s: int) -> int:
    """How long a lock lives if never released.

    The checkpoint phase ends by its deadline (or, without one, within a task timeout: its
    header tasks run in parallel); a migration's restore then runs within one more task
    timeout. Shorter would let a second migration in while the first still restores.
    """
    checkpoint_s = task_timeout_s if deadline_s is None else deadline_s
    return int(checkpoint_s + task_timeout_s + _MARGIN_S)


def restore_lock_ttl_s(task_timeout_s: int) -> int:
    """How long a restore's lock lives if never released: one task timeout, plus margin."""
    return int(task_timeout_s + _MARGIN_S)


def _key(project: str) -> str:
    return LOCK_PREFIX + check_project(project)


def acquire(client: RedisLike, project: str, token: str, ttl_s: int, what: str) -> None:
    """Take the lock of ``project`` for ``token``; a holder with the same token goes on.

    Args:
        what: what the holder does, for the refusal message (e.g. "migrate").

    Raises:
        LockHeld: another token holds it; the message names the holder and its expiry.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    key = _key(project)
    value = f"{token} {what}"
    if client.set(key, value, nx=True, px=ttl_s * 1000):
        return
    current = _text(client.get(key))
    if current is not None and current.split(" ", 1)[0] == token:
        return  # the same task again (redelivered): it still holds the lock
    if current is None and client.set(key, value, nx=True, px=ttl_s * 1000):
        return  # expired between the two calls
    left_ms = client.pttl(key)
    held_by, _, held_for = (current or "?").partition(" ")
    left = f"{int(left_ms) / 1000:.0f} s" if isinstance(left_ms, int) and left_ms > 0 else "?"
    raise LockHeld(
        f"project {project!r} is busy: {held_for or 'an operation'} (task {held_by}) holds "
        f"its lock for at most {left} more; nothing was done"
    )


def release(client: RedisLike, project: str, token: str) -> bool:
    """Release the lock of ``project`` if ``token`` holds it; return whether it did.

    The token is compared as the value's first word: the value is ``"<token> <what>"``.
    """
    key = _key(project)
    current = _text(client.get(key))
    if current is None or current.split(" ", 1)[0] != token:
        return False
    return bool(client.eval(_RELEASE, 1, key, current))


def hand_over(
    client: RedisLike, project: str, token: str, new_token: str, ttl_s: int, what: str
) -> bool:
    """Pass ``project``'s lock from ``token`` to ``new_token`` in one step; return whether it did.

    Why not release then acquire: in between, another migration could take the project, and
    the task the lock was meant for (a migration's fallback restore, which brings the evicted
    workload back home) would be refused.
    """
    if ttl_s <= 0:
        raise ValueError("ttl_s must be positive")
    key = _key(project)
    current = _text(client.get(key))
    if current is None or current.split(" ", 1)[0] != token:
        return False
    return bool(client.eval(_HAND_OVER, 1, key, current, f"{new_token} {what}", str(ttl_s * 1000)))


def holder(client: RedisLike, project: str) -> str | None:
    """The token holding ``project``'s lock, or None."""
    current = _text(client.get(_key(project)))
    return None if current is None else current.split(" ", 1)[0]


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
