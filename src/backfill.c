/*-------------------------------------------------------------------------
 *
 * backfill.c
 *	  mig_backfill and its controls (mig_pause, mig_resume, mig_cancel,
 *	  mig_set), and the background worker that fills the new column(s) of
 *	  every existing row, batch by batch.
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
 * A batch is one transaction:
 *	 1. lock the job row (so mig_pause/mig_cancel/mig_abort wait for the
 *		batch in flight, and a batch never commits after they did), re-read
 *		the settings and the state;
 *	 2. lock the table (RowExclusiveLock, short lock_timeout) and check that
 *		the ground did not move: the migration still in a backfill phase,
 *		the dual-write trigger present and enabled, the columns as the
 *		expressions expect them;
 *	 3. find the batch's end key: the n-th key after the checkpoint, or the
 *		bound frozen when the job started (newer rows are the trigger's job,
 *		so the walk always ends, even under heavy inserts);
 *	 4. UPDATE the rows of (checkpoint, end] whose new value may not be
 *		up(old) yet; the dual-write trigger computes new := up(old) and
 *		skips the rows that are right already;
 *	 5. write the checkpoint and the counters into the job row, and commit.
 * A kill or a crash therefore loses at most the batch in flight.
 *
 * Concurrent client writes.  The UPDATE runs in READ COMMITTED with
 * mig_backfill_writes set, so the dual-write trigger computes new := up(row)
 * from the row version that is actually being written (a BEFORE ROW trigger
 * fires on the version the UPDATE locked).  When a client updated a row
 * after the batch's snapshot was taken, the UPDATE waits for it and then
 * re-checks the latest version (EvalPlanQual): the WHERE clause "new IS
 * NULL OR new IS DISTINCT FROM up(old)" is evaluated again on the client's
 * version, which the client's trigger already made right, so the row is
 * skipped and the client's value wins; if it is still not right, the
 * trigger computes from that latest version, never from the stale one.  A client that
 * updates a row after the batch wrote it waits for the batch and builds on
 * its version, and its trigger computes new from the client's old value.
 * Either way new = up(old) holds when both have committed.
 *
 * Growth.  A table-long UPDATE leaves every old row version dead at once,
 * and the table doubles.  The worker runs a VACUUM of the table every few
 * percent of the rows written, between batches and outside any transaction,
 * so the space of the rows already backfilled is free again before the
 * next batches need it: they reuse it through the free space map instead of
 * extending the table.
 *
 * Errors.  A failed batch is rolled back, counted in retries, and tried
 * again after a growing pause with half the rows; lock timeouts, deadlocks,
 * serialization failures and cancels are tried many times, anything else a
 * few times.  Then the job fails: the error is recorded in the job row in a
 * fresh transaction (as pg_squeeze does), with what to do about it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/dbcommands.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/bufmgr.h"
#include "storage/ipc.h"
#include "storage/itemptr.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PG_FUNCTION_INFO_V1(mig_backfill);
PG_FUNCTION_INFO_V1(mig_pause);
PG_FUNCTION_INFO_V1(mig_resume);
PG_FUNCTION_INFO_V1(mig_cancel);
PG_FUNCTION_INFO_V1(mig_set);

PGDLLEXPORT void mig_backfill_main(Datum main_arg);
PGDLLEXPORT void mig_backfill_vacuum_main(Datum main_arg);

/*
 * Whoever starts a worker holds this lock (MIG_GATE_LOCK_KEY, job id) until
 * its transaction ends; the worker waits for it, so it never reads the job
 * row before the row it was started for is committed (or rolled back).
 */
#define MIG_GATE_LOCK_KEY		1835624307

#define BF_FIRST_BATCH			500		/* rows, when batch_size is adaptive */
#define BF_MAX_BATCH			50000
#define BF_TRANSIENT_RETRIES	20		/* lock waits, deadlocks, cancels */
#define BF_OTHER_RETRIES		3
#define BF_MAX_BACKOFF_MS		10000
#define BF_RATE_WINDOW_MS		10000	/* rate_recent is over this window */
#define BF_RING					64
#define BF_VACUUM_FRACTION		0.05	/* VACUUM after this share of the rows */
#define BF_VACUUM_MIN_ROWS		10000
#define BF_SMALL_TABLE_BLOCKS	1280	/* count rows_total exactly below this */
#define BF_POLL_MS				250

#define BF_SETTINGS_HINT \
	"The settings are batch_size, target_batch_ms, sleep_ms, max_replica_lag and max_rows_per_sec."

typedef enum BfResult
{
	BF_NEXT,					/* a batch committed; go on */
	BF_RETRY,					/* a batch failed; try again after a pause */
	BF_PAUSED,					/* the job is paused */
	BF_WALKED,					/* the walk reached its bound */
	BF_STOP						/* the job ended (done, failed, cancelled) */
} BfResult;

/* A point in time with a value: an LSN, or rows covered so far. */
typedef struct BfSample
{
	TimestampTz at;
	uint64		value;
} BfSample;

/* What a batch reads from the job row, valid for one transaction. */
typedef struct BfJob
{
	char	   *state;
	int64		migration_id;
	char	   *key_kind;		/* NULL: the walk has not started */
	List	   *key_cols;		/* of char * */
	List	   *lower_key;		/* of char *; NIL: from the start */
	List	   *upper_key;		/* of char *; NIL: nothing to walk */
} BfJob;

/* The worker's state across batches. */
typedef struct BfWorker
{
	int64		job_id;
	MigWorkerArgs args;			/* how we were started: for our VACUUM workers */
	Oid			relid;			/* InvalidOid until the first batch */
	char	   *table_name;		/* for messages; NULL until the first batch */
	MemoryContext cxt;			/* lives as long as the worker */

	/* the settings, as the last read of the job row found them */
	int			batch_size;
	bool		batch_size_fixed;
	int			target_batch_ms;
	int			sleep_ms;
	int64		max_lag_ms;		/* -1: no limit */
	int64		max_rows_per_sec;	/* 0: no cap */

	/* a failing batch */
	int			attempt;		/* failures of the current batch */
	int			retry_size;		/* halved size for the next try */
	int			backoff_ms;
	int64		pending_retries;	/* not yet counted in the job row */
	char	   *pending_error;
	char	   *pending_sqlstate;

	/* time and pace */
	TimestampTz active_since;	/* 0 while paused */
	int			next_wait_ms;	/* between this batch and the next */
	uint64		seen_total;		/* rows covered by this worker */
	BfSample	rate[BF_RING];	/* (time, seen_total), oldest first */
	int			nrate;
	BfSample	lsn[BF_RING];	/* (time, WAL flush position), oldest first */
	int			nlsn;

	/* space reuse */
	int			pending_vacuums;	/* not yet counted in the job row */
	int64		written_since_vacuum;
	int64		written_total;
	int64		vacuum_every;
	double		rows_per_block; /* ctid walk: rows a block holds */
} BfWorker;

static BfWorker *bf = NULL;

/* ----------------------------------------------------------------
 *		Small helpers
 * ----------------------------------------------------------------
 */

static void
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

