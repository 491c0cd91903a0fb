/*-------------------------------------------------------------------------
 *
 * backfill.c
 *	  mig_backfill and its controls (mig_pause, mig_resume, mig_cancel,
 *	  mig_set), which start and steer the background worker that fills the
 *	  new column(s) of every existing row, batch by batch, and the restart
 *	  of interrupted jobs for the launcher.  The worker itself is in
 *	  backfill_worker.c, and the walk over the table it follows is in
 *	  backfill_walk.c.
 *
 * Up to parallel dynamic background workers per job (one per slot; a job
 * that walks one key has one), connected as the role that called
 * mig_backfill (worker.c); a partitioned table, or a plain one with
 * parallel > 1, is walked in slices (backfill_worker.c).  The job row in migrate_ext.job is the whole
 * truth about a job: settings, state, checkpoint and counters.  The worker
 * re-reads it at every batch, so mig_pause, mig_cancel and mig_set only
 * change that row and the worker notices at its next batch.
 *
 * Liveness.  The worker holds the session-level advisory lock on the two
 * int4 keys (migrate_ext.job_lock_key(), job id), defined in job.c, for its
 * whole life; a worker that cannot get it leaves the job to the worker that
 * holds it.  A job in state running, throttled or paused whose
 * lock nobody holds is therefore interrupted (its worker was killed, or the
 * server restarted): mig_resume, or the launcher (launcher.c) after a
 * restart, continues it from its checkpoint.  Readers must look for the
 * lock in pg_locks, never take it: a worker starting at that moment would
 * think another one runs the job (we retry for a while to be safe).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "backfill.h"
#include "contract.h"
#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PG_FUNCTION_INFO_V1(mig_backfill);
PG_FUNCTION_INFO_V1(mig_pause);
PG_FUNCTION_INFO_V1(mig_resume);
PG_FUNCTION_INFO_V1(mig_cancel);
PG_FUNCTION_INFO_V1(mig_set);
PG_FUNCTION_INFO_V1(mig_job_lock_key);

#define BF_FIRST_BATCH			500		/* rows, when batch_size is adaptive */

#define BF_SETTINGS_HINT \
	"The settings are batch_size, target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec, parallel and fire_triggers."

/*
 * Bounds of the settings: the worker multiplies them by durations and row
 * counts, so they stay far from int32 and int64 overflow.
 */
#define BF_MAX_SETTING			86400000	/* a day in ms; rows in a batch */
#define BF_MAX_RATE				INT64CONST(1000000000000)	/* rows a second */

/* ----------------------------------------------------------------
 *		Small helpers
 * ----------------------------------------------------------------
 */

/* Milliseconds in an interval, a month counting 30 days. */
static int64
bf_interval_ms(Interval *iv, const char *what)
{
	int64		ms = iv->time / 1000 + (int64) iv->day * 86400000 +
		(int64) iv->month * 30 * 86400000;

	if (ms < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be negative", what)));
	return ms;
}

static void
bf_check_range(int64 value, int64 min, int64 max, const char *what)
{
	if (value < min)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least " INT64_FORMAT ", not " INT64_FORMAT,
						what, min, value)));
	if (value > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at most " INT64_FORMAT ", not " INT64_FORMAT,
						what, max, value)));
}

/* parallel: workers of one job, 1 to MIG_JOB_MAX_WORKERS. */
static void
bf_check_parallel(int64 n)
{
	bf_check_range(n, 1, MIG_JOB_MAX_WORKERS, "parallel");
}

/*
 * Does the job walk slices, or has its walk not started (so that it may)?
 * A job that walks one key in its own row has one worker.
 */
