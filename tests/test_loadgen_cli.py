"""``fleet-loadgen run``: arguments, the broker settings shared with the bridge,
where simulated time starts, and what the operator is shown."""

from __future__ import annotations

import argparse
import collections
import io
from pathlib import Path

import pytest

from loadgen.cli import (
    broker_settings,
    build_parser,
    default_start_ms,
    main,
    parse_duration,
    run_spec,
    uncovered_duration,
    write_mapping,
)
from loadgen.display import ProgressDisplay, progress_text, summarize, summary_text
from loadgen.faults import FaultRates
from loadgen.plan import RunSpec
from loadgen.publisher import BrokerTarget, Progress, RunOutcome, WorkerResult
from tests.support.services import free_port

pytestmark = pytest.mark.unit

NOW_MS = 1_795_780_800_000  # 2026-11-27T12:00:00Z
HOUR_MS = 3_600_000


def args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["run", *argv])


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("90s", 90), ("10m", 600), ("2h", 7200), ("1.5d", 129600)])
def test_durations_take_a_unit(text: str, seconds: float) -> None:
    """Plain seconds or a number with s, m, h or d."""
    assert parse_duration(text) == seconds


def test_simulated_time_reaches_the_wall_clock_exactly_when_the_run_ends() -> None:
    """At speedup X the run takes duration/X of wall time; simulated time starts so
    that it ends then, and so is never ahead of the wall clock on the way."""
    start = default_start_ms(NOW_MS, 2 * HOUR_MS, 60.0)
    wall_ms = 2 * HOUR_MS / 60
    assert start + 2 * HOUR_MS == NOW_MS + wall_ms
    for elapsed in (0.0, wall_ms / 3, wall_ms):  # simulated clock vs wall clock along the way
        assert start + elapsed * 60 <= NOW_MS + elapsed
    assert default_start_ms(NOW_MS, 2 * HOUR_MS, 1.0) == NOW_MS  # real time: starts now
    assert default_start_ms(NOW_MS, 2 * HOUR_MS, 0.0) == NOW_MS - 2 * HOUR_MS  # a backlog ending now
    assert default_start_ms(NOW_MS + 1234, HOUR_MS, 0.0) % 1000 == 0


def test_the_run_covers_whole_intervals_of_the_duration() -> None:
    """--duration 10m at --interval 60 is ten readings per device; flags set the faults."""
    spec = run_spec(args("--devices", "3", "--duration", "10m", "--late", "0.1", "--seed", "9"), NOW_MS)
    assert spec == RunSpec(3, 60_000, 10, default_start_ms(NOW_MS, 600_000, 1.0), 9, FaultRates(late=0.1))
    assert run_spec(args("--as-fast-as-possible"), NOW_MS).start_ms == NOW_MS - 600_000
    assert run_spec(args("--start", "2026-11-27T10:00:00+01:00"), NOW_MS).start_ms == NOW_MS - 3 * HOUR_MS


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--interval", "5"], "--interval must be at least 20 s"),
        (["--devices", "100000"], "--devices must be at most 99999"),
        (["--duration", "30s"], "--duration must be at least one --interval"),
        (["--late", "0.7", "--out-of-order", "0.7"], "must not exceed 1"),
        (["--speedup", "-1"], "--speedup must be >= 0"),
    ],
)
def test_impossible_runs_exit_2_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """A usage error is one line on stderr naming the flag, exit code 2, nothing published."""
    assert main(["run", "--out", str(tmp_path), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["--duplicates", "2"], ["--start", "2026-11-27T10:00:00"], ["--duration", "ten"]])
def test_malformed_flags_are_usage_errors(argv: list[str]) -> None:
    """Fractions above 1, times without an offset and unreadable durations stop argparse (exit 2)."""
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["run", *argv])
    assert stopped.value.code == 2


def test_broker_settings_come_from_the_bridges_variables_and_flags_override_them(tmp_path: Path) -> None:
    """FLEET_BRIDGE_MQTT_* configure the broker as for the bridge; a flag wins over
    its variable; --password-file replaces an inline password."""
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    environ = {
        "FLEET_BRIDGE_MQTT_HOST": "broker.example",
        "FLEET_BRIDGE_MQTT_PORT": "8883",
        "FLEET_BRIDGE_MQTT_USERNAME": "fleet",
        "FLEET_BRIDGE_MQTT_PASSWORD": "inline",
        "FLEET_BRIDGE_MQTT_TOPIC_PREFIX": "site-a/",
    }
    from_env = BrokerTarget.from_settings(broker_settings(args(), dict(environ)))
    assert (from_env.host, from_env.port, from_env.topic_prefix) == ("broker.example", 8883, "site-a/")
    assert (from_env.username, from_env.password) == ("fleet", "inline")
    flagged = BrokerTarget.from_settings(
        broker_settings(args("--port", "1884", "--password-file", str(secret), "--topic-prefix", "b/"), dict(environ))
    )
    assert (flagged.host, flagged.port, flagged.topic_prefix) == ("broker.example", 1884, "b/")
    assert flagged.password == "s3cret"
    assert "s3cret" not in repr(flagged)


