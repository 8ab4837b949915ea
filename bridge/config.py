"""Settings: one validated object built from a TOML file, the environment and flags.

Precedence (lowest first): built-in defaults, the TOML file (``--config`` or
``FLEET_BRIDGE_CONFIG``), ``FLEET_BRIDGE_<SECTION>_<KEY>`` environment variables,
command-line overrides. Every problem raises :class:`ConfigError` naming where the
bad value was set (the TOML key and its file, the variable, the flag); the
settings remember where each value came from (``Settings.provenance``).
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

from bridge.clock import CLOCK_ENV
from bridge.errors import ConfigError

__all__ = [
    "BatchSettings",
    "DbSettings",
    "LogSettings",
    "MetricsSettings",
    "MqttSettings",
    "Origin",
    "PartitionSettings",
    "Provenance",
    "RollupSettings",
    "Secret",
    "Settings",
    "ValidationSettings",
    "env_name",
    "load_settings",
    "redact_dsn",
    "setting_keys",
    "unknown_variables",
]

ENV_PREFIX = "FLEET_BRIDGE_"
CONFIG_ENV = f"{ENV_PREFIX}CONFIG"
# FLEET_BRIDGE_* variables that are not settings: the settings file, and the
# tests' clock (bridge/clock.py). Any other unknown one is most likely a typo.
NOT_SETTINGS = frozenset({CONFIG_ENV, CLOCK_ENV})
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


# --- where a value came from -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Origin:
    """The place that set one setting: its default, a key of the TOML file, an
    environment variable or a command-line flag (``where`` names the file, the
    variable or the flag)."""

    key: str  # section.key
    source: Literal["default", "file", "variable", "flag"] = "default"
    where: str = ""

    def describe(self) -> str:
        """How an error names it: the TOML key and its file, the variable, the flag."""
        if self.source == "file":
            return f"{self.key} in {self.where}"
        if self.source == "default":
            return f"{self.key} (default)"
        return self.where if self.key in self.where else f"{self.where} ({self.key})"


@dataclasses.dataclass(frozen=True)
class Provenance:
    """The settings file that was read, if any, and the origin of every value."""

    file: str | None = None
    origins: Mapping[str, Origin] = dataclasses.field(default_factory=dict)

    def of(self, key: str) -> Origin:
        return self.origins.get(key, Origin(key))


def _closest(name: str, known: list[str]) -> str | None:
    """The known name most like ``name`` (a typo's likely target), if one is close."""
    match = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    return match[0] if match else None


def _did_you_mean(name: str, known: list[str]) -> str:
    match = _closest(name, known)
    return f" (did you mean {match}?)" if match else ""


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
    # The broker's $SYS figures as fleet_bridge_broker_* gauges (bridge/broker_health.py).
    sys_topics: bool = _setting(True)


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
class RollupSettings:
    interval_s: float = _setting(60.0, _at_least(0))  # 0: the daemon does not roll up
    settle_s: float = _setting(120.0, _at_least(0))


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
    rollup: RollupSettings = dataclasses.field(default_factory=RollupSettings)
    validation: ValidationSettings = dataclasses.field(default_factory=ValidationSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    # Where each value came from: what `fleet-bridge config` shows. Not a setting.
    provenance: Provenance = dataclasses.field(default_factory=Provenance, compare=False, repr=False)

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
    "rollup": RollupSettings,
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


def setting_keys() -> list[str]:
    """Every ``section.key``, in declaration order."""
    return [f"{section}.{field.name}" for section, cls in SECTIONS.items() for field in dataclasses.fields(cls)]


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``FLEET_BRIDGE_*`` variables that name no setting (they are ignored), each
    with the closest setting's variable, if one is close."""
    known = {env_name(*key.split(".")) for key in setting_keys()}
    # Compared without the common prefix, which would make any two names look alike.
    stems = sorted(name.removeprefix(ENV_PREFIX) for name in known)
    found = []
    for name in sorted(environ):
        if name.startswith(ENV_PREFIX) and name not in known and name not in NOT_SETTINGS:
            match = _closest(name.removeprefix(ENV_PREFIX), stems)
            found.append((name, None if match is None else ENV_PREFIX + match))
    return found


def load_settings(
    config_file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build and validate the settings; ``overrides`` maps ``"section.key"`` to a
    value, ``flags`` names the flag that gave it (default ``--set section.key``)."""
    environ = os.environ if environ is None else environ
    overrides = overrides or {}
    flags = flags or {}
    config_file = config_file or environ.get(CONFIG_ENV) or None
    from_file = _read_toml(config_file) if config_file else {}

    for name in from_file:
        if name not in SECTIONS:
            raise ConfigError(f"unknown section [{name}] in {config_file}{_did_you_mean(name, list(SECTIONS))}")
    known = setting_keys()
    for key in overrides:
        if key not in known:
            raise ConfigError(f"unknown setting {flags.get(key, f'--set {key}')}{_did_you_mean(key, known)}")
    sections: dict[str, Any] = {}
    origins: dict[str, Origin] = {}
    for section, cls in SECTIONS.items():
        file_values = from_file.get(section, {})
        if not isinstance(file_values, dict):
            raise ConfigError(f"[{section}] in {config_file} must be a table")
        keys = [f"{section}.{f.name}" for f in dataclasses.fields(cls)]
        for key in (f"{section}.{name}" for name in file_values):
            if key not in keys:
                raise ConfigError(f"unknown setting {key} in {config_file}{_did_you_mean(key, keys)}")
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            dotted = f"{section}.{field.name}"
            env_key = env_name(section, field.name)
            if dotted in overrides:
                raw, origin = overrides[dotted], Origin(dotted, "flag", flags.get(dotted, f"--set {dotted}"))
            elif env_key in environ:
                raw, origin = environ[env_key], Origin(dotted, "variable", env_key)
            elif field.name in file_values:
                raw, origin = file_values[field.name], Origin(dotted, "file", str(config_file))
            else:
                origins[dotted] = Origin(dotted)
                continue
            origins[dotted] = origin
            values[field.name] = _validated(raw, field, origin)
        sections[section] = cls(**values)
    settings = Settings(**sections, provenance=Provenance(config_file, origins))
    _check_combinations(settings)
    return settings


def _validated(raw: Any, field: dataclasses.Field[Any], origin: Origin) -> Any:
    shown = "**********" if "password" in field.name or field.name == "dsn" else repr(raw)
    try:
        value = _coerce(raw, str(field.type))
    except ValueError as exc:
        raise ConfigError(f"invalid setting {origin.describe()}: {exc}, got {shown}") from None
    check = field.metadata.get("check")
    problem = check(value) if check is not None and value is not None else None
    if problem:
        raise ConfigError(f"invalid setting {origin.describe()}: {problem}, got {shown}")
    return value


def _check_combinations(settings: Settings) -> None:
    """Rules that involve two settings; each error names where the offending value was set."""

    def at(key: str) -> str:
        return settings.provenance.of(key).describe()

    mqtt = settings.mqtt
    if mqtt.tls_ca_file is None and (mqtt.tls_insecure or mqtt.tls_cert_file is not None):
        # TLS is on only with a CA file: without one these would be ignored, and a
        # client certificate meant as a second factor would go over plain TCP.
        culprit = "mqtt.tls_insecure" if mqtt.tls_insecure else "mqtt.tls_cert_file"
        raise ConfigError(
            f"invalid setting {at(culprit)}: needs a CA file too (mqtt.tls_ca_file, "
            f"{env_name('mqtt', 'tls_ca_file')}): TLS is on only with one"
        )
    if (mqtt.tls_cert_file is None) != (mqtt.tls_key_file is None):
        given = "mqtt.tls_cert_file" if mqtt.tls_cert_file is not None else "mqtt.tls_key_file"
        missing = "mqtt.tls_key_file" if mqtt.tls_cert_file is not None else "mqtt.tls_cert_file"
        raise ConfigError(
            f"invalid setting {at(given)}: a client certificate needs its key and the key its certificate "
            f"({missing}, {env_name(*missing.split('.'))})"
        )
    for section, secret in (("mqtt", mqtt.password), ("db", settings.db.password)):
        if secret is not None and getattr(settings, section).password_file is not None:
            raise ConfigError(
                f"invalid setting {at(f'{section}.password_file')}: set either it or "
                f"{at(f'{section}.password')}, not both"
            )
    if settings.db.pool_max <= settings.db.commits_in_flight:
        # The daemon's other work (maintenance, the stale count) needs a connection too.
        raise ConfigError(
            f"invalid setting {at('db.pool_max')}: must be above db.commits_in_flight "
            f"({settings.db.commits_in_flight}), got {settings.db.pool_max}"
        )
    dsn = settings.db.dsn.reveal()
    if not dsn.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"invalid setting {at('db.dsn')}: must start with postgresql://")
    if not _well_formed_url(dsn):
        raise ConfigError(
            f"invalid setting {at('db.dsn')}: not a well-formed URL; percent-encode any of "
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
