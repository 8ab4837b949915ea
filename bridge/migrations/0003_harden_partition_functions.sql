-- Hardens the two SECURITY DEFINER functions (0001, 0002), which run with the
-- owner's rights for the ingest role. Their bodies are unchanged but for the
-- schema-qualified names and the retention floor.
--
-- 1. Temporary tables. 0001 and 0002 pinned search_path to the schema alone,
--    and PostgreSQL then looks up tables in pg_temp FIRST: a caller's temporary
--    table named like a missing day partition made ensure_day_partition report
--    the day as made and make nothing. Listing pg_temp last is not enough (a
--    missing name still falls through to it), so every name is now qualified
--    with the schema, and search_path is the schema, then pg_temp. The runner
--    set search_path to the schema for this transaction; FROM CURRENT records
--    the value set here.
--
-- 2. A retention floor. drop_day_partitions_before refuses a cutoff that would
--    drop any of the newest days, so a stolen ingest password cannot wipe recent
--    history. The floor is 2 days (today and the two days before are always
--    kept; the smallest retention the settings allow leaves a day for clock
--    skew). A superuser may raise it (on PostgreSQL 15 and later also a role
--    granted SET ON PARAMETER fleet_bridge.min_retention_days):
--
--        ALTER FUNCTION drop_day_partitions_before(date)
--            SET fleet_bridge.min_retention_days = '400';
--
--    A value set on the function wins over any a caller sets in its session,
--    and a session value can only raise the floor, never lower it below 2.
--    Keep it at or below FLEET_BRIDGE_PARTITIONS_RETENTION_DAYS, or the
--    maintenance pass fails on its drop step.

SELECT set_config('search_path', format('%I, pg_temp', current_schema()), true);

CREATE OR REPLACE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
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

CREATE OR REPLACE FUNCTION drop_day_partitions_before(cutoff date) RETURNS SETOF text
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
