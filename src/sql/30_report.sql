
/*
 * Progress, validation and the checklist (report.c, validate.c).
 *
 * Status is plain SQL over the catalog: reading it takes nothing stronger
 * than AccessShareLock on migrate_ext's own tables and never touches the
 * migrating table, so it neither waits for the backfill nor makes it wait.
 * Every figure is derived here from the latest job row of each migration:
 *
 *   state       the job's state; running, throttled or paused while nobody
 *               holds the worker's advisory lock (lock_key('job'), job id)
 *               reads "interrupted" (the worker died without recording it)
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
	at			timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
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
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.validation', '');
/* read through migrate_ext.validations only (see 00_catalog.sql's REVOKE) */
REVOKE ALL ON TABLE migrate_ext.validation FROM PUBLIC;
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.validation_run_seq', '');
-- read through the masked views only, as the tables of 00_catalog.sql
REVOKE SELECT ON TABLE migrate_ext.validation FROM PUBLIC;

/* Glyphs that fall back to ASCII where the database encoding is not UTF8. */
CREATE FUNCTION migrate_ext.progress_bar(percent numeric) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_progress_bar' LANGUAGE C IMMUTABLE STRICT;
CREATE FUNCTION migrate_ext.arrow() RETURNS text
	AS 'MODULE_PATHNAME', 'mig_arrow' LANGUAGE C IMMUTABLE;

/* The table's latest migration, or an error that says there is none. */
CREATE FUNCTION migrate_ext.migration_of(tbl regclass) RETURNS bigint
	AS 'MODULE_PATHNAME', 'mig_migration_of' LANGUAGE C STABLE STRICT;

/*
 * The first key of the advisory locks the C code takes (report.c): 'job',
 * held by a worker for its whole life, and 'gate', held by whoever starts
 * one until that transaction ends.  SQL never spells the numbers.
 */
CREATE FUNCTION migrate_ext.lock_key(kind text) RETURNS int
	AS 'MODULE_PATHNAME', 'mig_lock_key' LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION migrate_ext.lock_key(text) IS
	'first int4 key of migrate_ext''s advisory locks: ''job'' (a worker is alive), ''gate'' (a worker is starting) or ''vacuum'' (a backfill''s VACUUM of a table runs)';

/*
 * May the current role see a migration's row data (key values, failing
 * rows, expressions, errors)?  When it may SELECT the table and see every
 * row of it: not when row-level security filters its reads (an error or a
 * checkpoint key can quote a row its policies hide), unless it is the
 * table's owner (FORCE ROW LEVEL SECURITY hides nothing from the owner that
 * it could not see by turning it off).  For a table that no longer exists,
 * only a superuser.  has_table_privilege() and row_security_active() read
 * the syscache and take no lock, so the status views stay non-blocking.
 */
CREATE FUNCTION migrate_ext.can_read(relid oid) RETURNS boolean
	LANGUAGE sql STABLE PARALLEL SAFE
	RETURN CASE WHEN pg_catalog.has_table_privilege(relid, 'SELECT') IS NULL
			THEN (SELECT r.rolsuper FROM pg_catalog.pg_roles r
				   WHERE r.rolname OPERATOR(pg_catalog.=) CURRENT_USER)
			ELSE pg_catalog.has_table_privilege(relid, 'SELECT')
				 AND (NOT pg_catalog.row_security_active(relid)
					  OR (SELECT pg_catalog.pg_has_role(c.relowner, 'USAGE')
							FROM pg_catalog.pg_class c
						   WHERE c.oid OPERATOR(pg_catalog.=) relid))
		   END;

/*
 * Every migration with its latest job, every status figure derived.  For
 * the C code (which reads it as the extension owner) and the views below;
 * it shows everything, so only the extension owner reads it.
 *
 * Like everything in this script it means what it says whatever the
 * search_path and whatever objects exist in other schemas: every function
 * and operator is qualified (pg_catalog's), so a planted exact-match
 * operator such as public.*(bigint, numeric) can never win, not even when
 * CREATE EXTENSION runs with public in its search_path.
 */
