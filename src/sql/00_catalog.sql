/*
 * migrate_ext: the catalog.
 *
 * Every migration, each of its column pairs, every phase change and every
 * backfill job is a row here.  Rows are never deleted when a migration ends,
 * so the tables double as the audit trail behind mig_history.
 *
 * The tables live in schema migrate_ext, out of the way of the public API,
 * and are read and written only by the extension's C code, which switches
 * to the extension owner for that (catalog.c), and by its views.  Nobody
 * else may read them: they hold key values, failing rows and expressions of
 * tables a role may not be allowed to read.  Everyone reads them through
 * mig_status, mig_history, migrate_ext.status, .jobs, .validations and
 * .column_pairs (30_report.sql), which show those only to roles that may
 * SELECT the table.
 */
\echo Use "CREATE EXTENSION migrate_ext" to load this file. \quit

CREATE SCHEMA migrate_ext;
GRANT USAGE ON SCHEMA migrate_ext TO PUBLIC;

CREATE TABLE migrate_ext.migration (
	id			bigserial PRIMARY KEY,
	relid		oid NOT NULL,
	table_name	text NOT NULL,	/* qualified name at expand, for the audit trail */
	phase		text NOT NULL DEFAULT 'expanded'
		CHECK (phase OPERATOR(pg_catalog.=) ANY (ARRAY['expanded', 'backfilling',
			'backfilled', 'validated', 'cutover', 'contracted', 'aborted']::pg_catalog.text[])),
	created_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	created_by	name NOT NULL DEFAULT current_user,
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	/* set (guard.c) when writes may have bypassed the dual-write trigger */
	invalidated_at timestamptz,
	invalidated_why text
);

/* One active migration per table. */
CREATE UNIQUE INDEX migration_active_relid ON migrate_ext.migration (relid)
	WHERE phase OPERATOR(pg_catalog.<>) ALL (ARRAY['contracted', 'aborted']::pg_catalog.text[]);

CREATE TABLE migrate_ext.column_pair (
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	ord			int NOT NULL,
	old_col		name NOT NULL,
	old_attnum	int2 NOT NULL,
	new_col		name NOT NULL,
	new_attnum	int2 NOT NULL,
	in_place	boolean NOT NULL,	/* new_col takes old_col's name at contract */
	new_type	text NOT NULL,		/* format_type() of the new column */
	up_src		text,			/* as the user wrote it; NULL: the default cast */
	up_expr		text NOT NULL,	/* nodeToString() of the cooked expression */
	down_src	text,
	down_expr	text,			/* NULL: no reverse sync */
	not_null	boolean NOT NULL DEFAULT false,
	check_src	text,
	check_expr	text,
	new_default_src text,		/* NULL: the old column's default at contract */
	new_default_expr text,
	keep_old	boolean NOT NULL DEFAULT false,	/* contract keeps old_col */
	PRIMARY KEY (migration_id, ord)
);

CREATE TABLE migrate_ext.phase_log (
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	phase		text NOT NULL,
	at			timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
	by_role		name NOT NULL DEFAULT current_user,
	detail		text
);
CREATE INDEX phase_log_migration ON migrate_ext.phase_log (migration_id, at);

/*
 * A backfill job.  The checkpoint (lower_key) commits in the same
 * transaction as the batch it covers, so a crash loses at most one batch.
 *
 * A job in state running, throttled or paused has a live worker exactly when
 * some backend holds the session-level advisory lock on the two int4 keys
 * (migrate_ext.lock_key('job'), id); look for it in pg_locks (locktype
 * 'advisory', classid that key, objid id, objsubid 2), never by taking the
 * lock (migrate_ext.progress does).  Without it
 * the job is interrupted: mig_resume, or the launcher after a restart,
 * continues it from lower_key.
 */
