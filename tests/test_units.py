"""Pure building blocks: flush policy, batch transforms, sequence gaps, backoff, bulk observe."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import Metric

from bridge import metrics
from bridge.ingest.batch import history_columns, split_by_stream
from bridge.ingest.batcher import FlushPolicy
from bridge.ingest.parse import Reading
from bridge.ingest.sequence import SequenceTracker
from bridge.metrics import LAG_BUCKETS, observe_all
from bridge.retry import backoff_delay
from bridge.schema.partitions import days_to_premake, drop_cutoff, partition_name
from bridge.streams import METER, VEHICLE

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 27, 12, tzinfo=UTC)


def reading(device: str, minute: int, stream: str = "meter", kwh: float = 1.0) -> Reading:
    spec = METER if stream == "meter" else VEHICLE
    return Reading(spec, device, T0 + timedelta(minutes=minute), T0, (kwh, None, None, None), minute, "t", b"{}")


def test_policy_has_no_deadline_for_an_empty_batch() -> None:
    """With nothing buffered the intake may wait for the next message indefinitely."""
    assert FlushPolicy(100, 0.1).wait_budget(0, 5.0) is None


def test_policy_flushes_a_full_batch_at_once() -> None:
    """max_rows reached: flush now, whatever the age."""
    assert FlushPolicy(100, 0.1).wait_budget(100, 0.0) == 0.0


def test_policy_waits_for_what_is_left_of_the_delay() -> None:
    """A batch that is not full waits until its oldest message is max_delay old, however
    quiet the broker is meanwhile; then it is due at once."""
    policy = FlushPolicy(100, 0.1)
    assert policy.wait_budget(1, 0.0) == pytest.approx(0.1)
    assert policy.wait_budget(99, 0.095) == pytest.approx(0.005)
    assert policy.wait_budget(1, 0.5) == 0.0


def test_history_columns_are_sorted_by_device_then_time() -> None:
    """Rows leave in (device, recorded_at) order so concurrent writers lock alike."""
    rows = [reading("B", 2), reading("A", 5), reading("B", 1), reading("A", 3)]
    columns = history_columns(METER, rows)
    assert columns[0] == ["A", "A", "B", "B"]
    assert columns[1] == [T0 + timedelta(minutes=m) for m in (3, 5, 1, 2)]
    assert len(columns) == 3 + len(METER.value_fields) + 1
    assert columns[-1] == [3, 5, 1, 2]


def test_split_by_stream_lists_every_stream() -> None:
    """Both streams are present even when one has no readings."""
    groups = split_by_stream([reading("A", 1)])
    assert set(groups) == {"meter", "vehicle"}
    assert groups["vehicle"] == []


def test_sequence_tracker_counts_only_forward_jumps() -> None:
    """1,2,4 is one gap; repeats, late ones and the first sighting are not gaps."""
    tracker = SequenceTracker()
    observed = [tracker.observe("meter", "M", s) for s in (1, 2, 4, 4, 3, 5, None, 8)]
    assert observed == [False, False, True, False, False, False, False, True]
    assert tracker.observe("vehicle", "M", 10) is False  # streams are separate


def test_sequence_tracker_is_bounded() -> None:
    """Past max_devices the table starts over instead of growing without end."""
    tracker = SequenceTracker(max_devices=2)
    for device in ("a", "b", "c"):
        tracker.observe("meter", device, 1)
    assert tracker.observe("meter", "a", 5) is False  # "a" was forgotten


def test_backoff_grows_and_is_capped() -> None:
    """Delays double per attempt within a jitter band and never pass the cap."""
    rng = random.Random(1)
    delays = [backoff_delay(n, base_s=0.1, cap_s=2.0, rng=rng) for n in range(1, 12)]
    assert 0.05 <= delays[0] <= 0.1
    assert all(d <= 2.0 for d in delays)
    assert delays[-1] >= 1.0


def test_partition_dates() -> None:
    """Names are <table>_pYYYYMMDD; premake covers today and N more; the drop cutoff has a grace day."""
    today = T0.date()
    assert partition_name("meter_telemetry_history", today) == "meter_telemetry_history_p20261127"
    assert days_to_premake(today, 2) == [today, today + timedelta(days=1), today + timedelta(days=2)]
    assert drop_cutoff(today, 400) == today - timedelta(days=401)


def test_prometheus_client_has_the_histogram_fields_observe_all_writes_to() -> None:
    """The installed prometheus-client takes the bulk path; when a release renames
    one of these fields observe_all() falls back to observe(), and this names it."""
    probe = Histogram("h", "h", buckets=LAG_BUCKETS, registry=CollectorRegistry())
    missing = [field for field in metrics.HISTOGRAM_PRIVATE_FIELDS if not hasattr(probe, field)]
    assert missing == [], f"prometheus_client Histogram lacks {missing}: observe_all() observes one by one"
    assert metrics.BULK_OBSERVE


@pytest.mark.parametrize("bulk_path", [True, False])
@given(st.lists(st.one_of(st.sampled_from(LAG_BUCKETS), st.floats(-10, 20_000)), max_size=200))
def test_observe_all_equals_observe_one_by_one(bulk_path: bool, values: list[float]) -> None:
    """Bucket counts (bounds inclusive, as prometheus_client has them), count and sum
    match, on the bulk path and on the public-API fallback."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(metrics, "BULK_OBSERVE", bulk_path)
        check_observe_all(values)


def check_observe_all(values: list[float]) -> None:
    one, bulk = (Histogram("h", "h", buckets=LAG_BUCKETS, registry=CollectorRegistry()) for _ in range(2))
    for value in values:
        one.observe(value)
    observe_all(bulk, values)
    (expected,), (got,) = one.collect(), bulk.collect()

    def counts(family: Metric) -> list[tuple[str, dict[str, str], float]]:
        return [(s.name, s.labels, s.value) for s in family.samples if s.name.endswith(("_bucket", "_count"))]

    assert counts(got) == counts(expected)
    sums = [s.value for family in (expected, got) for s in family.samples if s.name.endswith("_sum")]
    assert sums[0] == pytest.approx(sums[1])
