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
 * One dynamic background worker per job, connected as the role that called
 * mig_backfill (worker.c).  The job row in migrate_ext.job is the whole
 * truth about a job: settings, state, checkpoint and counters.  The worker
 * re-reads it at every batch, so mig_pause, mig_cancel and mig_set only
 * change that row and the worker notices at its next batch.
 *
 * Liveness.  The worker holds the session-level advisory lock on the two
 * int4 keys (MIG_JOB_LOCK_KEY, job id) -- pg_advisory_lock(1835624306, id)
 * -- for its whole life; a worker that cannot get it leaves the job to the
 * worker that holds it.  A job in state running, throttled or paused whose
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
#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PG_FUNCTION_INFO_V1(mig_backfill);
PG_FUNCTION_INFO_V1(mig_pause);
PG_FUNCTION_INFO_V1(mig_resume);
PG_FUNCTION_INFO_V1(mig_cancel);
PG_FUNCTION_INFO_V1(mig_set);

#define BF_FIRST_BATCH			500		/* rows, when batch_size is adaptive */

#define BF_SETTINGS_HINT \
	"The settings are batch_size, target_batch_ms, sleep_ms, max_replica_lag and max_rows_per_sec."

/* ----------------------------------------------------------------
 *		Small helpers
 * ----------------------------------------------------------------
 */

/*
 * The tag of the advisory lock (key, job id) in this database: the lock
 * that pg_advisory_lock(key, id) takes.
 */
void
bf_locktag(LOCKTAG *tag, int32 key, int64 job_id)
{
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) key, (uint32) job_id, 2);
}

/*
 * Does a worker run the job?  Looks in the lock table, as pg_locks does:
 * taking the lock, even for an instant, could turn away a worker that is
 * starting.
 */
static bool
bf_job_alive(int64 job_id)
{
	LOCKTAG		tag;
	LockData   *locks = GetLockStatusData();

	bf_locktag(&tag, MIG_JOB_LOCK_KEY, job_id);
	for (int i = 0; i < locks->nelements; i++)
		if (locks->locks[i].holdMask != 0 &&
			memcmp(&locks->locks[i].locktag, &tag, sizeof(LOCKTAG)) == 0)
			return true;
	return false;
}

