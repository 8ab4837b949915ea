-- The retention floor judges the partitions a pass would drop, not the cutoff it
-- is handed. The cutoff comes from the bridge's clock (its one source of "what day
-- is it"); the floor stays on the database server's clock on purpose: it guards
-- against a caller holding the ingest password, so it cannot take the caller's
-- word for the date. 0001 refused any cutoff later than the floor's, even when no
-- partition would have been dropped; this refuses, dropping nothing, only when a
-- partition of the floor's days would go.
--
-- CREATE OR REPLACE resets the function's settings, so a floor an operator set
-- with ALTER FUNCTION ... SET fleet_bridge.min_retention_days is carried over.
-- Setting that parameter needs a superuser (or, on PostgreSQL 15 and later, SET ON
-- PARAMETER): where a floor was set, run this migration as such a role.
SELECT set_config('search_path', format('%I, pg_temp', current_schema()), true);

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
    WHERE p.relname IN ('meter_telemetry_history', 'vehicle_telemetry_history')
      AND p.relnamespace = to_regnamespace(current_schema())
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
