/*
 * The backfill (backfill.c): a background worker per job fills the new
 * column(s) of the existing rows in batches; these functions start and
 * steer it.  Progress is in migrate_ext.job.
 */
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
