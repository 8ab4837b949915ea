"""``fleet-bridge``: parses arguments, loads settings, calls the right module.

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import structlog

from bridge import __version__
from bridge.commands.adopt import add_adopt_arguments, cmd_adopt_session
from bridge.commands.config import cmd_config
from bridge.commands.mapping import add_import_arguments, cmd_mapping_import
from bridge.commands.report import add_report_arguments, cmd_report
from bridge.commands.rollup import add_rollup_arguments, cmd_rollup
from bridge.commands.status import fetch_status, render_json, render_table
from bridge.config import Settings, load_settings, unknown_variables
from bridge.db import NOT_MIGRATED, connect, db_address
from bridge.errors import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, BridgeError, ConfigError, reason
from bridge.ingest.link import side_client, warn_if_tls_insecure
from bridge.ingest.service import run_daemon
from bridge.logs import configure_logging
from bridge.redact import redact, secret_values
from bridge.schema.migrate import apply_migrations
from bridge.schema.partitions import run_maintenance

__all__ = ["main"]

GC_THRESHOLD = 50_000  # allocations between collections of the youngest generation (see below)

Handler = Callable[[Settings, argparse.Namespace], Coroutine[Any, Any, int]]
log = structlog.get_logger("bridge.commands.cli")


# --- commands ---------------------------------------------------------------------


async def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect(settings)
    try:
        applied = await apply_migrations(conn, settings.db.schema)
        parts = settings.partitions
        result = await run_maintenance(conn, settings.db.schema, parts.premake_days, parts.retention_days)
    finally:
        await conn.close()
    names = ", ".join(f"{m.version:04d}_{m.name}" for m in applied) or "none (schema is current)"
    print(f"schema {settings.db.schema}: migrations applied: {names}; partitions created: {len(result.created)}")
    return EXIT_OK


async def cmd_partitions(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect(settings)
    try:
        parts = settings.partitions
        result = await run_maintenance(conn, settings.db.schema, parts.premake_days, parts.retention_days)
    finally:
        await conn.close()
    print(f"created: {', '.join(result.created) or 'none'}")
    print(f"dropped: {', '.join(result.dropped) or 'none'}")
    return EXIT_OK


async def cmd_run(settings: Settings, args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("forced_exit", signal=signal.Signals(signum).name)
            os._exit(EXIT_FAILURE)  # a second signal: leave now, unacked messages come back
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    # SIGHUP too: a reload would have to swap connections under the intake, so a
    # hang-up stops the bridge as cleanly as SIGTERM does (a supervisor restarts it).
    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)
    collect_garbage_less_often()
    await run_daemon(settings, stop)
    return EXIT_OK


def collect_garbage_less_often() -> None:
    """The ingest path allocates a few objects per message, nearly all freed by
    reference counting. At the default threshold (700 allocations) the cyclic
    collector runs many times a second while draining a backlog, a visible share
    of the process's CPU (docs/benchmarks.md); at 50,000 it runs a few times a
    minute. Start-up's objects are frozen out of every later collection."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


async def cmd_check(settings: Settings, args: argparse.Namespace) -> int:
    """Probe both links at once, each within --timeout; exit 0 only when both answer."""
    warn_if_tls_insecure(settings)
    problems = [
        p
        for p in await asyncio.gather(_probe_database(settings, args.timeout), _probe_broker(settings, args.timeout))
        if p
    ]
    for problem in problems:
        print(redact(problem, secret_values(settings)), file=sys.stderr)
    if not problems:
        print("ok: database and mqtt reachable")
    return EXIT_FAILURE if problems else EXIT_OK


async def _probe_database(settings: Settings, wait_s: float) -> str | None:
    try:
        async with asyncio.timeout(wait_s):
            conn = await connect(settings)
            try:
                await conn.fetchval("SELECT 1")
            finally:
                await conn.close()
    except TimeoutError:
        return f"database at {db_address(settings.db.dsn.reveal())}: no answer within {wait_s:g} s"
    except Exception as exc:  # noqa: BLE001 - any failure is the answer
        return f"database: {reason(exc)}"
    return None


async def _probe_broker(settings: Settings, wait_s: float) -> str | None:
    try:
        async with side_client(settings, f"check-{uuid.uuid4().hex[:8]}", timeout=wait_s):
            pass
    except Exception as exc:  # noqa: BLE001
        return f"mqtt at {settings.mqtt.host}:{settings.mqtt.port}: {reason(exc)}"
    return None


