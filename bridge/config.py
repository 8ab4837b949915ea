"""Settings: one validated object built from a TOML file, the environment and flags.

Precedence (lowest first): built-in defaults, the TOML file (``--config`` or
``FLEET_BRIDGE_CONFIG``), ``FLEET_BRIDGE_<SECTION>_<KEY>`` environment variables,
command-line overrides. Every problem raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from bridge.errors import ConfigError

__all__ = [
    "BatchSettings",
    "DbSettings",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "PartitionSettings",
    "Secret",
    "Settings",
    "ValidationSettings",
    "env_name",
    "load_settings",
    "redact_dsn",
]

ENV_PREFIX = "FLEET_BRIDGE_"
SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
TOPIC_PREFIX = re.compile(r"^([^#+\x00]*/)?$")
SHARED_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# One host of a DSN's host list: a name or [IPv6 address], then an optional port.
DSN_HOST = re.compile(r"(\[[^\]]*\]|[^:\[\]]*)(:\d*)?")


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# A URL's password: everything between the user name and the last "@", even one
# whose special characters were not percent-encoded as they should be.
_URL_PASSWORD = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://[^:@/?#]*:).*@")
# A password parameter (URL query or key=value DSN): up to the next blank.
_PASSWORD_PARAM = re.compile(r"(password=)\S*", re.IGNORECASE)


def redact_dsn(dsn: str) -> str:
    """The DSN with any password replaced, safe to log (a malformed one too)."""
    return _PASSWORD_PARAM.sub(r"\1**********", _URL_PASSWORD.sub(r"\1**********@", dsn, count=1))


class Dsn(Secret):
    """A PostgreSQL DSN: may hold a password, so it is shown redacted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Dsn({redact_dsn(self._value)!r})"

    __str__ = __repr__


# --- field declarations ----------------------------------------------------------


def _setting(default: Any, check: Callable[[Any], str | None] | None = None) -> Any:
    """A dataclass field carrying its validation rule (a message when invalid)."""
    return dataclasses.field(default=default, metadata={"check": check})


def _at_least(low: float) -> Callable[[Any], str | None]:
    return lambda v: None if v >= low else f"must be >= {low}"


def _between(low: float, high: float) -> Callable[[Any], str | None]:
    return lambda v: None if low <= v <= high else f"must be between {low} and {high}"


def _one_of(*choices: str) -> Callable[[Any], str | None]:
    return lambda v: None if v in choices else f"must be one of {', '.join(choices)}"


def _matches(pattern: re.Pattern[str], what: str) -> Callable[[Any], str | None]:
    return lambda v: None if v is None or pattern.match(v) else f"must be {what}"


def _readable_file(value: Any) -> str | None:
    if value is None or Path(value).is_file():
        return None
    return f"file not found: {value}"


@dataclasses.dataclass(frozen=True)
class DbSettings:
    dsn: Dsn = _setting(Dsn("postgresql://postgres@127.0.0.1:5432/postgres"))
    schema: str = _setting("fleet", _matches(SCHEMA_NAME, "a lower-case SQL identifier"))
    pool_max: int = _setting(4, _between(2, 100))
    # Batches committing at once, each on its own connection (acknowledged in order).
    commits_in_flight: int = _setting(2, _between(1, 16))
    password: Secret | None = _setting(None)
    password_file: str | None = _setting(None, _readable_file)
    connect_timeout_s: float = _setting(10.0, _at_least(0.1))
    # A database that stops answering (not one that refuses) must still fail the
    # statement, so the batch is retried and /readyz turns red.
    command_timeout_s: float = _setting(30.0, _at_least(0.1))