static bool
bf_state_is(const char *state, const char *a, const char *b, const char *c)
{
	return strcmp(state, a) == 0 || (b && strcmp(state, b) == 0) ||
		(c && strcmp(state, c) == 0);
}

/* Unfinished: a worker runs it, or should. */
static bool
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

static const char *
bf_qualified_name(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/* A text[] datum as a List of C strings. */
static List *
bf_text_list(Datum d)
{
	ArrayType  *arr = DatumGetArrayTypeP(d);
	Datum	   *elems;
	bool	   *nulls;
	int			n;
	List	   *l = NIL;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &nulls, &n);
	for (int i = 0; i < n; i++)
		l = lappend(l, nulls[i] ? NULL : TextDatumGetCString(elems[i]));
	return l;
}

static Datum
bf_text_array(List *l)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(l), 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, l)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, i, TEXTOID, -1, false, TYPALIGN_INT));
}

static bool
bf_lists_equal(List *a, List *b)
{
	ListCell   *la,
			   *lb;

	if (list_length(a) != list_length(b))
		return false;
	forboth(la, a, lb, b)
		if (strcmp(lfirst(la), lfirst(lb)) != 0)
		return false;
	return true;
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
		jobs = lappend(jobs, args);
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

/* ----------------------------------------------------------------
 *		The worker: reading and writing the job row
 * ----------------------------------------------------------------
 */

/*
 * Read the job row into bf (settings) and *job (the rest, in the current
 * transaction's memory).  Returns false when the row is gone.
 */
static bool
bf_read_job(BfJob *job)
{
	Oid			type = INT8OID;
	Datum		v = Int64GetDatum(bf->job_id);
	HeapTuple	tup;
	TupleDesc	desc;
	Datum		d;
	bool		isnull;

	if (SPI_execute_with_args("SELECT state, batch_size, batch_size_fixed, target_batch_ms, "
							  "sleep_ms, (extract(epoch FROM max_replica_lag) * 1000)::int8, "
							  "max_rows_per_sec, key_kind, key_cols::text[], lower_key, "
							  "upper_key, migration_id FROM migrate_ext.job WHERE id = $1",
							  1, &type, &v, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	job->state = SPI_getvalue(tup, desc, 1);
	bf->batch_size = DatumGetInt32(SPI_getbinval(tup, desc, 2, &isnull));
	bf->batch_size_fixed = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));
	bf->target_batch_ms = DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull));
	bf->sleep_ms = DatumGetInt32(SPI_getbinval(tup, desc, 5, &isnull));
	d = SPI_getbinval(tup, desc, 6, &isnull);
	bf->max_lag_ms = isnull ? -1 : DatumGetInt64(d);
	d = SPI_getbinval(tup, desc, 7, &isnull);
	bf->max_rows_per_sec = isnull ? 0 : DatumGetInt64(d);
	job->key_kind = SPI_getvalue(tup, desc, 8);
	d = SPI_getbinval(tup, desc, 9, &isnull);
	job->key_cols = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 10, &isnull);
	job->lower_key = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 11, &isnull);
	job->upper_key = isnull ? NIL : bf_text_list(d);
	job->migration_id = DatumGetInt64(SPI_getbinval(tup, desc, 12, &isnull));
	return true;
}

/* Lock the job row for the rest of the transaction, without a timeout. */
static void
bf_lock_job(void)
{
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job WHERE id = $1 FOR NO KEY UPDATE",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)}, NULL, 1);
}

/* Seconds of activity since the last call; 0 while paused. */
static double
bf_active_delta(void)
{
	TimestampTz now = GetCurrentTimestamp();
	double		delta;

	if (bf->active_since == 0)
		return 0;
	delta = (double) (now - bf->active_since) / USECS_PER_SEC;
	bf->active_since = now;
	return delta;
}

/*
 * End the job in the current transaction: state failed (or cancelled), the
 * error and what to do about it recorded, and logged.
 */
static void
bf_record_end(const char *state, const char *error, const char *sqlstate)
{
	Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID};
	Datum		v[5];
	char		n[6] = "     ";

	v[0] = Int64GetDatum(bf->job_id);
	v[1] = CStringGetTextDatum(state);
	v[2] = CStringGetTextDatum(error);
	v[3] = sqlstate ? CStringGetTextDatum(sqlstate) : (Datum) 0;
	n[3] = sqlstate ? ' ' : 'n';
	v[4] = Int64GetDatum(bf->pending_retries);
	mig_catalog_exec("UPDATE migrate_ext.job SET state = $2, last_error = $3, "
					 "last_sqlstate = $4, retries = retries + $5, throttle_reason = NULL, "
					 "updated_at = now(), finished_at = now() WHERE id = $1",
					 5, types, v, n, 1);
	bf->pending_retries = 0;
	ereport(LOG,
			(errmsg("migrate_ext: backfill job " INT64_FORMAT " %s: %s",
					bf->job_id, state, error)));
}

/* ----------------------------------------------------------------
 *		The worker: the walk
 * ----------------------------------------------------------------
 */

static Oid
bf_operator_namespace(Oid opno)
{
	HeapTuple	tup = SearchSysCache1(OPEROID, ObjectIdGetDatum(opno));
	Oid			nsp;

	if (!HeapTupleIsValid(tup))
		return InvalidOid;
	nsp = ((Form_pg_operator) GETSTRUCT(tup))->oprnamespace;
	ReleaseSysCache(tup);
	return nsp;
}

/*
 * Can the walk follow this index?  A plain btree over NOT NULL columns with
 * their default ordering and collation, whose comparison operators are
 * built in (the batches' SQL runs with search_path = pg_catalog, so "(a, b)
 * > ($1, $2)" must find exactly the index's operators).  Sets *cols to the
 * key columns' names.
 */
static bool
bf_index_walkable(Relation rel, Oid indexoid, List **cols)
{
	Relation	ind = index_open(indexoid, AccessShareLock);
	Form_pg_index idx = ind->rd_index;
	bool		ok;

	*cols = NIL;
	ok = ind->rd_rel->relam == BTREE_AM_OID && idx->indisvalid &&
		heap_attisnull(ind->rd_indextuple, Anum_pg_index_indexprs, NULL) &&
		heap_attisnull(ind->rd_indextuple, Anum_pg_index_indpred, NULL);
	for (int i = 0; ok && i < idx->indnkeyatts; i++)
	{
		AttrNumber	attnum = idx->indkey.values[i];
		Form_pg_attribute att;
		Oid			opclass;
		Oid			gt;

		if (attnum <= 0)
		{
			ok = false;
			break;
		}
		att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		opclass = GetDefaultOpClass(att->atttypid, BTREE_AM_OID);
		gt = get_opfamily_member(ind->rd_opfamily[i], ind->rd_opcintype[i],
								 ind->rd_opcintype[i], BTGreaterStrategyNumber);
		if (!att->attnotnull || ind->rd_indoption[i] != 0 || !OidIsValid(opclass) ||
			get_opclass_family(opclass) != ind->rd_opfamily[i] ||
			get_opclass_input_type(opclass) != ind->rd_opcintype[i] ||
			ind->rd_indcollation[i] != att->attcollation ||
			!OidIsValid(gt) || bf_operator_namespace(gt) != PG_CATALOG_NAMESPACE)
			ok = false;
		else
			*cols = lappend(*cols, pstrdup(NameStr(att->attname)));
	}
	index_close(ind, AccessShareLock);
	return ok;
}

