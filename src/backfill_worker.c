/*-------------------------------------------------------------------------
 *
 * backfill_worker.c
 *	  The background worker that fills the new column(s) of every existing
 *	  row of a table, batch by batch: one per backfill job, started by
 *	  mig_backfill or mig_resume (backfill.c) and connected as the role that
 *	  called it.  It runs the batches of the walk (backfill_walk.c), keeps
 *	  its checkpoint and counters in the job row, holds the job's pace
 *	  (batch size, sleep_ms, max_rows_per_sec, max_replica_lag), and
 *	  VACUUMs the table as it goes.  It holds the job's advisory lock for
 *	  its whole life (see "Liveness" in backfill.c).
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

#include "access/table.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type.h"
#include "common/pg_prng.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "replication/walsender.h"
#include "replication/walsender_private.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "backfill.h"
#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PGDLLEXPORT void mig_backfill_main(Datum main_arg);
PGDLLEXPORT void mig_backfill_vacuum_main(Datum main_arg);

#define BF_MAX_BATCH			50000
#define BF_TRANSIENT_RETRIES	20		/* lock waits, deadlocks, cancels */
#define BF_OTHER_RETRIES		3
#define BF_MAX_BACKOFF_MS		10000
#define BF_RATE_WINDOW_MS		10000	/* rate_recent is over this window */
#define BF_RING					64
#define BF_POLL_MS				250

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

/* The worker's state across batches. */
typedef struct BfWorker
{
	int64		job_id;
	MigWorkerArgs args;			/* how we were started: for our VACUUM workers */
	Oid			relid;			/* InvalidOid until the first batch */
	char	   *table_name;		/* for messages; NULL until the first batch */
	MemoryContext cxt;			/* lives as long as the worker */

	double		busy;			/* busy client sessions, smoothed: see bf_busy_sessions */

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
 *		The worker: reading and writing the job row
 * ----------------------------------------------------------------
 */

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
 *		The worker: batches
 * ----------------------------------------------------------------
 */

/* The most a batch's duration is multiplied by to yield to the load. */
#define BF_MAX_YIELD	10.0

/*
 * Client sessions of this database that are running a statement on a CPU
 * right now: active, and not waiting for a lock, I/O or a latch.  This is
 * gh-ost's Threads_running.  Under load the worker yields, sleeping after
 * each batch for the batch's duration times this number times
 * migrate_ext.backfill_yield, so that on a busy server the backfill takes a
 * small share of the CPU and the application's latency barely moves, while
 * on an idle one it runs flat out.  A session that waits (in mig_wait, on a
 * row lock the batch holds) is not counted: it is not competing with us.
 */
static int
bf_busy_sessions(void)
{
	int			n = 0;
	int			nbackends;

	pgstat_clear_backend_activity_snapshot();
	nbackends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= nbackends; i++)
	{
		PgBackendStatus *be = &pgstat_fetch_stat_local_beentry(i)->backendStatus;
		PGPROC	   *proc;

		if (be->st_backendType != B_BACKEND || be->st_databaseid != MyDatabaseId ||
			be->st_state != STATE_RUNNING || be->st_procpid == MyProcPid)
			continue;
		proc = BackendPidGetProc(be->st_procpid);
		if (proc != NULL && proc->wait_event_info == 0)
			n++;
	}
	return n;
}

/*
 * migrate_ext.busy_sessions(): what a backfill of this database counts as
 * load right now, for a DBA wondering why a job says throttle_reason 'load'.
 */
PG_FUNCTION_INFO_V1(mig_busy_sessions);
Datum
mig_busy_sessions(PG_FUNCTION_ARGS)
{
	PG_RETURN_INT32(bf_busy_sessions());
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
	const char *throttle_reason = NULL;
	Oid			types[13] = {INT8OID, TEXTARRAYOID, INT8OID, INT8OID, INT4OID, FLOAT8OID,
		FLOAT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		v[13];
	char		n[14] = "             ";

	SetCurrentStatementStartTimestamp();

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
		bf_start_walk(rel, m, &job, bf->job_id, &bf->rows_per_block,
					  &bf->vacuum_every);
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
		end = bf_ctid_batch(rel, m, &job, size, &bf->rows_per_block,
							&seen, &written);
	else
		end = bf_key_batch(rel, m, &job, size, &seen, &written);
	table_close(rel, NoLock);
	elapsed_ms = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());

	/* the pace: sleep_ms, or longer to hold max_rows_per_sec, or to yield */
	bf->next_wait_ms = bf->sleep_ms;
	if (bf->max_rows_per_sec > 0 && seen > 0)
	{
		int64		need = seen * 1000 / bf->max_rows_per_sec - elapsed_ms;

		if (need > bf->next_wait_ms)
		{
			bf->next_wait_ms = (int) Min(need, INT_MAX);
			throttle_reason = "max_rows_per_sec";
		}
	}
	if (mig_backfill_yield > 0)
	{
		long		yield_ms;

		bf->busy = (bf->busy + bf_busy_sessions()) / 2;
		yield_ms = (long) (elapsed_ms * Min(bf->busy * mig_backfill_yield, BF_MAX_YIELD));
		if (yield_ms > bf->next_wait_ms)
		{
			bf->next_wait_ms = (int) Min(yield_ms, INT_MAX);
			throttle_reason = "load";
		}
	}
	throttled = throttle_reason != NULL;
	rate = bf_rate_recent(GetCurrentTimestamp(), bf->seen_total + seen);

	v[0] = Int64GetDatum(bf->job_id);
	v[1] = bf_text_array(end);
	v[2] = Int64GetDatum(written);
	v[3] = Int64GetDatum(seen);
	v[4] = Int32GetDatum(bf_next_size(size, elapsed_ms));
	v[5] = Float8GetDatum(rate);
	v[6] = Float8GetDatum(bf_active_delta());
	v[7] = CStringGetTextDatum(throttled ? "throttled" : "running");
	v[8] = throttled ? CStringGetTextDatum(throttle_reason) : (Datum) 0;
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

	SetCurrentStatementStartTimestamp();

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

	SetCurrentStatementStartTimestamp();

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
		SetCurrentStatementStartTimestamp();
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

	SetCurrentStatementStartTimestamp();

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
			SetCurrentStatementStartTimestamp();
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

	SetCurrentStatementStartTimestamp();

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

	SetCurrentStatementStartTimestamp();

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

	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	found = bf_read_job(&job) && (bf_state_live(job.state) || strcmp(job.state, "interrupted") == 0);
	if (found)
		mig_dualwrite_backfill_scope(job.migration_id);
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
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
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
