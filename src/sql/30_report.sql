
/*
 * Progress, validation and the checklist (report.c, validate.c).
 *
 * Status is plain SQL over the catalog: reading it takes nothing stronger
 * than AccessShareLock on migrate_ext's own tables and never touches the
 * migrating table, so it neither waits for the backfill nor makes it wait.
 * Every figure is derived here from the latest job row of each migration:
 *
 *   state       the job's state; running, throttled or paused while nobody
 *               holds the worker's advisory lock (1835624306, job id) reads
 *               "interrupted" (the worker died without recording it)
 *   rows_total  the planner's estimate at start, the exact count when the
 *               job knows it, never below the rows already covered; at done
 *               the rows covered
 *   percent     rows covered / rows_total, 100 only when done (99.9 at most
 *               before)
 *   rate_avg    rows covered per second of running time (pauses excluded)
 *   eta         the rows left at rate_recent (else rate_avg), while running
 *               or throttled, after a first batch and a second of work
 */

/* The last exact or sampled validation of each migration, for the checklist. */
CREATE SEQUENCE migrate_ext.validation_run_seq;
CREATE TABLE migrate_ext.validation (
	run			bigint NOT NULL,	/* one mig_validate call */
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	at			timestamptz NOT NULL DEFAULT clock_timestamp(),
	by_role		name NOT NULL,
	sample		int,			/* NULL: an exact run */
	rows_checked bigint NOT NULL,
	ord			int NOT NULL,
	check_name	text NOT NULL,
	passed		boolean NOT NULL,
	failing		bigint NOT NULL,
	detail		text,
	PRIMARY KEY (run, ord)
);
CREATE INDEX validation_migration ON migrate_ext.validation (migration_id, run);
GRANT SELECT ON migrate_ext.validation TO PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.validation', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.validation_run_seq', '');

/* Glyphs that fall back to ASCII where the database encoding is not UTF8. */
CREATE FUNCTION migrate_ext.progress_bar(percent numeric) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_progress_bar' LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION migrate_ext.arrow() RETURNS text
	AS 'MODULE_PATHNAME', 'mig_arrow' LANGUAGE C IMMUTABLE;

/* The table's latest migration, or an error that says there is none. */
CREATE FUNCTION migrate_ext.migration_of(tbl regclass) RETURNS bigint
	AS 'MODULE_PATHNAME', 'mig_migration_of' LANGUAGE C STABLE STRICT;

/* Every migration with its latest job, every status figure derived. */
CREATE VIEW migrate_ext.progress AS
SELECT m.id AS migration_id,
	   m.relid,
	   coalesce((SELECT c.oid::pg_catalog.regclass::text
				   FROM pg_catalog.pg_class c WHERE c.oid = m.relid),
				m.table_name) AS table_name,
	   (SELECT pg_catalog.string_agg(pg_catalog.format('%s %s %s', p.old_col,
													   migrate_ext.arrow(), p.new_col),
									 ', ' ORDER BY p.ord)
		  FROM migrate_ext.column_pair p WHERE p.migration_id = m.id) AS columns,
	   m.phase,
	   d.state,
	   CASE WHEN d.state IN ('running', 'throttled') THEN j.throttle_reason END
		   AS throttle_reason,
	   j.rows_done,
	   j.rows_seen,
	   t.rows_total,
	   t.rows_total_exact,
	   p.percent,
	   migrate_ext.progress_bar(p.percent) AS bar,
	   CASE WHEN d.state IN ('running', 'throttled')
		   THEN pg_catalog.round(j.rate_recent)::bigint END AS rate_recent,
	   r.rate_avg::bigint AS rate_avg,
	   CASE WHEN d.state IN ('running', 'throttled') AND j.batches > 0
				 AND j.active_seconds >= 1 AND t.rows_total IS NOT NULL
				 AND coalesce(j.rate_recent, r.rate_avg) > 0
		   THEN pg_catalog.make_interval(secs => pg_catalog.ceil(
					GREATEST(t.rows_total - j.rows_seen, 0)
					/ coalesce(j.rate_recent, r.rate_avg)))
	   END AS eta,
	   j.batch_size,
	   j.batches,
	   j.retries,
	   j.last_error,
	   j.last_sqlstate,
	   j.id AS job_id,
	   j.started_at,
	   j.finished_at,
	   GREATEST(m.updated_at, j.updated_at) AS updated_at,
	   m.created_at,
	   m.created_by
  FROM migrate_ext.migration m
  LEFT JOIN LATERAL (SELECT * FROM migrate_ext.job j WHERE j.migration_id = m.id
					  ORDER BY j.id DESC LIMIT 1) j ON true
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state IN ('running', 'throttled', 'paused')
					 AND (j.dboid, j.id) NOT IN (
						SELECT l.database, l.objid::bigint FROM pg_catalog.pg_locks l
						 WHERE l.locktype = 'advisory' AND l.classid = 1835624306
						   AND l.objsubid = 2 AND l.granted)
				THEN 'interrupted' ELSE j.state END AS state) d
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state = 'done' THEN j.rows_seen
				WHEN j.rows_total IS NOT NULL THEN GREATEST(j.rows_total, j.rows_seen)
		   END AS rows_total,
		   CASE WHEN j.id IS NOT NULL
				THEN j.state = 'done' OR (j.rows_total_exact AND j.rows_total >= j.rows_seen)
		   END AS rows_total_exact) t
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state = 'done' THEN 100.0
				WHEN t.rows_total IS NULL THEN NULL
				WHEN t.rows_total = 0 THEN 0.0
				ELSE LEAST(99.9, pg_catalog.round(100.0 * j.rows_seen / t.rows_total, 1))
		   END::numeric(4,1) AS percent) p
 CROSS JOIN LATERAL (
	SELECT pg_catalog.round((j.rows_seen / NULLIF(j.active_seconds, 0))::numeric)
		   AS rate_avg) r;

