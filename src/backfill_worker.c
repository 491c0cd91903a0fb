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
 * Slices.  A partitioned table is walked leaf by leaf, and a plain table
 * with parallel > 1 in disjoint key or block ranges: one row each in
 * migrate_ext.job_slice, planned by the first worker (bf_plan), each with
 * its own key, bound and checkpoint.  Up to parallel workers (one per slot,
 * see job.c) claim slices (bf_claim); a batch then locks its slice's row
 * only, not the job row (bf_lock_slice), and writes its checkpoint there,
 * so the workers never wait for each other; each one brings the job row's sums up
 * to date at most once a second (bf_sum).  The last worker re-lists the
 * leaves before it finishes (bf_finish_slices): partitions attached since
 * get slices, detached ones are marked so.  The workers share one pace:
 * max_rows_per_sec is divided among them, and the load yield stretches
 * each one's cycle n times (bf_pace).
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
#include "catalog/partition.h"
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
#include "storage/bufmgr.h"
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
#include "utils/pg_lsn.h"
#include "utils/timestamp.h"

#include "backfill.h"
#include "contract.h"
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
	BF_SLICED,					/* the walk of one key went parallel */
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
	int			slot;			/* among the job's parallel workers, from 0 */
	bool		sliced;			/* the job walks slices (job_slice) */
	int			slice_no;		/* the slice this worker walks; -1: none */
	bool		slice_detached; /* its leaf left the table */
	bool		last_vacuumed;	/* ranges of one heap: the job's last VACUUM ran */
	Oid			table_relid;	/* the migrated table (a leaf's parent) */
	int			parallel;		/* the job's setting */
	int			nworkers;		/* workers sharing the pace: parallel, or fewer slices */
	int64		rate_share;		/* this worker's share of max_rows_per_sec; 0: no cap */
	double		pending_active; /* sliced: seconds not yet added to the job row */
	int			own_size;		/* sliced: this worker's adaptive batch size; 0: none yet */
	JobState	sum_state;		/* sliced: running or throttled, for the job row */
	const char *sum_reason;
	TimestampTz summed_at;
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
	int64		vacuum_every;
	BackgroundWorkerHandle *vacuum_worker;	/* the last VACUUM's, or NULL */
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
	bool		layout;

	/*
	 * Columns of 0.2 only when the catalog has them (mig_job_has_column);
	 * under a 0.1 catalog the job runs as 0.1 ran it, firing the triggers.
	 */
	job->walk_known = mig_job_has_column("walk_relfilenode");
	job->striped = mig_job_has_column("stripe_next");
	layout = mig_job_has_column("stripe_halves");
	if (mig_catalog_query(psprintf("SELECT state, batch_size, batch_size_fixed, target_batch_ms, "
								   "sleep_ms, (extract(epoch FROM max_replica_lag) * 1000)::int8, "
								   "max_rows_per_sec, key_kind, key_cols::text[], lower_key, "
								   "upper_key, migration_id, %s, %s, %s, %s, %s "
								   "FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1",
								   mig_job_has_column("fire_triggers") ? "fire_triggers" : "true",
								   job->walk_known ? "walk_relfilenode" : "NULL::pg_catalog.oid",
								   mig_job_has_column("parallel") ? "parallel" : "1",
								   job->striped ? "stripe_end, stripe_next" : "NULL::text[], 0",
								   layout ? "stripe_count, stripe_halves" : "0, 0"),
						  1, &type, &v, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	/* a job row that is gone is as good as cancelled */
	job->state = JOB_CANCELLED;
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;

	job->state = mig_job_state_parse(SPI_getvalue(tup, desc, 1));
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
	job->fire_triggers = DatumGetBool(SPI_getbinval(tup, desc, 13, &isnull));
	d = SPI_getbinval(tup, desc, 14, &isnull);
	job->walk_relfilenode = isnull ? InvalidOid : DatumGetObjectId(d);
	bf->parallel = DatumGetInt32(SPI_getbinval(tup, desc, 15, &isnull));
	d = SPI_getbinval(tup, desc, 16, &isnull);
	job->stripe_end = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 17, &isnull);
	job->stripe_next = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 18, &isnull);
	job->stripe_count = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 19, &isnull);
	job->stripe_halves = isnull ? 0 : DatumGetInt32(d);
	/* each worker of a sliced job adapts its own batch size */
	if (bf->sliced && !bf->batch_size_fixed && bf->own_size > 0)
		bf->batch_size = bf->own_size;
	job->relid = InvalidOid;
	job->slice_no = -1;
	job->detached = false;
	bf->nworkers = 1;
	bf->rate_share = bf->max_rows_per_sec;
	return true;
}

/*
 * Read the worker's slice into *job (locked for the batch): the leaf or
 * table, key, checkpoint and bound; and the pace's share: the job's
 * max_rows_per_sec divided among the workers that walk it (parallel, or
 * fewer when fewer slices are left).  Returns false when the slice is no
 * longer this worker's (a restart gave it back).
 */
static bool
bf_read_slice(BfJob *job)
{
	HeapTuple	tup;
	TupleDesc	desc;
	Datum		d;
	bool		isnull;
	int			left;

	Assert(bf->slice_no >= 0);
	if (mig_catalog_query("SELECT relid, key_kind, key_cols::text[], lower_key, upper_key, "
						  "walk_relfilenode, state, worker_pid, "
						  "(SELECT pg_catalog.count(*) FROM migrate_ext.job_slice o "
						  "WHERE o.job_id OPERATOR(pg_catalog.=) s.job_id "
						  "AND o.state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running']))::int4 "
						  ", stripe_end, stripe_next, stripe_count, stripe_halves "
						  "FROM migrate_ext.job_slice s WHERE job_id OPERATOR(pg_catalog.=) $1 "
						  "AND slice_no OPERATOR(pg_catalog.=) $2 FOR NO KEY UPDATE",
						  2, (Oid[]) {INT8OID, INT4OID},
						  (Datum[]) {Int64GetDatum(bf->job_id), Int32GetDatum(bf->slice_no)},
						  NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job_slice");
	if (SPI_processed != 1)
		return false;
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	if (strcmp(SPI_getvalue(tup, desc, 7), "running") != 0 ||
		DatumGetInt32(SPI_getbinval(tup, desc, 8, &isnull)) != MyProcPid)
		return false;
	job->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
	job->key_kind = SPI_getvalue(tup, desc, 2);
	job->key_cols = bf_text_list(SPI_getbinval(tup, desc, 3, &isnull));
	d = SPI_getbinval(tup, desc, 4, &isnull);
	job->lower_key = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 5, &isnull);
	job->upper_key = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 6, &isnull);
	job->walk_relfilenode = isnull ? InvalidOid : DatumGetObjectId(d);
	job->walk_known = true;
	job->slice_no = bf->slice_no;
	d = SPI_getbinval(tup, desc, 10, &isnull);
	job->stripe_end = isnull ? NIL : bf_text_list(d);
	d = SPI_getbinval(tup, desc, 11, &isnull);
	job->stripe_next = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 12, &isnull);
	job->stripe_count = isnull ? 0 : DatumGetInt32(d);
	d = SPI_getbinval(tup, desc, 13, &isnull);
	job->stripe_halves = isnull ? 0 : DatumGetInt32(d);
	left = DatumGetInt32(SPI_getbinval(tup, desc, 9, &isnull));
	bf->nworkers = Max(1, Min(bf->parallel, left));
	bf->rate_share = bf->max_rows_per_sec > 0 ?
		Max(1, bf->max_rows_per_sec / bf->nworkers) : 0;
	return true;
}

/*
 * Lock the job row for the rest of the transaction, without a timeout, so
 * that mig_pause, mig_cancel and mig_set wait for the batch in flight and
 * no batch commits after them.
 */
