"""The writer's decisions with a fake store (no database): transient failures are
retried with the same batch, a missing partition makes the store check its days
again, and a row the database refuses is isolated by bisection into a db_error
reject while every other reading is stored."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from datetime import UTC, datetime

import asyncpg
import pytest

from bridge.ingest.batch import Batch
from bridge.ingest.parse import ParseRules, Reading, Reject, RejectReason, parse_message
from bridge.ingest.store import WriteOutcome
from bridge.ingest.writer import Writer
from bridge.metrics import Health, Metrics
from tests.support.helpers import meter_payload

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 27, 12, tzinfo=UTC)


def readings(count: int) -> list[Reading]:
    parsed = [
        parse_message(f"meter/MTR-{n}", meter_payload("2026-11-27T11:59:00Z", n / 10), NOW, ParseRules())
        for n in range(count)
    ]
    return [r for r in parsed if isinstance(r, Reading)]


class FakeStore:
    """Raises ``failures`` in turn, then refuses any commit holding a reading of a
    device in ``refused``; records what it committed."""

    def __init__(self, failures: Sequence[BaseException] = (), refused: frozenset[str] = frozenset()) -> None:
        self.failures = list(failures)
        self.refused = refused
        self.calls: list[tuple[list[str], list[str]]] = []
        self.stored: list[str] = []
        self.rejects: list[Reject] = []
        self.forgotten = 0

    async def commit(self, readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        self.calls.append(([r.device_id for r in readings], [r.reason for r in rejects]))
        if self.failures:
            raise self.failures.pop(0)
        bad = [r.device_id for r in readings if r.device_id in self.refused]
        if bad:
            error = asyncpg.CheckViolationError(f"refused {bad}")
            error.constraint_name = "kwh_sane"
            raise error
        self.stored += [r.device_id for r in readings]
        self.rejects += rejects
        outcome = WriteOutcome()
        outcome.inserted["meter"] = len(readings)
        outcome.rejected.update(collections.Counter(r.reason for r in rejects))
        return outcome

    def forget_partitions(self) -> None:
        self.forgotten += 1


def sample(metrics: Metrics, kind: str) -> float:
    return metrics.registry.get_sample_value("fleet_bridge_db_errors_total", {"kind": kind}) or 0.0


async def test_transient_failures_are_retried_with_the_same_batch() -> None:
    """A connection lost, a deadlock, a timeout: the same batch is written again
    until it commits; each failure is counted and /readyz names the database meanwhile."""
    failures = [ConnectionResetError(), asyncpg.DeadlockDetectedError("deadlock"), TimeoutError()]
    store, metrics, health = FakeStore(failures), Metrics(), Health(db_ok=True)
    readiness: list[bool] = []
    failing_commit = store.commit

    async def commit(readings: Sequence[Reading], rejects: Sequence[Reject]) -> WriteOutcome:
        readiness.append(health.db_ok)  # what /readyz says as each attempt starts
        return await failing_commit(readings, rejects)

    store.commit = commit  # type: ignore[method-assign]
    batch = Batch(readings=readings(4))

    outcome = await Writer(store, metrics, health).write(batch)

    assert [devices for devices, _ in store.calls] == [[f"MTR-{n}" for n in range(4)]] * 4
    assert outcome.inserted["meter"] == 4
    assert sample(metrics, "transient") == 3
    assert sample(metrics, "permanent") == 0
    assert readiness == [True, False, False, False]
    assert health.db_ok


async def test_a_missing_partition_is_transient_and_the_days_are_checked_again() -> None:
    """SQLSTATE 23514 without a constraint name (no partition for the row's day,
    whatever language the server speaks) is retried after the store forgets the
    days it believed made; nothing becomes a reject."""
    store, metrics = FakeStore([asyncpg.CheckViolationError("keine Partition von Relation gefunden")]), Metrics()

    await Writer(store, metrics, Health()).write(Batch(readings=readings(3)))

    assert store.forgotten == 1
    assert store.stored == ["MTR-0", "MTR-1", "MTR-2"]
    assert store.rejects == []
    assert sample(metrics, "permanent") == 0


async def test_a_refused_row_is_isolated_and_the_rest_is_stored() -> None:
    """A CHECK violation naming its constraint is permanent: the batch is bisected
    down to the one refused reading, which becomes a db_error reject carrying the
    SQLSTATE, stored beside the batch's own rejects; the other readings are stored."""
    store, metrics = FakeStore(refused=frozenset({"MTR-5"})), Metrics()
    own_reject = Reject(RejectReason.INVALID_JSON, "not JSON", "meter/X", b"{", NOW)
    batch = Batch(readings=readings(8), rejects=[own_reject])

    outcome = await Writer(store, metrics, Health()).write(batch)

    assert sorted(store.stored) == sorted(f"MTR-{n}" for n in range(8) if n != 5)
    assert [r.reason for r in store.rejects] == ["invalid_json", "db_error"]
    assert "23514" in store.rejects[1].detail
    assert store.rejects[1].topic == "meter/MTR-5"
    assert outcome.inserted["meter"] == 7
    assert outcome.rejected == {"invalid_json": 1, "db_error": 1}
    assert sample(metrics, "permanent") >= 1
    assert sample(metrics, "transient") == 0
