"""deploy/postgres/roles.sql on a real PostgreSQL, in the order the operations guide
gives: roles.sql, `fleet-bridge migrate` as the owner role, roles.sql again. Then the
real daemon runs as the ingest role and the report runs as the report role; neither
can change what they do not own."""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import orjson
import pytest

from bridge import clock
from tests.support.helpers import BridgeProcess, meter_payload, publish_async, run_cli, vehicle_payload, wait_for
from tests.support.services import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.clock]

ROLES_SQL = ROOT / "deploy" / "postgres" / "roles.sql"
HISTORY = ("meter_telemetry_history", "vehicle_telemetry_history")
ROLLUP = ("efficiency_hourly", "efficiency_fleet_hourly", "efficiency_invalidations")


@dataclasses.dataclass(frozen=True)
class Roles:
    """The three roles of one test schema, with a DSN and a password file each."""

    schema: str
    names: dict[str, str]  # "owner" / "ingest" / "report" -> role name
    dsns: dict[str, str]
    password_files: dict[str, Path]

    def env(self, role: str) -> dict[str, str]:
        """Settings that make a fleet-bridge command connect as ``role``."""
        return {
            "FLEET_BRIDGE_DB_DSN": self.dsns[role],
            "FLEET_BRIDGE_DB_PASSWORD_FILE": str(self.password_files[role]),
            "FLEET_BRIDGE_DB_SCHEMA": self.schema,
        }

    async def connect(self, role: str) -> asyncpg.Connection:
        return await asyncpg.connect(self.dsns[role], password=self.password_files[role].read_text())


def dsn_as(dsn: str, role: str) -> str:
    """The same server and database, as ``role`` (no password in the DSN)."""
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))