CREATE VIEW migrate_ext.progress AS
SELECT m.id AS migration_id,
	   m.relid,
	   coalesce((SELECT c.oid::pg_catalog.regclass::pg_catalog.text
							  FROM pg_catalog.pg_class c
							 WHERE c.oid OPERATOR(pg_catalog.=) m.relid),
						   m.table_name) AS table_name,
	   (SELECT pg_catalog.string_agg(pg_catalog.format('%s %s %s', p.old_col,
													   migrate_ext.arrow(), p.new_col),
									 ', '::pg_catalog.text ORDER BY p.ord)
		  FROM migrate_ext.column_pair p
		 WHERE p.migration_id OPERATOR(pg_catalog.=) m.id) AS columns,
	   m.phase,
	   d.state,
	   CASE WHEN d.running THEN j.throttle_reason END AS throttle_reason,
	   j.rows_done,
	   j.rows_seen,
	   t.rows_total,
	   t.rows_total_exact,
	   p.percent,
	   migrate_ext.progress_bar(p.percent) AS bar,
	   CASE WHEN d.running THEN pg_catalog.round(j.rate_recent)::bigint END AS rate_recent,
	   r.rate_avg::bigint AS rate_avg,
	   CASE WHEN d.running AND j.batches OPERATOR(pg_catalog.>) 0::bigint
				 AND j.active_seconds OPERATOR(pg_catalog.>=) 1::float8
				 AND t.rows_total IS NOT NULL AND e.rate OPERATOR(pg_catalog.>) 0::float8
		   THEN pg_catalog.make_interval(secs => pg_catalog.ceil(
					GREATEST(t.rows_total OPERATOR(pg_catalog.-) j.rows_seen, 0::bigint)::float8
					OPERATOR(pg_catalog./) e.rate))
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
	   m.created_by,
	   w.workers,
	   sl.slices_total,
	   sl.slices_done,
	   sl.slices_detached,
	   sl.worker_progress,
	   coalesce(sl.write_path, j.write_path) AS write_path,
	   fk.fkeys_to_finish,
	   CASE WHEN fk.fkeys_to_finish OPERATOR(pg_catalog.>) 0 THEN EXISTS (
			SELECT FROM pg_catalog.pg_locks l
			 WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'::pg_catalog.text
			   AND l.database OPERATOR(pg_catalog.=)
				   (SELECT d.oid FROM pg_catalog.pg_database d
					 WHERE d.datname OPERATOR(pg_catalog.=) pg_catalog.current_database())
			   AND l.classid OPERATOR(pg_catalog.=) m.relid
			   AND l.objid OPERATOR(pg_catalog.=) 0::pg_catalog.oid
			   AND l.objsubid OPERATOR(pg_catalog.=) 3::smallint
			   AND l.granted)
	   END AS fkeys_finishing
  FROM migrate_ext.migration m
  LEFT JOIN LATERAL (SELECT * FROM migrate_ext.job j
					  WHERE j.migration_id OPERATOR(pg_catalog.=) m.id
					  ORDER BY j.id DESC LIMIT 1) j ON true
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state OPERATOR(pg_catalog.=) ANY
						 (ARRAY['running', 'throttled', 'paused']::pg_catalog.text[])
					 AND NOT EXISTS (
						SELECT FROM pg_catalog.pg_locks l
						 WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'::pg_catalog.text
						   AND l.database OPERATOR(pg_catalog.=) j.dboid
						   AND l.classid OPERATOR(pg_catalog.=)
							   migrate_ext.lock_key('job')::pg_catalog.oid
						   AND l.objid::bigint OPERATOR(pg_catalog.=) j.id
						   AND l.objsubid OPERATOR(pg_catalog.=) 2::smallint
						   AND l.granted)
				THEN 'interrupted'::pg_catalog.text ELSE j.state END AS state) d0
 CROSS JOIN LATERAL (
	SELECT d0.state,
		   coalesce(d0.state OPERATOR(pg_catalog.=) ANY
							   (ARRAY['running', 'throttled']::pg_catalog.text[]), false)
			   AS running) d
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state OPERATOR(pg_catalog.=) 'done'::pg_catalog.text THEN j.rows_seen
				WHEN j.rows_total IS NOT NULL THEN GREATEST(j.rows_total, j.rows_seen)
		   END AS rows_total,
		   CASE WHEN j.id IS NOT NULL
				THEN j.state OPERATOR(pg_catalog.=) 'done'::pg_catalog.text
					 OR (j.rows_total_exact
						 AND j.rows_total OPERATOR(pg_catalog.>=) j.rows_seen)
		   END AS rows_total_exact) t
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.state OPERATOR(pg_catalog.=) 'done'::pg_catalog.text THEN 100.0
				WHEN t.rows_total IS NULL THEN NULL
				WHEN t.rows_total OPERATOR(pg_catalog.=) 0::bigint THEN 0.0
				ELSE LEAST(99.9, pg_catalog.round(
						(100.0 OPERATOR(pg_catalog.*) j.rows_seen::numeric)
						OPERATOR(pg_catalog./) t.rows_total::numeric, 1))
		   END::numeric(4,1) AS percent) p
 CROSS JOIN LATERAL (
	SELECT CASE WHEN j.active_seconds OPERATOR(pg_catalog.<>) 0::float8
				THEN pg_catalog.round((j.rows_seen::float8
									   OPERATOR(pg_catalog./) j.active_seconds)::numeric)
		   END AS rate_avg) r
 CROSS JOIN LATERAL (
	SELECT coalesce(j.rate_recent, r.rate_avg::float8) AS rate) e
 CROSS JOIN LATERAL (
	SELECT pg_catalog.count(*)::int AS workers
	  FROM pg_catalog.pg_locks l
	 WHERE l.locktype OPERATOR(pg_catalog.=) 'advisory'::pg_catalog.text
	   AND l.database OPERATOR(pg_catalog.=) j.dboid
	   AND l.classid OPERATOR(pg_catalog.=) migrate_ext.lock_key('job')::pg_catalog.oid
	   AND l.objid::bigint OPERATOR(pg_catalog.=) j.id
	   AND l.objsubid OPERATOR(pg_catalog.=) 2::smallint
	   AND l.granted) w
 CROSS JOIN LATERAL (
	SELECT pg_catalog.count(*)::int AS slices_total,
		   (pg_catalog.count(*) FILTER (
				WHERE s.state OPERATOR(pg_catalog.=) 'done'::pg_catalog.text))::int AS slices_done,
		   (pg_catalog.count(*) FILTER (
				WHERE s.state OPERATOR(pg_catalog.=) 'detached'::pg_catalog.text))::int
			   AS slices_detached,
		   pg_catalog.string_agg(pg_catalog.format('%s %s/%s', s.relname, s.rows_seen,
												   coalesce(s.rows_total::pg_catalog.text, '?')),
								 ', '::pg_catalog.text ORDER BY s.slice_no)
			   FILTER (WHERE s.state OPERATOR(pg_catalog.=) 'running'::pg_catalog.text
					   AND d.running) AS worker_progress,
		   pg_catalog.string_agg(DISTINCT s.write_path, '; '::pg_catalog.text
								 ORDER BY s.write_path) AS write_path
	  FROM migrate_ext.job_slice s
	 WHERE s.job_id OPERATOR(pg_catalog.=) j.id) sl
 CROSS JOIN LATERAL (
	-- the foreign key copies a swap left to finish (contract_worker.c): not
	-- validated yet, or a leaf's not attached to its partitioned table yet
	SELECT pg_catalog.count(*)::int AS fkeys_to_finish
	  FROM migrate_ext.contract_object o
	  JOIN pg_catalog.pg_constraint c ON c.oid OPERATOR(pg_catalog.=) o.objid
							 AND c.conrelid OPERATOR(pg_catalog.=) o.relid
	  JOIN pg_catalog.pg_class r ON r.oid OPERATOR(pg_catalog.=) c.conrelid
	 WHERE o.migration_id OPERATOR(pg_catalog.=) m.id
	   AND m.phase OPERATOR(pg_catalog.=) 'contracted'::pg_catalog.text
	   AND o.classid OPERATOR(pg_catalog.=) 'pg_catalog.pg_constraint'::pg_catalog.regclass::pg_catalog.oid
	   AND c.contype OPERATOR(pg_catalog.=) 'f'::pg_catalog."char"
	   AND (NOT c.convalidated
			OR (r.relispartition AND c.conparentid OPERATOR(pg_catalog.=) 0::pg_catalog.oid))) fk;

