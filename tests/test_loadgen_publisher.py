"""A publisher process's progress reaches the parent by time, not every few hundred
messages: a paced run of a small fleet shows what it sent before it ends."""

from __future__ import annotations

import threading
from typing import Any

import pytest

import loadgen.publisher
from loadgen.faults import FaultRates
from loadgen.plan import RunSpec
from loadgen.publisher import BrokerTarget, Job, publish_slice

pytestmark = pytest.mark.unit


class FakeClient:
    """Stands in for the paho client: publishes nothing and never waits."""

    def __init__(self, broker: BrokerTarget, client_id: str) -> None:
        self.sent = 0

    def connect(self) -> None:
        pass

    def publish(self, topic: str, payload: bytes) -> None:
        self.sent += 1

    def idle_until(self, deadline: float, stop: threading.Event) -> bool:
        return True

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class Barrier:
    def wait(self, timeout: float) -> None:
        pass

    def abort(self) -> None:
        pass


class Counters(list[int]):
    """The shared counters, remembering every value the published count took."""

    def __init__(self) -> None:
        super().__init__([0, 0])
        self.published: list[int] = []

    def __setitem__(self, index: Any, value: Any) -> None:
        if index == 0:
            self.published.append(value)
        super().__setitem__(index, value)


def test_a_paced_run_reports_what_it_sent_before_each_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    """At real-time pace every message waits for its time: before each wait the
    counters show what was sent so far, and at the end all of it at 100 %."""
    monkeypatch.setattr(loadgen.publisher, "_Publisher", FakeClient)
    spec = RunSpec(2, 60_000, 3, 1_795_780_800_000, 1, FaultRates())
    job = Job(0, 1, spec, 1.0, BrokerTarget("broker", 1883, ""), "test")
    counters = Counters()
    result = publish_slice(job, counters, Barrier(), threading.Event())  # type: ignore[arg-type]
    assert result.published == 12
    assert counters.published[-1] == 12
    assert counters[1] == spec.end_ms - spec.start_ms
    assert set(range(1, 12)) <= set(counters.published[:-1])