/*
 * Choose what the walk follows: the primary key, else the unique NOT NULL
 * key with the fewest columns, else physical ctid ranges.
 */
static const char *
bf_choose_key(Relation rel, List **cols)
{
	Oid			pk = RelationGetPrimaryKeyIndex(rel);
	List	   *best = NIL;
	ListCell   *lc;

	if (OidIsValid(pk) && bf_index_walkable(rel, pk, cols))
		return "primary key";

	foreach(lc, RelationGetIndexList(rel))
	{
		Oid			indexoid = lfirst_oid(lc);
		List	   *c;
		bool		unique;
		HeapTuple	tup;

		if (indexoid == pk)
			continue;
		tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(indexoid));
		if (!HeapTupleIsValid(tup))
			continue;
		unique = ((Form_pg_index) GETSTRUCT(tup))->indisunique;
		ReleaseSysCache(tup);
		if (unique && bf_index_walkable(rel, indexoid, &c) &&
			(best == NIL || list_length(c) < list_length(best)))
			best = c;
	}
	*cols = best;
	return best ? "unique key" : "ctid";
}

static bool
bf_is_ctid(BfJob *job)
{
	return strcmp(job->key_kind, "ctid") == 0;
}

static BlockNumber
bf_block_of(const char *tidtext)
{
	ItemPointer ip = (ItemPointer) DatumGetPointer(DirectFunctionCall1(tidin,
																	   CStringGetDatum(tidtext)));

	return ItemPointerGetBlockNumberNoCheck(ip);
}

static Datum
bf_block_tid(BlockNumber blk)
{
	ItemPointer ip = palloc(sizeof(ItemPointerData));

	ItemPointerSet(ip, blk, 0);
	return PointerGetDatum(ip);
}

static char *
bf_block_text(BlockNumber blk)
{
	return DatumGetCString(DirectFunctionCall1(tidout, bf_block_tid(blk)));
}

/*
 * First batch of a job: choose the key, freeze the upper bound, estimate
 * the rows, and move the migration to backfilling.
 */
