"""Keep a worker alive when Redis restarts under it (kombu 5.7's Redis transport).

What happens without this (seen in ``tests/faults/test_redis_restart.py``): when the broker
connection drops while a task runs, Celery closes the consumer's connection. Closing its
channel requeues the unacknowledged (late-ack) messages, and for that kombu builds a new Redis
client from ``channel.connection.client`` -- which the closing connection has already set to
``None``. ``AttributeError: 'NoneType' object has no attribute 'hostname'`` escapes kombu's
close, which only ignores connection errors, and the worker process exits: every worker that
was running a task when Redis restarted is gone.

The fix here turns that case into the connection error it is. The close then goes on, the
worker reconnects once Redis is back, and the messages it could not requeue stay in Redis's
unacked index, from where the transport redelivers them after the visibility timeout -- as
it would have for a worker that died, except that this one is still there to run them.
"""

from __future__ import annotations

import functools
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

__all__ = ["install"]

_MARK = "_podchord_guarded"


def install() -> None:
    """Guard the Redis channel's connection parameters (idempotent, per process)."""
    original: Any = kombu_redis.Channel._connparams
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def connparams(self: Any, asynchronous: bool = False) -> Any:
        if getattr(self.connection, "client", None) is None:
            raise RedisConnectionError(
                "the broker connection is closed (podchord: no client to reconnect with)"
            )
        return original(self, asynchronous=asynchronous)

    setattr(connparams, _MARK, True)
    kombu_redis.Channel._connparams = connparams  # type: ignore[method-assign]