/*
 * The status columns, written once: mig_status, mig_history and
 * mig_progress() are built from this view.  Everyone may read it; a role
 * that cannot SELECT the table sees last_error as NULL (an error can quote
 * a row's values), everything else (names, phases, counts, times) as
 * everyone sees it in pg_class and pg_stat_*.
 */
CREATE VIEW migrate_ext.status WITH (security_barrier) AS
SELECT g.table_name, g.columns, g.phase, g.state, g.throttle_reason, g.rows_done,
	   g.rows_total, g.percent, g.bar, g.rate_recent, g.rate_avg, g.eta, g.batch_size,
	   g.batches, g.retries,
	   CASE WHEN migrate_ext.can_read(g.relid) THEN g.last_error END AS last_error,
	   g.last_sqlstate, g.started_at, g.updated_at,
	   g.migration_id, g.job_id, g.rows_seen, g.rows_total_exact,
	   g.workers, g.slices_total, g.slices_done, g.slices_detached, g.worker_progress,
	   g.write_path, g.fkeys_to_finish, g.fkeys_finishing
  FROM migrate_ext.progress g;

CREATE VIEW @extschema@.mig_status WITH (security_barrier) AS
SELECT s.*
  FROM migrate_ext.status s
 WHERE s.phase OPERATOR(pg_catalog.<>) ALL
	   (ARRAY['contracted', 'aborted']::pg_catalog.text[])
	OR s.fkeys_to_finish OPERATOR(pg_catalog.>) 0;