static void
bf_lock_job(void)
{
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1 FOR NO KEY UPDATE",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)}, NULL, 1);
}

/*
 * The same for a batch of a sliced job, which locks only its slice's row:
 * the controls lock every slice of the job after its row (job.c,
 * mig_job_lock_slices), so they still wait for the batches in flight, and
 * a batch that starts after them reads their change (the job row is read
 * by a statement after the lock).  The workers never wait for each other,
 * and the job row is no lock point for them (bf_sum updates it apart).
 */
static void
bf_lock_slice(void)
{
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job_slice WHERE job_id OPERATOR(pg_catalog.=) $1 "
					 "AND slice_no OPERATOR(pg_catalog.=) $2 FOR NO KEY UPDATE",
					 2, (Oid[]) {INT8OID, INT4OID},
					 (Datum[]) {Int64GetDatum(bf->job_id), Int32GetDatum(bf->slice_no)}, NULL, -1);
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
bf_record_end(JobState state, const char *error, const char *sqlstate)
{
	mig_job_end(bf->job_id, state, error, sqlstate, bf->pending_retries);
	bf->pending_retries = 0;
	ereport(LOG,
			(errmsg("migrate_ext: backfill job " INT64_FORMAT " %s: %s",
					bf->job_id, mig_job_state_name(state), error)));
}

/* ----------------------------------------------------------------
 *		The worker: batches
 * ----------------------------------------------------------------
 */

/* The most a batch's duration is multiplied by to yield to the load. */
#define BF_MAX_YIELD	10.0

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

/*
 * The next batch size, from how long this one took; never more rows than
 * the VACUUM cadence (bf->vacuum_every), so that on a small table the
 * batches do not outrun the VACUUMs that free the space they reuse.
 */
static int
bf_next_size(int size, long elapsed_ms)
{
	int			target = bf->target_batch_ms;
	double		next = size;
	double		most = BF_MAX_BATCH;

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
	if (bf->vacuum_every > 0)
		most = Min(most, bf->vacuum_every);
	return (int) Min(Max(next, 1), most);
}

static void
bf_set_local(const char *name, const char *value)
{
	(void) set_config_option(name, value, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * The batch's UPDATE changes nothing but the new column(s), so by default it
 * fires none of the table's other triggers (updated_at, audit, change
 * capture): session_replication_role = replica for the batch's statements
 * only, which the dual-write trigger, ENABLE ALWAYS (bf_ground_moved checks
 * it every batch), ignores.
 *
 * Setting it needs PGC_SUSET, which set_config_option grants here from C
 * although the worker may run as a plain role.  That is safe: the setting is
 * LOCAL to the batch's transaction and set back to origin right after the
 * batch's own two statements, which only read the key and write the new
 * column(s) through the dual-write trigger; no user code runs under it but
 * the up expressions, immutable and so read-only, and index and CHECK
 * expressions: a table with a user trigger marked ENABLE ALWAYS or ENABLE
 * REPLICA, which would fire under replica and could write other tables with
 * their checks skipped, needs fire_triggers (bf_ground_moved).  Constraints stay
 * right: foreign-key and deferred constraint triggers only act on columns
 * the batch does not change (the new column has no foreign key, unique
 * index or constraint trigger before contract), and CHECK and NOT NULL
 * constraints do not depend on triggers; nothing is queued, so nothing
 * deferred is lost at commit.
 */
static void
bf_skip_triggers(bool skip)
{
	(void) set_config_option("session_replication_role", skip ? "replica" : "origin",
							 PGC_SUSET, PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
}

/*
 * The end of a batch's (or the finish's) transaction, whatever the outcome:
 * the catalog writes made in it commit with it.
 */
static BfResult
bf_commit(BfResult res)
{
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return res;
}

/*
 * How long to wait before the next batch: sleep_ms, or longer to hold
 * max_rows_per_sec, or to yield to the application's load; *reason says
 * which throttle made it longer (NULL: none).
 */
static int
bf_pace(int64 seen, long elapsed_ms, const char **reason)
{
	int			wait_ms = bf->sleep_ms;

	*reason = NULL;
	if (bf->rate_share > 0 && seen > 0)
	{
		int64		need = seen * 1000 / bf->rate_share - elapsed_ms;

		if (need > wait_ms)
		{
			wait_ms = (int) Min(need, INT_MAX);
			*reason = "max_rows_per_sec";
		}
	}
	if (mig_backfill_yield > 0)
	{
		long		yield_ms;

		bf->busy = (bf->busy + mig_busy_sessions_cpu()) / 2;
		yield_ms = (long) (elapsed_ms * Min(bf->busy * mig_backfill_yield, BF_MAX_YIELD));

		/*
		 * N workers yield so that together they take the share of the CPU
		 * that one would: each one's cycle (batch and wait) N times as long.
		 */
		if (yield_ms > 0 && bf->nworkers > 1)
			yield_ms = bf->nworkers * (elapsed_ms + yield_ms) - elapsed_ms;
		if (yield_ms > wait_ms)
		{
			wait_ms = (int) Min(yield_ms, INT_MAX);
			*reason = "load";
		}
	}
	return wait_ms;
}

/* Is relid a partition, at any depth, of parent (still)? */
static bool
bf_leaf_of(Oid relid, Oid parent)
{
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(relid)) ||
		!get_rel_relispartition(relid))
		return false;
	return list_member_oid(get_partition_ancestors(relid), parent);
}

/*
 * The migration and the table a batch works on, checked under the batch's
 * lock on the table, with the walk started if it was not.  NULL when there
 * is no batch to run: *res says why (an ending recorded in the job row, or
 * the walk is complete); else the table is open in *relp.
 */