static void
bf_start_walk(Relation rel, MigMigration *m, BfJob *job)
{
	const char *qname = bf_qualified_name(RelationGetRelid(rel));
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
	Oid			types[6] = {INT8OID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID, BOOLOID};
	Datum		v[6];
	char		n[7] = "      ";
	int64		total = -1;
	bool		exact = false;
	ListCell   *lc;

	job->key_kind = (char *) bf_choose_key(rel, &job->key_cols);
	job->lower_key = NIL;
	job->upper_key = NIL;
	if (bf_is_ctid(job))
	{
		if (nblocks > 0)
			job->upper_key = list_make1(bf_block_text(nblocks));
	}
	else
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT ");
		foreach(lc, job->key_cols)
			appendStringInfo(&sql, "%s%s", foreach_current_index(lc) ? ", " : "",
							 quote_identifier(lfirst(lc)));
		appendStringInfo(&sql, " FROM ONLY %s ORDER BY ", qname);
		foreach(lc, job->key_cols)
			appendStringInfo(&sql, "%s%s DESC", foreach_current_index(lc) ? ", " : "",
							 quote_identifier(lfirst(lc)));
		appendStringInfoString(&sql, " LIMIT 1");
		if (SPI_execute(sql.data, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the upper bound of the backfill");
		if (SPI_processed == 1)
			for (int i = 1; i <= list_length(job->key_cols); i++)
				job->upper_key = lappend(job->upper_key,
										 SPI_getvalue(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, i));
	}

	/* rows_total: exact for a small table, else the planner's estimate */
	if (nblocks == 0)
	{
		total = 0;
		exact = true;
	}
	else if (nblocks <= BF_SMALL_TABLE_BLOCKS)
	{
		bool		isnull;

		if (SPI_execute(psprintf("SELECT count(*) FROM ONLY %s", qname), false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not count the rows to backfill");
		total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		exact = true;
	}
	else if (rel->rd_rel->reltuples >= 0 && rel->rd_rel->relpages > 0)
		total = (int64) (rel->rd_rel->reltuples / rel->rd_rel->relpages * nblocks);

	bf->rows_per_block = (total > 0 && nblocks > 0) ? (double) total / nblocks : 100;
	bf->vacuum_every = Max(BF_VACUUM_MIN_ROWS, (int64) (BF_VACUUM_FRACTION * Max(total, 0)));

	v[0] = Int64GetDatum(bf->job_id);
	v[1] = CStringGetTextDatum(job->key_kind);
	v[2] = bf_text_array(job->key_cols);
	v[3] = job->upper_key ? bf_text_array(job->upper_key) : (Datum) 0;
	n[3] = job->upper_key ? ' ' : 'n';
	v[4] = Int64GetDatum(total);
	n[4] = total >= 0 ? ' ' : 'n';
	v[5] = BoolGetDatum(exact);
	mig_catalog_exec("UPDATE migrate_ext.job SET key_kind = $2, key_cols = $3::name[], "
					 "lower_key = NULL, upper_key = $4, rows_total = $5, rows_total_exact = $6 "
					 "WHERE id = $1", 6, types, v, n, 1);

	if (strcmp(m->phase, MIG_PHASE_EXPANDED) == 0)
		mig_catalog_set_phase(m->id, MIG_PHASE_BACKFILLING, NULL);
}

/*
 * Has the ground moved under the job?  Returns NULL when all is as the job
 * needs it, else what changed; *hint says what to do.
 */
static char *
bf_ground_moved(Relation rel, MigMigration *m, BfJob *job, const char **hint)
{
	const char *relname = RelationGetRelationName(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trigdesc = rel->trigdesc;
	Trigger    *trig = NULL;
	char		idbuf[32];
	ListCell   *lc;

	snprintf(idbuf, sizeof(idbuf), INT64_FORMAT, m->id);
	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
		if (strcmp(trigdesc->triggers[i].tgname, MIG_TRIGGER_NAME) == 0)
			trig = &trigdesc->triggers[i];
	if (trig == NULL || trig->tgnargs != 1 || strcmp(trig->tgargs[0], idbuf) != 0)
	{
		*hint = psprintf("Client writes are no longer kept in step: abort with mig_abort('%s') and start the migration again.",
						 relname);
		return psprintf("the dual-write trigger \"%s\" of table \"%s\" was dropped",
						MIG_TRIGGER_NAME, relname);
	}
	if (trig->tgenabled == TRIGGER_DISABLED ||
		(SessionReplicationRole == SESSION_REPLICATION_ROLE_REPLICA ?
		 trig->tgenabled == TRIGGER_FIRES_ON_ORIGIN :
		 trig->tgenabled == TRIGGER_FIRES_ON_REPLICA))
	{
		*hint = psprintf("Enable it again (ALTER TABLE %s ENABLE TRIGGER %s), then run mig_backfill('%s') again: rows that clients wrote meanwhile may be out of step, and a new job rewrites every row that is not right.",
						 quote_identifier(relname), MIG_TRIGGER_NAME, relname);
		return psprintf("the dual-write trigger \"%s\" of table \"%s\" was disabled",
						MIG_TRIGGER_NAME, relname);
	}

	*hint = psprintf("Abort the migration with mig_abort('%s') and start it again.", relname);
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		Form_pg_attribute att;
		ListCell   *lv;

		if (p->new_attnum > desc->natts ||
			(att = TupleDescAttr(desc, p->new_attnum - 1))->attisdropped)
			return psprintf("new column \"%s\" of table \"%s\" was dropped", p->new_col, relname);
		if (strcmp(format_type_with_typemod(att->atttypid, att->atttypmod), p->new_type) != 0)
			return psprintf("new column \"%s\" of table \"%s\" changed type from %s to %s",
							NameStr(att->attname), relname, p->new_type,
							format_type_with_typemod(att->atttypid, att->atttypmod));
		foreach(lv, pull_var_clause(p->up, 0))
		{
			Var		   *var = lfirst(lv);

			if (var->varattno <= 0)
				continue;
			if (var->varattno > desc->natts ||
				(att = TupleDescAttr(desc, var->varattno - 1))->attisdropped)
				return psprintf("a column that the up expression of \"%s\" reads was dropped from table \"%s\"",
								p->new_col, relname);
			if (att->atttypid != var->vartype || att->atttypmod != var->vartypmod)
				return psprintf("column \"%s\" of table \"%s\", which the up expression of \"%s\" reads, changed type",
								NameStr(att->attname), relname, p->new_col);
		}
	}

	foreach(lc, job->key_cols)
	{
		if (get_attnum(RelationGetRelid(rel), lfirst(lc)) == InvalidAttrNumber)
		{
			*hint = psprintf("Start a new job with mig_backfill('%s'): it walks the current key.", relname);
			return psprintf("key column \"%s\" that the backfill of table \"%s\" walks is gone",
							(char *) lfirst(lc), relname);
		}
	}
	return NULL;
}

/* "(a, b)" or "a", the key columns as a row. */
static char *
bf_key_row(List *cols, bool desc)
{
	StringInfoData s;
	ListCell   *lc;

	initStringInfo(&s);
	if (list_length(cols) > 1 && !desc)
		appendStringInfoChar(&s, '(');
	foreach(lc, cols)
		appendStringInfo(&s, "%s%s%s", foreach_current_index(lc) ? ", " : "",
						 quote_identifier(lfirst(lc)), desc ? " DESC" : "");
	if (list_length(cols) > 1 && !desc)
		appendStringInfoChar(&s, ')');
	return s.data;
}

/* "($3, $4)" or "$3", parameters first..first+n-1 as a row. */
static char *
bf_param_row(int first, int n)
{
	StringInfoData s;

	initStringInfo(&s);
	if (n > 1)
		appendStringInfoChar(&s, '(');
	for (int i = 0; i < n; i++)
		appendStringInfo(&s, "%s$%d", i ? ", " : "", first + i);
	if (n > 1)
		appendStringInfoChar(&s, ')');
	return s.data;
}

/* Key values (text) as parameters of the key columns' types. */
static void
bf_key_params(Relation rel, List *cols, List *values, Oid *types, Datum *datums)
{
	ListCell   *lc,
			   *lv;
	int			i = 0;

	forboth(lc, cols, lv, values)
	{
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), lfirst(lc));
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		Oid			typinput;
		Oid			typioparam;

		getTypeInputInfo(att->atttypid, &typinput, &typioparam);
		types[i] = att->atttypid;
		datums[i] = OidInputFunctionCall(typinput, lfirst(lv), typioparam, att->atttypmod);
		i++;
	}
}

/*
 * "SET new1 = new1, ..." and the filter "new1 IS NULL OR new1 IS DISTINCT
 * FROM (up1) OR ...".  The dual-write trigger computes every new value from
 * the row version it writes (mig_backfill_writes), and skips the row when
 * they are all right already; so up() is computed once per row written
 * (twice would be the price of SET new1 = (up1)), and a first backfill,
 * where the new columns are NULL, does not compute it in the filter at all.
 * A rerun filters out, without locking them, the rows that are right.
 * Types without a built-in equality (json, or one defined outside
 * pg_catalog) are compared as text.  Must run with search_path =
 * pg_catalog, pg_temp, as the deparsed expressions expect.
 */
static void
bf_update_clauses(Relation rel, MigMigration *m, StringInfo set, StringInfo filter)
{
	ListCell   *lc;

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), p->new_attnum - 1);
		const char *col = quote_identifier(NameStr(att->attname));
		char	   *up = mig_deparse(p->up, RelationGetRelid(rel));
		TypeCacheEntry *tce = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR);
		Oid			upcoll = exprCollation(p->up);
		const char *sep = foreach_current_index(lc) ? ", " : "";
		const char *or = foreach_current_index(lc) ? " OR " : "";

		appendStringInfo(set, "%s%s = %s", sep, col, col);
		if (!OidIsValid(tce->eq_opr) || bf_operator_namespace(tce->eq_opr) != PG_CATALOG_NAMESPACE)
			appendStringInfo(filter, "%s%s IS NULL OR %s::text IS DISTINCT FROM (%s)::text",
							 or, col, col, up);
		else if (OidIsValid(att->attcollation) && OidIsValid(upcoll) &&
				 upcoll != att->attcollation)
			appendStringInfo(filter, "%s%s IS NULL OR %s IS DISTINCT FROM (%s) COLLATE %s",
							 or, col, col, up, generate_collation_name(att->attcollation));
		else
			appendStringInfo(filter, "%s%s IS NULL OR %s IS DISTINCT FROM (%s)", or, col, col, up);
	}
}

/*
 * One batch along a key: the rows of (lower, end], end being the size-th
 * key after lower or, near the end, the frozen upper bound.  Returns the
 * new checkpoint; *seen and *written count the rows covered and written.
 */