CREATE VIEW mig_status AS
SELECT table_name, columns, phase, state, throttle_reason, rows_done, rows_total,
	   percent, bar, rate_recent, rate_avg, eta, batch_size, batches, retries,
	   last_error, last_sqlstate, started_at, updated_at,
	   migration_id, job_id, rows_seen, rows_total_exact
  FROM migrate_ext.progress
 WHERE phase NOT IN ('contracted', 'aborted');
COMMENT ON VIEW mig_status IS
	'one row per active migration: phase, backfill progress, rate and ETA';

CREATE VIEW mig_history AS
SELECT g.table_name, g.columns, g.phase, g.state, g.throttle_reason, g.rows_done,
	   g.rows_total, g.percent, g.bar, g.rate_recent, g.rate_avg, g.eta, g.batch_size,
	   g.batches, g.retries, g.last_error, g.last_sqlstate, g.started_at, g.updated_at,
	   g.migration_id, g.job_id, g.rows_seen, g.rows_total_exact,
	   g.created_at, g.created_by, g.finished_at,
	   (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
				'phase', l.phase, 'at', l.at, 'by', l.by_role, 'detail', l.detail))
				ORDER BY l.at)
		  FROM migrate_ext.phase_log l WHERE l.migration_id = g.migration_id) AS phases
  FROM migrate_ext.progress g;
COMMENT ON VIEW mig_history IS
	'every migration, active or not, with who moved it to each phase and when';

GRANT SELECT ON migrate_ext.progress, mig_status, mig_history TO PUBLIC;

CREATE FUNCTION mig_progress(tbl regclass) RETURNS SETOF mig_status
	LANGUAGE sql STABLE STRICT
	AS $$
SELECT table_name, columns, phase, state, throttle_reason, rows_done, rows_total,
	   percent, bar, rate_recent, rate_avg, eta, batch_size, batches, retries,
	   last_error, last_sqlstate, started_at, updated_at,
	   migration_id, job_id, rows_seen, rows_total_exact
  FROM migrate_ext.progress
 WHERE migration_id = migrate_ext.migration_of(tbl)
$$;
COMMENT ON FUNCTION mig_progress IS
	'the mig_status row of the table''s latest migration (active or not)';

CREATE FUNCTION mig_wait(tbl regclass, timeout interval DEFAULT NULL) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_wait' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mig_wait IS
	'waits for the backfill job to end, printing a progress line every few seconds; returns its state';

CREATE FUNCTION mig_validate(tbl regclass, sample int DEFAULT NULL)
	RETURNS TABLE (check_name text, passed boolean, failing bigint, detail text)
	AS 'MODULE_PATHNAME', 'mig_validate' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION mig_validate IS
	'checks every row (or a random sample) of the migration; all passed on an exact run: phase validated';

CREATE FUNCTION mig_checklist(tbl regclass) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_checklist' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION mig_checklist IS
	'the live runbook of the table''s migration, as markdown';
