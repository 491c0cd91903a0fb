/*
 * The backfill (backfill.c): a background worker per job fills the new
 * column(s) of the existing rows in batches; these functions start and
 * steer it.  Progress is in migrate_ext.job.
 */

/*
 * The slices of a job that walks more than one relation or range
 * (job.key_kind = 'slices'): one per leaf partition of a partitioned table,
 * or disjoint key or block ranges of one heap walked by parallel workers.
 * Each has its own key, bound and checkpoint, committed with its batch; the
 * job row holds the settings, the state and the sums.  Created here, after
 * the catalog's REVOKE, as 0.1--0.2 creates it: nobody but the extension
 * owner reads it (migrate_ext.job_slices masks the keys).
 */
CREATE TABLE migrate_ext.job_slice (
	job_id		bigint NOT NULL REFERENCES migrate_ext.job,
	slice_no	int NOT NULL,
	relid		oid NOT NULL,	/* the leaf, or the table a range belongs to */
	relname		text NOT NULL,	/* for messages once it is gone */
	state		text NOT NULL DEFAULT 'pending'
		CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running', 'done',
			'detached']::pg_catalog.text[])),
	key_kind	text NOT NULL,	/* 'primary key', 'unique key' or 'ctid' */
	key_cols	name[] NOT NULL,
	lower_key	text[],			/* checkpoint, as job.lower_key; a range starts at its lower bound */
	upper_key	text[],			/* bound; NULL: nothing to walk */
	rows_total	bigint,
	rows_done	bigint NOT NULL DEFAULT 0,
	rows_seen	bigint NOT NULL DEFAULT 0,
	batches		bigint NOT NULL DEFAULT 0,
	worker_pid	int,
	worker_slot	int,
	rate_cap	bigint,			/* the worker's share of max_rows_per_sec */
	rate_recent	float8,
	walk_relfilenode oid,
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	stripe_end	text[],			/* as job.stripe_end */
	stripe_next int,
	write_path	text,			/* as job.write_path */
	stripe_count int,			/* as job.stripe_count */
	stripe_halves int,
	PRIMARY KEY (job_id, slice_no)
);
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.job_slice', '');

CREATE FUNCTION mig_backfill(tbl regclass, batch_size int DEFAULT NULL,
							 target_batch_ms int DEFAULT 200, sleep_ms int DEFAULT 0,
							 max_replica_lag interval DEFAULT '10s',
							 max_rows_per_sec bigint DEFAULT NULL, parallel int DEFAULT 1,
							 fire_triggers boolean DEFAULT false)
	RETURNS bigint AS 'MODULE_PATHNAME', 'mig_backfill' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_backfill IS
	'starts the backfill of the new column(s) in a background worker; returns the job id at once';

CREATE FUNCTION mig_pause(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_pause' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_pause IS
	'pauses the backfill after the batch in flight';

CREATE FUNCTION mig_resume(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_resume' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_resume IS
	'resumes a paused, interrupted, failed or cancelled backfill from its checkpoint';

CREATE FUNCTION mig_cancel(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_cancel' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_cancel IS
	'stops the backfill; rows already written stay, dual-write goes on';

CREATE FUNCTION mig_set(tbl regclass, setting text, value text) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_set' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_set IS
	'changes a backfill setting (batch_size, target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec, parallel, fire_triggers) from the next batch';

CREATE FUNCTION migrate_ext.busy_sessions() RETURNS int
	AS 'MODULE_PATHNAME', 'mig_busy_sessions' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION migrate_ext.busy_sessions() IS
	'sessions of this database running a statement on a CPU: what a backfill yields to';