static List *
bf_key_batch(Relation rel, MigMigration *m, BfJob *job, int size,
			 int64 *seen, int64 *written)
{
	int			nk = list_length(job->key_cols);
	const char *qname = bf_qualified_name(RelationGetRelid(rel));
	Oid		   *types = palloc(sizeof(Oid) * (3 * nk + 1));
	Datum	   *values = palloc(sizeof(Datum) * (3 * nk + 1));
	StringInfoData range;
	StringInfoData cols;
	StringInfoData sql;
	StringInfoData set;
	StringInfoData filter;
	ListCell   *lc;
	int			np = 0;
	List	   *end = NIL;
	bool		isnull;

	/* (lower, upper] and the batch size */
	initStringInfo(&range);
	if (job->lower_key)
	{
		bf_key_params(rel, job->key_cols, job->lower_key, types, values);
		appendStringInfo(&range, "%s > %s AND ", bf_key_row(job->key_cols, false),
						 bf_param_row(1, nk));
		np = nk;
	}
	bf_key_params(rel, job->key_cols, job->upper_key, types + np, values + np);
	appendStringInfo(&range, "%s <= %s", bf_key_row(job->key_cols, false),
					 bf_param_row(np + 1, nk));
	np += nk;

	/* the size-th key after lower; none: the last batch, up to upper */
	initStringInfo(&cols);
	foreach(lc, job->key_cols)
		appendStringInfo(&cols, "%s%s", foreach_current_index(lc) ? ", " : "",
						 quote_identifier(lfirst(lc)));
	types[np] = INT8OID;
	values[np] = Int64GetDatum(size - 1);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM ONLY %s WHERE %s ORDER BY %s OFFSET $%d LIMIT 1",
					 cols.data, qname, range.data, cols.data, np + 1);
	if (SPI_execute_with_args(sql.data, np + 1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not find the end of a backfill batch");
	if (SPI_processed == 1)
	{
		*seen = size;
		for (int i = 1; i <= nk; i++)
			end = lappend(end, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i));
	}
	else
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "SELECT count(*) FROM ONLY %s WHERE %s", qname, range.data);
		if (SPI_execute_with_args(sql.data, np, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not count the rows of a backfill batch");
		*seen = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											1, &isnull));
		end = job->upper_key;
	}

	/* the same range, up to end */
	np -= nk;
	bf_key_params(rel, job->key_cols, end, types + np, values + np);
	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE ONLY %s SET %s WHERE %s AND (%s)",
					 qname, set.data, range.data, filter.data);
	if (SPI_execute_with_args(sql.data, np + nk, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not run a backfill batch");
	*written = SPI_processed;
	return end;
}

/*
 * One batch over physical ctid ranges: blocks [lower, lower + n) where n
 * blocks hold about size rows, or up to the number of blocks the table had
 * when the job started.  Returns the new checkpoint.
 */
static List *
bf_ctid_batch(Relation rel, MigMigration *m, BfJob *job, int size,
			  int64 *seen, int64 *written)
{
	const char *qname = bf_qualified_name(RelationGetRelid(rel));
	BlockNumber lo = job->lower_key ? bf_block_of(linitial(job->lower_key)) : 0;
	BlockNumber hi = bf_block_of(linitial(job->upper_key));
	BlockNumber nblocks = (BlockNumber) Max(1.0, size / Max(bf->rows_per_block, 1.0));
	BlockNumber end = (hi - lo <= nblocks) ? hi : lo + nblocks;
	Oid			types[2] = {TIDOID, TIDOID};
	Datum		values[2];
	StringInfoData set;
	StringInfoData filter;
	bool		isnull;

	values[0] = bf_block_tid(lo);
	values[1] = bf_block_tid(end);
	if (SPI_execute_with_args(psprintf("SELECT count(*) FROM ONLY %s WHERE ctid >= $1 AND ctid < $2",
									   qname),
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the rows of a backfill batch");
	*seen = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (*seen > 0)
		bf->rows_per_block = (double) *seen / (end - lo);

	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	if (SPI_execute_with_args(psprintf("UPDATE ONLY %s SET %s WHERE ctid >= $1 AND ctid < $2 AND (%s)",
									   qname, set.data, filter.data),
							  2, types, values, NULL, false, 0) != SPI_OK_UPDATE)
		elog(ERROR, "could not run a backfill batch");
	*written = SPI_processed;
	return list_make1(bf_block_text(end));
}

static bool
bf_walk_complete(BfJob *job)
{
	if (job->upper_key == NIL)
		return true;
	if (job->lower_key == NIL)
		return false;
	if (bf_is_ctid(job))
		return bf_block_of(linitial(job->lower_key)) >= bf_block_of(linitial(job->upper_key));
	return bf_lists_equal(job->lower_key, job->upper_key);
}

/* rows_recent: rows covered per second over the last BF_RATE_WINDOW_MS. */
static double
bf_rate_recent(TimestampTz now, uint64 seen_total)
{
	int			i;
	BfSample   *from;

	/* the newest sample at least a window old, else the oldest */
	for (i = bf->nrate - 1; i > 0; i--)
		if (TimestampDifferenceExceeds(bf->rate[i].at, now, BF_RATE_WINDOW_MS))
			break;
	from = &bf->rate[i];
	if (now <= from->at)
		return 0;
	return (double) (seen_total - from->value) * USECS_PER_SEC / (now - from->at);
}

static void
bf_push(BfSample *ring, int *n, TimestampTz at, uint64 value)
{
	if (*n == BF_RING)
	{
		memmove(ring, ring + 1, sizeof(BfSample) * (BF_RING - 1));
		(*n)--;
	}
	ring[*n].at = at;
	ring[*n].value = value;
	(*n)++;
}

/* The next batch size, from how long this one took. */
static int
bf_next_size(int size, long elapsed_ms)
{
	int			target = bf->target_batch_ms;
	double		next = size;

	if (bf->batch_size_fixed)
		return bf->batch_size;
	if (elapsed_ms > target * 3 / 2)
		next = size / 2.0;		/* shrink fast */
	else if (elapsed_ms > target)
		next = size * 0.8;
	else if (elapsed_ms < target / 2)
		next = size * 1.5;		/* grow gradually */
	else if (elapsed_ms < target * 4 / 5)
		next = size * 1.2;
	return (int) Min(Max(next, 1), BF_MAX_BATCH);
}

static void
bf_set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * One batch, in its own transaction.  See the file header for the steps.
 */
static BfResult
bf_batch(void)
{
	BfJob		job;
	MigMigration *m;
	Relation	rel;
	char	   *moved;
	const char *hint;
	TimestampTz start;
	int			size;
	int64		seen;
	int64		written;
	List	   *end;
	long		elapsed_ms;
	double		rate;
	bool		throttled = false;
	Oid			types[13] = {INT8OID, TEXTARRAYOID, INT8OID, INT8OID, INT4OID, FLOAT8OID,
		FLOAT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		v[13];
	char		n[14] = "             ";

	StartTransactionCommand();
	SPI_connect();
	bf_set_local("synchronous_commit", "off");
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_lock_job();
	if (!bf_read_job(&job) || !bf_state_is(job.state, "running", "throttled", "paused"))
	{
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}
	if (strcmp(job.state, "paused") == 0)
	{
		if (bf->active_since != 0)
			mig_catalog_exec("UPDATE migrate_ext.job SET active_seconds = active_seconds + $2 "
							 "WHERE id = $1", 2, (Oid[]) {INT8OID, FLOAT8OID},
							 (Datum[]) {Int64GetDatum(bf->job_id), Float8GetDatum(bf_active_delta())},
							 NULL, 1);
		bf->active_since = 0;
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_PAUSED;
	}
	if (bf->active_since == 0)
		bf->active_since = GetCurrentTimestamp();

	/* short waits for locks, and a sanity bound on the whole batch */
	bf_set_local("lock_timeout", psprintf("%d", Max(50, bf->target_batch_ms / 2)));
	bf_set_local("statement_timeout", psprintf("%d", Max(5000, 10 * bf->target_batch_ms)));
	bf_set_local("search_path", "pg_catalog, pg_temp");

	m = mig_catalog_by_id(job.migration_id);
	if (m == NULL || strcmp(m->phase, MIG_PHASE_ABORTED) == 0)
	{
		bf_record_end("cancelled", "the migration was aborted", NULL);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}
	if (mig_phase_rank(m->phase) > mig_phase_rank(MIG_PHASE_VALIDATED))
	{
		bf_record_end("failed",
					  psprintf("the migration of table %s moved to phase %s while the backfill ran; nothing more to do, the dual-write trigger keeps the columns in step",
							   m->table_name, m->phase), NULL);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}

	/* the table, then the checks: DDL cannot change it under the lock */
	LockRelationOid(m->relid, RowExclusiveLock);
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(m->relid)))
	{
		bf_record_end("failed",
					  psprintf("table %s was dropped while the backfill ran; nothing is left to do",
							   m->table_name), NULL);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}
	rel = table_open(m->relid, NoLock);
	if (bf->table_name == NULL)
		bf->table_name = MemoryContextStrdup(TopMemoryContext,
											 bf_qualified_name(m->relid));
	bf->relid = m->relid;
	moved = bf_ground_moved(rel, m, &job, &hint);
	if (moved)
	{
		table_close(rel, NoLock);
		bf_record_end("failed", psprintf("%s. %s", moved, hint),
					  "55000");
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}
	if (job.key_kind == NULL)
		bf_start_walk(rel, m, &job);
	else if (bf->vacuum_every == 0)
	{
		/* a resumed job: the same pace as at its start */
		int64		total = rel->rd_rel->reltuples > 0 ? (int64) rel->rd_rel->reltuples : 0;

		bf->vacuum_every = Max(BF_VACUUM_MIN_ROWS, (int64) (BF_VACUUM_FRACTION * total));
		if (rel->rd_rel->relpages > 0 && total > 0)
			bf->rows_per_block = (double) total / rel->rd_rel->relpages;
	}
	if (bf_walk_complete(&job))
	{
		table_close(rel, NoLock);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_WALKED;
	}

	size = bf->batch_size;
	if (bf->attempt > 0 && bf->retry_size < size)
		size = bf->retry_size;
	if (bf->max_rows_per_sec > 0)
		size = (int) Min(size, Max(1, bf->max_rows_per_sec * bf->target_batch_ms / 1000));
	bf->retry_size = Max(1, size / 2);

	pgstat_report_activity(STATE_RUNNING, "migrate_ext backfill batch");
	start = GetCurrentTimestamp();
	if (bf_is_ctid(&job))
		end = bf_ctid_batch(rel, m, &job, size, &seen, &written);
	else
		end = bf_key_batch(rel, m, &job, size, &seen, &written);
	table_close(rel, NoLock);
	elapsed_ms = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());

	/* the pace: sleep_ms, or longer to hold max_rows_per_sec */
	bf->next_wait_ms = bf->sleep_ms;
	if (bf->max_rows_per_sec > 0 && seen > 0)
	{
		int64		need = seen * 1000 / bf->max_rows_per_sec - elapsed_ms;

		if (need > bf->next_wait_ms)
		{
			bf->next_wait_ms = (int) Min(need, INT_MAX);
			throttled = true;
		}
	}
	rate = bf_rate_recent(GetCurrentTimestamp(), bf->seen_total + seen);

	v[0] = Int64GetDatum(bf->job_id);
	v[1] = bf_text_array(end);
	v[2] = Int64GetDatum(written);
	v[3] = Int64GetDatum(seen);
	v[4] = Int32GetDatum(bf_next_size(size, elapsed_ms));
	v[5] = Float8GetDatum(rate);
	v[6] = Float8GetDatum(bf_active_delta());
	v[7] = CStringGetTextDatum(throttled ? "throttled" : "running");
	v[8] = throttled ? CStringGetTextDatum("max_rows_per_sec") : (Datum) 0;
	n[8] = throttled ? ' ' : 'n';
	v[9] = Int64GetDatum(bf->pending_retries);
	v[10] = bf->pending_error ? CStringGetTextDatum(bf->pending_error) : (Datum) 0;
	n[10] = bf->pending_error ? ' ' : 'n';
	v[11] = bf->pending_sqlstate ? CStringGetTextDatum(bf->pending_sqlstate) : (Datum) 0;
	n[11] = bf->pending_sqlstate ? ' ' : 'n';
	v[12] = Int32GetDatum(bf->pending_vacuums);
	mig_catalog_exec("UPDATE migrate_ext.job SET lower_key = $2, rows_done = rows_done + $3, "
					 "rows_seen = rows_seen + $4, batches = batches + 1, batch_size = $5, "
					 "rate_recent = $6, active_seconds = active_seconds + $7, state = $8, "
					 "throttle_reason = $9, retries = retries + $10, "
					 "last_error = coalesce($11, last_error), "
					 "last_sqlstate = coalesce($12, last_sqlstate), vacuums = vacuums + $13, "
					 "updated_at = now() WHERE id = $1", 13, types, v, n, 1);

	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	pgstat_report_activity(STATE_IDLE, NULL);

	bf->attempt = 0;
	bf->pending_vacuums = 0;
	bf->pending_retries = 0;
	bf->pending_error = NULL;
	bf->pending_sqlstate = NULL;
	bf->seen_total += seen;
	bf->written_total += written;
	bf->written_since_vacuum += written;
	bf_push(bf->rate, &bf->nrate, GetCurrentTimestamp(), bf->seen_total);
	return BF_NEXT;
}

/*
 * The walk is over: the job is done, and a migration still in backfilling
 * moves to backfilled.  A job cancelled or paused meanwhile stays so.
 */
static BfResult
bf_finish(void)
{
	BfJob		job;
	MigMigration *m;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_lock_job();
	if (bf_read_job(&job) && bf_state_is(job.state, "running", "throttled", NULL))
	{
		mig_catalog_exec("UPDATE migrate_ext.job SET state = 'done', throttle_reason = NULL, "
						 "rows_total = rows_seen, rows_total_exact = (key_kind <> 'ctid'), "
						 "active_seconds = active_seconds + $2, retries = retries + $3, "
						 "vacuums = vacuums + $4, rate_recent = NULL, updated_at = now(), "
						 "finished_at = now() WHERE id = $1",
						 4, (Oid[]) {INT8OID, FLOAT8OID, INT8OID, INT4OID},
						 (Datum[]) {Int64GetDatum(bf->job_id), Float8GetDatum(bf_active_delta()),
							 Int64GetDatum(bf->pending_retries), Int32GetDatum(bf->pending_vacuums)},
						 NULL, 1);
		m = mig_catalog_by_id(job.migration_id);
		if (m && strcmp(m->phase, MIG_PHASE_BACKFILLING) == 0)
			mig_catalog_set_phase(m->id, MIG_PHASE_BACKFILLED, NULL);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
		return BF_STOP;
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return (job.state && strcmp(job.state, "paused") == 0) ? BF_PAUSED : BF_STOP;
}

/*
 * VACUUM the table as a top-level statement of our own (as pg_cron's
 * background mode runs SQL), outside any transaction: vacuum() commits and
 * starts transactions itself, so what it reads lives in a context of ours.
 * SKIP_LOCKED: a VACUUM already at it (autovacuum, or our previous one)
 * does the same job.  Only the last one cleans the indexes and may truncate
 * the table: pruning alone frees the heap space that the next batches need
 * (the line pointers stay until then), and scanning every index each time
 * would cost more than it gains.
 */
static void
bf_run_vacuum(Oid relid, bool last)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext vacuum",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt;
	char	   *sql = NULL;
	RawStmt    *raw;
	PlannedStmt *pstmt;

	StartTransactionCommand();
	oldcxt = MemoryContextSwitchTo(cxt);
	if (get_rel_name(relid))
		sql = psprintf("VACUUM (SKIP_LOCKED%s) %s",
					   last ? "" : ", TRUNCATE false, INDEX_CLEANUP off, PROCESS_TOAST false",
					   bf_qualified_name(relid));
	if (sql)
	{
		pgstat_report_activity(STATE_RUNNING, sql);
		raw = linitial_node(RawStmt, pg_parse_query(sql));
		pstmt = makeNode(PlannedStmt);
		pstmt->commandType = CMD_UTILITY;
		pstmt->canSetTag = true;
		pstmt->utilityStmt = raw->stmt;
		pstmt->stmt_location = raw->stmt_location;
		pstmt->stmt_len = raw->stmt_len;
		ProcessUtility(pstmt, sql, false, PROCESS_UTILITY_TOPLEVEL, NULL, NULL,
					   None_Receiver, NULL);
	}
	CommitTransactionCommand();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/* A worker that runs one VACUUM for a backfill, as the backfill's role. */
void
mig_backfill_vacuum_main(Datum main_arg)
{
	MigWorkerArgs args;

	mig_worker_connect(&args);
	bf_run_vacuum((Oid) args.arg, false);
	proc_exit(0);
}

/*
 * Between batches, so that the space of the row versions the batches left
 * dead is reused by the next batches rather than added at the end of the
 * table.  In a worker of its own, so that the batches go on meanwhile (on
 * another core); in this one when no worker slot is free, and for the last
 * VACUUM, which must be over before the job is done.  A failure is logged
 * and the backfill goes on.
 */
static void
bf_vacuum(bool last)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool started = false;

	if (bf->written_since_vacuum == 0 || !OidIsValid(bf->relid))
		return;
	bf->written_since_vacuum = 0;
	bf->pending_vacuums++;

	if (!last)
	{
		MigWorkerArgs args = bf->args;

		args.arg = bf->relid;
		PG_TRY();
		{
			(void) mig_worker_start("mig_backfill_vacuum_main",
									"migrate_ext backfill vacuum", &args);
			started = true;
		}
		PG_CATCH();
		{
			MemoryContextSwitchTo(oldcxt);
			FlushErrorState();
		}
		PG_END_TRY();
		if (started)
			return;
	}

	PG_TRY();
	{
		bf_run_vacuum(bf->relid, last);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
}
/*
 * A batch failed: try it again after a growing pause, with half the rows,
 * or, after too many tries, end the job as failed with the error and what
 * to do.
 */
static BfResult
bf_batch_failed(ErrorData *edata)
{
	const char *sqlstate = unpack_sql_state(edata->sqlerrcode);
	bool		transient = edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		edata->sqlerrcode == ERRCODE_QUERY_CANCELED;
	int			max_attempts = transient ? BF_TRANSIENT_RETRIES : BF_OTHER_RETRIES;
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	if (bf->pending_error)
		pfree(bf->pending_error);
	bf->pending_error = pstrdup(edata->message);
	bf->pending_sqlstate = pstrdup(sqlstate);
	MemoryContextSwitchTo(oldcxt);

	bf->attempt++;
	if (bf->attempt <= max_attempts)
	{
		bf->pending_retries++;
		bf->backoff_ms = Min(BF_MAX_BACKOFF_MS, 100 << Min(bf->attempt, 10));
		bf->backoff_ms += pg_prng_uint32(&pg_global_prng_state) % (bf->backoff_ms / 2 + 1);
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT " batch failed (attempt %d of %d), retrying in %d ms: %s",
						bf->job_id, bf->attempt, max_attempts + 1, bf->backoff_ms,
						edata->message)));
		return BF_RETRY;
	}

	/* give up: record it in a fresh transaction */
	PG_TRY();
	{
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		bf_record_end("failed",
					  psprintf("%s (the batch failed %d times); fix the cause, then continue from the checkpoint with mig_resume('%s')",
							   edata->message, bf->attempt,
							   bf->table_name ? bf->table_name : "<table>"),
					  sqlstate);
		PopActiveSnapshot();
		SPI_finish();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	return BF_STOP;
}

