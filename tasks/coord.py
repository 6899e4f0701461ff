"""Coordination records kept in the result backend's Redis, for redelivered tasks.

Late acks plus requeue-on-worker-loss mean any podchord task can run twice: once in a pool
process that was killed part-way, then again. A delivery count per task id caps the
redeliveries of a task that kills its worker every time; three more records keep a
redelivery from doing anything twice:

- the *plan* of a checkpoint, keyed by the outer task id, written once (SET NX): a
  redelivered ``checkpoint_project``/``migrate`` relaunches the very same chord (same
  checkpoint id, same task ids) instead of planning a second checkpoint — re-planning would
  find eviction-mode containers already dumped by the first launch and strand them;
- the *decision* of a checkpoint, ``commit`` or ``abort``, first writer wins (SET NX): a
  commit racing the deadline watchdog's abort can never end with a manifest whose archives
  the abort deleted, nor with an abort that deletes a committed checkpoint;
- a *lease* per (checkpoint, service), renewed by a heartbeat thread while its holder runs:
  a duplicate delivery of a header task waits for the holder instead of dumping the same
  container a second time; a killed holder's lease lapses within ``LEASE_TTL_S``.

Without a Redis result backend (unit tests, eager mode) :func:`coordinator` returns None
and callers skip coordination.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal, Protocol, cast

__all__ = ["LEASE_TTL_S", "TOMBSTONE", "Coordinator", "Decision", "coordinator"]

Decision = Literal["commit", "abort"]
# The key of a plan record that says "never launch": recorded by the deadline watchdog for a
# task that had not planned by its deadline (the task, starting late, finds it and refuses).
TOMBSTONE = "tombstone"

# Renewed every third of it: a killed holder blocks its redelivery for at most this long.
LEASE_TTL_S = 6
# Decisions and plans outlive any chord (the app's result_expires is at least a day).
_RECORD_TTL_S = 7 * 86400

# Release a lease only while it still holds our token (never someone else's).
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
    return redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return 0
"""


class _Redis(Protocol):
    def set(self, name: str, value: str, *, ex: int | None = ..., nx: bool = ...) -> Any: ...
    def get(self, name: str) -> Any: ...
    def eval(self, script: str, numkeys: int, *keys_and_args: Any) -> Any: ...
    def incr(self, name: str) -> Any: ...
    def expire(self, name: str, time: int) -> Any: ...


class Coordinator:
    """Plans, decisions and leases for one Redis client."""

    def __init__(self, client: _Redis) -> None:
        self._r = client

    def count_delivery(self, task_id: str) -> int:
        """Count one more delivery of ``task_id``; return how many there were."""
        key = f"podchord:deliveries:{task_id}"
        count = int(self._r.incr(key))
        self._r.expire(key, 86400)  # a task redelivered a day later is a new story
        return count

    def plan_once(self, task_id: str, plan: Mapping[str, Any]) -> dict[str, Any]:
        """Record ``plan`` for ``task_id`` unless one is recorded; return the recorded one."""
        key = f"podchord:plan:{task_id}"
        if self._r.set(key, json.dumps(plan), ex=_RECORD_TTL_S, nx=True):
            return dict(plan)
        stored = self._r.get(key)
        if stored is None:  # expired between the two calls: ours is as good as any
            return dict(plan)
        return cast(dict[str, Any], json.loads(stored))

    def recorded_plan(self, task_id: str) -> dict[str, Any] | None:
        """The plan recorded for ``task_id``, if any."""
        stored = self._r.get(f"podchord:plan:{task_id}")
        return None if stored is None else cast(dict[str, Any], json.loads(stored))

    def decide(self, checkpoint_id: str, want: Decision) -> Decision:
        """Record ``want`` for the checkpoint unless decided; return the decision in force."""
        key = f"podchord:decision:{checkpoint_id}"
        if self._r.set(key, want, ex=_RECORD_TTL_S, nx=True):
            return want
        stored = self._r.get(key)
        value = stored.decode() if isinstance(stored, bytes) else stored
        return cast(Decision, value) if value in ("commit", "abort") else want

    @contextmanager
    def lease(self, name: str, *, wait_s: float) -> Iterator[None]:
        """Hold the lease ``name`` (waiting up to ``wait_s`` for a live holder) while inside.

        Raises:
            TimeoutError: another holder kept it for ``wait_s``.
        """
        key = f"podchord:lease:{name}"
        token = secrets.token_hex(8)
        give_up = time.monotonic() + wait_s
        while not self._r.set(key, token, ex=LEASE_TTL_S, nx=True):
            if time.monotonic() > give_up:
                raise TimeoutError(f"lease {name} held by another run for {wait_s:.0f} s")
            time.sleep(0.5)
        stop = threading.Event()

        def renew() -> None:
            while not stop.wait(LEASE_TTL_S / 3):
                self._r.eval(_RENEW_LUA, 1, key, token, LEASE_TTL_S)

        beat = threading.Thread(target=renew, name=f"lease-{name}", daemon=True)
        beat.start()
        try:
            yield
        finally:
            stop.set()
            beat.join()
            self._r.eval(_RELEASE_LUA, 1, key, token)


def coordinator(backend: object) -> Coordinator | None:
    """The coordinator on a Celery result backend's Redis client, or None without Redis."""
    client = getattr(backend, "client", None)
    if client is None or not hasattr(client, "eval"):
        return None
    return Coordinator(cast(_Redis, client))