COMMENT ON VIEW @extschema@.mig_status IS
	'one row per active migration (and per contracted one with foreign keys left to finish): phase, backfill progress, rate and ETA';

CREATE VIEW @extschema@.mig_history WITH (security_barrier) AS
SELECT s.*, m.created_at, m.created_by, j.finished_at,
	   (SELECT pg_catalog.jsonb_agg(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
				'phase', l.phase, 'at', l.at, 'by', l.by_role, 'detail', l.detail))
				ORDER BY l.at)
		  FROM migrate_ext.phase_log l
		 WHERE l.migration_id OPERATOR(pg_catalog.=) s.migration_id) AS phases
  FROM migrate_ext.status s
  JOIN migrate_ext.migration m ON m.id OPERATOR(pg_catalog.=) s.migration_id
  LEFT JOIN migrate_ext.job j ON j.id OPERATOR(pg_catalog.=) s.job_id;
COMMENT ON VIEW @extschema@.mig_history IS
	'every migration, active or not, with who moved it to each phase and when';

/*
 * The catalog's rows for everyone, with what only readers of the table may
 * see NULL for the others: the checkpoint and bound keys and the error of a
 * job, the failing rows in a validation's detail, the expressions of a
 * column pair (their cooked trees are never shown).
 */
CREATE VIEW migrate_ext.jobs WITH (security_barrier) AS
SELECT j.id, j.migration_id, m.relid, j.state, j.throttle_reason, j.dboid, j.role_oid,
	   j.login_oid, j.worker_pid, j.key_kind, j.key_cols,
	   CASE WHEN v.ok THEN j.lower_key END AS lower_key,
	   CASE WHEN v.ok THEN j.upper_key END AS upper_key,
	   j.rows_total, j.rows_total_exact, j.rows_done, j.rows_seen, j.batch_size,
	   j.batch_size_fixed, j.target_batch_ms, j.sleep_ms, j.max_replica_lag,
	   j.max_rows_per_sec, j.batches, j.retries,
	   CASE WHEN v.ok THEN j.last_error END AS last_error,
	   j.last_sqlstate, j.rate_recent, j.active_seconds, j.vacuums, j.started_at,
	   j.updated_at, j.finished_at, j.fire_triggers, j.parallel
  FROM migrate_ext.job j
  JOIN migrate_ext.migration m ON m.id OPERATOR(pg_catalog.=) j.migration_id
 CROSS JOIN LATERAL (SELECT migrate_ext.can_read(m.relid) AS ok) v;
COMMENT ON VIEW migrate_ext.jobs IS
	'every backfill job; keys and errors only for roles that can read the table';