static MigMigration *
bf_batch_target(BfJob *job, Relation *relp, BfResult *res)
{
	MigMigration *m = mig_catalog_by_id(job->migration_id);
	Relation	rel;
	char	   *moved;
	const char *hint;
	MigOwnerSave owner;

	*res = BF_STOP;
	if (m == NULL || m->phase == MIG_PHASE_ABORTED)
	{
		bf_record_end(JOB_CANCELLED, "the migration was aborted", NULL);
		return NULL;
	}
	if (m->phase > MIG_PHASE_VALIDATED)
	{
		bf_record_end(JOB_FAILED,
					  psprintf("the migration of table %s moved to phase %s while the backfill ran; nothing more to do, the dual-write trigger keeps the columns in step",
							   m->table_name, mig_phase_name(m->phase)), NULL);
		return NULL;
	}

	/* the table, then the checks: DDL cannot change it under the lock */
	if (!OidIsValid(job->relid))
		job->relid = m->relid;
	LockRelationOid(job->relid, RowExclusiveLock);
	if (job->relid != m->relid && !bf_leaf_of(job->relid, m->relid))
	{
		/* the slice's leaf was detached or dropped: it is over */
		job->detached = true;
		*res = BF_WALKED;
		return NULL;
	}
	if (!SearchSysCacheExists1(RELOID, ObjectIdGetDatum(m->relid)))
	{
		bf_record_end(JOB_FAILED,
					  psprintf("table %s was dropped while the backfill ran; nothing is left to do",
							   m->table_name), NULL);
		return NULL;
	}
	rel = table_open(job->relid, NoLock);
	if (bf->table_name == NULL)
		bf->table_name = MemoryContextStrdup(TopMemoryContext,
											 mig_qualified_name(m->relid));
	bf->relid = job->relid;
	bf->table_relid = m->relid;
	if (job->relid != m->relid)
	{
		Relation	parent;

		LockRelationOid(m->relid, AccessShareLock);
		parent = table_open(m->relid, NoLock);
		m = bf_leaf_migration(m, parent, rel);
		table_close(parent, NoLock);
	}
	moved = bf_ground_moved(rel, m, job, &hint);
	if (moved)
	{
		table_close(rel, NoLock);
		bf_record_end(JOB_FAILED, psprintf("%s. %s", moved, hint), "55000");
		return NULL;
	}
	if (bf_rewritten(rel, job))
	{
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT ": table %s was rewritten (VACUUM FULL, CLUSTER, SET TABLESPACE or TRUNCATE) under its ctid walk; the walk starts again from the first block, skipping the rows already right",
						bf->job_id, bf->table_name)));
		job->key_kind = NULL;
	}
	if (job->key_kind == NULL && job->slice_no >= 0)
	{
		int64		total;
		bool		exact;

		/* a ctid slice's table was rewritten: its walk starts again */
		mig_owner_switch(m->relid, &owner);
		bf_walk_bounds(rel, job, &total, &exact);
		mig_owner_restore(&owner);
		mig_slice_restart_walk(bf->job_id, job->slice_no,
							   job->upper_key ? bf_text_array(job->upper_key) : (Datum) 0,
							   job->walk_relfilenode);
	}
	else if (job->key_kind == NULL)
	{
		/* the walk's bounds must see every row: as the owner, RLS not forced */
		mig_owner_switch(m->relid, &owner);
		bf_start_walk(rel, m, job, bf->job_id, &bf->rows_per_block,
					  &bf->vacuum_every);
		mig_owner_restore(&owner);
	}
	else if (bf->vacuum_every == 0)
	{
		/* a resumed job: the same pace as at its start */
		int64		total = rel->rd_rel->reltuples > 0 ? (int64) rel->rd_rel->reltuples : 0;

		bf->vacuum_every = Max(BF_VACUUM_MIN_ROWS, (int64) (BF_VACUUM_FRACTION * total));
		if (rel->rd_rel->relpages > 0 && total > 0)
			bf->rows_per_block = (double) total / rel->rd_rel->relpages;
	}
	if (bf_walk_complete(job))
	{
		table_close(rel, NoLock);
		*res = BF_WALKED;
		return NULL;
	}
	*relp = rel;
	return m;
}

/*
 * The batch's checkpoint and counters, in its transaction: into the job
 * row, or for a sliced job into the slice's row only (the job row catches
 * up in bf_sum()).  Sets the pace before the next batch.
 */
static void
bf_checkpoint(BfJob *job, List *end, int size, int64 seen, int64 written, long elapsed_ms)
{
	MigJobBatch batch;
	const char *throttle_reason;

	bf->next_wait_ms = bf_pace(seen, elapsed_ms, &throttle_reason);
	batch.lower_key = end ? bf_text_array(end) : (Datum) 0;
	batch.stripe_end = job->stripe_end ? bf_text_array(job->stripe_end) : (Datum) 0;
	batch.stripe_next = job->stripe_next;
	batch.stripe_count = job->stripe_count;
	batch.stripe_halves = job->stripe_halves;
	batch.write_path = job->write_path;
	batch.written = written;
	batch.seen = seen;
	batch.next_batch_size = bf_next_size(size, elapsed_ms);
	batch.rate = bf_rate_recent(GetCurrentTimestamp(), bf->seen_total + seen);
	batch.active_seconds = bf_active_delta();
	batch.state = throttle_reason ? JOB_THROTTLED : JOB_RUNNING;
	batch.throttle_reason = throttle_reason;
	batch.retries = bf->pending_retries;
	batch.error = bf->pending_error;
	batch.sqlstate = bf->pending_sqlstate;
	batch.vacuums = bf->pending_vacuums;
	if (bf->sliced)
	{
		mig_slice_checkpoint(bf->job_id, bf->slice_no, &batch, bf->rate_share);
		bf->own_size = batch.next_batch_size;
		bf->pending_active += batch.active_seconds;
		bf->sum_state = batch.state;
		bf->sum_reason = throttle_reason;
	}
	else
		mig_job_checkpoint(bf->job_id, &batch);
}

/* The failed attempt's error, recorded in the job row by now: freed. */
static void
bf_forget_error(void)
{
	if (bf->pending_error)
		pfree(bf->pending_error);
	if (bf->pending_sqlstate)
		pfree(bf->pending_sqlstate);
	bf->pending_error = NULL;
	bf->pending_sqlstate = NULL;
}

/*
 * For tests only: at a step of the backfill named by migrate_ext.test_pause,
 * wait for advisory lock BF_TEST_PAUSE_KEY, which the test holds, so that
 * it can kill the worker exactly there: in the transaction in flight (held
 * to its end), or in one of its own between two.
 */
#define BF_TEST_PAUSE_KEY		7387	/* as mig_contract's (contract_worker.c) */

static void
bf_test_pause(const char *step)
{
	bool		own = !IsTransactionState();

	if (mig_test_pause == NULL || strcmp(mig_test_pause, step) != 0)
		return;
	if (own)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
	}
	bf_set_local("lock_timeout", "0");
	elog(LOG, "migrate_ext: backfill job " INT64_FORMAT " pauses at step \"%s\"",
		 bf->job_id, step);
	(void) DirectFunctionCall1(pg_advisory_xact_lock_int8, Int64GetDatum(BF_TEST_PAUSE_KEY));
	if (own)
		CommitTransactionCommand();
}

/*
 * Does the job's walk of one key go parallel now?  When mig_set raised
 * parallel above 1 on a plain table's job that walks one key in its job row
 * (one started with parallel => 1), at a batch boundary of a running job
 * (a paused one when it is resumed), between two striped windows: a window
 * in flight is finished first (at most migrate_ext.backfill_stripes
 * batches), since the rows its stripes covered so far cannot be told apart
 * in rows_seen.  A catalog without slices (0.1) never does.
 */
static bool
bf_goes_parallel(BfJob *job, MigMigration *m)
{
	return !bf->sliced && bf->parallel > 1 && job->slice_no < 0 &&
		job->stripe_end == NIL && job->relid == m->relid &&
		get_rel_relkind(m->relid) == RELKIND_RELATION &&
		mig_job_has_column("parallel");
}

/* Rows the walk has left to cover: the job's estimate, else the table's. */
static int64
bf_rows_left(Relation rel)
{
	bool		isnull;
	Datum		d;
	int64		seen;

	if (mig_catalog_query("SELECT rows_total, rows_seen FROM migrate_ext.job "
						  "WHERE id OPERATOR(pg_catalog.=) $1",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)},
						  NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read migrate_ext.job");
	seen = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	if (!isnull)
		return Max(DatumGetInt64(d) - seen, 0);
	return Max((int64) (RelationGetNumberOfBlocks(rel) * bf->rows_per_block) - seen, 0);
}

/*
 * The walk of one key goes parallel, in the batch's transaction (instead of
 * a batch), under the job row's lock: what is left of it, from the
 * checkpoint to the frozen bound, becomes pending key or block ranges
 * (bf_plan_remainder, 4 per worker as at a start), the part walked a done
 * slice with the job's counters so far, and the job row walks slices
 * (mig_job_convert_sliced).  It commits whole or not at all: a crash before
 * the commit leaves the job walking its one key from its checkpoint, one
 * after it a sliced job, which the launcher (or mig_resume) gives its
 * workers.  The other workers start once it has committed (bf_went_parallel).
 * Closes rel and commits.
 */