static bool
bf_job_sliced(int64 job_id)
{
	bool		sliced = false;

	SPI_connect();
	if (mig_catalog_query("SELECT key_kind IS NULL OR key_kind OPERATOR(pg_catalog.=) 'slices' "
						  "FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, true,
						  1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	if (SPI_processed == 1)
		sliced = strcmp(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1), "t") == 0;
	SPI_finish();
	return sliced;
}

/* The job's parallel setting (1 under a catalog without it). */
static int
bf_job_parallel(int64 job_id)
{
	int			n = 1;
	bool		isnull;

	if (!mig_job_has_column("parallel"))
		return 1;
	SPI_connect();
	if (mig_catalog_query("SELECT parallel FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, true,
						  1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	if (SPI_processed == 1)
		n = DatumGetInt32(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();
	return n;
}

/* ----------------------------------------------------------------
 *		The SQL functions
 * ----------------------------------------------------------------
 */

/* The table's active migration, after checking that the caller owns it. */
static MigMigration *
bf_migration(Oid relid)
{
	Relation	rel = mig_open_table(relid, AccessShareLock);

	table_close(rel, AccessShareLock);
	return mig_catalog_active(relid, false);
}

/*
 * The migration's latest job, locked against the worker's batches; *state
 * is its state as stored.  Returns 0 when there is no job.
 */
static int64
bf_lock_latest_job(int64 migration_id, JobState *state)
{
	Oid			type = INT8OID;
	Datum		v = Int64GetDatum(migration_id);
	int64		job_id;
	bool		isnull;

	*state = JOB_DONE;
	SPI_connect();
	if (mig_catalog_query("SELECT id FROM migrate_ext.job WHERE migration_id OPERATOR(pg_catalog.=) $1 "
							  "ORDER BY id DESC LIMIT 1",
							  1, &type, &v, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	if (SPI_processed == 0)
	{
		SPI_finish();
		return 0;
	}
	job_id = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	SPI_finish();

	v = Int64GetDatum(job_id);
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE",
					 1, &type, &v, NULL, 1);
	/* the batches of a sliced job lock their slice only */
	mig_job_lock_slices(job_id);

	SPI_connect();
	if (mig_catalog_query("SELECT state FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1",
							  1, &type, &v, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read migrate_ext.job");
	*state = mig_job_state_parse(SPI_getvalue(SPI_tuptable->vals[0],
											  SPI_tuptable->tupdesc, 1));
	SPI_finish();
	return job_id;
}

static void
bf_no_job(const char *relname, const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("table \"%s\" has no unfinished backfill job to %s", relname, what),
			 errhint("Start one with mig_backfill('%s').", relname)));
}

/*
 * The table's latest job, locked, for pause/resume/cancel/set: checks that
 * the caller owns the table and that it has an active migration (in that
 * order, as every one of them did), then sets *relname and *state.  Written
 * once so that the four control functions check and lock alike.
 */
static int64
bf_lock_table_job(Oid relid, const char **relname, JobState *state)
{
	MigMigration *m = bf_migration(relid);

	*relname = get_rel_name(relid);
	return bf_lock_latest_job(m->id, state);
}

/*
 * Errors unless the job can still be driven: pause and cancel accept a
 * live job or an interrupted one (whose worker is gone).
 */
static void
bf_require_unfinished(int64 job_id, JobState state, const char *relname,
					  const char *what)
{
	if (job_id == 0 || !(mig_job_state_live(state) || state == JOB_INTERRUPTED))
		bf_no_job(relname, what);
}

/*
 * mig_backfill(tbl, batch_size, target_batch_ms, sleep_ms, max_replica_lag,
 *				max_rows_per_sec, parallel, fire_triggers) returns the job id
 *
 * Records the job and starts its worker; returns at once.  Everything is
 * checked here, in the caller's session, so that bad input is an error the
 * caller sees rather than a failed job.
 */
Datum
mig_backfill(PG_FUNCTION_ARGS)
{
	Oid			relid;
	MigMigration *m;
	JobState	state = JOB_DONE;
	int64		old_job;
	int64		job_id;
	MigWorkerArgs args;
	MigJobSettings settings;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be NULL")));
	if (PG_ARGISNULL(2) || PG_ARGISNULL(3))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("target_batch_ms and sleep_ms must not be NULL")));
	relid = PG_GETARG_OID(0);
	if (!PG_ARGISNULL(1))
		bf_check_range(PG_GETARG_INT32(1), 1, BF_MAX_SETTING, "batch_size");
	bf_check_range(PG_GETARG_INT32(2), 1, BF_MAX_SETTING, "target_batch_ms");
	bf_check_range(PG_GETARG_INT32(3), 0, BF_MAX_SETTING, "sleep_ms");
	if (!PG_ARGISNULL(4))
		(void) bf_interval_ms(PG_GETARG_INTERVAL_P(4), "max_replica_lag");
	if (!PG_ARGISNULL(5))
		bf_check_range(PG_GETARG_INT64(5), 1, BF_MAX_RATE, "max_rows_per_sec");
	if (PG_NARGS() > 6)
	{
		if (PG_ARGISNULL(6))
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("parallel must not be NULL")));
		bf_check_parallel(PG_GETARG_INT32(6));
	}

	m = bf_migration(relid);
	if (m->phase > MIG_PHASE_VALIDATED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" is in phase %s, past its backfill",
						get_rel_name(relid), mig_phase_name(m->phase)),
				 errdetail("After cutover the new column is the source of truth; the dual-write trigger keeps the old one in step.")));

	/* one job at a time: concurrent callers queue on the migration row */
	mig_catalog_exec("SELECT 1 FROM migrate_ext.migration WHERE id OPERATOR(pg_catalog.=) $1 FOR UPDATE",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(m->id)}, NULL, 1);
	old_job = bf_lock_latest_job(m->id, &state);
	if (old_job != 0 && (mig_job_state_live(state) || state == JOB_INTERRUPTED))
	{
		bool		alive = mig_job_state_live(state) && mig_job_alive(old_job);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("table \"%s\" already has a backfill job (%s)",
						get_rel_name(relid), alive ? mig_job_state_name(state) : "interrupted"),
				 alive ?
				 errhint("Watch it in mig_status, or stop it with mig_cancel('%s') before starting another.",
						 get_rel_name(relid)) :
				 errhint("Continue it from its checkpoint with mig_resume('%s'), or drop it with mig_cancel('%s').",
						 get_rel_name(relid), get_rel_name(relid))));
	}

	mig_worker_args_for_caller(&args, 0);
	settings.batch_size = PG_ARGISNULL(1) ? BF_FIRST_BATCH : PG_GETARG_INT32(1);
	settings.batch_size_fixed = !PG_ARGISNULL(1);
	settings.target_batch_ms = PG_GETARG_INT32(2);
	settings.sleep_ms = PG_GETARG_INT32(3);
	settings.max_replica_lag = PG_ARGISNULL(4) ? NULL : PG_GETARG_INTERVAL_P(4);
	settings.max_rows_per_sec = PG_ARGISNULL(5) ? 0 : PG_GETARG_INT64(5);
	settings.fire_triggers = PG_NARGS() > 7 && !PG_ARGISNULL(7) && PG_GETARG_BOOL(7);
	settings.parallel = PG_NARGS() > 6 ? PG_GETARG_INT32(6) : 1;
	job_id = mig_job_insert(m->id, &args, &settings);

	mig_job_hold_gate(job_id);
	args.arg = job_id;
	(void) mig_job_start_workers(&args, settings.parallel, false);
	PG_RETURN_INT64(job_id);
}