@dataclasses.dataclass(frozen=True)
class MqttSettings:
    host: str = _setting("127.0.0.1")
    port: int = _setting(1883, _between(1, 65535))
    client_id: str = _setting("fleet-bridge", _matches(re.compile(r"^\S{1,128}$"), "non-empty"))
    username: str | None = _setting(None)
    password: Secret | None = _setting(None)
    password_file: str | None = _setting(None, _readable_file)
    tls_ca_file: str | None = _setting(None, _readable_file)
    tls_cert_file: str | None = _setting(None, _readable_file)
    tls_key_file: str | None = _setting(None, _readable_file)
    tls_insecure: bool = _setting(False)
    topic_prefix: str = _setting("", _matches(TOPIC_PREFIX, "empty or end with '/' (no wildcards)"))
    shared_group: str | None = _setting(None, _matches(SHARED_GROUP, "letters, digits, _.-"))
    keepalive_s: int = _setting(60, _between(5, 3600))
    session_expiry_s: int = _setting(7 * 24 * 3600, _between(60, 0xFFFFFFFE))
    # auto: the fast reader where the installed paho-mqtt is verified, else the plain one.
    reader: str = _setting("auto", _one_of("auto", "plain"))
    # On a graceful stop in a shared group: leave the group, drain the session, end it.
    leave_group_on_stop: bool = _setting(True)
    # On a graceful stop, how long storing and acknowledging what is held may take.
    drain_timeout_s: float = _setting(60.0, _between(1, 3600))


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    max_rows: int = _setting(2000, _between(1, 20000))
    max_delay_ms: int = _setting(100, _between(1, 60000))


@dataclasses.dataclass(frozen=True)
class MetricsSettings:
    host: str = _setting("0.0.0.0")  # noqa: S104 - a scrape endpoint is meant to be reachable
    port: int = _setting(9464, _between(0, 65535))
    stale_after_s: int = _setting(180, _at_least(1))
    stale_check_interval_s: float = _setting(30.0, _at_least(0.1))


@dataclasses.dataclass(frozen=True)
class PartitionSettings:
    premake_days: int = _setting(7, _between(0, 366))
    retention_days: int = _setting(400, _between(2, 36500))
    maintenance_interval_s: float = _setting(3600.0, _at_least(1))


@dataclasses.dataclass(frozen=True)
class ValidationSettings:
    max_future_skew_s: int = _setting(300, _at_least(0))
    max_payload_bytes: int = _setting(4096, _between(64, 1 << 20))


@dataclasses.dataclass(frozen=True)
class LogSettings:
    level: str = _setting("info", _one_of("debug", "info", "warning", "error"))
    format: str | None = _setting(None, _one_of("json", "console"))


@dataclasses.dataclass(frozen=True)
class Settings:
    db: DbSettings = dataclasses.field(default_factory=DbSettings)
    mqtt: MqttSettings = dataclasses.field(default_factory=MqttSettings)
    batch: BatchSettings = dataclasses.field(default_factory=BatchSettings)
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)
    partitions: PartitionSettings = dataclasses.field(default_factory=PartitionSettings)
    validation: ValidationSettings = dataclasses.field(default_factory=ValidationSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)

    def db_password(self) -> str | None:
        return _secret_value(self.db.password, self.db.password_file)

    def mqtt_password(self) -> str | None:
        return _secret_value(self.mqtt.password, self.mqtt.password_file)


def _secret_value(inline: Secret | None, path: str | None) -> str | None:
    if path is not None:
        return Path(path).read_text(encoding="utf-8").strip()
    return inline.reveal() if inline is not None else None


SECTIONS: dict[str, type[Any]] = {
    "db": DbSettings,
    "mqtt": MqttSettings,
    "batch": BatchSettings,
    "metrics": MetricsSettings,
    "partitions": PartitionSettings,
    "validation": ValidationSettings,
    "log": LogSettings,
}

# --- loading ---------------------------------------------------------------------


def env_name(section: str, key: str) -> str:
    return f"{ENV_PREFIX}{section}_{key}".upper()


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _coerce(raw: Any, annotation: str) -> Any:
    """Turn a TOML or environment value into the field's type, or raise ValueError."""
    base = annotation.replace(" | None", "")
    if raw is None:
        return None
    if base == "bool":
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE | _FALSE:
            return text in _TRUE
        raise ValueError("expected true or false")
    if base == "int":
        if isinstance(raw, bool) or not isinstance(raw, int | str) or not re.fullmatch(r"\s*-?\d+\s*", str(raw)):
            raise ValueError("expected an integer")
        return int(raw)
    if base == "float":
        if isinstance(raw, bool) or not isinstance(raw, int | float | str):
            raise ValueError("expected a number")
        try:
            return float(raw)
        except ValueError:
            raise ValueError("expected a number") from None
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    if base == "Secret":
        return Secret(raw)
    if base == "Dsn":
        return Dsn(raw)
    return raw


