-- Least-privilege roles for one fleet schema. A psql script: run it as a
-- superuser (it creates roles and grants CREATE on the database), in the
-- bridge's database:
--
--   psql -d fleet -f deploy/postgres/roles.sql
--
-- Names are psql variables; the defaults are shown, override any with -v:
--
--   psql -d fleet -v schema=fleet -v owner=fleet_owner -v ingest=fleet_ingest \
--        -v report=fleet_report -f deploy/postgres/roles.sql
--
--   owner   owns the schema and everything in it; runs `fleet-bridge migrate`,
--           `fleet-bridge partitions` and `fleet-bridge mapping import`.
--   ingest  the daemon (`fleet-bridge run`): writes readings and rejects, keeps
--           the efficiency roll-up, makes and drops day partitions only through
--           the schema's two SECURITY DEFINER functions. Cannot create, alter,
--           drop or truncate, and deletes nothing but worked-off roll-up
--           invalidations.
--   report  analysts (`fleet-bridge report`, `fleet-bridge status`): SELECT only,
--           in read-only transactions.
--
-- Order: run this file, then `fleet-bridge migrate` as the owner, then this file
-- again (its second half grants on the migrated tables). It is idempotent and
-- runs in one transaction: re-run it after any upgrade that adds tables.
--
-- Passwords are not set here, so none is ever written to a file, a shell history
-- or the server log. Set each one interactively with psql, which hashes it on
-- the client (SCRAM) before sending it:
--
--   psql -d fleet -c '\password fleet_ingest'
--
-- or have your secret manager issue ALTER ROLE ... PASSWORD with a SCRAM verifier.

\set ON_ERROR_STOP on
\if :{?schema}
\else
    \set schema fleet
\endif
\if :{?owner}
\else
    \set owner fleet_owner
\endif
\if :{?ingest}
\else
    \set ingest fleet_ingest
\endif
\if :{?report}
\else
    \set report fleet_report
\endif

BEGIN;

-- --- roles ------------------------------------------------------------------------
SELECT format('CREATE ROLE %I', name)
FROM unnest(ARRAY[:'owner', :'ingest', :'report']) AS name
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = name)
\gexec

ALTER ROLE :"owner"  LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS;
ALTER ROLE :"ingest" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER ROLE :"report" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
ALTER ROLE :"report" IN DATABASE :"DBNAME" SET default_transaction_read_only = on;

-- --- database and schema ------------------------------------------------------------
GRANT CONNECT ON DATABASE :"DBNAME" TO :"owner", :"ingest", :"report";
-- `migrate` runs CREATE SCHEMA IF NOT EXISTS, which PostgreSQL checks against
-- the database's CREATE privilege even when the schema exists.
GRANT CREATE ON DATABASE :"DBNAME" TO :"owner";

SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', :'schema', :'owner')
WHERE to_regnamespace(:'schema') IS NULL
\gexec
ALTER SCHEMA :"schema" OWNER TO :"owner";
REVOKE ALL ON SCHEMA :"schema" FROM PUBLIC;
GRANT USAGE ON SCHEMA :"schema" TO :"ingest", :"report";

-- Tables the owner creates later (a day partition made by the maintenance pass
-- or on demand, or a table of a later migration) get these rights at once.
-- Writes to a partitioned table go through its parent, whose grants are below;
-- these cover reading or writing a partition directly.
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT SELECT, INSERT ON TABLES TO :"ingest";
ALTER DEFAULT PRIVILEGES FOR ROLE :"owner" IN SCHEMA :"schema"
    GRANT SELECT ON TABLES TO :"report";

-- --- the migrated objects -----------------------------------------------------------
SELECT to_regclass(format('%I.%I', :'schema', 'schema_migrations')) IS NOT NULL AS migrated
\gset

\if :migrated
    -- Start from nothing, so that a re-run also takes back what is no longer needed.
    REVOKE ALL ON ALL TABLES IN SCHEMA :"schema" FROM :"ingest", :"report";
    REVOKE ALL ON ALL SEQUENCES IN SCHEMA :"schema" FROM :"ingest", :"report";
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA :"schema" FROM :"ingest", :"report";

    -- ingest: history is append-only; current state is upserted (newest wins);
    -- rejects are inserted (RETURNING needs SELECT). The roll-up (the daemon's
    -- loop, or `fleet-bridge rollup` run as this role) reads the mapping, upserts
    -- its two tables, and deletes the invalidation rows it has worked off: those
    -- only say what to recompute, and this role can rewrite the roll-up anyway.
    -- Nothing else on the mapping, nothing on schema_migrations.
    GRANT SELECT, INSERT ON
        :"schema".meter_telemetry_history,
        :"schema".vehicle_telemetry_history,
        :"schema".ingest_rejects
        TO :"ingest";
    GRANT SELECT, INSERT, UPDATE ON
        :"schema".meter_current_state,
        :"schema".vehicle_current_state,
        :"schema".efficiency_hourly,
        :"schema".efficiency_fleet_hourly
        TO :"ingest";
    GRANT SELECT, INSERT, DELETE ON :"schema".efficiency_invalidations TO :"ingest";
    GRANT SELECT ON :"schema".vehicle_meter_mapping TO :"ingest";
    GRANT USAGE ON SEQUENCE
        :"schema".ingest_rejects_id_seq,
        :"schema".efficiency_invalidations_id_seq
        TO :"ingest";
    GRANT EXECUTE ON FUNCTION
        :"schema".ensure_day_partition(text, date),
        :"schema".drop_day_partitions_before(date)
        TO :"ingest";

    -- report: read everything.
    GRANT SELECT ON ALL TABLES IN SCHEMA :"schema" TO :"report";

    -- The day partitions that exist already (history and roll-up), as the default
    -- privileges do for new ones.
    SELECT format('GRANT SELECT, INSERT ON %I.%I TO %I', :'schema', c.relname, :'ingest')
    FROM pg_inherits i
    JOIN pg_class c ON c.oid = i.inhrelid
    JOIN pg_class p ON p.oid = i.inhparent
    WHERE p.relnamespace = to_regnamespace(:'schema')
      AND p.relkind = 'p'
    ORDER BY c.relname
    \gexec
\else
    \echo 'roles.sql: schema' :schema 'is not migrated yet; run fleet-bridge migrate as' :owner 'and then this file again'
\endif

COMMIT;