/*
 * mig_pause(tbl): the worker stops after the batch in flight and waits,
 * keeping its place, until mig_resume.
 */
Datum
mig_pause(PG_FUNCTION_ARGS)
{
	const char *relname;
	JobState	state;
	int64		job_id = bf_lock_table_job(PG_GETARG_OID(0), &relname, &state);

	bf_require_unfinished(job_id, state, relname, "pause");
	if (state == JOB_PAUSED)
		ereport(NOTICE,
				(errmsg("the backfill of table \"%s\" is already paused",
						relname)));
	else
		mig_job_set_state(job_id, JOB_PAUSED, false);
	PG_RETURN_VOID();
}

/*
 * mig_resume(tbl): a paused job goes on; a job whose worker is gone
 * (interrupted), that failed or that was cancelled gets a new worker, which
 * continues from the checkpoint.
 */
Datum
mig_resume(PG_FUNCTION_ARGS)
{
	const char *relname;
	JobState	state;
	int64		job_id = bf_lock_table_job(PG_GETARG_OID(0), &relname, &state);
	MigWorkerArgs args;

	if (job_id == 0)
		bf_no_job(relname, "resume");
	if (state == JOB_DONE)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the backfill of table \"%s\" is done; there is nothing to resume",
						relname),
				 errhint("Run mig_backfill('%s') again to check every row once more.",
						 relname)));

	if (mig_job_state_live(state) && mig_job_alive(job_id))
	{
		if (state == JOB_PAUSED)
			mig_job_set_state(job_id, JOB_RUNNING, false);
		else
			ereport(NOTICE,
					(errmsg("the backfill of table \"%s\" is already running",
							relname)));
		PG_RETURN_VOID();
	}

	/*
	 * No worker: start them, as the caller (who owns the table), from the
	 * checkpoints; the slices a worker held are claimed again.  A job that
	 * walks one key gets one: raised to parallel meanwhile, it goes parallel
	 * at its first batch and starts the others itself.
	 */
	mig_worker_args_for_caller(&args, job_id);
	mig_job_restart(job_id, &args);
	mig_slice_release_all(job_id);
	mig_job_hold_gate(job_id);
	(void) mig_job_start_workers(&args, bf_job_sliced(job_id) ? bf_job_parallel(job_id) : 1,
								 false);
	ereport(NOTICE,
			(errmsg("the backfill of table \"%s\" continues from its checkpoint",
					relname)));

	PG_RETURN_VOID();
}