static BfResult
bf_to_parallel(BfJob *job, MigMigration *m, Relation rel)
{
	MigOwnerSave owner;
	int64		rows_left;
	int			n;

	/* the split reads the rest of the key once; a batch's timeout is too short */
	bf_set_local("statement_timeout", "0");
	/* the other workers start on it: on disk before they do */
	bf_set_local("synchronous_commit", "on");
	bf_test_pause("to_parallel_begin");
	rows_left = bf_rows_left(rel);
	/* the keys' bounds must see every row: as the owner, RLS not forced */
	mig_owner_switch(m->relid, &owner);
	n = bf_plan_remainder(rel, job, bf->job_id, 1,
						  Min(4 * bf->parallel, MIG_JOB_MAX_WORKERS), rows_left);
	mig_owner_restore(&owner);
	mig_job_convert_sliced(bf->job_id, m->relid, mig_qualified_name(m->relid));
	ereport(LOG,
			(errmsg("migrate_ext: backfill job " INT64_FORMAT " of table %s goes parallel with %d workers: the rest of its walk is %d range(s)",
					bf->job_id, bf->table_name, bf->parallel, n)));
	bf_test_pause("to_parallel_written");
	table_close(rel, NoLock);
	return bf_commit(BF_SLICED);
}

/*
 * In a PG_CATCH of a step whose failure the worker survives: log the error,
 * forget it, and roll back its transaction (oldcxt: the context current
 * before the PG_TRY, which the transaction's abort does not free).
 */
static void
bf_error_logged(MemoryContext oldcxt)
{
	MemoryContextSwitchTo(oldcxt);
	EmitErrorReport();
	FlushErrorState();
	AbortCurrentTransaction();
}

/*
 * The conversion committed: this worker walks slices from now on, like the
 * others, which it starts for the other slots up to parallel.  A worker it
 * cannot start (no free slot) is logged, and the job goes on with fewer;
 * mig_set or mig_resume starts the missing ones later.
 */
static void
bf_went_parallel(void)
{
	MigWorkerArgs args = bf->args;
	MemoryContext oldcxt = CurrentMemoryContext;

	bf->sliced = true;
	bf->slice_no = -1;
	bf->own_size = bf->batch_size;
	bf->attempt = 0;
	bf_test_pause("to_parallel_committed");
	args.arg = bf->job_id;
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		(void) mig_job_start_other_workers(&args, bf->parallel, bf->slot);
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		bf_error_logged(oldcxt);
	}
	PG_END_TRY();
}

/*
 * One batch, in one transaction that commits its rows together with the
 * job's checkpoint: a kill loses at most this batch.
 */