/* Run a step; an error rolls it back and goes to bf_batch_failed(). */
static BfResult
bf_try(BfResult (*step) (void))
{
	volatile BfResult res = BF_STOP;

	PG_TRY();
	{
		res = step();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(bf->cxt);
		edata = CopyErrorData();
		FlushErrorState();
		AbortCurrentTransaction();
		res = bf_batch_failed(edata);
		FreeErrorData(edata);
		MemoryContextReset(bf->cxt);
	}
	PG_END_TRY();
	return res;
}

/* ----------------------------------------------------------------
 *		The worker: waiting
 * ----------------------------------------------------------------
 */

static void
bf_sleep(int ms)
{
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * Peek at the job row (no lock), reading the settings into bf.  Returns
 * whether the job is still running or throttled; *changed says whether a
 * setting that governs waits changed.
 */
static bool
bf_peek(bool *changed)
{
	BfJob		job;
	bool		running;
	int			sleep_ms = bf->sleep_ms;
	int64		max_rows_per_sec = bf->max_rows_per_sec;
	int64		max_lag_ms = bf->max_lag_ms;

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	running = bf_read_job(&job) && bf_state_is(job.state, "running", "throttled", NULL);
	*changed = sleep_ms != bf->sleep_ms || max_rows_per_sec != bf->max_rows_per_sec ||
		max_lag_ms != bf->max_lag_ms;
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return running;
}

/* Wait ms, looking at the job row every second. */
static void
bf_wait(int ms)
{
	TimestampTz until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), ms);
	TimestampTz next_peek = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);

	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		long		left = TimestampDifferenceMilliseconds(now, until);

		if (left <= 0)
			return;
		bf_sleep(Min(left, BF_POLL_MS));
		if (GetCurrentTimestamp() >= next_peek)
		{
			bool		changed;

			if (!bf_peek(&changed) || changed)
				return;
			next_peek = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
	}
}