/*
 * mig_cancel(tbl): the worker stops before its next batch; what it wrote
 * stays, and the dual-write trigger keeps working.  Once this commits, no
 * batch of the job commits any more (batches lock the job row).
 */
Datum
mig_cancel(PG_FUNCTION_ARGS)
{
	const char *relname;
	JobState	state;
	int64		job_id = bf_lock_table_job(PG_GETARG_OID(0), &relname, &state);

	bf_require_unfinished(job_id, state, relname, "cancel");
	mig_job_set_state(job_id, JOB_CANCELLED, true);
	PG_RETURN_VOID();
}

/*
 * A setting's value as an integer in [min, max]; anything else (not a
 * number, out of range, beyond int64) is 22023 naming the setting.
 */
static int64
bf_parse_int(const char *value, int64 min, int64 max, const char *what)
{
	char	   *end;
	int64		v;

	errno = 0;
	v = strtoi64(value, &end, 10);
	while (*end == ' ')
		end++;
	if (end == value || *end != '\0' || errno == ERANGE || v < min || v > max)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be an integer between " INT64_FORMAT " and " INT64_FORMAT ", not \"%s\"",
						what, min, max, value)));
	return v;
}

static void
bf_not_null(const char *value, const char *setting)
{
	if (value == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", setting)));
}

/*
 * Parse and check a mig_set setting (its name case-insensitive) and value
 * before anything changes: bad input changes nothing.  Returns which
 * setting; *v is the value as the job row stores it.
 */
static MigJobSetting
bf_parse_setting(const char *setting, const char *value, Datum *v)
{
	*v = (Datum) 0;
	if (pg_strcasecmp(setting, "batch_size") == 0)
	{
		if (value == NULL || pg_strcasecmp(value, "auto") == 0)
			return MIG_JOB_BATCH_SIZE_AUTO;
		*v = Int32GetDatum(bf_parse_int(value, 1, BF_MAX_SETTING, "batch_size"));
		return MIG_JOB_BATCH_SIZE;
	}
	if (pg_strcasecmp(setting, "target_batch_ms") == 0)
	{
		bf_not_null(value, "target_batch_ms");
		*v = Int32GetDatum(bf_parse_int(value, 1, BF_MAX_SETTING, "target_batch_ms"));
		return MIG_JOB_TARGET_BATCH_MS;
	}
	if (pg_strcasecmp(setting, "sleep_ms") == 0)
	{
		bf_not_null(value, "sleep_ms");
		*v = Int32GetDatum(bf_parse_int(value, 0, BF_MAX_SETTING, "sleep_ms"));
		return MIG_JOB_SLEEP_MS;
	}
	if (pg_strcasecmp(setting, "max_replica_lag") == 0)
	{
		if (value != NULL)
		{
			*v = DirectFunctionCall3(interval_in, CStringGetDatum(value),
									 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
			(void) bf_interval_ms(DatumGetIntervalP(*v), "max_replica_lag");
		}
		return MIG_JOB_MAX_REPLICA_LAG;
	}
	if (pg_strcasecmp(setting, "max_rows_per_sec") == 0)
	{
		if (value != NULL)
			*v = Int64GetDatum(bf_parse_int(value, 1, BF_MAX_RATE, "max_rows_per_sec"));
		return MIG_JOB_MAX_ROWS_PER_SEC;
	}
	if (pg_strcasecmp(setting, "parallel") == 0)
	{
		bf_not_null(value, "parallel");
		*v = Int32GetDatum(bf_parse_int(value, 1, MIG_JOB_MAX_WORKERS, "parallel"));
		return MIG_JOB_PARALLEL;
	}
	if (pg_strcasecmp(setting, "fire_triggers") == 0)
	{
		bool		b;

		bf_not_null(value, "fire_triggers");
		if (!parse_bool(value, &b))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("fire_triggers must be a boolean, not \"%s\"", value)));
		*v = BoolGetDatum(b);
		return MIG_JOB_FIRE_TRIGGERS;
	}
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("unknown backfill setting \"%s\"", setting),
			 errhint(BF_SETTINGS_HINT)));
	pg_unreachable();
}

