"""``fleet-loadgen``: parses arguments, writes the mapping, runs the publishers,
writes the ground truth and the summary.

Exit codes as for ``fleet-bridge``: 0 success, 1 runtime failure (or an
interrupted run), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Any

import orjson

from bridge import __version__, clock
from bridge.config import Settings, env_name, load_settings
from bridge.errors import ConfigError
from loadgen.display import ProgressDisplay, summarize, summary_text
from loadgen.faults import FaultRates
from loadgen.plan import RunSpec
from loadgen.publisher import BrokerTarget, run_publishers
from loadgen.simulation import meter_id, vehicle_id
from loadgen.truth import report_order

__all__ = ["default_start_ms", "main", "parse_duration"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
MAX_PAIRS = 99_999  # ids have five digits
MIN_INTERVAL_S = 20  # keeps jitter and skew clear of the neighbouring readings
DURATION = re.compile(r"(?P<value>\d+(?:\.\d+)?)\s*(?P<unit>[smhd]?)")
UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
# Flags that override the bridge's FLEET_BRIDGE_MQTT_* settings of the same name.
BROKER_FLAGS = ("host", "port", "username", "password_file", "tls_ca_file", "topic_prefix")


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``90s``, ``10m``, ``2h`` or ``1d``."""
    match = DURATION.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(f"expected a duration like 90s, 10m or 2h, got {text!r}")
    return float(match["value"]) * UNIT_S[match["unit"]]


def parse_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}")
    return value


def parse_time(text: str) -> int:
    """Epoch milliseconds from an RFC 3339 time that names its offset."""
    try:
        when = datetime.fromisoformat(text.strip().replace("z", "Z").replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an RFC 3339 time like 2026-11-27T12:00:00Z, got {text!r}") from None
    if when.tzinfo is None:
        raise argparse.ArgumentTypeError(f"the time needs an offset or Z (ambiguous otherwise): {text!r}")
    return round(when.timestamp() * 1000)


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def default_start_ms(now_ms: int, duration_ms: int, speedup: float) -> int:
    """Where simulated time starts unless ``--start`` says otherwise.

    Simulated time runs ``speedup`` times faster than the wall clock and is set to
    reach it exactly when the run ends: it is never ahead of it (so no reading
    is from the future beyond the bridge's allowed skew) and the newest readings
    are fresh. At speedup 1 that is now; as fast as possible, the whole run is a
    backlog that ends now. Whole seconds, for readable timestamps.
    """
    wall_ms = duration_ms / speedup if speedup else 0.0
    return int(now_ms - duration_ms + wall_ms) // 1000 * 1000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleet-loadgen", description="Simulate the fleet: publish meter and vehicle readings."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser(
        "run",
        help="publish the fleet's readings, then write mapping.csv, ground_truth.json and summary.json",
        description="Publish N vehicle/meter pairs' readings and write the files an end-to-end check needs.",
    )
    fleet = run.add_argument_group("fleet and time")
    fleet.add_argument("--devices", type=positive_int, default=10_000, metavar="N", help="vehicle/meter pairs (10000)")
    fleet.add_argument(
        "--interval", type=parse_duration, default=60.0, metavar="T",
        help=f"between readings (60s; at least {MIN_INTERVAL_S}s)",
    )  # fmt: skip
    fleet.add_argument(
        "--duration", type=parse_duration, default=600.0, metavar="T",
        help="simulated time, whole intervals (10m)",
    )  # fmt: skip
    fleet.add_argument(
        "--speedup", type=float, default=1.0, metavar="X",
        help="simulated seconds per wall-clock second (1); 0 publishes as fast as possible",
    )  # fmt: skip
    fleet.add_argument(
        "--as-fast-as-possible", dest="speedup", action="store_const", const=0.0,
        help="publish the whole duration's readings at full speed (a backlog, for benchmarks)",
    )  # fmt: skip
    fleet.add_argument(
        "--start", type=parse_time, metavar="T",
        help="simulated start, RFC 3339 (default: so that simulated time reaches now as the run ends)",
    )  # fmt: skip
    fleet.add_argument("--seed", type=int, default=1, metavar="N", help="the same seed, the same readings (1)")
    fleet.add_argument("--processes", type=positive_int, default=1, metavar="P", help="publisher processes (1)")
    fleet.add_argument("--out", type=Path, default=Path(), metavar="DIR", help="for the output files (current)")

    faults = run.add_argument_group("fault mixes (fractions F of the readings, default 0)")
    faults.add_argument("--duplicates", type=parse_fraction, default=0.0, metavar="F", help="published twice")
    faults.add_argument("--out-of-order", type=parse_fraction, default=0.0, metavar="F", help="held back 1-5 intervals")
    faults.add_argument("--late", type=parse_fraction, default=0.0, metavar="F", help="held back 10 min to 3 h")
    faults.add_argument("--malformed", type=parse_fraction, default=0.0, metavar="F", help="extra, to be rejected")
    faults.add_argument(
        "--skew-over-5s", type=parse_fraction, default=0.0, metavar="F",
        help="vehicle readings 6-30 s off their meter's (unmatched)",
    )  # fmt: skip

    broker = run.add_argument_group("broker (defaults: the bridge's FLEET_BRIDGE_MQTT_* settings)")
    broker.add_argument("--host", metavar="HOST")
    broker.add_argument("--port", metavar="PORT")
    broker.add_argument("--username", metavar="NAME")
    broker.add_argument("--password-file", metavar="FILE")
    broker.add_argument("--tls-ca-file", metavar="FILE", help="TLS is on when set")
    broker.add_argument("--topic-prefix", metavar="PREFIX", help="e.g. site-a/")
    run.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return parser


