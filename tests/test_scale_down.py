"""Scaling down loses nothing (real Mosquitto with deploy/mosquitto's config, real
PostgreSQL): a replica stopped for good leaves its shared group and ends its
session, a rolling restart stores every reading once, a dead replica's session is
adopted, and a replica stopped while the database is down keeps its session."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Callable
from datetime import timedelta

import asyncpg
import pytest

from bridge import clock
from tests.support.fleet_data import Truth, fleet_messages, history_total, publish_paced, wait_stored_exactly
from tests.support.helpers import (
    BridgeProcess,
    meter_payload,
    publish,
    publish_async,
    run_cli,
    vehicle_payload,
    wait_for,
)
from tests.support.sessions import session_present
from tests.support.tcp_proxy import TcpProxy, through_proxy

pytestmark = [pytest.mark.integration, pytest.mark.fault, pytest.mark.slow]

DRAIN_TIMEOUT_S = 20
FLEET_RATE = 333  # readings per second: 10,000 meters and 10,000 vehicles, once a minute each


def group_env(uid: str, name: str) -> dict[str, str]:
    return {
        "FLEET_BRIDGE_MQTT_SHARED_GROUP": f"g{uid}",
        "FLEET_BRIDGE_MQTT_CLIENT_ID": f"{name}-{uid}",
        "FLEET_BRIDGE_MQTT_DRAIN_TIMEOUT_S": str(DRAIN_TIMEOUT_S),
    }


async def start_all(start_bridge: Callable[..., BridgeProcess], uid: str, names: list[str]) -> list[BridgeProcess]:
    replicas = [start_bridge(**group_env(uid, name)) for name in names]
    await asyncio.gather(*(r.wait_ready() for r in replicas))
    return replicas


async def stop(replica: BridgeProcess) -> int:
    """SIGTERM, then the exit code; the wait bounds "within the stop timeout"."""
    replica.signal(signal.SIGTERM)
    return await asyncio.to_thread(replica.wait, DRAIN_TIMEOUT_S + 15)


async def test_a_replica_stopped_for_good_leaves_its_group_with_nothing_stranded(
    db: asyncpg.Connection, schema: str, prefix: str, uid: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:  # fmt: skip
    """Two replicas, readings flowing; one gets SIGTERM and never comes back (a
    scale-down from 2 to 1): every reading is stored within 30 s of the last
    publish, the stopped one exits 0 and its session is gone from the broker."""
    first, _second = await start_all(start_bridge, uid, ["one", "two"])
    messages, truth = fleet_messages(prefix, devices=150, readings_each=20, seed=3)
    publisher = threading.Thread(target=publish_paced, args=(*broker, messages, 20, 0.25))
    publisher.start()
    await wait_for(lambda: _stored_at_least(db, schema, 1000), timeout=60, what="the first readings")

    assert await stop(first) == 0
    await asyncio.to_thread(publisher.join)
    await wait_stored_exactly(db, schema, truth, timeout=30, after="30 s after the last publish")
    assert '"session_ended"' in first.logs()
    assert not session_present(*broker, f"one-{uid}", end=True)


async def test_replicas_stopped_all_at_once_leave_a_member_subscribed(
    db: asyncpg.Connection, schema: str, prefix: str, uid: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:  # fmt: skip
    """Both replicas of a group get SIGTERM at the same moment (a scale to zero):
    each says it is leaving before it looks for other members, so at least one sees
    no other online and stays subscribed. Readings published while both are down
    are queued by the broker and stored once they return."""
    replicas = await start_all(start_bridge, uid, ["one", "two"])
    for replica in replicas:
        replica.signal(signal.SIGTERM)
    assert [await asyncio.to_thread(r.wait, DRAIN_TIMEOUT_S + 15) for r in replicas] == [0, 0]
    assert any('"last_in_group_keeps_session"' in r.logs() for r in replicas)

    messages, truth = fleet_messages(prefix, devices=200, readings_each=5, seed=4)
    await publish_async(*broker, messages)
    await start_all(start_bridge, uid, ["one", "two"])
    await wait_stored_exactly(db, schema, truth, timeout=60, after="the replicas' return")


async def test_a_rolling_restart_of_three_replicas_stores_every_reading_once(
    db: asyncpg.Connection, schema: str, prefix: str, uid: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess], record_property: Callable[[str, object], None],
) -> None:  # fmt: skip
    """Three replicas restarted one at a time while the full fleet's rate flows,
    each reading stamped when it is published: every reading is stored exactly once.
    The highest receive lag seen (bridge receive time minus the reading's time) is
    recorded as a property of the test."""
    names = ["one", "two", "three"]
    replicas = await start_all(start_bridge, uid, names)
    truth: Truth = {}
    flowing = threading.Event()
    flowing.set()
    publisher = threading.Thread(target=publish_live, args=(*broker, prefix, truth, flowing))
    publisher.start()
    try:
        for index, name in enumerate(names):
            await asyncio.sleep(3)  # a steady stream before each restart
            assert await stop(replicas[index]) == 0
            replicas[index] = start_bridge(**group_env(uid, name))
            await replicas[index].wait_ready()
        await asyncio.sleep(3)
    finally:
        flowing.clear()
        await asyncio.to_thread(publisher.join)
    await wait_stored_exactly(db, schema, truth, timeout=120, after="the rolling restart")
    highest = 0.0
    for stream in ("meter", "vehicle"):
        lag: timedelta = await db.fetchval(
            f'SELECT max(received_at - recorded_at) FROM "{schema}".{stream}_telemetry_history'
        )
        highest = max(highest, lag.total_seconds())
    record_property("highest_receive_lag_s", round(highest, 3))
    print(f"rolling restart: {sum(len(v) for v in truth.values())} readings, highest receive lag {highest:.3f} s")


def publish_live(host: str, port: int, prefix: str, truth: Truth, flowing: threading.Event) -> None:
    """The fleet's rate, each reading stamped with the moment it is published, in
    one-second rounds of 333 (the devices take turns), until ``flowing`` is cleared."""
    tick = 0
    while flowing.is_set():
        started = time.monotonic()
        now = clock.now()
        batch = []
        for n in range(FLEET_RATE // 2 + 1):
            device = (tick * (FLEET_RATE // 2 + 1) + n) % 10_000
            meter, vehicle = f"MTR-{device:05d}", f"EV-{device:05d}"
            ts = now + timedelta(microseconds=n)
            batch += [
                (f"{prefix}meter/{meter}", meter_payload(ts)),
                (f"{prefix}vehicle/{vehicle}", vehicle_payload(ts)),
            ]
            truth.setdefault(("meter", meter), set()).add(ts)
            truth.setdefault(("vehicle", vehicle), set()).add(ts)
        publish(host, port, batch)
        tick += 1
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def test_a_replica_killed_mid_backlog_is_adopted_and_its_session_ended(
    db: asyncpg.Connection, schema: str, prefix: str, uid: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess], bridge_env: dict[str, str],
) -> None:  # fmt: skip
    """Two replicas drain a backlog; one is killed with SIGKILL half-way and never
    returns. adopt-session refuses the live one, then, given the dead one's id,
    stores what its session held: every reading exactly once, and its session gone."""
    messages, truth = fleet_messages(prefix, devices=1000, readings_each=20, seed=5)
    dead, alive = await start_all(start_bridge, uid, ["dead", "alive"])
    publisher = threading.Thread(target=publish, args=(*broker, messages), kwargs={"timeout": 300})
    publisher.start()
    await wait_for(lambda: _stored_at_least(db, schema, len(messages) // 4), timeout=120, what="a quarter stored")
    dead.kill()
    await asyncio.to_thread(publisher.join)
    stranded = len(messages) - await history_total(db, schema)
    await wait_for(lambda: _stable(db, schema), timeout=120, what="the live replica to finish its share")
    assert await history_total(db, schema) < len(messages), "nothing was left in the dead replica's session"

    adopt_env = {**bridge_env, "FLEET_BRIDGE_MQTT_SHARED_GROUP": f"g{uid}", "FLEET_BRIDGE_MQTT_CLIENT_ID": f"op-{uid}"}
    refused = await asyncio.to_thread(run_cli, ["adopt-session", f"alive-{uid}"], adopt_env)
    assert refused.returncode == 1, refused.stderr
    adopted = await asyncio.to_thread(run_cli, ["adopt-session", f"dead-{uid}"], adopt_env)
    assert adopted.returncode == 0, adopted.stderr
    assert "the session is ended" in adopted.stdout

    await wait_stored_exactly(db, schema, truth, timeout=60, after="the adoption")
    assert not session_present(*broker, f"dead-{uid}", end=True)
    assert alive.proc is not None
    assert alive.proc.poll() is None  # adopting took nothing over from the live replica
    print(f"adopted: {stranded} readings were not stored when the replica died")


async def test_sigterm_while_the_database_is_down_keeps_the_session_and_loses_nothing(
    pg_dsn: str, db: asyncpg.Connection, schema: str, prefix: str, uid: str, broker: tuple[str, int],
    start_bridge: Callable[..., BridgeProcess],
) -> None:  # fmt: skip
    """Replica one cannot reach the database (replica two can). Told to stop, one
    leaves the group but cannot store what its session holds: it acknowledges
    nothing, exits 0 within its drain timeout and keeps its session. Started again
    with the database back, it stores its share: every reading exactly once."""
    messages, truth = fleet_messages(prefix, devices=100, readings_each=5, seed=8)
    async with TcpProxy("127.0.0.1", 5432) as proxy:
        env = {**group_env(uid, "one"), "FLEET_BRIDGE_DB_DSN": through_proxy(pg_dsn, proxy),
               "FLEET_BRIDGE_DB_COMMAND_TIMEOUT_S": "2", "FLEET_BRIDGE_MQTT_DRAIN_TIMEOUT_S": "5"}  # fmt: skip
        one = start_bridge(**env)
        two = start_bridge(**group_env(uid, "two"))
        await asyncio.gather(one.wait_ready(), two.wait_ready())
        await proxy.cut()
        await publish_async(*broker, messages)
        await wait_for(lambda: _taken(one), timeout=60, what="replica one to take readings")
        one.signal(signal.SIGTERM)
        assert await asyncio.to_thread(one.wait, 5 + 15) == 0
        assert '"stopped_with_messages_unacknowledged"' in one.logs()
        assert await history_total(db, schema) < len(messages)
        assert session_present(*broker, f"one-{uid}", end=False)

        await proxy.restore()
        start_bridge(**env)
        await wait_stored_exactly(db, schema, truth, timeout=120, after="replica one's restart")


async def _stored_at_least(db: asyncpg.Connection, schema: str, rows: int) -> bool:
    return await history_total(db, schema) >= rows


async def _stable(db: asyncpg.Connection, schema: str) -> bool:
    """True once history has not grown for two seconds."""
    before = await history_total(db, schema)
    await asyncio.sleep(2)
    return await history_total(db, schema) == before


async def _taken(replica: BridgeProcess) -> bool:
    return await asyncio.to_thread(replica.metric, "fleet_bridge_inflight_messages") > 0
