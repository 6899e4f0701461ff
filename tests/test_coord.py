"""Coordination records on the test bed's real Redis (plans, decisions, leases)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tasks import coord
from tasks.coord import Coordinator
from tests.stack import claim_db_pair, release_db_pair

pytestmark = pytest.mark.services


@pytest.fixture
def co(testbed) -> Iterator[Coordinator]:
    base = testbed.broker_url.rsplit("/", 1)[0]
    db = claim_db_pair(base)
    client = redis.Redis.from_url(f"{base}/{db}")
    try:
        yield Coordinator(client)
    finally:
        client.close()
        release_db_pair(base, db)


def test_the_first_plan_recorded_for_a_task_wins(co):
    assert co.recorded_plan("t1") is None
    assert co.plan_once("t1", {"checkpoint_id": "first"})["checkpoint_id"] == "first"
    assert co.plan_once("t1", {"checkpoint_id": "second"})["checkpoint_id"] == "first"
    assert co.recorded_plan("t1") == {"checkpoint_id": "first"}
    assert co.plan_once("t2", {"checkpoint_id": "other"})["checkpoint_id"] == "other"


def test_the_first_decision_wins(co):
    assert co.decide("c1", "commit") == "commit"
    assert co.decide("c1", "abort") == "commit"
    assert co.decide("c2", "abort") == "abort"
    assert co.decide("c2", "commit") == "abort"


def test_a_lease_keeps_a_second_holder_out_until_released(co):
    order: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with co.lease("svc", wait_s=5):
            order.append("first in")
            inside.set()
            time.sleep(1.0)
            order.append("first out")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with co.lease("svc", wait_s=10):
        order.append("second in")
    t.join()
    assert order == ["first in", "first out", "second in"]


def test_a_live_holder_keeps_its_lease_past_the_ttl(co, monkeypatch):
    monkeypatch.setattr(coord, "LEASE_TTL_S", 1)
    with co.lease("long", wait_s=1):
        time.sleep(2.5)  # the heartbeat renews it meanwhile
        with pytest.raises(TimeoutError, match="held by another run"), co.lease("long", wait_s=1):
            pass


def test_a_dead_holders_lease_lapses(co, monkeypatch):
    monkeypatch.setattr(coord, "LEASE_TTL_S", 1)
    # A holder killed without releasing: the key stays with its TTL and no heartbeat.
    co._r.set("podchord:lease:dead", "someone", ex=1, nx=True)
    with co.lease("dead", wait_s=10):  # TimeoutError if it never lapsed
        pass


def test_deliveries_are_counted_per_task(co):
    assert [co.count_delivery("t1") for _ in range(3)] == [1, 2, 3]
    assert co.count_delivery("t2") == 1