def test_invalid_broker_settings_exit_2_naming_the_key(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """The bridge's validation applies: a bad prefix is a configuration error naming the flag."""
    assert main(["run", "--topic-prefix", "no-slash", "--out", str(tmp_path)]) == 2
    assert "invalid setting --topic-prefix (mqtt.topic_prefix)" in capsys.readouterr().err


def test_the_mapping_pairs_each_vehicle_with_its_meter(tmp_path: Path) -> None:
    """mapping.csv has the header fleet-bridge mapping import expects, one row per pair."""
    write_mapping(tmp_path / "mapping.csv", 3)
    assert (tmp_path / "mapping.csv").read_text().splitlines() == [
        "vehicle_id,meter_id",
        "EV-00001,MTR-00001",
        "EV-00002,MTR-00002",
        "EV-00003,MTR-00003",
    ]


def test_progress_shows_simulated_time_messages_and_rate() -> None:
    """One line: a bar of simulated time done, messages published, rate so far."""
    line = progress_text(Progress(published=30_000, simulated_fraction=0.5, elapsed_s=3.0))
    assert line.startswith("[" + "#" * 15 + "." * 15 + "]")
    assert "50.0%" in line
    assert "30,000 published" in line
    assert "10,000 msg/s" in line


def test_the_summary_states_rate_and_faults_by_kind() -> None:
    """Published messages, the rate achieved over the whole run, and each fault
    kind with the malformed ones by reject reason."""
    spec = RunSpec(2, 60_000, 60, NOW_MS, 1, FaultRates())
    results = [
        WorkerResult(0, published=600, readings=500, faults=collections.Counter({"late": 3, "malformed": 2})),
        WorkerResult(1, published=400, readings=300, faults=collections.Counter({"malformed:bad_type": 2})),
    ]
    summary = summarize(RunOutcome(results, 100.0, 102.0), spec, processes=2, speedup=0.0)
    assert summary["rate_msg_per_s"] == 500.0
    assert summary["readings"] == 800
    assert summary["faults"] == {"duplicates": 0, "out_of_order": 0, "late": 3, "malformed": 2, "skew_over_5s": 0}
    assert summary["malformed_by_reason"] == {"bad_type": 2}
    text = summary_text(summary)
    assert "published 1,000 messages in 2.0 s: 500 msg/s (2 processes, as fast as possible)" in text
    assert "late 3" in text
    assert "bad_type 2" in text


def test_a_duration_that_is_not_whole_intervals_is_warned_about(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """--duration 30s --interval 20s simulates one interval: the run says so on
    stderr before it starts (here it then fails: no broker listens)."""
    assert uncovered_duration(args("--duration", "10m"), run_spec(args("--duration", "10m"), NOW_MS)) is None
    argv = ["--duration", "30s", "--interval", "20s"]
    warning = uncovered_duration(args(*argv), run_spec(args(*argv), NOW_MS))
    assert warning == "--duration 30 s is not a whole number of --interval 20 s: simulating 1 interval(s), 20 s"
    assert main(["run", *argv, "--host", "127.0.0.1", "--port", str(free_port()), "--out", str(tmp_path)]) == 1
    assert f"fleet-loadgen: warning: {warning}" in capsys.readouterr().err


def test_help_states_the_shortest_interval(capsys: pytest.CaptureFixture[str]) -> None:
    """`fleet-loadgen run --help` says how short --interval may be."""
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "at least 20s" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("tty", [False, True])
def test_the_display_ends_on_the_last_progress_it_was_given(tty: bool) -> None:
    """An update that comes too soon after the last one drawn is not lost: closing
    the display draws it, so a finished run ends on its 100 % line."""
    out = io.StringIO()
    display = ProgressDisplay(out, tty=tty, every_s=3600)
    display(Progress(published=10, simulated_fraction=0.5, elapsed_s=1.0))
    display(Progress(published=20, simulated_fraction=1.0, elapsed_s=1.1))
    display.close()
    last = out.getvalue().replace("\r", "\n").rstrip("\n").splitlines()[-1]
    assert "100.0% of simulated time, 20 published" in last
    assert out.getvalue().endswith("\n")
