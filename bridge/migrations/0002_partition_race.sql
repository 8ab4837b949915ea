-- ensure_day_partition, fixed for callers that race for the same missing day.
--
-- The advisory lock of 0001 serialises the callers, but the re-check after it
-- could not see the partition the previous holder had just created and
-- committed: to_regclass() reads this backend's catalog cache, and waiting for
-- an advisory lock does not refresh it. The second caller then failed with
-- 42P07 "relation ... already exists" (every time, with six callers at once;
-- the bridge retried the batch, so nothing was lost, but every replica that
-- raced logged a database error). Taking a lock on the parent table does
-- refresh the cache. SHARE UPDATE EXCLUSIVE does not block inserts; creating
-- the partition takes the stronger lock it always took.
CREATE OR REPLACE FUNCTION ensure_day_partition(parent text, day date) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    child text := parent || '_p' || to_char(day, 'YYYYMMDD');
BEGIN
    IF parent NOT IN ('meter_telemetry_history', 'vehicle_telemetry_history') THEN
        RAISE EXCEPTION 'not a history table: %', parent;
    END IF;
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('fleet_bridge.partitions'));
    EXECUTE format('LOCK TABLE %I IN SHARE UPDATE EXCLUSIVE MODE', parent);
    IF to_regclass(quote_ident(child)) IS NOT NULL THEN
        RETURN false;
    END IF;
    EXECUTE format(
        'CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%L) TO (%L)',
        child, parent,
        to_char(day, 'YYYY-MM-DD') || ' 00:00:00+00',
        to_char(day + 1, 'YYYY-MM-DD') || ' 00:00:00+00');
    RETURN true;
END
$$;