async def cmd_status(settings: Settings, args: argparse.Namespace) -> int:
    conn = await connect(settings)
    try:
        status = await fetch_status(conn, settings.db.schema, settings.metrics.stale_after_s)
    finally:
        await conn.close()
    print(render_json(status) if args.format == "json" else render_table(status))
    return EXIT_OK


def run_coroutine(coro: Coroutine[Any, Any, int]) -> int:
    """Run on uvloop when it is importable (a dependency on Linux): it drains a
    backlog faster than the default event loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# --- argument parsing -------------------------------------------------------------


def _override(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or "." not in key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    return key.strip().lower(), value


def _common_options(*, after_command: bool) -> argparse.ArgumentParser:
    """The options every command takes, before or after its name.

    After the name they have no defaults: argparse copies a command's defaults over
    what was parsed before it, so ``fleet-bridge --config FILE run`` lost FILE.
    """
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS if after_command else None)
    common.add_argument("--config", metavar="FILE", help="TOML settings file (or FLEET_BRIDGE_CONFIG)")
    common.add_argument(
        "--set", dest="overrides", metavar="SECTION.KEY=VALUE", type=_override, action="append",
        default=argparse.SUPPRESS if after_command else [],
        help="override one setting, e.g. --set batch.max_rows=500 (repeatable)",
    )  # fmt: skip
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="log level")
    common.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options(after_command=True)
    parser = argparse.ArgumentParser(
        prog="fleet-bridge",
        description="MQTT fleet telemetry -> PostgreSQL bridge.",
        parents=[_common_options(after_command=False)],
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text, parents=[common])
        sub.set_defaults(handler=handler)
        return sub

    add("migrate", cmd_migrate, "apply database migrations and create partitions (idempotent)")
    add("run", cmd_run, "run the bridge daemon until SIGTERM/SIGINT")
    add("partitions", cmd_partitions, "one partition maintenance pass: premake and retention")
    check = add("check", cmd_check, "exit 0 if the broker and the database are reachable")
    check.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for each link")
    status = add("status", cmd_status, "fleet right now from the hot tables: devices reporting, stale, AC/DC power")
    status.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    add_report_arguments(add("report", cmd_report, "hourly charging efficiency (DC / AC) per vehicle"))
    adopt_help = "store what a replica that will not return left in its MQTT session, then end the session"
    add_adopt_arguments(add("adopt-session", cmd_adopt_session, adopt_help))
    config = add("config", cmd_config, "the effective settings and where each came from (file, variable, flag)")
    config.add_argument("--format", choices=["table", "json"], default="table", help="output format")
    add_rollup_arguments(add("rollup", cmd_rollup, "refresh the efficiency roll-up: dirty settled hours, or a range"))
    # `mapping` has one action so far, `import`; the nested parser makes it required.
    mapping = add("mapping", cmd_mapping_import, "manage the vehicle-to-meter mapping")
    actions = mapping.add_subparsers(dest="mapping_command", required=True, metavar="ACTION")
    import_help = "load vehicle_id,meter_id rows (upsert); any bad row: all are listed, nothing is imported"
    add_import_arguments(actions.add_parser("import", help=import_help, description=import_help, parents=[common]))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = dict(args.overrides)
    if args.log_level:
        overrides["log.level"] = args.log_level
    secrets: tuple[str, ...] = ()
    try:
        settings = load_settings(args.config, overrides=overrides, flags={"log.level": "--log-level"})
        secrets = secret_values(settings)
        configure_logging(settings.log.level, settings.log.format, secrets)
        for variable, match in unknown_variables(os.environ):
            log.warning("unknown_variable", variable=variable, did_you_mean=match, detail="not a setting: ignored")
        return int(run_coroutine(args.handler(settings, args)))
    except ConfigError as exc:
        print(f"fleet-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    except Exception as exc:
        if args.debug:
            raise
        print(f"fleet-bridge {args.command}: {redact(failure_text(exc, settings), secrets)}", file=sys.stderr)
        return EXIT_FAILURE


def failure_text(exc: Exception, settings: Settings) -> str:
    """The one line an error becomes: the bridge's own errors are written for people,
    a schema without the tables says what to run, anything else keeps its type."""
    if isinstance(exc, NOT_MIGRATED):
        return f"schema {settings.db.schema} is not migrated: run fleet-bridge migrate"
    if isinstance(exc, BridgeError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
