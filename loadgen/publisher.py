"""The IO side: publisher processes, each owning a slice of the fleet.

Each process simulates its own pairs (the plan is deterministic per pair, so
nothing needs to be shipped to it but the run's parameters), paces messages to
simulated time, publishes them at QoS 1 with paho, and records each valid
reading it sent for the ground truth. The parent starts them together, shows
their progress and collects their results.

A lost broker connection fails the run rather than reconnecting: messages in
flight at that moment may or may not have been stored, and a ground truth that
might be wrong is worse than none.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import multiprocessing
import queue
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from multiprocessing.synchronize import Barrier, Event
from typing import Any, Final

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bridge.config import Settings
from loadgen.plan import RunSpec, plan, slice_pairs
from loadgen.truth import PublishedReadings, Row

__all__ = ["BrokerTarget", "Progress", "RunOutcome", "WorkerResult", "run_publishers"]

QOS: Final = 1
# Messages sent but not yet acknowledged by the broker, per process. High, so a
# round trip never throttles the rate; bounded, so paho's queue never grows.
MAX_INFLIGHT: Final = 2000
CONNECT_TIMEOUT_S: Final = 15.0
DRAIN_TIMEOUT_S: Final = 120.0
PROGRESS_EVERY_S: Final = 0.1  # between updates of the shared counters, and before each pause
LOOP_EVERY: Final = 32  # messages between turns of paho's network loop


class PublishError(Exception):
    """The broker refused or lost us; the message says what happened."""


@dataclasses.dataclass(frozen=True)
class BrokerTarget:
    """Where and how to publish; built from the bridge's own settings."""

    host: str
    port: int
    topic_prefix: str
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    tls_ca_file: str | None = None
    tls_cert_file: str | None = None
    tls_key_file: str | None = None
    tls_insecure: bool = False

    @classmethod
    def from_settings(cls, settings: Settings) -> BrokerTarget:
        mqtt = settings.mqtt
        return cls(
            host=mqtt.host,
            port=mqtt.port,
            topic_prefix=mqtt.topic_prefix,
            username=mqtt.username,
            password=settings.mqtt_password(),
            tls_ca_file=mqtt.tls_ca_file,
            tls_cert_file=mqtt.tls_cert_file,
            tls_key_file=mqtt.tls_key_file,
            tls_insecure=mqtt.tls_insecure,
        )


@dataclasses.dataclass(frozen=True)
class Job:
    """One publisher process's work."""

    index: int
    processes: int
    spec: RunSpec
    speedup: float  # 0: as fast as possible
    broker: BrokerTarget
    client_id: str


@dataclasses.dataclass
class WorkerResult:
    """What one process sent, sent back to the parent (``error`` set if it failed)."""

    index: int
    published: int = 0
    readings: int = 0  # distinct valid readings among the published messages
    faults: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    rows: list[Row] = dataclasses.field(default_factory=list)
    finished_at: float = 0.0
    interrupted: bool = False
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class Progress:
    """A snapshot for the progress display."""

    published: int
    simulated_fraction: float
    elapsed_s: float


@dataclasses.dataclass
class RunOutcome:
    """All processes' results; the rate is over the time from the common start
    until the last process had every message acknowledged."""

    results: list[WorkerResult]
    started_at: float
    finished_at: float

    @property
    def published(self) -> int:
        return sum(r.published for r in self.results)

    @property
    def errors(self) -> list[str]:
        return [f"publisher {r.index}: {r.error}" for r in self.results if r.error]

    @property
    def interrupted(self) -> bool:
        return any(r.interrupted for r in self.results)


# --- one publisher process ----------------------------------------------------------