CREATE VIEW migrate_ext.job_slices WITH (security_barrier) AS
SELECT s.job_id, s.slice_no, j.migration_id, m.relid AS table_relid, s.relid, s.relname,
	   s.state, s.key_kind, s.key_cols,
	   CASE WHEN v.ok THEN s.lower_key END AS lower_key,
	   CASE WHEN v.ok THEN s.upper_key END AS upper_key,
	   s.rows_total, s.rows_done, s.rows_seen, s.batches, s.worker_pid, s.worker_slot,
	   s.rate_cap, s.rate_recent, s.updated_at
  FROM migrate_ext.job_slice s
  JOIN migrate_ext.job j ON j.id OPERATOR(pg_catalog.=) s.job_id
  JOIN migrate_ext.migration m ON m.id OPERATOR(pg_catalog.=) j.migration_id
 CROSS JOIN LATERAL (SELECT migrate_ext.can_read(m.relid) AS ok) v;
COMMENT ON VIEW migrate_ext.job_slices IS
	'the slices of every backfill job (leaf partitions, or ranges of one table); keys only for roles that can read the table';

CREATE VIEW migrate_ext.validations WITH (security_barrier) AS
SELECT x.run, x.migration_id, m.relid, x.at, x.by_role, x.sample, x.rows_checked, x.ord,
	   x.check_name, x.passed, x.failing,
	   CASE WHEN migrate_ext.can_read(m.relid) THEN x.detail END AS detail
  FROM migrate_ext.validation x
  JOIN migrate_ext.migration m ON m.id OPERATOR(pg_catalog.=) x.migration_id;
COMMENT ON VIEW migrate_ext.validations IS
	'every check of every mig_validate run; details (failing keys) only for roles that can read the table';

CREATE VIEW migrate_ext.column_pairs WITH (security_barrier) AS
SELECT p.migration_id, m.relid, p.ord, p.old_col, p.old_attnum, p.new_col, p.new_attnum,
	   p.in_place, p.new_type, p.not_null,
	   CASE WHEN v.ok THEN p.up_src END AS up_src,
	   CASE WHEN v.ok THEN p.down_src END AS down_src,
	   CASE WHEN v.ok THEN p.check_src END AS check_src
  FROM migrate_ext.column_pair p
  JOIN migrate_ext.migration m ON m.id OPERATOR(pg_catalog.=) p.migration_id
 CROSS JOIN LATERAL (SELECT migrate_ext.can_read(m.relid) AS ok) v;
COMMENT ON VIEW migrate_ext.column_pairs IS
	'every old -> new column pair; expressions only for roles that can read the table';

GRANT SELECT ON migrate_ext.status, migrate_ext.jobs, migrate_ext.job_slices, migrate_ext.validations,
	migrate_ext.column_pairs, @extschema@.mig_status, @extschema@.mig_history TO PUBLIC;

/* SQL-standard body: bound when the script runs, not under a caller's search_path. */
CREATE FUNCTION mig_progress(tbl regclass) RETURNS SETOF @extschema@.mig_status
	LANGUAGE sql STABLE STRICT
BEGIN ATOMIC
	SELECT s.*
	  FROM migrate_ext.status s
	 WHERE s.migration_id OPERATOR(pg_catalog.=) migrate_ext.migration_of(tbl);
END;
COMMENT ON FUNCTION @extschema@.mig_progress IS
	'the mig_status row of the table''s latest migration (active or not)';

CREATE FUNCTION mig_wait(tbl regclass, timeout interval DEFAULT NULL) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_wait' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_wait IS
	'waits for the backfill job to end, printing a progress line every few seconds; returns its state';

CREATE FUNCTION mig_validate(tbl regclass, sample int DEFAULT NULL)
	RETURNS TABLE (check_name text, passed boolean, failing bigint, detail text)
	AS 'MODULE_PATHNAME', 'mig_validate' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_validate IS
	'checks every row (or a random sample) of the migration; all passed on an exact run: phase validated';

CREATE FUNCTION mig_checklist(tbl regclass) RETURNS text
	AS 'MODULE_PATHNAME', 'mig_checklist' LANGUAGE C STABLE STRICT;
COMMENT ON FUNCTION @extschema@.mig_checklist IS
	'the live runbook of the table''s migration, as markdown';
