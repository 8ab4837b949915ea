-- The efficiency report's hourly roll-up (bridge/analytics/rollup.py), and what it
-- needs to stay exact: a log of what each write may have changed.
SELECT set_config('search_path', format('%I, pg_temp', current_schema()), true);

-- One row per mapped vehicle and UTC hour with readings: the report's row for that
-- hour, as of computed_at. meter_id is the meter it was paired with: a row whose
-- meter is not the vehicle's meter any more is stale and never served.
CREATE TABLE efficiency_hourly (
    vehicle_id   text             NOT NULL,
    hour         timestamptz      NOT NULL
                                  CHECK (date_trunc('hour', hour AT TIME ZONE 'UTC') = hour AT TIME ZONE 'UTC'),
    meter_id     text             NOT NULL,
    total_dc_kwh double precision NOT NULL,
    total_ac_kwh double precision NOT NULL,
    matched      integer          NOT NULL,
    unmatched    integer          NOT NULL,
    computed_at  timestamptz      NOT NULL,
    PRIMARY KEY (hour, vehicle_id)                -- the fleet over a range
) PARTITION BY RANGE (hour);
CREATE INDEX efficiency_hourly_vehicle_id_idx ON efficiency_hourly (vehicle_id, hour);  -- one vehicle

-- One row per rolled-up hour: that hour is in efficiency_hourly (a vehicle without
-- a row had no readings), and these are its sums over the vehicles' rows. Daily
-- partitions like the others, so retention drops it with them.
CREATE TABLE efficiency_fleet_hourly (
    hour         timestamptz      NOT NULL PRIMARY KEY
                                  CHECK (date_trunc('hour', hour AT TIME ZONE 'UTC') = hour AT TIME ZONE 'UTC'),
    vehicles     integer          NOT NULL,
    total_dc_kwh double precision NOT NULL,
    total_ac_kwh double precision NOT NULL,
    matched      bigint           NOT NULL,
    unmatched    bigint           NOT NULL,
    computed_at  timestamptz      NOT NULL
) PARTITION BY RANGE (hour);

-- What a write may have changed since the roll-up last saw it: the hours
-- [hour_from, hour_to) of the vehicles named, and of every vehicle mapped to the
-- meters named (resolved when read, so a mapping change racing the write is seen),
-- or of every vehicle (a batch of many readings in few hours: naming them all
-- would cost the writer more than recomputing the hours costs the roll-up).
-- Each batch appends a few rows and never updates one, so writers never wait for
-- each other here; the roll-up deletes the rows it has worked off. A mapping
-- change appends (-infinity, infinity) for the vehicles it changed.
CREATE TABLE efficiency_invalidations (
    id            bigserial   PRIMARY KEY,
    hour_from     timestamptz NOT NULL,
    hour_to       timestamptz NOT NULL,
    vehicle_ids   text[]      NOT NULL,
    meter_ids     text[]      NOT NULL,
    every_vehicle boolean     NOT NULL DEFAULT false,
    marked_at     timestamptz NOT NULL,
    CHECK (hour_from < hour_to)
);
CREATE INDEX efficiency_invalidations_hour_from_idx ON efficiency_invalidations (hour_from);

-- The partition functions of 0001/0002 named the two history tables; from here on
-- they serve every day-partitioned table of the schema, so the roll-up's days are
-- premade, made on demand and dropped by retention exactly like history's.
CREATE OR REPLACE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    qualified_parent text := format('%I.%I', current_schema(), parent);
    qualified_child text := format('%I.%I', current_schema(), parent || '_p' || to_char(day, 'YYYYMMDD'));
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_class p
                   WHERE p.relname = parent AND p.relkind = 'p'
                     AND p.relnamespace = to_regnamespace(current_schema())) THEN
        RAISE EXCEPTION 'not a day-partitioned table: %', parent;
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

-- As in 0002: CREATE OR REPLACE resets the function's settings, so a retention
-- floor an operator set on it is read first and put back afterwards.
SELECT set_config('fleet_bridge.kept_retention_floor', coalesce((
    SELECT option_value
    FROM pg_proc p, pg_options_to_table(p.proconfig)
    WHERE p.oid = format('%I.drop_day_partitions_before(date)', current_schema())::regprocedure
      AND option_name = 'fleet_bridge.min_retention_days'), ''), true);

CREATE OR REPLACE FUNCTION drop_day_partitions_before(cutoff date) RETURNS SETOF text
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    part record;
    floor_days integer := greatest(2, coalesce(
        nullif(current_setting('fleet_bridge.min_retention_days', true), '')::integer, 2));
    -- The newest day the floor lets go: today (server, UTC) and floor_days before it stay.
    newest_droppable date := (now() AT TIME ZONE 'UTC')::date - floor_days - 1;
    doomed text[];
    refused text[];
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('fleet_bridge.partitions'));
    SELECT coalesce(array_agg(c.relname ORDER BY c.relname), '{}'),
           coalesce(array_agg(c.relname ORDER BY c.relname)
                    FILTER (WHERE to_date(right(c.relname, 8), 'YYYYMMDD') > newest_droppable), '{}')
    INTO doomed, refused
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relkind = 'p'
      AND p.relnamespace = to_regnamespace(current_schema())
      AND c.relname = p.relname || '_p' || right(c.relname, 8)
      AND c.relname ~ '_p[0-9]{8}$'
      AND to_date(right(c.relname, 8), 'YYYYMMDD') < cutoff;
    IF cardinality(refused) > 0 THEN
        RAISE EXCEPTION 'refusing to drop % day partition(s) inside the retention floor of % days',
            cardinality(refused), floor_days
            USING ERRCODE = 'insufficient_privilege',
                  DETAIL = format('refused: %s', array_to_string(refused, ', ')),
                  HINT = format('the newest day that may be dropped today is %s', newest_droppable);
    END IF;
    FOR part IN SELECT unnest(doomed) AS relname LOOP
        EXECUTE format('DROP TABLE %I.%I', current_schema(), part.relname);
        RETURN NEXT part.relname;
    END LOOP;
END
$$;

DO $$
DECLARE
    floor_value text := current_setting('fleet_bridge.kept_retention_floor');
BEGIN
    IF floor_value <> '' THEN
        EXECUTE format('ALTER FUNCTION %I.drop_day_partitions_before(date) SET fleet_bridge.min_retention_days = %L',
                       current_schema(), floor_value);
    END IF;
END
$$;