class _Publisher:
    """A paho client driven from the publishing thread itself, without paho's
    network thread: with it, the two threads contend for locks and the GIL, and
    QoS 1 publishing is several times slower (docs/loadgen.md)."""

    def __init__(self, broker: BrokerTarget, client_id: str) -> None:
        self.sent = 0
        self.acked = 0
        self._connected = False
        self._problem: str | None = None
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv311)
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password)
        if broker.tls_ca_file is not None:
            client.tls_set(
                ca_certs=broker.tls_ca_file,
                certfile=broker.tls_cert_file,
                keyfile=broker.tls_key_file,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(broker.tls_insecure)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        self._broker = broker

    def _on_connect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            self._problem = f"the broker refused the connection: {reason}"
        else:
            self._connected = True

    def _on_disconnect(self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self._problem = self._problem or f"lost the broker connection: {reason}"

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.acked += 1

    def _loop(self, timeout: float) -> None:
        """Let paho read acknowledgements and write queued packets for up to ``timeout`` s."""
        rc = self.client.loop(timeout)
        if rc != paho.MQTT_ERR_SUCCESS or self._problem is not None:
            raise PublishError(self._problem or f"lost the broker connection: {paho.error_string(rc)}")

    def connect(self) -> None:
        try:
            self.client.connect(self._broker.host, self._broker.port, keepalive=60)
        except OSError as exc:
            raise PublishError(f"cannot reach the broker at {self._broker.host}:{self._broker.port}: {exc}") from None
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while not self._connected:
            if time.monotonic() > deadline:
                raise PublishError(f"no CONNACK from the broker within {CONNECT_TIMEOUT_S:g} s")
            self._loop(0.1)

    def publish(self, topic: str, payload: bytes) -> None:
        while self.sent - self.acked >= MAX_INFLIGHT:
            self._loop(0.01)
        info = self.client.publish(topic, payload, qos=QOS)
        if info.rc != paho.MQTT_ERR_SUCCESS:
            raise PublishError(self._problem or f"publish failed: {paho.error_string(info.rc)}")
        self.sent += 1
        if self.sent % LOOP_EVERY == 0:
            self._loop(0)

    def idle_until(self, deadline: float, stop: Event) -> bool:
        """Wait for the monotonic ``deadline`` (pacing), serving the connection
        meanwhile; False when told to stop while waiting."""
        while (left := deadline - time.monotonic()) > 0.001:
            if stop.is_set():
                return False
            self._loop(min(left, 0.05))
        return True

    def drain(self) -> None:
        """Wait until the broker acknowledged every message sent."""
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.acked < self.sent:
            if time.monotonic() > deadline:
                raise PublishError(f"the broker acknowledged {self.acked} of {self.sent} messages")
            self._loop(0.05)

    def close(self) -> None:
        self.client.disconnect()


def publish_slice(job: Job, counters: Any, barrier: Barrier, stop: Event) -> WorkerResult:
    """Connect, wait for the other processes, publish this slice paced to simulated time."""
    result = WorkerResult(job.index)
    spec, pairs = job.spec, slice_pairs(job.spec.pairs, job.processes, job.index)
    published = PublishedReadings()
    client = _Publisher(job.broker, job.client_id)
    try:
        client.connect()
    except PublishError:
        barrier.abort()
        raise
    try:
        try:
            barrier.wait(CONNECT_TIMEOUT_S * 4)
        except threading.BrokenBarrierError:
            raise PublishError("another publisher process could not start") from None
        started = time.monotonic()
        ms_per_wall_s = 1000 * job.speedup
        report_at = started
        for message in plan(spec, pairs):
            due = started + (message.due_ms - spec.start_ms) / ms_per_wall_s if ms_per_wall_s else 0.0
            now = time.monotonic()
            # By time, not by message count: a paced run of a small fleet sends a few
            # messages a minute, and its progress must not wait for hundreds of them.
            if now >= report_at or due > now:
                counters[2 * job.index] = client.sent
                counters[2 * job.index + 1] = message.due_ms - spec.start_ms
                report_at = now + PROGRESS_EVERY_S
                if stop.is_set():
                    result.interrupted = True
                    break
            if not client.idle_until(due, stop):
                result.interrupted = True
                break
            client.publish(job.broker.topic_prefix + message.topic, message.payload)
            if message.reading is not None:
                published.add(message.reading)
                result.readings += 1
            result.faults.update(message.faults)
        client.drain()
        result.published = client.sent
        result.finished_at = time.monotonic()
        counters[2 * job.index] = client.sent
        counters[2 * job.index + 1] = spec.end_ms - spec.start_ms
    finally:
        client.close()
    result.rows = published.rows(pairs)
    return result


def _worker_main(job: Job, counters: Any, barrier: Barrier, stop: Event, results: multiprocessing.Queue[Any]) -> None:
    """Process entry point: the parent decides about signals, this process only reports."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        results.put(publish_slice(job, counters, barrier, stop))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which exits 1
        results.put(WorkerResult(job.index, error=str(exc) or type(exc).__name__))


# --- the parent ---------------------------------------------------------------------


def run_publishers(
    spec: RunSpec,
    *,
    processes: int,
    speedup: float,
    broker: BrokerTarget,
    on_progress: Callable[[Progress], None],
    stop_requested: Callable[[], bool],
) -> RunOutcome:
    """Run ``processes`` publishers to completion; ``on_progress`` is called about
    four times a second, ``stop_requested`` asks them to finish early."""
    ctx = multiprocessing.get_context("spawn")
    counters = ctx.Array("q", 2 * processes, lock=False)
    barrier = ctx.Barrier(processes + 1)
    stop = ctx.Event()
    results: multiprocessing.Queue[Any] = ctx.Queue()
    run_id = uuid.uuid4().hex[:8]
    workers = [
        ctx.Process(
            target=_worker_main,
            args=(
                Job(i, processes, spec, speedup, broker, f"fleet-loadgen-{run_id}-{i}"),
                counters,
                barrier,
                stop,
                results,
            ),
            name=f"fleet-loadgen-{i}",
        )
        for i in range(processes)
    ]
    for worker in workers:
        worker.start()
    collected: dict[int, WorkerResult] = {}
    # A broken barrier means a publisher failed to connect: its error is in the queue.
    with contextlib.suppress(threading.BrokenBarrierError):
        barrier.wait(CONNECT_TIMEOUT_S * 4)
    started = time.monotonic()
    duration_ms = spec.end_ms - spec.start_ms
    while len(collected) < processes:
        if stop_requested():
            stop.set()
        try:
            result: WorkerResult = results.get(timeout=0.25)
            collected[result.index] = result
        except queue.Empty:
            for i, worker in enumerate(workers):
                if i not in collected and worker.exitcode not in (None, 0):
                    collected[i] = WorkerResult(i, error=f"publisher process died with exit code {worker.exitcode}")
        on_progress(
            Progress(
                published=sum(counters[2 * i] for i in range(processes)),
                simulated_fraction=min(counters[2 * i + 1] for i in range(processes)) / duration_ms,
                elapsed_s=time.monotonic() - started,
            )
        )
        if any(r.error for r in collected.values()):
            stop.set()
    for worker in workers:
        worker.join()
    ordered = [collected[i] for i in range(processes)]
    finished = max((r.finished_at for r in ordered), default=started) or time.monotonic()
    return RunOutcome(ordered, started, finished)