/* Hold the start gate of a job until the current transaction ends. */
static void
bf_hold_gate(int64 job_id)
{
	LOCKTAG		tag;

	bf_locktag(&tag, MIG_GATE_LOCK_KEY, job_id);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Start a job's worker, and wait (a few seconds at most) until it holds the
 * job's lock, so that whoever looks right after we return does not take the
 * job for interrupted.  The worker takes the lock before it waits for our
 * transaction to end.
 */
static void
bf_start_worker(MigWorkerArgs *args)
{
	char		name[BGW_MAXLEN];

	snprintf(name, sizeof(name), "migrate_ext backfill job " INT64_FORMAT, args->arg);
	(void) mig_worker_start("mig_backfill_main", name, args);
	for (int i = 0; i < 500 && !bf_job_alive(args->arg); i++)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* Is state a, b or c?  b and c may be NULL. */
bool
bf_state_is(const char *state, const char *a, const char *b, const char *c)
{
	return strcmp(state, a) == 0 || (b && strcmp(state, b) == 0) ||
		(c && strcmp(state, c) == 0);
}

/* Unfinished: a worker runs it, or should. */
bool
bf_state_live(const char *state)
{
	return bf_state_is(state, "running", "throttled", "paused");
}

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
bf_check_range(int64 value, int64 min, const char *what)
{
	if (value < min)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must be at least " INT64_FORMAT ", not " INT64_FORMAT,
						what, min, value)));
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
bf_lock_latest_job(int64 migration_id, char **state)
{
	Oid			type = INT8OID;
	Datum		v = Int64GetDatum(migration_id);
	int64		job_id;
	bool		isnull;

	SPI_connect();
	if (SPI_execute_with_args("SELECT id FROM migrate_ext.job WHERE migration_id = $1 "
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
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job WHERE id = $1 FOR NO KEY UPDATE",
					 1, &type, &v, NULL, 1);

	SPI_connect();
	if (SPI_execute_with_args("SELECT state FROM migrate_ext.job WHERE id = $1",
							  1, &type, &v, NULL, false, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read migrate_ext.job");
	*state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	*state = MemoryContextStrdup(CurTransactionContext, *state);
	SPI_finish();
	return job_id;
}

static void
bf_set_state(int64 job_id, const char *state, bool finished)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		v[2];

	v[0] = Int64GetDatum(job_id);
	v[1] = CStringGetTextDatum(state);
	mig_catalog_exec(finished ?
					 "UPDATE migrate_ext.job SET state = $2, throttle_reason = NULL, "
					 "updated_at = now(), finished_at = now() WHERE id = $1" :
					 "UPDATE migrate_ext.job SET state = $2, throttle_reason = NULL, "
					 "updated_at = now(), finished_at = NULL WHERE id = $1",
					 2, types, v, NULL, 1);
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
 * mig_backfill(tbl, batch_size, target_batch_ms, sleep_ms, max_replica_lag,
 *				max_rows_per_sec) returns the job id
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
	char	   *state;
	int64		old_job;
	int64		job_id;
	MigWorkerArgs args;
	Oid			types[11] = {INT8OID, OIDOID, OIDOID, OIDOID, INT4OID, BOOLOID,
		INT4OID, INT4OID, INTERVALOID, INT8OID, TEXTOID};
	Datum		v[11];
	char		n[12] = "           ";

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
		bf_check_range(PG_GETARG_INT32(1), 1, "batch_size");
	bf_check_range(PG_GETARG_INT32(2), 1, "target_batch_ms");
	bf_check_range(PG_GETARG_INT32(3), 0, "sleep_ms");
	if (!PG_ARGISNULL(4))
		(void) bf_interval_ms(PG_GETARG_INTERVAL_P(4), "max_replica_lag");
	if (!PG_ARGISNULL(5))
		bf_check_range(PG_GETARG_INT64(5), 1, "max_rows_per_sec");

	m = bf_migration(relid);
	if (mig_phase_rank(m->phase) > mig_phase_rank(MIG_PHASE_VALIDATED))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" is in phase %s, past its backfill",
						get_rel_name(relid), m->phase),
				 errdetail("After cutover the new column is the source of truth; the dual-write trigger keeps the old one in step.")));

	/* one job at a time: concurrent callers queue on the migration row */
	mig_catalog_exec("SELECT 1 FROM migrate_ext.migration WHERE id = $1 FOR UPDATE",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(m->id)}, NULL, 1);
	old_job = bf_lock_latest_job(m->id, &state);
	if (old_job != 0 && (bf_state_live(state) || strcmp(state, "interrupted") == 0))
	{
		bool		alive = bf_state_live(state) && bf_job_alive(old_job);

		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("table \"%s\" already has a backfill job (%s)",
						get_rel_name(relid), alive ? state : "interrupted"),
				 alive ?
				 errhint("Watch it in mig_status, or stop it with mig_cancel('%s') before starting another.",
						 get_rel_name(relid)) :
				 errhint("Continue it from its checkpoint with mig_resume('%s'), or drop it with mig_cancel('%s').",
						 get_rel_name(relid), get_rel_name(relid))));
	}

	mig_worker_args_for_caller(&args, 0);
	v[0] = Int64GetDatum(m->id);
	v[1] = ObjectIdGetDatum(args.dboid);
	v[2] = ObjectIdGetDatum(args.role_oid);
	v[3] = ObjectIdGetDatum(args.login_oid);
	v[4] = Int32GetDatum(PG_ARGISNULL(1) ? BF_FIRST_BATCH : PG_GETARG_INT32(1));
	v[5] = BoolGetDatum(!PG_ARGISNULL(1));
	v[6] = Int32GetDatum(PG_GETARG_INT32(2));
	v[7] = Int32GetDatum(PG_GETARG_INT32(3));
	v[8] = PG_ARGISNULL(4) ? (Datum) 0 : PointerGetDatum(PG_GETARG_INTERVAL_P(4));
	n[8] = PG_ARGISNULL(4) ? 'n' : ' ';
	v[9] = PG_ARGISNULL(5) ? (Datum) 0 : Int64GetDatum(PG_GETARG_INT64(5));
	n[9] = PG_ARGISNULL(5) ? 'n' : ' ';
	v[10] = (Datum) 0;
	n[10] = 'n';
	job_id = mig_catalog_exec_int8("INSERT INTO migrate_ext.job (migration_id, state, dboid, "
								   "role_oid, login_oid, batch_size, batch_size_fixed, "
								   "target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec) "
								   "VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10) "
								   "RETURNING id",
								   10, types, v, n);

	bf_hold_gate(job_id);
	args.arg = job_id;
	bf_start_worker(&args);
	PG_RETURN_INT64(job_id);
}

/*
 * mig_pause(tbl): the worker stops after the batch in flight and waits,
 * keeping its place, until mig_resume.
 */
