-- Fleet telemetry schema. The runner sets search_path to the target schema,
-- so names here are unqualified and the schema name stays configurable.

CREATE TABLE meter_telemetry_history (
    meter_id        text             NOT NULL,
    recorded_at     timestamptz      NOT NULL,
    received_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    power_kw        double precision,
    voltage_v       double precision,
    current_a       double precision,
    seq             bigint,
    -- INCLUDE lets the efficiency report read energy from the key index alone.
    PRIMARY KEY (meter_id, recorded_at) INCLUDE (kwh_consumed_ac)
) PARTITION BY RANGE (recorded_at);

CREATE TABLE vehicle_telemetry_history (
    vehicle_id       text             NOT NULL,
    recorded_at      timestamptz      NOT NULL,
    received_at      timestamptz      NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    power_kw         double precision,
    soc_pct          double precision,
    battery_temp_c   double precision,
    seq              bigint,
    PRIMARY KEY (vehicle_id, recorded_at) INCLUDE (kwh_delivered_dc)
) PARTITION BY RANGE (recorded_at);

-- Hot tables: one row per device, rewritten every minute. A lower fillfactor
-- leaves room on each page for HOT updates, which keeps them cheap.
CREATE TABLE meter_current_state (
    meter_id        text PRIMARY KEY,
    recorded_at     timestamptz      NOT NULL,
    received_at     timestamptz      NOT NULL,
    kwh_consumed_ac double precision NOT NULL,
    power_kw        double precision,
    voltage_v       double precision,
    current_a       double precision,
    seq             bigint
) WITH (fillfactor = 70);

CREATE TABLE vehicle_current_state (
    vehicle_id       text PRIMARY KEY,
    recorded_at      timestamptz      NOT NULL,
    received_at      timestamptz      NOT NULL,
    kwh_delivered_dc double precision NOT NULL,
    power_kw         double precision,
    soc_pct          double precision,
    battery_temp_c   double precision,
    seq              bigint
) WITH (fillfactor = 70);

CREATE TABLE vehicle_meter_mapping (
    vehicle_id text PRIMARY KEY,
    meter_id   text        NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vehicle_meter_mapping_meter_id_idx ON vehicle_meter_mapping (meter_id);

CREATE TABLE ingest_rejects (
    id             bigserial PRIMARY KEY,
    received_at    timestamptz NOT NULL,
    topic          text        NOT NULL,
    payload        bytea       NOT NULL,
    reason         text        NOT NULL CHECK (reason IN (
        'invalid_json', 'not_object', 'missing_field', 'bad_type', 'out_of_range',
        'bad_timestamp', 'future_timestamp', 'too_old', 'bad_device_id',
        'id_mismatch', 'payload_too_large', 'unknown_topic', 'db_error')),
    detail         text        NOT NULL,
    -- At-least-once delivery can hand the same bad message over twice (e.g. after
    -- a crash between COMMIT and acknowledgement); it is kept once.
    payload_sha256 bytea       GENERATED ALWAYS AS (sha256(payload)) STORED,
    UNIQUE (topic, payload_sha256)
);
CREATE INDEX ingest_rejects_received_at_idx ON ingest_rejects (received_at);

-- The two SECURITY DEFINER functions below run with the owner's rights for the
-- ingest role, which may not own the tables. Hardening:
-- * search_path is the schema, then pg_temp, and every name is qualified: with
--   the schema alone PostgreSQL looks in pg_temp FIRST, and a caller's temporary
--   table named like a missing partition would pass for it. The runner set
--   search_path to the schema; FROM CURRENT records the value set here.
-- * The advisory lock serialises callers racing for the same new day; the lock
--   on the parent then refreshes this backend's catalog cache (waiting for an
--   advisory lock does not), so the re-check sees a partition the previous
--   holder just committed instead of failing with 42P07. SHARE UPDATE EXCLUSIVE
--   does not block inserts.
SELECT set_config('search_path', format('%I, pg_temp', current_schema()), true);

-- Creates one UTC day's partition of a history table if it is missing, so that
-- the ingest role can store a late reading.
CREATE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    qualified_parent text := format('%I.%I', current_schema(), parent);
    qualified_child text := format('%I.%I', current_schema(), parent || '_p' || to_char(day, 'YYYYMMDD'));
BEGIN
    IF parent NOT IN ('meter_telemetry_history', 'vehicle_telemetry_history') THEN
        RAISE EXCEPTION 'not a history table: %', parent;
    END IF;
    IF to_regclass(qualified_child) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_bridge.partitions'));
    EXECUTE format('LOCK TABLE %s IN SHARE UPDATE EXCLUSIVE MODE', qualified_parent);
    IF to_regclass(qualified_child) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %s PARTITION OF %s FOR VALUES FROM (%L) TO (%L)',
        qualified_child, qualified_parent,
        to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
        to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END
$$;

-- Drops the history partitions whose day is before the cutoff; returns their names.
--
-- A retention floor: it refuses a cutoff that would drop any of the newest days,
-- so a stolen ingest password cannot wipe recent history. The floor is 2 days
-- (today and the two days before are always kept). A superuser may raise it (on
-- PostgreSQL 15 and later also a role granted SET ON PARAMETER
-- fleet_bridge.min_retention_days):
--
--     ALTER FUNCTION drop_day_partitions_before(date)
--         SET fleet_bridge.min_retention_days = '400';
--
-- A value set on the function wins over any a caller sets in its session, and a
-- session value can only raise the floor. Keep it at or below
-- FLEET_BRIDGE_PARTITIONS_RETENTION_DAYS, or the maintenance pass fails.
CREATE FUNCTION drop_day_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part record;
    floor_days integer := greatest(2, coalesce(
        nullif(current_setting('fleet_bridge.min_retention_days', true), '')::integer, 2));
    latest_cutoff date := (now() AT TIME ZONE 'UTC')::date - floor_days;
BEGIN
    IF cutoff > latest_cutoff THEN
        RAISE EXCEPTION 'refusing to drop day partitions before %: the retention floor keeps % days', cutoff, floor_days
            USING ERRCODE = 'insufficient_privilege',
                  HINT = format('the latest cutoff allowed today is %s', latest_cutoff);
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_bridge.partitions'));
    FOR part IN
        SELECT c.relname
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        JOIN pg_class p ON p.oid = i.inhparent
        WHERE p.relname IN ('meter_telemetry_history', 'vehicle_telemetry_history')
          AND p.relnamespace = to_regnamespace(current_schema())
          AND c.relname ~ '_p[0-9]{8}$'
          AND to_date(right(c.relname, 8), 'YYYYMMDD') < cutoff
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I.%I', current_schema(), part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION ensure_day_partition(text, date) FROM PUBLIC;
REVOKE ALL ON FUNCTION drop_day_partitions_before(date) FROM PUBLIC;