def _read_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Build and validate the settings; ``overrides`` maps ``"section.key"`` to a value."""
    environ = os.environ if environ is None else environ
    overrides = dict(overrides or {})
    config_file = config_file or environ.get(f"{ENV_PREFIX}CONFIG") or None
    from_file = _read_toml(config_file) if config_file else {}

    sections: dict[str, Any] = {}
    for name in from_file:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {config_file}")
    for section, cls in SECTIONS.items():
        file_values = from_file.get(section, {})
        if not isinstance(file_values, dict):
            raise ConfigError(f"[{section}] in {config_file} must be a table")
        field_names = {f.name for f in dataclasses.fields(cls)}
        for key in file_values:
            if key not in field_names:
                raise ConfigError(f"unknown setting {section}.{key} in {config_file}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            env_key = env_name(section, field.name)
            dotted = f"{section}.{field.name}"
            if dotted in overrides:
                raw, source = overrides.pop(dotted), f"flag for {dotted}"
            elif env_key in environ:
                raw, source = environ[env_key], env_key
            elif field.name in file_values:
                raw, source = file_values[field.name], f"{dotted} in {config_file}"
            else:
                continue
            values[field.name] = _validated(raw, field, source)
        sections[section] = cls(**values)
    if overrides:
        raise ConfigError(f"unknown setting {sorted(overrides)[0]}")
    settings = Settings(**sections)
    _check_combinations(settings)
    return settings


def _validated(raw: Any, field: dataclasses.Field[Any], source: str) -> Any:
    shown = "**********" if "password" in field.name or field.name == "dsn" else repr(raw)
    try:
        value = _coerce(raw, str(field.type))
    except ValueError as exc:
        raise ConfigError(f"invalid setting {source}: {exc}, got {shown}") from None
    check = field.metadata.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem:
        raise ConfigError(f"invalid setting {source}: {problem}, got {shown}")
    return value


def _check_combinations(settings: Settings) -> None:
    mqtt = settings.mqtt
    if mqtt.tls_ca_file is None and (mqtt.tls_insecure or mqtt.tls_cert_file is not None):
        # TLS is on only with a CA file: without one these would be ignored, and a
        # client certificate meant as a second factor would go over plain TCP.
        raise ConfigError(
            f"invalid setting {env_name('mqtt', 'tls_ca_file')}: required when "
            f"{env_name('mqtt', 'tls_insecure')} or {env_name('mqtt', 'tls_cert_file')} is set"
        )
    if (mqtt.tls_cert_file is None) != (mqtt.tls_key_file is None):
        raise ConfigError(
            f"invalid setting {env_name('mqtt', 'tls_cert_file')}: "
            f"a client certificate needs {env_name('mqtt', 'tls_key_file')} too (and vice versa)"
        )
    if mqtt.password is not None and mqtt.password_file is not None:
        raise ConfigError(
            f"invalid setting {env_name('mqtt', 'password_file')}: "
            f"set either it or {env_name('mqtt', 'password')}, not both"
        )
    if settings.db.password is not None and settings.db.password_file is not None:
        raise ConfigError(
            f"invalid setting {env_name('db', 'password_file')}: "
            f"set either it or {env_name('db', 'password')}, not both"
        )
    if settings.db.pool_max <= settings.db.commits_in_flight:
        # The daemon's other work (maintenance, the stale count) needs a connection too.
        raise ConfigError(
            f"invalid setting {env_name('db', 'pool_max')}: must be above "
            f"{env_name('db', 'commits_in_flight')} ({settings.db.commits_in_flight}), got {settings.db.pool_max}"
        )
    if not settings.db.dsn.reveal().startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"invalid setting {env_name('db', 'dsn')}: must start with postgresql://")
    if not _well_formed_url(settings.db.dsn.reveal()):
        raise ConfigError(
            f"invalid setting {env_name('db', 'dsn')}: not a well-formed URL; percent-encode any of "
            f"@/?#& in the password, or give it in {env_name('db', 'password_file')}"
        )


def _well_formed_url(dsn: str) -> bool:
    """Whether asyncpg reads the DSN as written: on a malformed one its error message
    can quote a piece of it, e.g. the part of a password after an unencoded "#"."""
    try:
        parts = urlsplit(dsn)
        parse_qs(parts.query, strict_parsing=bool(parts.query))
    except ValueError:
        return False
    auth, _, hosts = parts.netloc.rpartition("@")
    return "@" not in auth and not parts.fragment and all(DSN_HOST.fullmatch(h) for h in hosts.split(","))
