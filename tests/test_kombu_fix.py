"""The guard of workers/kombu_fix.py (the real case: tests/faults/test_redis_restart.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

from workers import kombu_fix


def test_a_closed_connection_is_a_connection_error_not_an_attribute_error():
    kombu_fix.install()
    kombu_fix.install()  # idempotent: wrapped once
    guarded = kombu_redis.Channel._connparams
    assert getattr(guarded, "_podchord_guarded", False)
    assert not getattr(guarded.__wrapped__, "_podchord_guarded", False)
    closed = SimpleNamespace(connection=SimpleNamespace(client=None))
    # kombu's Connection.maybe_close_channel ignores connection errors: the close goes on.
    with pytest.raises(RedisConnectionError, match="broker connection is closed"):
        guarded(closed)