static BfResult
bf_batch(void)
{
	BfJob		job;
	MigMigration *m;
	Relation	rel;
	BfResult	res;
	TimestampTz start;
	int			size;
	int64		seen;
	int64		written;
	List	   *end;
	long		elapsed_ms;
	MigOwnerSave owner;

	/* the last stripe's dead versions removable first (backfill_apply.c) */
	bf_stripe_settle(bf->target_batch_ms);
	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	SPI_connect();
	bf_set_local("synchronous_commit", "off");
	PushActiveSnapshot(GetTransactionSnapshot());
	if (bf->sliced)
		bf_lock_slice();
	else
		bf_lock_job();
	if (!bf_read_job(&job) || !mig_job_state_live(job.state))
		return bf_commit(BF_STOP);
	if (job.state == JOB_PAUSED)
	{
		if (bf->active_since != 0 && bf->sliced)
			bf->pending_active += bf_active_delta();
		else if (bf->active_since != 0)
			mig_job_add_active(bf->job_id, bf_active_delta());
		bf->active_since = 0;
		return bf_commit(BF_PAUSED);
	}
	if (bf->sliced && bf->slot >= bf->parallel)
	{
		/* mig_set lowered parallel: give the slice back, and go */
		mig_slice_set_state(bf->job_id, bf->slice_no, "pending");
		bf->slice_no = -1;
		return bf_commit(BF_STOP);
	}
	if (bf->sliced && !bf_read_slice(&job))
	{
		bf->slice_no = -1;
		return bf_commit(BF_NEXT);
	}
	if (bf->active_since == 0)
		bf->active_since = GetCurrentTimestamp();

	/* short waits for locks, and a sanity bound on the whole batch */
	bf_set_local("lock_timeout", psprintf("%d", Max(50, bf->target_batch_ms / 2)));
	bf_set_local("statement_timeout", psprintf("%d", Max(5000, 10 * bf->target_batch_ms)));
	bf_set_local("search_path", "pg_catalog, pg_temp");

	m = bf_batch_target(&job, &rel, &res);
	bf->slice_detached = job.detached;
	if (m == NULL)
		return bf_commit(res);
	if (bf_goes_parallel(&job, m))
		return bf_to_parallel(&job, m, rel);

	size = bf->batch_size;
	if (bf->attempt > 0 && bf->retry_size < size)
		size = bf->retry_size;
	if (bf->rate_share > 0)
		size = (int) Min(size, Max(1.0, (double) bf->rate_share * bf->target_batch_ms / 1000));
	bf->retry_size = Max(1, size / 2);
	Assert(size >= 1);

	pgstat_report_activity(STATE_RUNNING, "migrate_ext backfill batch");
	start = GetCurrentTimestamp();
	/*
	 * The table's triggers and the up expressions run as its owner, in a
	 * security-restricted operation, where PostgreSQL refuses to queue a
	 * deferred trigger past the end of a statement: constraint triggers that
	 * fire (fire_triggers, ENABLE ALWAYS or REPLICA ones) fire at the end of
	 * the batch's UPDATE instead of at commit, which for a transaction of
	 * one UPDATE comes to the same.
	 */
	if (SPI_execute("SET CONSTRAINTS ALL IMMEDIATE", false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "could not make the batch's constraints immediate");
	mig_owner_switch(m->relid, &owner);
	bf_skip_triggers(!job.fire_triggers);
	/* a retry writes one plain batch from the checkpoint (backfill_apply.c) */
	job.striped = job.striped && bf->attempt == 0;
	/*
	 * Halves for a parallel job, from its setting rather than the workers
	 * running now: a resumed window must be cut as it was listed, for its
	 * rows_seen (backfill_apply.c); only mig_set of parallel changes it.  A
	 * walk of one key keeps one half until it goes parallel, which it does
	 * between two windows (bf_goes_parallel).
	 */
	job.halves = bf->sliced && bf->parallel > 1 ? 2 : 1;
	end = bf_apply_batch(rel, m, &job, size, &bf->rows_per_block, &seen, &written);
	bf_skip_triggers(false);
	mig_owner_restore(&owner);
	table_close(rel, NoLock);
	elapsed_ms = TimestampDifferenceMilliseconds(start, GetCurrentTimestamp());

	bf_checkpoint(&job, end, size, seen, written, elapsed_ms);
	(void) bf_commit(BF_NEXT);
	pgstat_report_activity(STATE_IDLE, NULL);

	bf->attempt = 0;
	if (!bf->sliced)
	{
		bf->pending_vacuums = 0;
		bf->pending_retries = 0;
		bf_forget_error();
	}
	bf->seen_total += seen;
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
	if (bf_read_job(&job) && (job.state == JOB_RUNNING || job.state == JOB_THROTTLED))
	{
		mig_job_done(bf->job_id, bf_active_delta(), bf->pending_retries,
					 bf->pending_vacuums);
		m = mig_catalog_by_id(job.migration_id);
		if (m && m->phase == MIG_PHASE_BACKFILLING)
			(void) mig_catalog_move_phase(m->id, MIG_PHASE_BACKFILLING, MIG_PHASE_BACKFILLED, NULL);
		return bf_commit(BF_STOP);
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return job.state == JOB_PAUSED ? BF_PAUSED : BF_STOP;
}

/*
 * A VACUUM under the application's load runs with a cost-based delay, as
 * autovacuum does, so that it takes the CPU share the load yield leaves the
 * batches (bf_pace) instead of a whole core: the batches wait in their
 * pauses, the VACUUM (in a worker of its own, on another core) used to run
 * through them at full speed, and the yield does not see it (its CPU is not a
 * client session's).  It sleeps delay after every vacuum_cost_limit (200)
 * units of work; 200 units take a VACUUM of cached pages about
 * BF_VACUUM_COST_MS of CPU (2.4 us a unit, measured), so a delay of load
 * times that gives it the batches' duty cycle, 1 / (1 + load).
 */
#define BF_VACUUM_COST_MS		0.5
#define BF_VACUUM_MIN_LOAD		0.1 /* below: idle, no delay */
#define BF_VACUUM_DELAY_SHIFT	32	/* the delay, in us, above the relid */

static double
bf_vacuum_delay_ms(void)
{
	double		load = bf->busy * mig_backfill_yield;

	if (load < BF_VACUUM_MIN_LOAD)
		return 0;
	return Min(load, BF_MAX_YIELD) * BF_VACUUM_COST_MS;
}

/*
 * Wait, without queueing, until we hold the table's SHARE UPDATE EXCLUSIVE
 * lock (for the session): the last VACUUM must not be skipped because an
 * autovacuum or someone's ANALYZE holds it, and a VACUUM waiting in the
 * lock queue would make every later conflicting request wait behind it.
 * VACUUM takes the lock again itself; a backend's own locks never conflict.
 */
static void
bf_wait_relation_lock(Oid relid, LOCKTAG *tag)
{
	SET_LOCKTAG_RELATION(*tag, MyDatabaseId, relid);
	while (LockAcquire(tag, ShareUpdateExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
	{
		pgstat_report_activity(STATE_RUNNING,
							   "migrate_ext backfill: its last VACUUM waits for the table's SHARE UPDATE EXCLUSIVE lock");
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 BF_POLL_MS, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/*
 * VACUUM the table as a top-level statement of our own (as pg_cron's
 * background mode runs SQL), outside any transaction: vacuum() commits and
 * starts transactions itself, so what it reads lives in a context of ours.
 * One at a time per table, across the job's workers (mig_job_vacuum_lock):
 * it waits for the one running.  SKIP_LOCKED for the others: a VACUUM
 * already at it (autovacuum) does the same job; the last one waits for it
 * instead (bf_wait_relation_lock; SKIP_LOCKED then never skips, the lock being
 * ours), and only the last one may truncate the table (that takes an
 * ACCESS EXCLUSIVE lock).  Every one may clean the indexes (INDEX_CLEANUP
 * auto): with index cleanup off, the dead line pointers pruning leaves stay,
 * the next batches cannot reuse them, and the pages that hold them never
 * become all-visible, so every later VACUUM read every page behind the walk
 * again (twenty VACUUMs read the table ten times over); PostgreSQL itself
 * skips the indexes when less than 2% of the pages have dead line pointers.
 * delay_ms > 0: with that vacuum_cost_delay (bf_vacuum_delay_ms), shown in
 * the statement pg_stat_activity shows and logged at DEBUG1.
 */
static void
bf_run_vacuum(Oid relid, bool last, double delay_ms)
{
	MemoryContext cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext vacuum",
											  ALLOCSET_DEFAULT_SIZES);
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *sql = NULL;
	RawStmt    *raw;
	PlannedStmt *pstmt;
	LOCKTAG		reltag;
	volatile bool relheld = false;

	/*
	 * oldcxt is taken before the transaction starts: VACUUM commits its own
	 * transactions, and the context current inside the first one is gone by
	 * the time we get back.
	 */
	Assert(!IsTransactionState());
	Assert(delay_ms >= 0 && delay_ms <= 100);
	SetCurrentStatementStartTimestamp();

	pgstat_report_activity(STATE_RUNNING, "migrate_ext backfill: waiting for the table's VACUUM lock");
	mig_job_vacuum_lock(relid);
	/* session locks: an abort would not release them */
	PG_TRY();
	{
		if (last)
		{
			bf_wait_relation_lock(relid, &reltag);
			relheld = true;
		}
		StartTransactionCommand();
		MemoryContextSwitchTo(cxt);
		if (get_rel_name(relid))
			sql = psprintf("VACUUM (SKIP_LOCKED%s) %s%s",
						   last ? "" : ", TRUNCATE false, PROCESS_TOAST false",
						   mig_qualified_name(relid),
						   delay_ms > 0 ?
						   psprintf(" /* vacuum_cost_delay = %.2f ms: the client sessions are busy */",
									delay_ms) : "");
		if (sql && delay_ms > 0)
		{
			SetConfigOption("vacuum_cost_delay", psprintf("%.2f", delay_ms),
							PGC_USERSET, PGC_S_SESSION);
			SetConfigOption("vacuum_cost_limit", "200", PGC_USERSET, PGC_S_SESSION);
			ereport(DEBUG1,
					(errmsg("migrate_ext: VACUUM of %s with vacuum_cost_delay = %.2f ms, vacuum_cost_limit = 200: the client sessions are busy",
							mig_qualified_name(relid), delay_ms)));
		}
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
	}
	PG_FINALLY();
	{
		if (delay_ms > 0)
			SetConfigOption("vacuum_cost_delay", "0", PGC_USERSET, PGC_S_SESSION);
		if (relheld)
			(void) LockRelease(&reltag, ShareUpdateExclusiveLock, true);
		mig_job_vacuum_unlock(relid);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(cxt);
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * A worker that runs one VACUUM for a backfill, as the backfill's role: the
 * table's relid in the argument's low bits, the cost delay (us) above.
 */
void
mig_backfill_vacuum_main(Datum main_arg)
{
	MigWorkerArgs args;

	mig_worker_connect(&args);
	bf_run_vacuum((Oid) (args.arg & 0xFFFFFFFF),
				  false, (double) (args.arg >> BF_VACUUM_DELAY_SHIFT) / 1000.0);
	proc_exit(0);
}

/*
 * Wait until the VACUUM worker we started last has ended.  A VACUUM due
 * while the previous one still runs waits for it rather than being skipped
 * (SKIP_LOCKED): the batches must not outrun the VACUUMs that free the space
 * they reuse, and the last VACUUM must not be skipped.
 */
static void
bf_vacuum_wait(void)
{
	pid_t		pid;

	if (bf->vacuum_worker == NULL)
		return;
	if (GetBackgroundWorkerPid(bf->vacuum_worker, &pid) != BGWH_STOPPED)
	{
		pgstat_report_activity(STATE_RUNNING, "migrate_ext backfill: waiting for its VACUUM");
		(void) WaitForBackgroundWorkerShutdown(bf->vacuum_worker);
		pgstat_report_activity(STATE_IDLE, NULL);
	}
	pfree(bf->vacuum_worker);
	bf->vacuum_worker = NULL;
}

/*
 * Between batches, so that the space of the row versions the batches left
 * dead is reused by the next batches rather than added at the end of the
 * table.  In a worker of its own, so that the batches go on meanwhile (on
 * another core); in this one when no worker slot is free, and for the last
 * VACUUM, which must be over before the job is done.  One at a time
 * (bf_vacuum_wait).  A failure is logged and the backfill goes on.
 */
static void
bf_vacuum(bool last)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile bool started = false;

	bf_vacuum_wait();

	/*
	 * The last one runs even when the one before covered every row written:
	 * that one may have been skipped (SKIP_LOCKED, autovacuum at it), and
	 * only the last one truncates.
	 */
	if (!OidIsValid(bf->relid) || (bf->written_since_vacuum == 0 && !last))
		return;
	bf->written_since_vacuum = 0;
	bf->pending_vacuums++;

	if (!last)
	{
		MigWorkerArgs args = bf->args;

		args.arg = (int64) bf->relid |
			((int64) (bf_vacuum_delay_ms() * 1000) << BF_VACUUM_DELAY_SHIFT);
		PG_TRY();
		{
			BackgroundWorkerHandle *handle = NULL;

			MemoryContextSwitchTo(TopMemoryContext);
			if (mig_worker_start_handle("mig_backfill_vacuum_main",
										"migrate_ext backfill vacuum", &args,
										&handle) != 0)
				bf->vacuum_worker = handle;
			else if (handle)
				pfree(handle);
			MemoryContextSwitchTo(oldcxt);
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
		bf_run_vacuum(bf->relid, last, last ? 0 : bf_vacuum_delay_ms());
	}
	PG_CATCH();
	{
		bf_error_logged(oldcxt);
	}
	PG_END_TRY();
}

/*
 * The failed batch's transaction, again, to find the row that fails
 * (bf_failing_row): the same checks and settings, nothing written.
 */
static char *
bf_locate_step(void)
{
	BfJob		job;
	MigMigration *m;
	Relation	rel;
	BfResult	res;
	MigOwnerSave owner;
	char	   *row = NULL;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_set_local("lock_timeout", psprintf("%d", Max(50, bf->target_batch_ms / 2)));
	bf_set_local("statement_timeout", psprintf("%d", Max(5000, 10 * bf->target_batch_ms)));
	bf_set_local("search_path", "pg_catalog, pg_temp");
	if (bf_read_job(&job) && mig_job_state_live(job.state) &&
		(!bf->sliced || bf_read_slice(&job)) &&
		(m = bf_batch_target(&job, &rel, &res)) != NULL)
	{
		if (SPI_execute("SET CONSTRAINTS ALL IMMEDIATE", false, 0) != SPI_OK_UTILITY)
			elog(ERROR, "could not make the batch's constraints immediate");
		mig_owner_switch(m->relid, &owner);
		bf_skip_triggers(!job.fire_triggers);
		/* the last attempt, which failed, had about 2 * retry_size rows */
		row = bf_failing_row(rel, m, &job, Min(BF_MAX_BATCH, Max(100, 4 * bf->retry_size)));
		bf_skip_triggers(false);
		mig_owner_restore(&owner);
		table_close(rel, NoLock);
		if (row)
			row = MemoryContextStrdup(TopMemoryContext, row);
	}
	(void) bf_commit(BF_STOP);
	return row;
}

/* bf_locate_step, whose own failure only leaves the row unnamed. */
static char *
bf_locate_row(void)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	char	   *volatile row = NULL;

	PG_TRY();
	{
		row = bf_locate_step();
	}
	PG_CATCH();
	{
		bf_error_logged(oldcxt);
	}
	PG_END_TRY();
	return row;
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
	char	   *row = NULL;
	MemoryContext oldcxt = MemoryContextSwitchTo(TopMemoryContext);

	bf_forget_error();
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

	/* give up: name the row, and record it in a fresh transaction */
	if (!transient)
		row = bf_locate_row();
	PG_TRY();
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		bf_record_end(JOB_FAILED,
					  psprintf("%s (the batch failed %d times%s%s); fix the cause, then continue from the checkpoint with mig_resume('%s')",
							   edata->message, bf->attempt,
							   row ? "; the first row that fails is the one with " : "",
							   row ? row : "",
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
	int			parallel = bf->parallel;

	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	running = bf_read_job(&job) && (job.state == JOB_RUNNING || job.state == JOB_THROTTLED);
	/* a walk of one key raised to parallel goes so at its next batch */
	*changed = sleep_ms != bf->sleep_ms || max_rows_per_sec != bf->max_rows_per_sec ||
		max_lag_ms != bf->max_lag_ms || (!bf->sliced && parallel != bf->parallel);
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
 * The replay position of the slowest physical standby streaming from us;
 * *any is false when there is none.  Read through pg_stat_get_wal_senders()
 * (the public face of the walsenders' shared state), as the extension's
 * owner, since a role without pg_read_all_stats sees no positions, in a
 * short transaction of its own.
 */
static XLogRecPtr
bf_slowest_standby(bool *any)
{
	XLogRecPtr	slowest = InvalidXLogRecPtr;
	bool		isnull;
	Datum		d;

	Assert(!IsTransactionState());
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (mig_catalog_query("SELECT pg_catalog.min(s.replay_lsn) "
						  "FROM pg_catalog.pg_stat_get_wal_senders() s, "
						  "pg_catalog.pg_stat_get_activity(s.pid) a "
						  "WHERE a.datid IS NULL AND s.state IN ('streaming', 'catchup')",
						  0, NULL, NULL, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read pg_stat_get_wal_senders()");
	d = SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull);
	*any = !isnull;
	if (!isnull)
		slowest = DatumGetLSN(d);
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return slowest;
}

/*
 * How far behind is the slowest streaming standby, in milliseconds?
 *
 * pg_stat_replication's replay_lag does not grow while a standby's replay
 * is paused (it measures WAL that was replayed).  So we read the standbys'
 * replay positions (bf_slowest_standby) and keep a ring of (time, WAL flush
 * position) samples: the lag is the age of the oldest sample the standby
 * has not replayed yet.  Samples are spaced so that the ring spans twice the
 * allowed lag.  Logical walsenders (connected to a database) are not
 * standbys and are left out.
 */
static int64
bf_replica_lag_ms(void)
{
	TimestampTz now = GetCurrentTimestamp();
	XLogRecPtr	slowest;
	bool		any;
	int64		spacing = Max(50, bf->max_lag_ms / (BF_RING / 2));

	if (bf->nlsn == 0 ||
		TimestampDifferenceExceeds(bf->lsn[bf->nlsn - 1].at, now, (int) Min(spacing, INT_MAX)))
		bf_push(bf->lsn, &bf->nlsn, now, GetFlushRecPtr(NULL));

	slowest = bf_slowest_standby(&any);
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
			mig_job_throttle_for_lag(bf->job_id, bf_active_delta());
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
 *		The worker: slices (leaf partitions, or ranges of one heap)
 * ----------------------------------------------------------------
 */

/*
 * Before the first batch: does the job walk slices?  A partitioned table
 * does, one per leaf; so does a plain table with parallel > 1, in ranges.
 * The first worker plans them under the job row's lock; a plain table with
 * parallel = 1 walks its one key in the job row, as it always did, and
 * needs no more than one worker.
 */
static BfResult
bf_plan(void)
{
	BfJob		job;
	MigMigration *m;
	bool		partitioned;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_lock_job();
	if (!bf_read_job(&job) || !mig_job_state_live(job.state))
		return bf_commit(BF_STOP);
	m = mig_catalog_by_id(job.migration_id);
	partitioned = m != NULL && get_rel_relkind(m->relid) == RELKIND_PARTITIONED_TABLE;
	if (job.key_kind == NULL && m != NULL && (partitioned || bf->parallel > 1) &&
		mig_job_has_column("parallel") && m->phase <= MIG_PHASE_VALIDATED &&
		SearchSysCacheExists1(RELOID, ObjectIdGetDatum(m->relid)))
	{
		Relation	rel;
		MigOwnerSave owner;
		int64		total = 0;
		bool		exact = true;
		int			next_no = 0;

		LockRelationOid(m->relid, AccessShareLock);
		rel = table_open(m->relid, NoLock);
		bf_set_local("search_path", "pg_catalog, pg_temp");
		mig_owner_switch(m->relid, &owner);
		if (partitioned)
			(void) bf_plan_leaves(rel, bf->job_id, NIL, &next_no, &total, &exact);
		else
			(void) bf_plan_ranges(rel, bf->job_id, Min(4 * bf->parallel, MIG_JOB_MAX_WORKERS),
								  &total, &exact);
		mig_owner_restore(&owner);
		table_close(rel, NoLock);
		mig_job_set_sliced(bf->job_id, total, exact);
		if (m->phase == MIG_PHASE_EXPANDED)
			mig_catalog_set_phase(m->id, MIG_PHASE_EXPANDED, MIG_PHASE_BACKFILLING, NULL);
		job.key_kind = "slices";
	}
	bf->sliced = job.key_kind != NULL && strcmp(job.key_kind, "slices") == 0;
	(void) bf_commit(BF_NEXT);
	/* one key walk: one worker */
	return (!bf->sliced && bf->slot > 0) ? BF_STOP : BF_NEXT;
}

/* Claim a slice to walk: BF_WALKED when none is left to claim. */
static BfResult
bf_claim(void)
{
	BfJob		job;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (!bf_read_job(&job) || !mig_job_state_live(job.state) || bf->slot >= bf->parallel)
		return bf_commit(BF_STOP);
	if (job.state == JOB_PAUSED)
		return bf_commit(BF_PAUSED);
	bf->slice_no = mig_slice_claim(bf->job_id, MyProcPid, bf->slot);
	bf->vacuum_every = 0;		/* from the slice's own size, at its first batch */
	bf->written_since_vacuum = 0;
	return bf_commit(bf->slice_no >= 0 ? BF_NEXT : BF_WALKED);
}

/* The worker's slice is walked (or its leaf left the table). */
static BfResult
bf_slice_done(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	mig_slice_set_state(bf->job_id, bf->slice_no, bf->slice_detached ? "detached" : "done");
	if (bf->slice_detached)
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT ": partition %s left table %s during the backfill; its slice %d is marked detached",
						bf->job_id, get_rel_name(bf->relid) ? get_rel_name(bf->relid) : "(dropped)",
						bf->table_name ? bf->table_name : "?", bf->slice_no)));
	bf->slice_no = -1;
	return bf_commit(BF_NEXT);
}

/*
 * The job row catches up with the slices: at most once a second, in a
 * transaction of its own (the batches do not lock the job row, see
 * bf_lock_slice), or at once when force.
 */
static void
bf_sum(bool force)
{
	MigJobBatch b = {0};

	if (!force && !TimestampDifferenceExceeds(bf->summed_at, GetCurrentTimestamp(), 1000))
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	b.state = bf->sum_state == JOB_THROTTLED ? JOB_THROTTLED : JOB_RUNNING;
	b.throttle_reason = b.state == JOB_THROTTLED ? bf->sum_reason : NULL;
	b.retries = bf->pending_retries;
	b.vacuums = bf->pending_vacuums;
	b.active_seconds = bf->pending_active + bf_active_delta();
	b.next_batch_size = bf->own_size > 0 ? bf->own_size : bf->batch_size;
	b.error = bf->pending_error;
	b.sqlstate = bf->pending_sqlstate;
	mig_job_sum_slices(bf->job_id, &b);
	(void) bf_commit(BF_NEXT);
	bf->pending_retries = 0;
	bf->pending_vacuums = 0;
	bf->pending_active = 0;
	bf_forget_error();
	bf->summed_at = GetCurrentTimestamp();
}

/*
 * Slices of a partitioned table's leaves that are no longer its leaves:
 * detached (or dropped).  Marked so, and logged: reported, not an error.
 */
static void
bf_mark_detached(Oid parent, List *leaves)
{
	if (mig_catalog_query("SELECT slice_no, relid, relname FROM migrate_ext.job_slice "
						  "WHERE job_id OPERATOR(pg_catalog.=) $1 "
						  "AND state OPERATOR(pg_catalog.<>) 'detached'",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)},
						  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job_slice");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		SPITupleTable *rows = SPI_tuptable;
		HeapTuple	tup = rows->vals[i];
		bool		isnull;
		Oid			relid = DatumGetObjectId(SPI_getbinval(tup, rows->tupdesc, 2, &isnull));

		if (relid == parent || list_member_oid(leaves, relid))
			continue;
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT ": partition %s is no longer a partition of table %s; its slice is marked detached",
						bf->job_id, SPI_getvalue(tup, rows->tupdesc, 3),
						bf->table_name ? bf->table_name : "?")));
		mig_slice_set_state(bf->job_id,
							DatumGetInt32(SPI_getbinval(tup, rows->tupdesc, 1, &isnull)),
							"detached");
		SPI_tuptable = rows;
	}
}

/*
 * The leaves attached since the slices were planned: a slice each.  A leaf
 * whose slice was marked detached and that is attached again is one of
 * them: it gets a new slice, walked from its start, since nothing kept its
 * rows in step while it was away.  Returns how many.
 */
static int
bf_new_leaves(MigMigration *m)
{
	List	   *known = NIL;
	int			next_no = 0;
	int64		total = 0;
	bool		exact = true;
	Relation	rel;
	MigOwnerSave owner;
	int			added;

	if (mig_catalog_query("SELECT relid, slice_no, state OPERATOR(pg_catalog.=) 'detached' "
						  "FROM migrate_ext.job_slice WHERE job_id OPERATOR(pg_catalog.=) $1",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)},
						  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job_slice");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		bool		isnull;

		if (!DatumGetBool(SPI_getbinval(tup, SPI_tuptable->tupdesc, 3, &isnull)))
			known = lappend_oid(known, DatumGetObjectId(SPI_getbinval(tup, SPI_tuptable->tupdesc,
																	   1, &isnull)));
		next_no = Max(next_no, DatumGetInt32(SPI_getbinval(tup, SPI_tuptable->tupdesc,
														   2, &isnull)) + 1);
	}
	/*
	 * SHARE UPDATE EXCLUSIVE, as ATTACH PARTITION takes on the parent: an
	 * attach in progress is waited for and its leaf seen, and one that
	 * comes after waits until this transaction has ended the job (then the
	 * next mig_backfill walks it).  Under ACCESS SHARE, an attach that
	 * committed between this listing and the job's end was walked by
	 * nobody, though the job was running when it committed.
	 */
	LockRelationOid(m->relid, ShareUpdateExclusiveLock);
	rel = table_open(m->relid, NoLock);
	bf_set_local("search_path", "pg_catalog, pg_temp");
	mig_owner_switch(m->relid, &owner);
	added = bf_plan_leaves(rel, bf->job_id, known, &next_no, &total, &exact);
	mig_owner_restore(&owner);
	bf_mark_detached(m->relid, mig_partition_leaves(m->relid, AccessShareLock));
	table_close(rel, NoLock);
	if (added > 0)
		mig_job_add_total(bf->job_id, total, exact);
	if (added > 0)
		ereport(LOG,
				(errmsg("migrate_ext: backfill job " INT64_FORMAT ": %d partition(s) attached to table %s during the backfill, walking them too",
						bf->job_id, added, bf->table_name ? bf->table_name : m->table_name)));
	return added;
}

/*
 * No slice left to claim.  While other workers still walk theirs, this one
 * goes (the last one finishes).  Otherwise, for a partitioned table, the
 * leaves attached meanwhile get slices (BF_NEXT: walk them) and the ones
 * detached are marked; then the job is done, as bf_finish does it.
 */
static BfResult
bf_finish_slices(void)
{
	BfJob		job;
	MigMigration *m;
	int64		left;
	bool		isnull;

	bf_sum(true);
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_lock_job();
	if (!bf_read_job(&job) || !(job.state == JOB_RUNNING || job.state == JOB_THROTTLED))
		return bf_commit(job.state == JOB_PAUSED ? BF_PAUSED : BF_STOP);
	if (mig_catalog_query("SELECT pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'pending'), "
						  "pg_catalog.count(*) FILTER (WHERE state OPERATOR(pg_catalog.=) 'running') "
						  "FROM migrate_ext.job_slice WHERE job_id OPERATOR(pg_catalog.=) $1",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(bf->job_id)},
						  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job_slice");
	if (DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull)) > 0)
		return bf_commit(BF_NEXT);
	left = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	if (left > 0)
		return bf_commit(BF_STOP);
	m = mig_catalog_by_id(job.migration_id);
	if (m && get_rel_relkind(m->relid) == RELKIND_PARTITIONED_TABLE && bf_new_leaves(m) > 0)
		return bf_commit(BF_NEXT);
	if (m && get_rel_relkind(m->relid) != RELKIND_PARTITIONED_TABLE && !bf->last_vacuumed)
	{
		/*
		 * ranges of one heap: the table's last VACUUM first (bf_next_slice),
		 * by one worker: two whose last slices ended together would both
		 * get here (the job row's lock orders them, it does not exclude the
		 * second); the other leaves the job to the one that claimed it
		 */
		if (!mig_job_claim_last_vacuum(bf->job_id))
			return bf_commit(BF_STOP);
		bf->relid = m->relid;
		return bf_commit(BF_WALKED);
	}
	mig_job_sum_slices(bf->job_id, &(MigJobBatch) {.state = JOB_RUNNING});
	mig_job_done(bf->job_id, bf_active_delta(), 0, 0);
	if (m && m->phase == MIG_PHASE_BACKFILLING)
		(void) mig_catalog_move_phase(m->id, MIG_PHASE_BACKFILLING, MIG_PHASE_BACKFILLED, NULL);
	return bf_commit(BF_STOP);
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

	for (int i = 0; i < 20; i++)
	{
		if (mig_job_take_slot(bf->job_id, bf->slot))
		{
			/* shared by the job's workers: alive while one holds it */
			mig_job_locktag(&tag, MIG_JOB_LOCK_LIVENESS, bf->job_id);
			(void) LockAcquire(&tag, ShareLock, true, false);
			return true;
		}
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
				(errmsg("migrate_ext: backfill job " INT64_FORMAT " already has a worker in slot %d",
						bf->job_id, bf->slot)));
		CommitTransactionCommand();
		return false;
	}
	mig_job_locktag(&tag, MIG_JOB_LOCK_GATE, bf->job_id);
	(void) LockAcquire(&tag, ShareLock, false, false);
	CommitTransactionCommand();

	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	found = bf_read_job(&job) && (mig_job_state_live(job.state) || job.state == JOB_INTERRUPTED);
	if (found)
	{
		MigMigration *m = mig_catalog_by_id(job.migration_id);

		if (m != NULL && SearchSysCacheExists1(RELOID, ObjectIdGetDatum(m->relid)))
			mig_worker_apply_role_settings(mig_table_owner(m->relid));
		mig_dualwrite_backfill_scope(job.migration_id);
		mig_job_claim(bf->job_id, MyProcPid);
	}
	PopActiveSnapshot();
	SPI_finish();
	CommitTransactionCommand();
	return found;
}

/*
 * The worker is dying of an error (in its set-up, between batches, while it
 * waits): record it in the job row in a fresh transaction rather than only
 * in the server log, so the job does not look alive or merely interrupted.
 * mig_resume() continues it from its checkpoint once the cause is fixed.
 */
static void
bf_record_death(void)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(bf->cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortCurrentTransaction();
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	SPI_connect();
	PushActiveSnapshot(GetTransactionSnapshot());
	bf_record_end(JOB_FAILED,
				  psprintf("the backfill worker stopped on an error: %s; fix the cause, then continue from the checkpoint with mig_resume('%s')",
						   edata->message, bf->table_name ? bf->table_name : "<table>"),
				  unpack_sql_state(edata->sqlerrcode));
	(void) bf_commit(BF_STOP);
}

/* Claim a slice, or finish the job when none is left; false: stop. */
static bool
bf_next_slice(void)
{
	BfResult	res = bf_try(bf_claim);

	if (res == BF_WALKED)
		res = bf_try(bf_finish_slices);
	if (res == BF_WALKED)
	{
		/*
		 * The last worker of ranges of one heap: the table's last VACUUM
		 * (which may truncate it), over before the job is done, as a serial
		 * walk's.
		 */
		bf->written_since_vacuum = Max(bf->written_since_vacuum, 1);
		bf_vacuum(true);
		bf->last_vacuumed = true;
		res = bf_try(bf_finish_slices);
	}
	if (res == BF_PAUSED)
		bf_sleep(BF_POLL_MS);
	else if (res == BF_RETRY)
		bf_wait(bf->backoff_ms);
	return res == BF_NEXT || res == BF_PAUSED || res == BF_RETRY;
}

/* Batches until the job ends, is cancelled, or fails. */
static void
bf_run(void)
{
	BfResult	res;

	while ((res = bf_try(bf_plan)) == BF_RETRY)
		bf_wait(bf->backoff_ms);
	if (res != BF_NEXT)
		return;
	for (;;)
	{
		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		if (bf->sliced && bf->slice_no < 0)
		{
			if (!bf_next_slice())
				return;
			continue;
		}
		bf_wait_for_replicas();
		res = bf_try(bf_batch);
		if (res == BF_NEXT)
		{
			/*
			 * A parallel job's workers VACUUM every N times as many rows
			 * (N = parallel, at most BF_PARALLEL_VACUUM_SPREAD): the VACUUMs
			 * take a core the other workers' batches would use, and with the
			 * stripes' halves, VACUUMs as frequent as one worker's would
			 * make nearly every write move its row (backfill_apply.c).
			 */
			if (bf->written_since_vacuum >=
				bf->vacuum_every * Min(bf->parallel, BF_PARALLEL_VACUUM_SPREAD))
				bf_vacuum(false);
			if (bf->sliced)
				bf_sum(false);
			if (bf->next_wait_ms > 0)
				bf_wait(bf->next_wait_ms);
		}
		else if (res == BF_RETRY)
			bf_wait(bf->backoff_ms);
		else if (res == BF_PAUSED)
			bf_sleep(BF_POLL_MS);
		else if (res == BF_SLICED)
			bf_went_parallel();
		else if (res == BF_WALKED && bf->sliced)
		{
			/* a leaf gets its last VACUUM (which may truncate it); a range does not */
			bf_vacuum(bf->relid != bf->table_relid);
			/* done once its VACUUM is over: the job's last one must not skip it */
			bf_vacuum_wait();
			if (bf_try(bf_slice_done) != BF_NEXT)
				return;
		}
		else if (res == BF_WALKED)
		{
			bf_vacuum(true);
			res = bf_try(bf_finish);
			if (res == BF_PAUSED)
				bf_sleep(BF_POLL_MS);
			else if (res == BF_RETRY)
				bf_wait(bf->backoff_ms);
			else
				return;
		}
		else
		{
			if (bf->sliced)
				bf_sum(true);
			return;
		}
	}
}

void
mig_backfill_main(Datum main_arg)
{
	MigWorkerArgs args;

	mig_worker_connect(&args);

	bf = MemoryContextAllocZero(TopMemoryContext, sizeof(BfWorker));
	bf->args = args;
	bf->cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext backfill",
									ALLOCSET_DEFAULT_SIZES);
	bf->job_id = args.arg & MIG_JOB_ID_MASK;
	bf->slot = (int) (args.arg >> MIG_JOB_SLOT_SHIFT);
	bf->slice_no = -1;
	bf->parallel = 1;
	bf->nworkers = 1;
	bf->max_lag_ms = -1;
	bf->rows_per_block = 100;
	bf_push(bf->rate, &bf->nrate, GetCurrentTimestamp(), 0);

	PG_TRY();
	{
		if (bf_setup())
			bf_run();
		bf_vacuum_wait();
	}
	PG_CATCH();
	{
		bf_record_death();
	}
	PG_END_TRY();
	proc_exit(0);
}
