"""Every Prometheus collector of the bridge, and the state /readyz reports."""

from __future__ import annotations

import bisect
import collections
import dataclasses
import platform
from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector

from bridge import __version__
from bridge.ingest.parse import RejectReason
from bridge.streams import STREAM_NAMES

__all__ = ["Health", "Metrics", "build_labels", "observe_all"]

# Ingest lag spans a healthy pipeline (tens of ms) up to an hours-old backlog
# replayed after an outage, so the buckets run from 10 ms to 4 h.
LAG_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_ROWS_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000, 20000)
COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def build_labels() -> dict[str, str]:
    """The labels of ``fleet_bridge_build_info``: which build this process runs.
    Another label is one more entry here (the gauge takes its names from this)."""
    return {"version": __version__, "python": platform.python_version()}


# prometheus_client's Histogram layout that observe_all() writes to directly; checked
# at import (and by tests/test_units.py against observe() one by one).
HISTOGRAM_PRIVATE_FIELDS = ("_upper_bounds", "_buckets", "_sum")


def _bulk_observe_works() -> bool:
    probe = Histogram("probe", "", buckets=(1.0,), registry=None)
    return all(hasattr(probe, field) for field in HISTOGRAM_PRIVATE_FIELDS) and all(
        hasattr(bucket, "inc")
        for bucket in probe._buckets  # noqa: SLF001
    )


BULK_OBSERVE = _bulk_observe_works()


def observe_all(histogram: Histogram, values: Sequence[float]) -> None:
    """``histogram.observe(v)`` for each value, with one locked update per bucket
    touched instead of two per value: a batch observes two values per reading.

    prometheus_client has no bulk observe, so this writes to its Histogram's fields
    (HISTOGRAM_PRIVATE_FIELDS); where a release no longer has them it observes one
    value at a time, through the public API.
    """
    if not BULK_OBSERVE:
        for value in values:
            histogram.observe(value)
        return
    bounds = histogram._upper_bounds  # noqa: SLF001 - see docstring
    for index, count in collections.Counter(bisect.bisect_left(bounds, v) for v in values).items():
        histogram._buckets[index].inc(count)  # noqa: SLF001
    histogram._sum.inc(sum(values))  # noqa: SLF001


@dataclasses.dataclass
class Health:
    """What /readyz answers from: both links must be up."""

    mqtt_connected: bool = False
    db_ok: bool = False

    @property
    def ready(self) -> bool:
        return self.mqtt_connected and self.db_ok


class Metrics:
    """The contract's metrics (docs/contract.md section 8), on a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None, *, build: dict[str, str] | None = None) -> None:
        """``build``: the labels of fleet_bridge_build_info (default: build_labels())."""
        self.registry = registry or CollectorRegistry()
        r = self.registry
        # process_* (memory, CPU, file descriptors, start time) and python_info, as
        # prometheus-client's default registry has them: this registry is our own.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        build = build or build_labels()
        self.build_info = Gauge(
            "fleet_bridge_build_info", "Always 1; the labels name the build that runs.", list(build), registry=r
        )
        self.build_info.labels(**build).set(1)
        self.messages_received = Counter(
            "fleet_bridge_messages_received_total", "MQTT messages received.", ["stream"], registry=r
        )
        self.rows_written = Counter("fleet_bridge_rows_written_total", "History rows inserted.", ["stream"], registry=r)
        self.duplicates = Counter(
            "fleet_bridge_duplicates_total", "Readings already stored (same device and ts).", ["stream"], registry=r
        )
        self.rejected = Counter(
            "fleet_bridge_messages_rejected_total", "Messages stored in ingest_rejects.", ["reason"], registry=r
        )
        self.ingest_lag = Histogram(
            "fleet_bridge_ingest_lag_seconds",
            "Commit time minus the device's ts.",
            ["stream"],
            buckets=LAG_BUCKETS,
            registry=r,
        )
        self.pipeline_latency = Histogram(
            "fleet_bridge_pipeline_latency_seconds",
            "Commit time minus receive time.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_rows = Histogram(
            "fleet_bridge_batch_rows", "Messages per committed batch.", buckets=BATCH_ROWS_BUCKETS, registry=r
        )
        self.batch_commit = Histogram(
            "fleet_bridge_batch_commit_seconds",
            "Time to write and commit one batch.",
            buckets=COMMIT_BUCKETS,
            registry=r,
        )
        self.inflight = Gauge(
            "fleet_bridge_inflight_messages", "Messages received but not yet acknowledged.", registry=r
        )
        self.mqtt_connected = Gauge("fleet_bridge_mqtt_connected", "1 while connected to the broker.", registry=r)
        self.mqtt_reconnects = Counter(
            "fleet_bridge_mqtt_reconnects_total", "Broker connections re-established.", registry=r
        )
        self.db_errors = Counter("fleet_bridge_db_errors_total", "Database errors by kind.", ["kind"], registry=r)
        self.last_commit = Gauge(
            "fleet_bridge_last_commit_timestamp_seconds", "Unix time of the last batch COMMIT.", registry=r
        )
        self.devices_stale = Gauge(
            "fleet_bridge_devices_stale", "Devices with no reading for 3 intervals.", ["stream"], registry=r
        )
        self.sequence_gaps = Counter(
            "fleet_bridge_sequence_gaps_total", "Jumps in a device's seq counter.", ["stream"], registry=r
        )
        # The broker's own figures from its $SYS topics (bridge/broker_health.py),
        # labelled with its address. Unlike the series above they are not created up
        # front: a dropped count that started at 0 and jumped to the broker's total
        # on its first value would look like drops to the alert.
        self.broker_messages_dropped = Gauge(
            "fleet_bridge_broker_messages_dropped",
            "Messages the broker dropped since it started, on full queues ($SYS/broker/publish/messages/dropped).",
            ["broker"],
            registry=r,
        )
        self.broker_messages_stored = Gauge(
            "fleet_bridge_broker_messages_stored",
            "Messages the broker holds: queued for sessions and retained ($SYS/broker/store/messages/count).",
            ["broker"],
            registry=r,
        )
        self.broker_clients_connected = Gauge(
            "fleet_bridge_broker_clients_connected",
            "Clients connected to the broker ($SYS/broker/clients/connected).",
            ["broker"],
            registry=r,
        )
        self.rollup_lag = Gauge(
            "fleet_bridge_rollup_lag_seconds",
            "How long the longest-waiting dirty settled hour has waited for the roll-up (0 when none).",
            registry=r,
        )
        self.rollup_hours = Counter(
            "fleet_bridge_rollup_hours_total", "Vehicle-hours recomputed by this process's roll-up.", registry=r
        )
        self.unmatched_ratio = Gauge(
            "fleet_bridge_correlation_unmatched_ratio",
            "Vehicle readings with no meter reading within 5 s, over all, in the newest rolled-up hour.",
            registry=r,
        )
        # Pre-create the labelled series so dashboards and alerts see zeros, not gaps.
        for stream in STREAM_NAMES:
            for family in (self.messages_received, self.rows_written, self.duplicates, self.sequence_gaps):
                family.labels(stream)
            self.devices_stale.labels(stream)
        for reason in RejectReason:
            self.rejected.labels(reason)
        for kind in ("transient", "permanent"):
            self.db_errors.labels(kind)