/*
 * How far behind is the slowest streaming standby, in milliseconds?
 *
 * pg_stat_replication's replay_lag does not grow while a standby's replay
 * is paused (it measures WAL that was replayed), and its LSN columns are
 * hidden from roles without pg_read_all_stats.  So we read the walsenders'
 * shared memory ourselves and keep a ring of (time, WAL flush position)
 * samples: the lag is the age of the oldest sample the standby has not
 * replayed yet.  Samples are spaced so that the ring spans twice the
 * allowed lag.  Logical walsenders (connected to a database) are not
 * standbys and are left out.
 */
static int64
bf_replica_lag_ms(void)
{
	TimestampTz now = GetCurrentTimestamp();
	XLogRecPtr	slowest = InvalidXLogRecPtr;
	bool		any = false;
	int64		spacing = Max(50, bf->max_lag_ms / (BF_RING / 2));

	if (bf->nlsn == 0 ||
		TimestampDifferenceExceeds(bf->lsn[bf->nlsn - 1].at, now, (int) Min(spacing, INT_MAX)))
		bf_push(bf->lsn, &bf->nlsn, now, GetFlushRecPtr(NULL));

	for (int i = 0; i < max_wal_senders; i++)
	{
		WalSnd	   *walsnd = &WalSndCtl->walsnds[i];
		pid_t		pid;
		WalSndState state;
		XLogRecPtr	apply;
		PGPROC	   *proc;

		SpinLockAcquire(&walsnd->mutex);
		pid = walsnd->pid;
		state = walsnd->state;
		apply = walsnd->apply;
		SpinLockRelease(&walsnd->mutex);

		if (pid == 0 || XLogRecPtrIsInvalid(apply) ||
			(state != WALSNDSTATE_STREAMING && state != WALSNDSTATE_CATCHUP))
			continue;
		proc = BackendPidGetProc(pid);
		if (proc == NULL || OidIsValid(proc->databaseId))
			continue;
		if (!any || apply < slowest)
			slowest = apply;
		any = true;
	}
	if (!any)
		return 0;
	for (int i = 0; i < bf->nlsn; i++)
		if (bf->lsn[i].value > slowest)
			return TimestampDifferenceMilliseconds(bf->lsn[i].at, now);
	return 0;
}