/*
 * mig_set(tbl, setting, value): change a setting of the table's job; the
 * worker applies it from its next batch (parallel: see below).
 */
Datum
mig_set(PG_FUNCTION_ARGS)
{
	Oid			relid;
	const char *relname;
	char	   *value;
	JobState	state;
	int64		job_id;
	MigJobSetting which;
	Datum		v;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl and setting must not be NULL")));
	relid = PG_GETARG_OID(0);
	value = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));
	which = bf_parse_setting(text_to_cstring(PG_GETARG_TEXT_PP(1)), value, &v);

	job_id = bf_lock_table_job(relid, &relname, &state);
	if (job_id == 0 || state == JOB_DONE)
		bf_no_job(relname, "change");
	mig_job_set_setting(job_id, which, v, value == NULL);

	/*
	 * More workers for a job that runs: started now, for the free slots.
	 * Fewer: the workers in slots past the new number give their slice back
	 * after their batch in flight, and go.  A job that walks one key, not
	 * slices, is split by its own worker after the batch in flight
	 * (backfill_worker.c, bf_to_parallel), which then starts the others:
	 * it owns the walk's checkpoint.
	 */
	if (which == MIG_JOB_PARALLEL && mig_job_state_live(state) && mig_job_alive(job_id))
	{
		MigWorkerArgs args;

		if (!bf_job_sliced(job_id))
		{
			if (DatumGetInt32(v) > 1)
				ereport(NOTICE,
						(errmsg("the backfill of table \"%s\" goes parallel after its batch in flight",
								relname),
						 errdetail("Its worker splits what is left of its walk into ranges for %d workers%s; a striped window in flight is finished first.",
								   DatumGetInt32(v),
								   state == JOB_PAUSED ? " once the job is resumed" : "")));
		}
		else
		{
			mig_worker_args_for_caller(&args, job_id);
			mig_job_hold_gate(job_id);
			(void) mig_job_start_workers(&args, DatumGetInt32(v), true);
		}
	}
	PG_RETURN_VOID();
}

/*
 * migrate_ext.job_lock_key(): the advisory-lock key (pg_locks.classid) a
 * live job's worker holds, so that the SQL face reads it from the one place
 * that defines it.
 */
Datum
mig_job_lock_key(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(mig_job_liveness_key());
}