def apply_roles_sql(admin_dsn: str, schema: str, names: dict[str, str]) -> str:
    psql = shutil.which("psql")
    if psql is None:
        pytest.skip("psql (PostgreSQL client) is not on PATH: roles.sql is a psql script")
    variables = [f"schema={schema}", *(f"{key}={name}" for key, name in names.items())]
    command = [psql, "-X", "-q", "-d", admin_dsn, *(a for v in variables for a in ("-v", v)), "-f", str(ROLES_SQL)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


async def fleet_bridge(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a fleet-bridge command (not the daemon) and return its result."""
    return await asyncio.to_thread(run_cli, args, env)


@pytest.fixture
async def roles(pg_dsn: str, schema: str, tmp_path: Path) -> AsyncIterator[Roles]:
    """A schema set up as in production: roles.sql, migrate as the owner, roles.sql again."""
    names = {key: f"{schema}_{key}" for key in ("owner", "ingest", "report")}
    admin = await asyncpg.connect(pg_dsn)
    try:
        first = apply_roles_sql(pg_dsn, schema, names)
        assert "is not migrated yet" in first
        password_files = {}
        for key, name in names.items():
            # Passwords matter only where the server asks for them; set them anyway
            # so the test also runs against a server without trust authentication.
            password = secrets.token_urlsafe(18)
            await admin.execute(
                await admin.fetchval("SELECT format('ALTER ROLE %I PASSWORD %L', $1::text, $2::text)", name, password)
            )
            password_files[key] = tmp_path / f"{key}-password"
            password_files[key].write_text(password)
        found = Roles(schema, names, {key: dsn_as(pg_dsn, name) for key, name in names.items()}, password_files)
        migrated = await fleet_bridge("migrate", env=found.env("owner"))
        assert migrated.returncode == 0, migrated.stderr
        apply_roles_sql(pg_dsn, schema, names)
        yield found
    finally:
        await admin.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        for name in names.values():
            if await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", name):
                await admin.execute(f'DROP OWNED BY "{name}"')
                await admin.execute(f'DROP ROLE "{name}"')
        await admin.close()


async def partition_owner(conn: asyncpg.Connection, schema: str, name: str) -> str | None:
    owner: str | None = await conn.fetchval(
        "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = to_regclass($1)", f'"{schema}"."{name}"'
    )
    return owner


async def test_daemon_as_ingest_role_stores_readings_rejects_and_a_missing_day_partition(
    roles: Roles, broker: tuple[str, int], prefix: str, start_bridge: Callable[..., BridgeProcess]
) -> None:
    """The daemon, connected as the ingest role (no superuser, not the owner), stores
    readings and a reject. A reading for a day without a partition is stored too: the
    partition is made through the SECURITY DEFINER function, so it belongs to the
    owner role, and the default privileges let the report role read it while the
    ingest role may insert into it but not update it."""
    admin = await roles.connect("owner")
    try:
        assert not await admin.fetchval("SELECT rolsuper FROM pg_roles WHERE rolname = $1", roles.names["ingest"])
        now = clock.now().replace(microsecond=0)
        past = now - timedelta(days=3)  # migrate makes partitions from today on
        missing = f"meter_telemetry_history_p{past:%Y%m%d}"
        assert await partition_owner(admin, roles.schema, missing) is None

        bridge = start_bridge(**roles.env("ingest"))
        await bridge.wait_ready()
        messages = [(f"{prefix}meter/MTR-{n}", meter_payload(now - timedelta(minutes=n))) for n in range(5)]
        messages += [(f"{prefix}vehicle/EV-{n}", vehicle_payload(now - timedelta(minutes=n))) for n in range(5)]
        messages += [(f"{prefix}meter/MTR-late", meter_payload(past)), (f"{prefix}meter/MTR-bad", b"{not json")]
        await publish_async(*broker, messages)

        async def all_stored() -> bool:
            rows = 0
            for table in HISTORY:
                rows += await admin.fetchval(f'SELECT count(*) FROM "{roles.schema}".{table}')
            rejects = await admin.fetchval(f'SELECT count(*) FROM "{roles.schema}".ingest_rejects')
            return bool(rows == 11 and rejects == 1)

        await wait_for(all_stored, timeout=60, what="11 readings and 1 reject stored by the ingest role")
        assert await partition_owner(admin, roles.schema, missing) == roles.names["owner"]
        qualified = f'"{roles.schema}"."{missing}"'
        privileges = await admin.fetchrow(
            "SELECT has_table_privilege($1, $3, 'SELECT') AS report_reads,"
            " has_table_privilege($2, $3, 'INSERT') AS ingest_inserts,"
            " has_table_privilege($2, $3, 'UPDATE') AS ingest_updates,"
            " has_table_privilege($1, $3, 'INSERT') AS report_inserts",
            roles.names["report"],
            roles.names["ingest"],
            qualified,
        )
        assert privileges is not None
        assert dict(privileges) == {
            "report_reads": True,
            "ingest_inserts": True,
            "ingest_updates": False,
            "report_inserts": False,
        }
    finally:
        await admin.close()


@pytest.mark.slow
async def test_report_and_status_run_as_report_role_on_what_the_ingest_role_stored(
    roles: Roles, broker: tuple[str, int], prefix: str, start_bridge: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """The owner imports the vehicle-meter mapping, the daemon (ingest role) stores
    three paired readings, and `fleet-bridge report` and `fleet-bridge status` run as
    the report role and see them."""
    mapping = tmp_path / "mapping.csv"
    mapping.write_text("vehicle_id,meter_id\nEV-00001,MTR-00001\n")
    imported = await fleet_bridge("mapping", "import", str(mapping), env=roles.env("owner"))
    assert imported.returncode == 0, imported.stderr

    hour = clock.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    stamps = [hour + timedelta(minutes=m) for m in (5, 10, 15)]
    messages = [(f"{prefix}meter/MTR-00001", meter_payload(ts, 1.0)) for ts in stamps]
    messages += [(f"{prefix}vehicle/EV-00001", vehicle_payload(ts, 0.9)) for ts in stamps]
    bridge = start_bridge(**roles.env("ingest"))
    await bridge.wait_ready()
    await publish_async(*broker, messages)
    reader = await roles.connect("report")
    try:

        async def stored() -> bool:
            count = await reader.fetchval(f'SELECT count(*) FROM "{roles.schema}".vehicle_telemetry_history')
            return bool(count == 3)

        await wait_for(stored, timeout=60, what="3 vehicle readings")
    finally:
        await reader.close()

    window = ["--from", hour.isoformat(), "--to", (hour + timedelta(hours=1)).isoformat()]
    report = await fleet_bridge("report", *window, "--format", "json", env=roles.env("report"))
    assert report.returncode == 0, report.stderr
    (row,) = orjson.loads(report.stdout)
    assert (row["vehicle_id"], row["matched"], row["unmatched"]) == ("EV-00001", 3, 0)
    assert row["total_ac_kwh"] == pytest.approx(3.0)
    assert row["efficiency"] == pytest.approx(0.9)

    status = await fleet_bridge("status", "--format", "json", env=roles.env("report"))
    assert status.returncode == 0, status.stderr


async def test_ingest_role_cannot_drop_alter_delete_or_create(roles: Roles) -> None:
    """Every statement that would change the schema or remove data fails for the
    ingest role with insufficient_privilege: it can only add rows, update current
    state and the roll-up, and clear worked-off roll-up invalidations."""
    schema = roles.schema
    conn = await roles.connect("ingest")
    partition = await conn.fetchval(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = to_regclass($1) ORDER BY 1 LIMIT 1",
        f'"{schema}".meter_telemetry_history',
    )
    statements = [
        f'DROP TABLE "{schema}".meter_telemetry_history',
        f'DROP TABLE "{schema}"."{partition}"',
        f'DROP TABLE "{schema}".meter_current_state',
        f'ALTER TABLE "{schema}".meter_current_state ADD COLUMN note text',
        f'ALTER TABLE "{schema}".vehicle_telemetry_history DROP COLUMN soc_pct',
        f'DELETE FROM "{schema}".meter_telemetry_history',
        f'UPDATE "{schema}".vehicle_telemetry_history SET soc_pct = 0',
        f'TRUNCATE "{schema}".vehicle_current_state',
        f'DELETE FROM "{schema}".ingest_rejects',
        f'CREATE TABLE "{schema}".intruder (id int)',
        f"INSERT INTO \"{schema}\".vehicle_meter_mapping (vehicle_id, meter_id) VALUES ('EV-1', 'MTR-1')",
        f"INSERT INTO \"{schema}\".schema_migrations (version, name) VALUES (9999, 'fake')",
        f'DROP FUNCTION "{schema}".ensure_day_partition(text, date)',
        f'DELETE FROM "{schema}".efficiency_hourly',
        f'DELETE FROM "{schema}".efficiency_fleet_hourly',
        f'TRUNCATE "{schema}".efficiency_invalidations',
        f"UPDATE \"{schema}\".efficiency_invalidations SET meter_ids = '{{}}'",
        f"UPDATE \"{schema}\".vehicle_meter_mapping SET meter_id = 'MTR-0'",
        f'DELETE FROM "{schema}".vehicle_meter_mapping',
    ]
    allowed = []
    try:
        for statement in statements:
            try:
                await conn.execute(statement)
            except asyncpg.InsufficientPrivilegeError:
                continue
            allowed.append(statement)
    finally:
        await conn.close()
    assert allowed == []


async def test_report_role_reads_everything_and_cannot_write(roles: Roles) -> None:
    """The report role can SELECT every table; writes fail, first because its
    sessions are read-only by default, and, with that switched off, because it has
    no write privilege."""
    schema = roles.schema
    conn = await roles.connect("report")
    try:
        for table in (*HISTORY, "meter_current_state", "vehicle_current_state", "vehicle_meter_mapping",
                      "ingest_rejects", "schema_migrations", *ROLLUP):  # fmt: skip
            await conn.fetchval(f'SELECT count(*) FROM "{schema}".{table}')
        at = "'2026-11-27T12:00:00Z'"
        insert = f"INSERT INTO \"{schema}\".meter_current_state VALUES ('MTR-1', {at}, {at}, 1)"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute(insert)
        await conn.execute("SET default_transaction_read_only = off")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(insert)
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(f'DELETE FROM "{schema}".ingest_rejects')
    finally:
        await conn.close()


async def test_roles_sql_rerun_changes_no_privilege(roles: Roles, pg_dsn: str) -> None:
    """Running roles.sql again on a migrated schema leaves every privilege (tables,
    partitions, sequences, functions, schema, defaults) exactly as it was."""

    async def snapshot() -> list[tuple[str, str]]:
        conn = await asyncpg.connect(pg_dsn)
        try:
            rows = await conn.fetch(
                "SELECT c.relname AS name, coalesce(c.relacl::text, '') AS acl FROM pg_class c"
                " WHERE c.relnamespace = to_regnamespace($1)"
                " UNION ALL SELECT p.proname, coalesce(p.proacl::text, '') FROM pg_proc p"
                " WHERE p.pronamespace = to_regnamespace($1)"
                " UNION ALL SELECT n.nspname, coalesce(n.nspacl::text, '') FROM pg_namespace n WHERE n.nspname = $1"
                " UNION ALL SELECT 'default ' || d.defaclobjtype::text, d.defaclacl::text FROM pg_default_acl d"
                " WHERE d.defaclnamespace = to_regnamespace($1)"
                " ORDER BY 1",
                roles.schema,
            )
        finally:
            await conn.close()
        return [(r["name"], r["acl"]) for r in rows]

    before = await snapshot()
    apply_roles_sql(pg_dsn, roles.schema, roles.names)
    assert await snapshot() == before