/*
 * Before a batch: while the slowest standby is more than max_replica_lag
 * behind, the job is throttled with reason 'replica lag'.
 */
static void
bf_wait_for_replicas(void)
{
	bool		throttled = false;
	TimestampTz next_peek = 0;

	while (bf->max_lag_ms >= 0 && bf_replica_lag_ms() > bf->max_lag_ms)
	{
		if (!throttled)
		{
			StartTransactionCommand();
			PushActiveSnapshot(GetTransactionSnapshot());
			mig_catalog_exec("UPDATE migrate_ext.job SET state = 'throttled', "
							 "throttle_reason = 'replica lag', updated_at = now(), "
							 "active_seconds = active_seconds + $2 "
							 "WHERE id = $1 AND state IN ('running', 'throttled')",
							 2, (Oid[]) {INT8OID, FLOAT8OID},
							 (Datum[]) {Int64GetDatum(bf->job_id), Float8GetDatum(bf_active_delta())},
							 NULL, -1);
			PopActiveSnapshot();
			CommitTransactionCommand();
			throttled = true;
			next_peek = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
		bf_sleep(100);
		if (GetCurrentTimestamp() >= next_peek)
		{
			bool		changed;

			if (!bf_peek(&changed))
				return;			/* paused or cancelled: the batch sees it */
			next_peek = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), 1000);
		}
	}
}

/* ----------------------------------------------------------------
 *		The worker: main
 * ----------------------------------------------------------------
 */

/*
 * Take the job's lock for the life of the worker.  Another worker started
 * for the same job at the same moment may hold it; try for a while before
 * leaving the job to it, in case it is only on its way out.
 */
static bool
bf_take_job_lock(void)
{
	LOCKTAG		tag;

	bf_locktag(&tag, MIG_JOB_LOCK_KEY, bf->job_id);
	for (int i = 0; i < 20; i++)
	{
		if (LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL)
			return true;
		bf_sleep(100);
	}
	return false;
}

/*
 * Set the session up: settings that make key values round-trip through
 * their text form whatever the role's defaults, READ COMMITTED (the
 * re-check of concurrent updates depends on it), and the backfill's switch
 * in the dual-write trigger.  Then take the job, once whoever started us
 * has committed.  Returns false when there is nothing to do.
 */
static bool
bf_setup(void)
{
	LOCKTAG		tag;
	BfJob		job;
	bool		found;

	StartTransactionCommand();
	SetConfigOption("application_name", "migrate_ext backfill", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("DateStyle", "ISO, YMD", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("IntervalStyle", "postgres", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("TimeZone", "UTC", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("extra_float_digits", "1", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("bytea_output", "hex", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_read_only", "off", PGC_USERSET, PGC_S_SESSION);
	CommitTransactionCommand();
	mig_backfill_writes = true;

	StartTransactionCommand();
	if (!bf_take_job_lock())
	{
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT " already has a worker",
						bf->job_id)));
		CommitTransactionCommand();
		return false;
	}
	bf_locktag(&tag, MIG_GATE_LOCK_KEY, bf->job_id);
	(void) LockAcquire(&tag, ShareLock, false, false);
	CommitTransactionCommand();

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	found = bf_read_job(&job) && (bf_state_live(job.state) || strcmp(job.state, "interrupted") == 0);
	if (found)
		mig_catalog_exec("UPDATE migrate_ext.job SET worker_pid = $2, updated_at = now(), "
						 "state = CASE state WHEN 'interrupted' THEN 'running' ELSE state END "
						 "WHERE id = $1", 2, (Oid[]) {INT8OID, INT4OID},
						 (Datum[]) {Int64GetDatum(bf->job_id), Int32GetDatum(MyProcPid)}, NULL, 1);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return found;
}

void
mig_backfill_main(Datum main_arg)
{
	MigWorkerArgs args;
	BfResult	res;

	mig_worker_connect(&args);

	bf = MemoryContextAllocZero(TopMemoryContext, sizeof(BfWorker));
	bf->args = args;
	bf->cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext backfill",
									ALLOCSET_DEFAULT_SIZES);
	bf->job_id = args.arg;
	bf->max_lag_ms = -1;
	bf->rows_per_block = 100;
	bf_push(bf->rate, &bf->nrate, GetCurrentTimestamp(), 0);

	if (!bf_setup())
		proc_exit(0);

	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		bf_wait_for_replicas();
		res = bf_try(bf_batch);
		if (res == BF_NEXT)
		{
			if (bf->written_since_vacuum >= bf->vacuum_every)
				bf_vacuum(false);
			if (bf->next_wait_ms > 0)
				bf_wait(bf->next_wait_ms);
		}
		else if (res == BF_RETRY)
			bf_wait(bf->backoff_ms);
		else if (res == BF_PAUSED)
			bf_sleep(BF_POLL_MS);
		else if (res == BF_WALKED)
		{
			bf_vacuum(true);
			res = bf_try(bf_finish);
			if (res == BF_PAUSED)
				bf_sleep(BF_POLL_MS);
			else if (res == BF_RETRY)
				bf_wait(bf->backoff_ms);
			else
				break;
		}
		else
			break;
	}
	proc_exit(0);
}
