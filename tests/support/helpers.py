"""Test helpers: publish with QoS 1, run the real daemon as a subprocess, poll."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import orjson
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from prometheus_client.parser import text_string_to_metric_families

from tests.support.services import ROOT, free_port


def meter_payload(ts: datetime | str | int, kwh: float = 0.5, **extra: object) -> bytes:
    stamp = ts.isoformat().replace("+00:00", "Z") if isinstance(ts, datetime) else ts
    return orjson.dumps({"ts": stamp, "kwh_consumed_ac": kwh, **extra})


def vehicle_payload(ts: datetime | str | int, kwh: float = 0.45, **extra: object) -> bytes:
    stamp = ts.isoformat().replace("+00:00", "Z") if isinstance(ts, datetime) else ts
    return orjson.dumps({"ts": stamp, "kwh_delivered_dc": kwh, **extra})


# Modules whose tests must pass with either broker reader parametrize conftest's
# reader fixture: pytestmark = [..., pytest.mark.parametrize("reader", BOTH_READERS, indirect=True)].
BOTH_READERS = ("fast", "unverified-paho")
UNVERIFIED_PAHO = "2.99.0"

# paho's message ids wrap at 65535: wait for acknowledgements before reusing them.
PUBLISH_WINDOW = 20_000


def publish(host: str, port: int, messages: Iterable[tuple[str, bytes]], *, qos: int = 1, timeout: float = 120) -> int:
    """Publish every message and wait until the broker acknowledged each; returns the count."""
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    client.max_inflight_messages_set(500)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    pending = list(messages)
    deadline = time.monotonic() + timeout
    try:
        for start in range(0, len(pending), PUBLISH_WINDOW):
            infos = [
                client.publish(topic, payload, qos=qos) for topic, payload in pending[start : start + PUBLISH_WINDOW]
            ]
            for info in infos:
                try:
                    info.wait_for_publish(timeout=max(0.1, deadline - time.monotonic()))
                except RuntimeError as exc:  # paho: the connection dropped under the publish
                    raise ConnectionError(str(exc)) from exc
                if not info.is_published():
                    raise TimeoutError("broker did not acknowledge every publish")
        return len(pending)
    finally:
        client.disconnect()
        client.loop_stop()


async def publish_async(host: str, port: int, messages: list[tuple[str, bytes]]) -> int:
    return await asyncio.to_thread(publish, host, port, messages)


async def wait_for(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str, every: float = 0.2) -> None:
    """Poll ``check`` until true; the timeout is a failure bound, not a speed claim."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def run_cli(
    args: Sequence[str], env: Mapping[str, str], *, module: str = "bridge", timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` (a ``fleet-bridge`` or ``fleet-loadgen`` command, not
    the daemon) with ``env`` over the test's environment, so that a moved
    bridge.clock reaches it too."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], env={**os.environ, **env}, cwd=ROOT,
        capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip


async def until(condition: Callable[[], bool], *, timeout: float = 30, what: str = "the condition") -> None:
    """``wait_for`` for a plain condition on in-process state (checked every 5 ms)."""

    async def check() -> bool:
        return condition()

    await wait_for(check, timeout=timeout, what=what, every=0.005)


class Scrape:
    """One /metrics response, parsed."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}

    def value(self, sample: str, **labels: str) -> float:
        """Sum of the samples named ``sample`` whose labels include ``labels``."""
        return sum(
            s.value
            for f in self.families.values()
            for s in f.samples
            if s.name == sample and labels.items() <= s.labels.items()
        )

    def bucket(self, histogram: str, le: float, **labels: str) -> float:
        """The cumulative count of one histogram bucket."""
        (count,) = [
            s.value
            for s in self.families[histogram].samples
            if s.name == histogram + "_bucket" and float(s.labels["le"]) == le and labels.items() <= s.labels.items()
        ]
        return count

    def by_label(self, sample: str, label: str) -> dict[str, float]:
        """Non-zero samples of ``sample`` keyed by one label's value."""
        return {
            s.labels[label]: s.value for f in self.families.values() for s in f.samples if s.name == sample and s.value
        }


class BridgeProcess:
    """The real daemon (``python -m bridge run``) in a subprocess."""

    def __init__(self, env: Mapping[str, str], log_path: Path) -> None:
        self.metrics_port = free_port()
        self.env = {**os.environ, **env, "FLEET_BRIDGE_METRICS_PORT": str(self.metrics_port)}
        self.env.setdefault("FLEET_BRIDGE_LOG_FORMAT", "json")
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"], env=self.env, stdout=log, stderr=log, cwd=ROOT
        )
        return self

    def http_get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=5) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    async def wait_ready(self, timeout: float = 60) -> None:
        async def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited with {self.proc.returncode}: {self.logs()[-3000:]}")
            try:
                status, _ = await asyncio.to_thread(self.http_get, "/readyz")
            except OSError:
                return False
            return status == 200

        await wait_for(ready, timeout=timeout, what="bridge /readyz")

    def scrape(self) -> Scrape:
        status, body = self.http_get("/metrics")
        assert status == 200, body
        return Scrape(body)

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels``."""
        return self.scrape().value(name, **labels)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.wait(30)

    def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