Datum
mig_pause(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	MigMigration *m = bf_migration(relid);
	const char *relname = get_rel_name(relid);
	char	   *state;
	int64		job_id = bf_lock_latest_job(m->id, &state);

	if (job_id == 0 || !(bf_state_live(state) || strcmp(state, "interrupted") == 0))
		bf_no_job(relname, "pause");
	if (strcmp(state, "paused") == 0)
		ereport(NOTICE,
				(errmsg("the backfill of table \"%s\" is already paused",
						relname)));
	else
		bf_set_state(job_id, "paused", false);
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
	Oid			relid = PG_GETARG_OID(0);
	MigMigration *m = bf_migration(relid);
	const char *relname = get_rel_name(relid);
	char	   *state;
	int64		job_id = bf_lock_latest_job(m->id, &state);
	MigWorkerArgs args;

	if (job_id == 0)
		bf_no_job(relname, "resume");
	if (strcmp(state, "done") == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the backfill of table \"%s\" is done; there is nothing to resume",
						relname),
				 errhint("Run mig_backfill('%s') again to check every row once more.",
						 relname)));

	if (bf_state_live(state) && bf_job_alive(job_id))
	{
		if (strcmp(state, "paused") == 0)
			bf_set_state(job_id, "running", false);
		else
			ereport(NOTICE,
					(errmsg("the backfill of table \"%s\" is already running",
							relname)));
		PG_RETURN_VOID();
	}

	/*
	 * No worker: start one, as the caller (who owns the table), from the
	 * checkpoint.
	 */
	mig_worker_args_for_caller(&args, job_id);
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'running', throttle_reason = NULL, "
					 "finished_at = NULL, updated_at = now(), dboid = $2, role_oid = $3, "
					 "login_oid = $4 WHERE id = $1",
					 4, (Oid[]) {INT8OID, OIDOID, OIDOID, OIDOID},
					 (Datum[]) {Int64GetDatum(job_id), ObjectIdGetDatum(args.dboid),
						 ObjectIdGetDatum(args.role_oid), ObjectIdGetDatum(args.login_oid)},
					 NULL, 1);
	bf_hold_gate(job_id);
	bf_start_worker(&args);
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
	Oid			relid = PG_GETARG_OID(0);
	MigMigration *m = bf_migration(relid);
	const char *relname = get_rel_name(relid);
	char	   *state;
	int64		job_id = bf_lock_latest_job(m->id, &state);

	if (job_id == 0 || !(bf_state_live(state) || strcmp(state, "interrupted") == 0))
		bf_no_job(relname, "cancel");
	bf_set_state(job_id, "cancelled", true);
	PG_RETURN_VOID();
}

/*
 * mig_set(tbl, setting, value): change a setting of the table's job; the
 * worker applies it from its next batch.
 */
Datum
mig_set(PG_FUNCTION_ARGS)
{
	Oid			relid;
	const char *relname;
	MigMigration *m;
	char	   *setting;
	char	   *value;
	char	   *state;
	int64		job_id;
	const char *sql;
	Oid			types[2] = {INT8OID, INT4OID};
	Datum		v[2];
	char		n[3] = "  ";

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl and setting must not be NULL")));
	relid = PG_GETARG_OID(0);
	setting = text_to_cstring(PG_GETARG_TEXT_PP(1));
	value = PG_ARGISNULL(2) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(2));

	/* parse and check the value first: bad input changes nothing */
	if (strcmp(setting, "batch_size") == 0)
	{
		if (value == NULL || pg_strcasecmp(value, "auto") == 0)
		{
			sql = "UPDATE migrate_ext.job SET batch_size_fixed = false WHERE id = $1";
			n[1] = 'n';
		}
		else
		{
			int32		size = pg_strtoint32(value);

			bf_check_range(size, 1, "batch_size");
			sql = "UPDATE migrate_ext.job SET batch_size = $2, batch_size_fixed = true WHERE id = $1";
			v[1] = Int32GetDatum(size);
		}
	}
	else if (strcmp(setting, "target_batch_ms") == 0 || strcmp(setting, "sleep_ms") == 0)
	{
		int32		ms;
		bool		target = strcmp(setting, "target_batch_ms") == 0;

		if (value == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
					 errmsg("%s must not be NULL", setting)));
		ms = pg_strtoint32(value);
		bf_check_range(ms, target ? 1 : 0, setting);
		sql = target ? "UPDATE migrate_ext.job SET target_batch_ms = $2 WHERE id = $1" :
			"UPDATE migrate_ext.job SET sleep_ms = $2 WHERE id = $1";
		v[1] = Int32GetDatum(ms);
	}
	else if (strcmp(setting, "max_replica_lag") == 0)
	{
		types[1] = INTERVALOID;
		if (value == NULL)
			n[1] = 'n';
		else
		{
			v[1] = DirectFunctionCall3(interval_in, CStringGetDatum(value),
									   ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
			(void) bf_interval_ms(DatumGetIntervalP(v[1]), setting);
		}
		sql = "UPDATE migrate_ext.job SET max_replica_lag = $2 WHERE id = $1";
	}
	else if (strcmp(setting, "max_rows_per_sec") == 0)
	{
		types[1] = INT8OID;
		if (value == NULL)
			n[1] = 'n';
		else
		{
			int64		rate = pg_strtoint64(value);

			bf_check_range(rate, 1, setting);
			v[1] = Int64GetDatum(rate);
		}
		sql = "UPDATE migrate_ext.job SET max_rows_per_sec = $2 WHERE id = $1";
	}
	else
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("unknown backfill setting \"%s\"", setting),
				 errhint(BF_SETTINGS_HINT)));

	m = bf_migration(relid);
	relname = get_rel_name(relid);
	job_id = bf_lock_latest_job(m->id, &state);
	if (job_id == 0 || strcmp(state, "done") == 0)
		bf_no_job(relname, "change");
	v[0] = Int64GetDatum(job_id);
	mig_catalog_exec(sql, 2, types, v, n, 1);
	PG_RETURN_VOID();
}

