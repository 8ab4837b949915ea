"""The database link secured: a private PostgreSQL cluster that demands a SCRAM
password and offers TLS (certificates made by the test). The password reaches the
server from FLEET_BRIDGE_DB_PASSWORD, _PASSWORD_FILE or the DSN; a wrong one is
refused without being shown; sslmode=verify-full checks the CA and the host name."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import pwd
import secrets
import ssl
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from bridge.config import load_settings
from bridge.db import connect
from bridge.errors import DatabaseUnavailableError
from tests.support.helpers import run_cli
from tests.support.services import PostgresCluster, find_postgres_bindir
from tests.support.tls_certs import CertificateAuthority, openssl_available

pytestmark = pytest.mark.integration

ROLE = "fleet_secure"


@dataclasses.dataclass(frozen=True)
class SecurePostgres:
    port: int
    password: str
    ca: Path
    other_ca: Path

    def dsn(self, host: str = "localhost", **params: str) -> str:
        query = "&".join(f"{k}={v}" for k, v in params.items())
        return f"postgresql://{ROLE}@{host}:{self.port}/postgres" + (f"?{query}" if query else "")


HBA = (
    "host all postgres 127.0.0.1/32 trust\n"  # the test's own setup connection
    f"hostssl all {ROLE} 127.0.0.1/32 scram-sha-256\n"
    f"host all {ROLE} 127.0.0.1/32 scram-sha-256\n"
)


async def _configure(cluster: PostgresCluster, cert: Path, key: Path, password: str) -> None:
    admin = await asyncpg.connect(cluster.dsn)
    try:
        await admin.execute("ALTER SYSTEM SET ssl = on")
        await admin.execute(f"ALTER SYSTEM SET ssl_cert_file = '{cert}'")
        await admin.execute(f"ALTER SYSTEM SET ssl_key_file = '{key}'")
        create = await admin.fetchval(
            "SELECT format('CREATE ROLE %I LOGIN PASSWORD %L', $1::text, $2::text)", ROLE, password
        )
        await admin.execute(create)
        await admin.execute(f"GRANT CREATE ON DATABASE postgres TO {ROLE}")  # for migrate
        (cluster.data / "pg_hba.conf").write_text(HBA)
        await admin.execute("SELECT pg_reload_conf()")
    finally:
        await admin.close()


@pytest.fixture(scope="module")
def secure_postgres() -> Iterator[SecurePostgres]:
    openssl_available()
    bindir = find_postgres_bindir()
    if bindir is None:
        pytest.skip("no initdb/pg_ctl to start a private cluster (as root: no user postgres)")
    cluster = PostgresCluster(bindir)
    cluster.start()
    try:
        ca = CertificateAuthority(cluster.dir / "pki", "ca")
        cert, key = ca.issue("server", hosts=("localhost",))  # not 127.0.0.1: see the name test
        if os.geteuid() == 0:  # the server runs as postgres and wants its key private
            owner = pwd.getpwnam("postgres")
            os.chown(key, owner.pw_uid, owner.pw_gid)
        key.chmod(0o600)
        password = secrets.token_urlsafe(18)
        asyncio.run(_configure(cluster, cert, key, password))
        other = CertificateAuthority(cluster.dir / "other", "other-ca")
        yield SecurePostgres(cluster.port, password, ca.cert, other.cert)
    finally:
        cluster.close()


async def current_user_and_ssl(environ: dict[str, str]) -> tuple[str, bool]:
    conn = await connect(load_settings(environ=environ))
    try:
        row = await conn.fetchrow("SELECT current_user AS user, ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    finally:
        await conn.close()
    assert row is not None
    return row["user"], row["ssl"]


async def refusal(environ: dict[str, str]) -> BaseException:
    """Why connecting is refused: the driver's error behind the one that names the address."""
    with pytest.raises(DatabaseUnavailableError, match="cannot connect to the database at ") as refused:
        await current_user_and_ssl(environ)
    assert refused.value.__cause__ is not None
    return refused.value.__cause__


async def test_the_password_reaches_the_server_from_env_file_or_dsn(
    secure_postgres: SecurePostgres, tmp_path: Path
) -> None:
    """The server checks a SCRAM password: each of the three ways to give it logs in."""
    pg = secure_postgres
    password_file = tmp_path / "db-password"
    password_file.write_text(pg.password + "\n")
    ways = [
        {"FLEET_BRIDGE_DB_DSN": pg.dsn(), "FLEET_BRIDGE_DB_PASSWORD": pg.password},
        {"FLEET_BRIDGE_DB_DSN": pg.dsn(), "FLEET_BRIDGE_DB_PASSWORD_FILE": str(password_file)},
        {"FLEET_BRIDGE_DB_DSN": pg.dsn().replace(f"{ROLE}@", f"{ROLE}:{pg.password}@")},
    ]
    for environ in ways:
        assert (await current_user_and_ssl(environ))[0] == ROLE


async def test_a_wrong_or_missing_password_is_refused_and_not_shown(secure_postgres: SecurePostgres) -> None:
    """`fleet-bridge migrate` with a wrong password exits 1 saying the password
    authentication failed, without the password; with none it fails too."""
    pg = secure_postgres
    wrong = f"wrong-{secrets.token_hex(8)}"
    result = run_cli(["migrate"], {"FLEET_BRIDGE_DB_DSN": pg.dsn(), "FLEET_BRIDGE_DB_PASSWORD": wrong})
    assert result.returncode == 1
    assert "password authentication failed" in result.stderr
    assert wrong not in result.stdout + result.stderr
    assert isinstance(await refusal({"FLEET_BRIDGE_DB_DSN": pg.dsn()}), asyncpg.InvalidPasswordError)


async def test_verify_full_checks_the_certificate_authority_and_the_host_name(
    secure_postgres: SecurePostgres, tmp_path: Path
) -> None:
    """sslmode=verify-full with the right sslrootcert connects over TLS (also
    `fleet-bridge migrate`); another CA is refused, and so is a host name the
    certificate does not carry (127.0.0.1), which verify-ca lets through."""
    pg = secure_postgres
    password = {"FLEET_BRIDGE_DB_PASSWORD": pg.password}
    verified = pg.dsn(sslmode="verify-full", sslrootcert=str(pg.ca))
    assert await current_user_and_ssl({"FLEET_BRIDGE_DB_DSN": verified, **password}) == (ROLE, True)

    migrate = run_cli(["migrate"], {"FLEET_BRIDGE_DB_DSN": verified, "FLEET_BRIDGE_DB_SCHEMA": "tls_check", **password})
    assert migrate.returncode == 0, migrate.stderr

    other_ca = pg.dsn(sslmode="verify-full", sslrootcert=str(pg.other_ca))
    untrusted = await refusal({"FLEET_BRIDGE_DB_DSN": other_ca, **password})
    assert isinstance(untrusted, ssl.SSLCertVerificationError)
    assert "certificate verify failed" in str(untrusted)

    by_address = pg.dsn("127.0.0.1", sslmode="verify-full", sslrootcert=str(pg.ca))
    misnamed = await refusal({"FLEET_BRIDGE_DB_DSN": by_address, **password})
    assert isinstance(misnamed, ssl.SSLCertVerificationError)
    assert "mismatch" in str(misnamed)
    ca_only = pg.dsn("127.0.0.1", sslmode="verify-ca", sslrootcert=str(pg.ca))
    assert await current_user_and_ssl({"FLEET_BRIDGE_DB_DSN": ca_only, **password}) == (ROLE, True)