def broker_settings(args: argparse.Namespace, environ: dict[str, str]) -> Settings:
    """The bridge's settings loader, so both programs read the broker the same way."""
    overrides = {f"mqtt.{flag}": getattr(args, flag) for flag in BROKER_FLAGS if getattr(args, flag) is not None}
    if args.password_file is not None:  # the flag replaces an inline password from the environment
        environ.pop(env_name("mqtt", "password"), None)
    flags = {f"mqtt.{flag}": f"--{flag.replace('_', '-')}" for flag in BROKER_FLAGS}
    return load_settings(environ=environ, overrides=overrides, flags=flags)


def run_spec(args: argparse.Namespace, now_ms: int) -> RunSpec:
    """The run's parameters from the flags; usage errors raise ConfigError naming the flag."""
    if args.interval < MIN_INTERVAL_S:
        raise ConfigError(f"--interval must be at least {MIN_INTERVAL_S} s")
    if args.devices > MAX_PAIRS:
        raise ConfigError(f"--devices must be at most {MAX_PAIRS}")
    if args.speedup < 0:
        raise ConfigError("--speedup must be >= 0 (0: as fast as possible)")
    interval_ms, duration_ms = round(args.interval * 1000), round(args.duration * 1000)
    steps = duration_ms // interval_ms
    if steps < 1:
        raise ConfigError("--duration must be at least one --interval")
    try:
        rates = FaultRates(args.duplicates, args.out_of_order, args.late, args.malformed, args.skew_over_5s)
    except ValueError as exc:
        raise ConfigError(f"--late/--out-of-order: {exc}") from None
    start_ms = args.start if args.start is not None else default_start_ms(now_ms, steps * interval_ms, args.speedup)
    return RunSpec(args.devices, interval_ms, steps, start_ms, args.seed, rates)


def uncovered_duration(args: argparse.Namespace, spec: RunSpec) -> str | None:
    """A warning when --duration is not a whole number of --interval: the run
    simulates only the whole intervals, which the user may not expect."""
    simulated_s = spec.steps * spec.interval_ms / 1000
    if simulated_s == round(args.duration * 1000) / 1000:
        return None
    return (
        f"--duration {args.duration:g} s is not a whole number of --interval {args.interval:g} s: "
        f"simulating {spec.steps} interval(s), {simulated_s:g} s"
    )


def write_json(path: Path, value: Any) -> None:
    path.write_bytes(orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")


def write_mapping(path: Path, pairs: int) -> None:
    """``vehicle_id,meter_id`` for ``fleet-bridge mapping import``."""
    lines = ["vehicle_id,meter_id", *(f"{vehicle_id(p)},{meter_id(p)}" for p in range(1, pairs + 1))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cmd_run(args: argparse.Namespace) -> int:
    settings = broker_settings(args, dict(os.environ))
    spec = run_spec(args, int(clock.now().timestamp() * 1000))
    if (warning := uncovered_duration(args, spec)) is not None:
        print(f"fleet-loadgen: warning: {warning}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    write_mapping(args.out / "mapping.csv", spec.pairs)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    display = ProgressDisplay(sys.stderr, tty=sys.stderr.isatty())
    try:
        outcome = run_publishers(
            spec,
            processes=args.processes,
            speedup=args.speedup,
            broker=BrokerTarget.from_settings(settings),
            on_progress=display,
            stop_requested=stop.is_set,
        )
    finally:
        display.close()
    for error in outcome.errors:
        print(f"fleet-loadgen run: {error}", file=sys.stderr)
    if outcome.errors:
        return EXIT_FAILURE

    rows = report_order(row for result in outcome.results for row in result.rows)
    summary = summarize(outcome, spec, processes=args.processes, speedup=args.speedup)
    write_json(args.out / "ground_truth.json", rows)
    write_json(args.out / "summary.json", summary)
    print(summary_text(summary))
    written = [args.out / "mapping.csv", args.out / "ground_truth.json", args.out / "summary.json"]
    print(f"wrote {', '.join(map(str, written))} ({len(rows):,} ground-truth rows)")
    return EXIT_FAILURE if outcome.interrupted else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return cmd_run(args)
    except ConfigError as exc:
        print(f"fleet-loadgen: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as exc:
        if args.debug:
            raise
        print(f"fleet-loadgen {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