/*
 * In a short-lived worker of the launcher, connected to one database as a
 * superuser: give every interrupted job of this database a new worker, as
 * the roles that started it.  A job whose roles are gone, or can no longer
 * log in, fails with a message that says so.
 */
void
mig_backfill_resume_interrupted(void)
{
	List	   *jobs = NIL;
	ListCell   *lc;
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	SPI_connect();
	if (SPI_execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'migrate_ext'",
					true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_extension");
	if (SPI_processed == 0)
	{
		SPI_finish();
		return;
	}
	if (SPI_execute("SELECT id, role_oid, login_oid FROM migrate_ext.job "
					"WHERE state IN ('running', 'throttled', 'paused', 'interrupted') "
					"ORDER BY id", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		MigWorkerArgs *args = MemoryContextAllocZero(oldcxt, sizeof(MigWorkerArgs));
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;

		args->dboid = MyDatabaseId;
		args->arg = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		args->role_oid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		args->login_oid = DatumGetObjectId(SPI_getbinval(tup, desc, 3, &isnull));
		/* the list must outlive SPI_finish, like its elements */
		{
			MemoryContext spicxt = MemoryContextSwitchTo(oldcxt);

			jobs = lappend(jobs, args);
			MemoryContextSwitchTo(spicxt);
		}
	}
	SPI_finish();

	foreach(lc, jobs)
	{
		MigWorkerArgs *args = lfirst(lc);
		HeapTuple	tup;
		bool		can_login = false;
		Datum		v[2];

		if (bf_job_alive(args->arg))
			continue;

		tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(args->login_oid));
		if (HeapTupleIsValid(tup))
		{
			can_login = ((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin;
			ReleaseSysCache(tup);
		}
		if (!can_login || !SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(args->role_oid)))
		{
			v[0] = Int64GetDatum(args->arg);
			v[1] = CStringGetTextDatum("the role that started this job no longer exists or can no longer log in, so the job cannot continue after the restart; start it again with mig_backfill() as the table's owner");
			mig_catalog_exec("UPDATE migrate_ext.job SET state = 'failed', last_error = $2, "
							 "last_sqlstate = '28000', finished_at = now(), updated_at = now() "
							 "WHERE id = $1", 2, (Oid[]) {INT8OID, TEXTOID}, v, NULL, 1);
			ereport(WARNING,
					(errmsg("migrate_ext: backfill job " INT64_FORMAT " cannot be resumed: its role is gone or cannot log in",
							args->arg)));
			continue;
		}

		/* mig_status shows it interrupted until the worker takes over */
		bf_hold_gate(args->arg);
		mig_catalog_exec("UPDATE migrate_ext.job SET state = 'interrupted', updated_at = now() "
						 "WHERE id = $1 AND state <> 'paused'",
						 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(args->arg)}, NULL, -1);
		/* no free slot: leave it interrupted, say so, go on with the next */
		BeginInternalSubTransaction(NULL);
		PG_TRY();
		{
			bf_start_worker(args);
			ReleaseCurrentSubTransaction();
			ereport(LOG,
					(errmsg("migrate_ext: resuming backfill job " INT64_FORMAT " in database \"%s\"",
							args->arg, get_database_name(MyDatabaseId))));
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(oldcxt);
			EmitErrorReport();
			FlushErrorState();
			RollbackAndReleaseCurrentSubTransaction();
		}
		PG_END_TRY();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
	}
}