CREATE TABLE migrate_ext.job (
	id			bigserial PRIMARY KEY,
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	state		text NOT NULL DEFAULT 'running'
		CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'throttled', 'paused',
			'done', 'failed', 'cancelled', 'interrupted']::pg_catalog.text[])),
	throttle_reason text,
	dboid		oid NOT NULL,
	role_oid	oid NOT NULL,	/* current_user of the caller: the worker's privileges */
	login_oid	oid NOT NULL,	/* session_user of the caller: the role the worker logs in as */
	worker_pid	int,
	key_kind	text,			/* 'primary key', 'unique key' or 'ctid' */
	key_cols	name[],
	lower_key	text[],			/* checkpoint: every key <= this is done (ctid: every
								 * block before this one); NULL: none yet */
	upper_key	text[],			/* bound frozen at start; newer rows are the trigger's */
	rows_total	bigint,
	rows_total_exact boolean NOT NULL DEFAULT false,
	rows_done	bigint NOT NULL DEFAULT 0,	/* rows the backfill wrote */
	rows_seen	bigint NOT NULL DEFAULT 0,	/* rows its batches covered */
	batch_size	int NOT NULL DEFAULT 1000,
	batch_size_fixed boolean NOT NULL DEFAULT false,
	target_batch_ms int NOT NULL DEFAULT 200,
	sleep_ms	int NOT NULL DEFAULT 0,
	max_replica_lag interval,
	max_rows_per_sec bigint,
	batches		bigint NOT NULL DEFAULT 0,
	retries		bigint NOT NULL DEFAULT 0,
	last_error	text,
	last_sqlstate text,
	rate_recent	float8,
	active_seconds float8 NOT NULL DEFAULT 0,	/* running time, pauses excluded */
	vacuums		int NOT NULL DEFAULT 0,	/* VACUUMs the worker ran to reuse space */
	started_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	finished_at	timestamptz,
	fire_triggers boolean NOT NULL DEFAULT false,	/* the other triggers of the table fire */
	walk_relfilenode oid,		/* the file of the table when the walk started: a ctid
								 * walk starts again after a rewrite */
	parallel	int NOT NULL DEFAULT 1,	/* workers; key_kind 'slices': see job_slice */
	stripe_end	text[],			/* a striped window (lower_key, stripe_end] in progress;
								 * NULL: none (backfill_apply.c) */
	stripe_next int,			/* the window's next stripe */
	write_path	text,			/* how the last batch wrote its rows: 'direct, striped',
								 * 'direct', or 'UPDATE: ' and why (backfill_apply.c) */
	stripe_count int,			/* the striped window's layout: its stripes, and */
	stripe_halves int			/* its halves (a resumed window keeps it) */
);
CREATE INDEX job_migration ON migrate_ext.job (migration_id);
/* At most one unfinished job per migration. */
CREATE UNIQUE INDEX job_one_unfinished ON migrate_ext.job (migration_id)
	WHERE state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'throttled', 'paused',
		'interrupted']::pg_catalog.text[]);

SELECT pg_catalog.pg_extension_config_dump('migrate_ext.migration', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.migration_id_seq', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.column_pair', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.phase_log', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.job', '');
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.job_id_seq', '');

/*
 * Keep last: nobody but the extension owner reads the tables; everyone
 * reads them through the masked views (30_report.sql).  Said explicitly,
 * not left to the default, so that a fresh install and one updated from
 * 0.1 (which granted SELECT to PUBLIC) have the same privileges.
 */
REVOKE ALL ON ALL TABLES IN SCHEMA migrate_ext FROM PUBLIC;

/*
 * What a mig_contract in progress added that is enforced before its swap:
 * the NOT VALID CHECK and foreign-key copies, the unique index copies.
 * Recorded by OID in the transaction that creates each, so that a failed or
 * cancelled contract, and mig_abort, drop exactly these and nothing that
 * merely has their name.  The swap, which makes them the real ones, deletes
 * the rows, and records what is left to finish after it (the foreign keys
 * that reference the table), which mig_status counts.  Not dumped: OIDs
 * mean nothing after a restore.  After the REVOKE above (like a table an
 * update from 0.1 adds): no explicit ACL.
 */
CREATE TABLE migrate_ext.contract_object (
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	classid		oid NOT NULL,	/* pg_constraint or pg_class (an index) */
	objid		oid NOT NULL,
	relid		oid NOT NULL,	/* its table: an OID reused by another object is not ours */
	added_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX contract_object_migration ON migrate_ext.contract_object (migration_id);
