/*-------------------------------------------------------------------------
 *
 * job.c
 *	  Backfill job rows (migrate_ext.job): their states, every change made
 *	  to them, and the two advisory locks that say whether a job is alive.
 *
 * A job's state is stored as text and read here into enum JobState, with
 * one mapping; every UPDATE of migrate_ext.job is a function of this file,
 * run through catalog.c's executor (as the extension owner, search_path
 * pinned).  A job's worker holds the session-level advisory lock
 * (MIG_JOB_LOCK_KEY, job id) for its whole life: a job in a live state whose
 * lock nobody holds is interrupted.  Whoever starts a worker holds the gate
 * lock (MIG_GATE_LOCK_KEY, job id) until its transaction ends; the worker
 * waits for it, so it never reads the job row before the row it was
 * started for is committed (or rolled back).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/latch.h"
#include "storage/lock.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/wait_event.h"

#include "migrate_ext.h"
#include "migrate_ext_worker.h"

/* The advisory-lock keys, 'migr' and two more; nowhere else in C. */
#define MIG_JOB_LOCK_KEY		1835624306
#define MIG_GATE_LOCK_KEY		1835624307
#define MIG_VACUUM_LOCK_KEY		1835624308

/* The one mapping between JobState and the text stored in the job row. */
static const char *const job_state_names[] = {
	[JOB_RUNNING] = "running",
	[JOB_THROTTLED] = "throttled",
	[JOB_PAUSED] = "paused",
	[JOB_INTERRUPTED] = "interrupted",
	[JOB_DONE] = "done",
	[JOB_FAILED] = "failed",
	[JOB_CANCELLED] = "cancelled"
};

StaticAssertDecl(lengthof(job_state_names) == JOB_CANCELLED + 1,
				 "job_state_names must name every JobState");

const char *
mig_job_state_name(JobState state)
{
	Assert(state >= JOB_RUNNING && state <= JOB_CANCELLED);
	return job_state_names[state];
}

JobState
mig_job_state_parse(const char *name)
{
	Assert(name != NULL);
	for (int i = 0; i < lengthof(job_state_names); i++)
		if (strcmp(name, job_state_names[i]) == 0)
			return (JobState) i;
	elog(ERROR, "unknown backfill job state \"%s\"", name);
	return JOB_FAILED;			/* keep compiler quiet */
}

/* Running, throttled or paused: a worker owns the job (or should). */
bool
mig_job_state_live(JobState state)
{
	return state == JOB_RUNNING || state == JOB_THROTTLED || state == JOB_PAUSED;
}

/* Ended: done, failed or cancelled; interrupted is not (it resumes). */
bool
mig_job_state_ended(JobState state)
{
	return state == JOB_DONE || state == JOB_FAILED || state == JOB_CANCELLED;
}

/* The key the SQL face reads in pg_locks to tell a live job. */
int32
mig_job_liveness_key(void)
{
	return MIG_JOB_LOCK_KEY;
}

/*
 * The lock's tag: (key, job id) for a job's liveness and gate locks,
 * (key, relid) for the VACUUM lock of one heap.  The fourth field is 2, as
 * pg_advisory_lock(int4, int4) makes it, so that SQL can name them.
 */
void
mig_job_locktag(LOCKTAG *tag, MigJobLock which, int64 id)
{
	int32		key = which == MIG_JOB_LOCK_LIVENESS ? MIG_JOB_LOCK_KEY :
		which == MIG_JOB_LOCK_GATE ? MIG_GATE_LOCK_KEY : MIG_VACUUM_LOCK_KEY;

	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) key, (uint32) id, 2);
}

/*
 * The VACUUMs a backfill runs of one heap, one at a time: each one holds
 * (MIG_VACUUM_LOCK_KEY, relid) while it runs, and the next one waits for
 * it.  Several workers walk ranges of one heap, each with its own VACUUM
 * cadence; a VACUUM of theirs that found the heap's VACUUM lock taken by
 * another used to be skipped (SKIP_LOCKED), and the space its batches left
 * dead was not freed before the next ones.  A session lock: VACUUM commits
 * transactions of its own.
 */
void
mig_job_vacuum_lock(Oid relid)
{
	LOCKTAG		tag;

	mig_job_locktag(&tag, MIG_JOB_LOCK_VACUUM, relid);
	(void) LockAcquire(&tag, ExclusiveLock, true, false);
}

void
mig_job_vacuum_unlock(Oid relid)
{
	LOCKTAG		tag;

	mig_job_locktag(&tag, MIG_JOB_LOCK_VACUUM, relid);
	(void) LockRelease(&tag, ExclusiveLock, true);
}

/* Does some process hold the job's liveness lock? */
bool
mig_job_alive(int64 job_id)
{
	LOCKTAG		tag;
	LockData   *locks = GetLockStatusData();
	bool		alive = false;

	mig_job_locktag(&tag, MIG_JOB_LOCK_LIVENESS, job_id);
	for (int i = 0; i < locks->nelements && !alive; i++)
		if (locks->locks[i].holdMask != 0 &&
			memcmp(&locks->locks[i].locktag, &tag, sizeof(LOCKTAG)) == 0)
			alive = true;
	pfree(locks->locks);
	pfree(locks);
	return alive;
}

/*
 * A worker's slot among the job's parallel workers: the advisory lock
 * (MIG_JOB_LOCK_KEY, job id) with the fourth field MIG_SLOT_FIELD + slot,
 * held exclusively by the worker in that slot for its life (the liveness
 * lock, objsubid 2, is held in share mode by each of them).
 */
#define MIG_SLOT_FIELD			100

static void
job_slot_locktag(LOCKTAG *tag, int64 job_id, int slot)
{
	Assert(slot >= 0 && slot < MIG_JOB_MAX_WORKERS);
	SET_LOCKTAG_ADVISORY(*tag, MyDatabaseId, (uint32) MIG_JOB_LOCK_KEY, (uint32) job_id,
						 MIG_SLOT_FIELD + slot);
}

/*
 * The job's last VACUUM of a heap walked in ranges is one worker's: the
 * advisory lock (MIG_JOB_LOCK_KEY, job id) with the fourth field
 * MIG_SLOT_FIELD - 1, taken for the session without waiting, kept by the
 * worker that runs it until it exits.  false: another worker has it.
 */
bool
mig_job_claim_last_vacuum(int64 job_id)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, (uint32) MIG_JOB_LOCK_KEY, (uint32) job_id,
						 MIG_SLOT_FIELD - 1);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

/* Take the slot's lock for the session, without waiting; false: taken. */
bool
mig_job_take_slot(int64 job_id, int slot)
{
	LOCKTAG		tag;

	job_slot_locktag(&tag, job_id, slot);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

/*
 * The job's live workers: how many processes hold its liveness lock, and
 * (when taken is not NULL) which slots are held.
 */
int
mig_job_workers(int64 job_id, bool *taken)
{
	LOCKTAG		tag;
	LockData   *locks = GetLockStatusData();
	int			n = 0;

	mig_job_locktag(&tag, MIG_JOB_LOCK_LIVENESS, job_id);
	for (int i = 0; i < locks->nelements; i++)
	{
		LOCKTAG    *lt = &locks->locks[i].locktag;

		if (locks->locks[i].holdMask == 0 || lt->locktag_type != LOCKTAG_ADVISORY ||
			lt->locktag_field1 != tag.locktag_field1 ||
			lt->locktag_field2 != tag.locktag_field2 ||
			lt->locktag_field3 != tag.locktag_field3)
			continue;
		if (lt->locktag_field4 == tag.locktag_field4)
			n++;
		else if (taken && lt->locktag_field4 >= MIG_SLOT_FIELD &&
				 lt->locktag_field4 < MIG_SLOT_FIELD + MIG_JOB_MAX_WORKERS)
			taken[lt->locktag_field4 - MIG_SLOT_FIELD] = true;
	}
	pfree(locks->locks);
	pfree(locks);
	return n;
}

/* Start a worker for each slot below n that skip does not mark. */
static int
job_start_slots(MigWorkerArgs *args, int n, const bool *skip)
{
	int64		job_id = args->arg;
	int			started = 0;

	Assert((job_id & ~MIG_JOB_ID_MASK) == 0);
	for (int slot = 0; slot < Min(n, MIG_JOB_MAX_WORKERS); slot++)
	{
		MigWorkerArgs a = *args;

		if (skip[slot])
			continue;
		a.arg = job_id | ((int64) slot << MIG_JOB_SLOT_SHIFT);
		mig_job_start_worker(&a);
		started++;
	}
	return started;
}

/*
 * Start workers for the slots below n (at most MIG_JOB_MAX_WORKERS), each
 * with its slot in the argument's high bits (MIG_JOB_SLOT_SHIFT); with
 * only_free, for the slots no live worker holds (more workers for a running
 * job).  Otherwise every slot gets one: a worker of the job's previous run
 * still on its way out holds its slot a moment, and the new one waits for
 * it (bf_take_job_lock).  Returns how many were started.
 */
int
mig_job_start_workers(MigWorkerArgs *args, int n, bool only_free)
{
	bool		taken[MIG_JOB_MAX_WORKERS] = {0};

	if (only_free)
		(void) mig_job_workers(args->arg, taken);
	return job_start_slots(args, n, taken);
}

/*
 * Start workers for the slots below n but own_slot, the caller's (a worker
 * whose job just went parallel): every other slot gets one, as for a
 * restart, since a worker of the job that is still on its way out (it found
 * the job walking one key) holds its slot a moment.
 */
int
mig_job_start_other_workers(MigWorkerArgs *args, int n, int own_slot)
{
	bool		taken[MIG_JOB_MAX_WORKERS] = {0};

	Assert(own_slot >= 0 && own_slot < MIG_JOB_MAX_WORKERS);
	taken[own_slot] = true;
	return job_start_slots(args, n, taken);
}

/* Hold the gate until the current transaction ends. */
void
mig_job_hold_gate(int64 job_id)
{
	LOCKTAG		tag;

	mig_job_locktag(&tag, MIG_JOB_LOCK_GATE, job_id);
	(void) LockAcquire(&tag, ExclusiveLock, false, false);
}

/*
 * Start the job's worker and wait (up to five seconds) until it holds the
 * job's lock, so that a status read right after shows it alive.
 */
void
mig_job_start_worker(MigWorkerArgs *args)
{
	char		name[BGW_MAXLEN];

	int64		job_id = args->arg & MIG_JOB_ID_MASK;

	snprintf(name, sizeof(name), "migrate_ext backfill job " INT64_FORMAT, job_id);
	(void) mig_worker_start("mig_backfill_main", name, args);
	for (int i = 0; i < 500 && !mig_job_alive(job_id); i++)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						 10, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* ----------------------------------------------------------------
 *		Every change to a job row
 * ----------------------------------------------------------------
 */

/*
 * Does migrate_ext.job have this column?  A library newer than its catalog
 * runs between a package upgrade and ALTER EXTENSION ... UPDATE (the
 * launcher resumes jobs right after the restart): columns a later version
 * added are then read and written only when they are there.
 */
bool
mig_job_has_column(const char *name)
{
	Oid			nsp = get_namespace_oid("migrate_ext", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("job", nsp) : InvalidOid;

	return OidIsValid(relid) && get_attnum(relid, name) != InvalidAttrNumber;
}

static void
job_needs_update(const char *what)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("%s needs the catalog of migrate_ext %s", what, MIGRATE_EXT_VERSION),
			 errdetail("The library was updated, but not the extension's catalog in this database."),
			 errhint("Run ALTER EXTENSION migrate_ext UPDATE.")));
}

/* A new job, running, for a migration; returns its id. */
int64
mig_job_insert(int64 migration_id, const MigWorkerArgs *args, const MigJobSettings *s)
{
	Oid			types[12] = {INT8OID, OIDOID, OIDOID, OIDOID, INT4OID, BOOLOID, INT4OID,
		INT4OID, INTERVALOID, INT8OID, BOOLOID, INT4OID};
	Datum		v[12];
	char		n[13] = "            ";

	v[0] = Int64GetDatum(migration_id);
	v[1] = ObjectIdGetDatum(args->dboid);
	v[2] = ObjectIdGetDatum(args->role_oid);
	v[3] = ObjectIdGetDatum(args->login_oid);
	v[4] = Int32GetDatum(s->batch_size);
	v[5] = BoolGetDatum(s->batch_size_fixed);
	v[6] = Int32GetDatum(s->target_batch_ms);
	v[7] = Int32GetDatum(s->sleep_ms);
	v[8] = s->max_replica_lag ? PointerGetDatum(s->max_replica_lag) : (Datum) 0;
	n[8] = s->max_replica_lag ? ' ' : 'n';
	v[9] = Int64GetDatum(s->max_rows_per_sec);
	n[9] = s->max_rows_per_sec > 0 ? ' ' : 'n';
	v[10] = BoolGetDatum(s->fire_triggers);
	if (!mig_job_has_column("fire_triggers"))
	{
		if (s->fire_triggers)
			job_needs_update("fire_triggers");
		return mig_catalog_exec_int8("INSERT INTO migrate_ext.job (migration_id, state, dboid, "
									 "role_oid, login_oid, batch_size, batch_size_fixed, "
									 "target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec) "
									 "VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10) "
									 "RETURNING id",
									 10, types, v, n);
	}
	if (!mig_job_has_column("parallel"))
	{
		if (s->parallel > 1)
			job_needs_update("parallel");
		return mig_catalog_exec_int8("INSERT INTO migrate_ext.job (migration_id, state, dboid, "
									 "role_oid, login_oid, batch_size, batch_size_fixed, "
									 "target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec, "
									 "fire_triggers) "
									 "VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) "
									 "RETURNING id",
									 11, types, v, n);
	}
	v[11] = Int32GetDatum(s->parallel);
	return mig_catalog_exec_int8("INSERT INTO migrate_ext.job (migration_id, state, dboid, "
								 "role_oid, login_oid, batch_size, batch_size_fixed, "
								 "target_batch_ms, sleep_ms, max_replica_lag, max_rows_per_sec, "
								 "fire_triggers, parallel) "
								 "VALUES ($1, 'running', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
								 "RETURNING id",
								 12, types, v, n);
}

/* Set a job's state (pause, resume, cancel); finished stamps finished_at. */
void
mig_job_set_state(int64 job_id, JobState state, bool finished)
{
	Oid			types[2] = {INT8OID, TEXTOID};
	Datum		v[2];

	v[0] = Int64GetDatum(job_id);
	v[1] = CStringGetTextDatum(mig_job_state_name(state));
	mig_catalog_exec(finished ?
					 "UPDATE migrate_ext.job SET state = $2, throttle_reason = NULL, "
					 "updated_at = pg_catalog.now(), finished_at = pg_catalog.now() "
					 "WHERE id OPERATOR(pg_catalog.=) $1" :
					 "UPDATE migrate_ext.job SET state = $2, throttle_reason = NULL, "
					 "updated_at = pg_catalog.now(), finished_at = NULL "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 2, types, v, NULL, 1);
}

/* Running again from its checkpoint, with a new worker started as args. */
void
mig_job_restart(int64 job_id, const MigWorkerArgs *args)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'running', throttle_reason = NULL, "
					 "finished_at = NULL, updated_at = pg_catalog.now(), dboid = $2, "
					 "role_oid = $3, login_oid = $4 WHERE id OPERATOR(pg_catalog.=) $1",
					 4, (Oid[]) {INT8OID, OIDOID, OIDOID, OIDOID},
					 (Datum[]) {Int64GetDatum(job_id), ObjectIdGetDatum(args->dboid),
						 ObjectIdGetDatum(args->role_oid), ObjectIdGetDatum(args->login_oid)},
					 NULL, 1);
}

/* Change one setting of a running job (mig_set); NULL value: isnull. */
void
mig_job_set_setting(int64 job_id, MigJobSetting which, Datum value, bool isnull)
{
	static const struct
	{
		const char *sql;
		Oid			type;
	}			settings[] = {
		[MIG_JOB_BATCH_SIZE_AUTO] = {"UPDATE migrate_ext.job SET batch_size_fixed = false "
		"WHERE id OPERATOR(pg_catalog.=) $1", INT4OID},
		[MIG_JOB_BATCH_SIZE] = {"UPDATE migrate_ext.job SET batch_size = $2, "
		"batch_size_fixed = true WHERE id OPERATOR(pg_catalog.=) $1", INT4OID},
		[MIG_JOB_TARGET_BATCH_MS] = {"UPDATE migrate_ext.job SET target_batch_ms = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", INT4OID},
		[MIG_JOB_SLEEP_MS] = {"UPDATE migrate_ext.job SET sleep_ms = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", INT4OID},
		[MIG_JOB_MAX_REPLICA_LAG] = {"UPDATE migrate_ext.job SET max_replica_lag = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", INTERVALOID},
		[MIG_JOB_MAX_ROWS_PER_SEC] = {"UPDATE migrate_ext.job SET max_rows_per_sec = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", INT8OID},
		[MIG_JOB_FIRE_TRIGGERS] = {"UPDATE migrate_ext.job SET fire_triggers = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", BOOLOID},
		[MIG_JOB_PARALLEL] = {"UPDATE migrate_ext.job SET parallel = $2 "
		"WHERE id OPERATOR(pg_catalog.=) $1", INT4OID},
	};
	Oid			types[2];
	Datum		v[2];
	char		n[3] = "  ";

	Assert(which >= 0 && which < lengthof(settings));
	if (which == MIG_JOB_FIRE_TRIGGERS && !mig_job_has_column("fire_triggers"))
		job_needs_update("fire_triggers");
	if (which == MIG_JOB_PARALLEL && !mig_job_has_column("parallel"))
		job_needs_update("parallel");
	types[0] = INT8OID;
	types[1] = settings[which].type;
	v[0] = Int64GetDatum(job_id);
	v[1] = value;
	n[1] = isnull || which == MIG_JOB_BATCH_SIZE_AUTO ? 'n' : ' ';
	mig_catalog_exec(settings[which].sql, 2, types, v, n, 1);
}

/*
 * The walk's key, bound and the table's file, chosen by the job's first
 * batch (and again when a ctid walk finds the table rewritten: rows_seen
 * then counts the new walk, so that progress stays right; rows_done keeps
 * every row written).
 */
void
mig_job_start_walk(int64 job_id, const char *key_kind, Datum key_cols,
				   Datum upper_key, bool upper_null, int64 rows_total, bool exact,
				   Oid relfilenode)
{
	Oid			types[7] = {INT8OID, TEXTOID, TEXTARRAYOID, TEXTARRAYOID, INT8OID, BOOLOID,
		OIDOID};
	Datum		v[7];
	char		n[8] = "       ";

	v[0] = Int64GetDatum(job_id);
	v[1] = CStringGetTextDatum(key_kind);
	v[2] = key_cols;
	v[3] = upper_key;
	n[3] = upper_null ? 'n' : ' ';
	v[4] = Int64GetDatum(rows_total);
	n[4] = rows_total >= 0 ? ' ' : 'n';
	v[5] = BoolGetDatum(exact);
	v[6] = ObjectIdGetDatum(relfilenode);
	if (!mig_job_has_column("walk_relfilenode"))
		mig_catalog_exec("UPDATE migrate_ext.job SET key_kind = $2, key_cols = $3::name[], "
						 "lower_key = NULL, upper_key = $4, rows_total = $5, rows_total_exact = $6, "
						 "rows_seen = 0 WHERE id OPERATOR(pg_catalog.=) $1", 6, types, v, n, 1);
	else
		mig_catalog_exec("UPDATE migrate_ext.job SET key_kind = $2, key_cols = $3::name[], "
					 "lower_key = NULL, upper_key = $4, rows_total = $5, rows_total_exact = $6, "
						 "rows_seen = 0, walk_relfilenode = $7 "
						 "WHERE id OPERATOR(pg_catalog.=) $1", 7, types, v, n, 1);
	if (mig_job_has_column("stripe_next"))
		mig_catalog_exec("UPDATE migrate_ext.job SET stripe_end = NULL, stripe_next = NULL "
						 "WHERE id OPERATOR(pg_catalog.=) $1", 1, types, v, n, 1);
}

/* A worker takes the job: its pid, and interrupted becomes running. */
void
mig_job_claim(int64 job_id, int pid)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET worker_pid = $2, updated_at = pg_catalog.now(), "
					 "state = CASE state WHEN 'interrupted' THEN 'running' ELSE state END "
					 "WHERE id OPERATOR(pg_catalog.=) $1", 2, (Oid[]) {INT8OID, INT4OID},
					 (Datum[]) {Int64GetDatum(job_id), Int32GetDatum(pid)}, NULL, 1);
}

/* Nobody works on it after a restart: interrupted (a paused job stays so). */
void
mig_job_mark_interrupted(int64 job_id)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'interrupted', "
					 "updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1 "
					 "AND state OPERATOR(pg_catalog.<>) 'paused'",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, -1);
}

/*
 * End a job as failed or cancelled, with the error, its SQLSTATE (or NULL)
 * and the retries not yet counted.
 */
void
mig_job_end(int64 job_id, JobState state, const char *error, const char *sqlstate,
			int64 retries)
{
	Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, INT8OID};
	Datum		v[5];
	char		n[6] = "     ";

	Assert(state == JOB_FAILED || state == JOB_CANCELLED);
	v[0] = Int64GetDatum(job_id);
	v[1] = CStringGetTextDatum(mig_job_state_name(state));
	v[2] = CStringGetTextDatum(error);
	v[3] = sqlstate ? CStringGetTextDatum(sqlstate) : (Datum) 0;
	n[3] = sqlstate ? ' ' : 'n';
	v[4] = Int64GetDatum(retries);
	mig_catalog_exec("UPDATE migrate_ext.job SET state = $2, last_error = $3, "
					 "last_sqlstate = $4, retries = retries + $5, throttle_reason = NULL, "
					 "updated_at = pg_catalog.now(), finished_at = pg_catalog.now() "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 5, types, v, n, 1);
}

/* Cancel the migration's live or interrupted job, if any (mig_abort). */
void
mig_job_cancel_for_migration(int64 migration_id)
{
	if (mig_job_has_column("parallel"))
		mig_catalog_exec("SELECT 1 FROM migrate_ext.job_slice s JOIN migrate_ext.job j "
						 "ON j.id OPERATOR(pg_catalog.=) s.job_id "
						 "WHERE j.migration_id OPERATOR(pg_catalog.=) $1 "
						 "AND j.state IN ('running', 'throttled', 'paused', 'interrupted') "
						 "ORDER BY s.job_id, s.slice_no FOR NO KEY UPDATE OF s",
						 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)}, NULL, -1);
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'cancelled', "
					 "throttle_reason = NULL, updated_at = pg_catalog.now(), "
					 "finished_at = pg_catalog.now() "
					 "WHERE migration_id OPERATOR(pg_catalog.=) $1 "
					 "AND state IN ('running', 'throttled', 'paused', 'interrupted')",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)}, NULL, -1);
}

/* Time spent working while the job was paused or throttled. */
void
mig_job_add_active(int64 job_id, double seconds)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET active_seconds = active_seconds + $2 "
					 "WHERE id OPERATOR(pg_catalog.=) $1", 2, (Oid[]) {INT8OID, FLOAT8OID},
					 (Datum[]) {Int64GetDatum(job_id), Float8GetDatum(seconds)}, NULL, 1);
}

/* Throttled for replica lag, unless it was paused or ended meanwhile. */
void
mig_job_throttle_for_lag(int64 job_id, double active_seconds)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'throttled', "
					 "throttle_reason = 'replica lag', updated_at = pg_catalog.now(), "
					 "active_seconds = active_seconds + $2 "
					 "WHERE id OPERATOR(pg_catalog.=) $1 AND state IN ('running', 'throttled')",
					 2, (Oid[]) {INT8OID, FLOAT8OID},
					 (Datum[]) {Int64GetDatum(job_id), Float8GetDatum(active_seconds)},
					 NULL, -1);
}

/*
 * A striped window's state (backfill_apply.c: its bound, next stripe and
 * layout) and how the batch wrote its rows, with the batch's checkpoint: of the job (slice_no -1) or of one of
 * its slices.
 */
static void
job_stripe_checkpoint(const char *table, const char *where, Datum job_id, int slice_no,
					  const MigJobBatch *b)
{
	bool		path = b->write_path != NULL && mig_job_has_column("write_path");
	bool		layout = mig_job_has_column("stripe_halves");
	char		n = b->stripe_end ? ' ' : 'n';

	mig_catalog_exec(psprintf("UPDATE migrate_ext.%s SET stripe_end = $3, stripe_next = $4%s%s "
							  "WHERE %s", table,
							  layout ? ", stripe_count = $6, stripe_halves = $7" : "",
							  path ? ", write_path = $5" : "", where),
					 layout ? 7 : path ? 5 : 4,
					 (Oid[]) {INT8OID, INT4OID, TEXTARRAYOID, INT4OID, TEXTOID, INT4OID, INT4OID},
					 (Datum[]) {job_id, Int32GetDatum(slice_no), b->stripe_end,
						 Int32GetDatum(b->stripe_end ? b->stripe_next : 0),
						 path ? CStringGetTextDatum(b->write_path) : (Datum) 0,
						 Int32GetDatum(b->stripe_count), Int32GetDatum(b->stripe_halves)},
					 (char[]) {' ', ' ', n, n, path ? ' ' : 'n', n, n}, 1);
}

/* One batch committed: the checkpoint and the counters, in its transaction. */
void
mig_job_checkpoint(int64 job_id, const MigJobBatch *b)
{
	Oid			types[13] = {INT8OID, TEXTARRAYOID, INT8OID, INT8OID, INT4OID, FLOAT8OID,
		FLOAT8OID, TEXTOID, TEXTOID, INT8OID, TEXTOID, TEXTOID, INT4OID};
	Datum		v[13];
	char		n[14] = "             ";

	Assert(b->state == JOB_RUNNING || b->state == JOB_THROTTLED);
	v[0] = Int64GetDatum(job_id);
	v[1] = b->lower_key;
	v[2] = Int64GetDatum(b->written);
	v[3] = Int64GetDatum(b->seen);
	v[4] = Int32GetDatum(b->next_batch_size);
	v[5] = Float8GetDatum(b->rate);
	v[6] = Float8GetDatum(b->active_seconds);
	v[7] = CStringGetTextDatum(mig_job_state_name(b->state));
	v[8] = b->throttle_reason ? CStringGetTextDatum(b->throttle_reason) : (Datum) 0;
	n[8] = b->throttle_reason ? ' ' : 'n';
	v[9] = Int64GetDatum(b->retries);
	v[10] = b->error ? CStringGetTextDatum(b->error) : (Datum) 0;
	n[10] = b->error ? ' ' : 'n';
	v[11] = b->sqlstate ? CStringGetTextDatum(b->sqlstate) : (Datum) 0;
	n[11] = b->sqlstate ? ' ' : 'n';
	v[12] = Int32GetDatum(b->vacuums);
	n[1] = b->lower_key ? ' ' : 'n';
	if (mig_job_has_column("stripe_next"))
		job_stripe_checkpoint("job", "id OPERATOR(pg_catalog.=) $1 AND $2 OPERATOR(pg_catalog.<) 0",
							  Int64GetDatum(job_id), -1, b);
	mig_catalog_exec("UPDATE migrate_ext.job SET lower_key = $2, rows_done = rows_done + $3, "
					 "rows_seen = rows_seen + $4, batches = batches + 1, batch_size = $5, "
					 "rate_recent = $6, active_seconds = active_seconds + $7, state = $8, "
					 "throttle_reason = $9, retries = retries + $10, "
					 "last_error = coalesce($11, last_error), "
					 "last_sqlstate = coalesce($12, last_sqlstate), vacuums = vacuums + $13, "
					 "updated_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
					 13, types, v, n, 1);
}

/* The walk is over: done, with the last counters. */
void
mig_job_done(int64 job_id, double active_seconds, int64 retries, int vacuums)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'done', throttle_reason = NULL, "
					 "rows_total = rows_seen, rows_total_exact = (key_kind OPERATOR(pg_catalog.<>) 'ctid'), "
					 "active_seconds = active_seconds + $2, retries = retries + $3, "
					 "vacuums = vacuums + $4, rate_recent = NULL, updated_at = pg_catalog.now(), "
					 "finished_at = pg_catalog.now() WHERE id OPERATOR(pg_catalog.=) $1",
					 4, (Oid[]) {INT8OID, FLOAT8OID, INT8OID, INT4OID},
					 (Datum[]) {Int64GetDatum(job_id), Float8GetDatum(active_seconds),
						 Int64GetDatum(retries), Int32GetDatum(vacuums)},
					 NULL, 1);
}

/* ----------------------------------------------------------------
 *		The slices of a job (migrate_ext.job_slice)
 * ----------------------------------------------------------------
 */

/*
 * Lock every slice of the job (after its row): a control (pause, cancel,
 * set, abort) then waits for the batches in flight of a sliced job, which
 * lock their slice's row only.
 */
void
mig_job_lock_slices(int64 job_id)
{
	if (!mig_job_has_column("parallel"))
		return;
	mig_catalog_exec("SELECT 1 FROM migrate_ext.job_slice WHERE job_id OPERATOR(pg_catalog.=) $1 "
					 "ORDER BY slice_no FOR NO KEY UPDATE",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, -1);
}

/* The job walks slices: its own key, bounds and counters start again. */
void
mig_job_set_sliced(int64 job_id, int64 rows_total, bool exact)
{
	mig_catalog_exec("UPDATE migrate_ext.job SET key_kind = 'slices', key_cols = NULL, "
					 "lower_key = NULL, upper_key = NULL, rows_total = $2, "
					 "rows_total_exact = $3, rows_seen = 0, stripe_end = NULL, stripe_next = NULL "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 3, (Oid[]) {INT8OID, INT8OID, BOOLOID},
					 (Datum[]) {Int64GetDatum(job_id), Int64GetDatum(rows_total), BoolGetDatum(exact)},
					 NULL, 1);
}

/*
 * A running walk of one key goes parallel (backfill_worker.c): the part
 * already walked, from the start to the checkpoint, becomes slice 0, done,
 * with the job's counters so far (rows_done, rows_seen, batches), so that
 * the job's counters, the sums of its slices' from now on, stay what they
 * are; then the job walks slices.  Its rows_total (the whole walk's) stays.
 * In the caller's transaction, under the job row's lock, together with the
 * slices of the rest (bf_plan_remainder): committed whole or not at all.
 * No striped window may be open (its rows_seen would not split).
 */
void
mig_job_convert_sliced(int64 job_id, Oid relid, const char *relname)
{
	mig_catalog_exec("INSERT INTO migrate_ext.job_slice (job_id, slice_no, relid, relname, state, "
					 "key_kind, key_cols, lower_key, upper_key, rows_total, rows_done, rows_seen, "
					 "batches, walk_relfilenode, write_path) "
					 "SELECT id, 0, $2, $3, 'done', key_kind, "
					 "coalesce(key_cols, '{}'::pg_catalog.name[]), NULL, lower_key, rows_seen, "
					 "rows_done, rows_seen, batches, walk_relfilenode, write_path "
					 "FROM migrate_ext.job WHERE id OPERATOR(pg_catalog.=) $1 "
					 "AND key_kind OPERATOR(pg_catalog.<>) 'slices' AND stripe_end IS NULL",
					 3, (Oid[]) {INT8OID, OIDOID, TEXTOID},
					 (Datum[]) {Int64GetDatum(job_id), ObjectIdGetDatum(relid),
						 CStringGetTextDatum(relname)}, NULL, 1);
	mig_catalog_exec("UPDATE migrate_ext.job SET key_kind = 'slices', key_cols = NULL, "
					 "lower_key = NULL, upper_key = NULL, stripe_end = NULL, stripe_next = NULL "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, 1);
}

/*
 * Slices added to a running job (partitions attached during the backfill):
 * their rows count in its total, so that progress and ETA see them.
 */
void
mig_job_add_total(int64 job_id, int64 rows, bool exact)
{
	Assert(rows >= 0);
	mig_catalog_exec("UPDATE migrate_ext.job SET "
					 "rows_total = coalesce(rows_total, 0) OPERATOR(pg_catalog.+) $2, "
					 "rows_total_exact = rows_total_exact AND $3 "
					 "WHERE id OPERATOR(pg_catalog.=) $1",
					 3, (Oid[]) {INT8OID, INT8OID, BOOLOID},
					 (Datum[]) {Int64GetDatum(job_id), Int64GetDatum(rows), BoolGetDatum(exact)},
					 NULL, 1);
}

/* A new slice, pending; lower and upper may be (Datum) 0 for NULL. */
void
mig_slice_insert(const MigSlice *s)
{
	Oid			types[10] = {INT8OID, INT4OID, OIDOID, TEXTOID, TEXTOID, TEXTARRAYOID,
		TEXTARRAYOID, TEXTARRAYOID, INT8OID, OIDOID};
	Datum		v[10];
	char		n[11] = "          ";

	v[0] = Int64GetDatum(s->job_id);
	v[1] = Int32GetDatum(s->slice_no);
	v[2] = ObjectIdGetDatum(s->relid);
	v[3] = CStringGetTextDatum(s->relname);
	v[4] = CStringGetTextDatum(s->key_kind);
	v[5] = s->key_cols;
	v[6] = s->lower_key;
	n[6] = s->lower_key ? ' ' : 'n';
	v[7] = s->upper_key;
	n[7] = s->upper_key ? ' ' : 'n';
	v[8] = Int64GetDatum(s->rows_total);
	n[8] = s->rows_total >= 0 ? ' ' : 'n';
	v[9] = ObjectIdGetDatum(s->relfilenode);
	mig_catalog_exec("INSERT INTO migrate_ext.job_slice (job_id, slice_no, relid, relname, "
					 "key_kind, key_cols, lower_key, upper_key, rows_total, walk_relfilenode) "
					 "VALUES ($1, $2, $3, $4, $5, $6::name[], $7, $8, $9, $10)",
					 10, types, v, n, 1);
}

/*
 * A worker claims a pending slice (or the one its slot held before a
 * restart), skipping those another worker is claiming.  Returns its number,
 * or -1 when none is left to claim.
 */
int
mig_slice_claim(int64 job_id, int pid, int slot)
{
	return (int) mig_catalog_exec_int8("WITH c AS (SELECT slice_no FROM migrate_ext.job_slice "
									   "WHERE job_id OPERATOR(pg_catalog.=) $1 AND (state OPERATOR(pg_catalog.=) 'pending' "
									   "OR (state OPERATOR(pg_catalog.=) 'running' AND worker_slot OPERATOR(pg_catalog.=) $3)) "
									   "ORDER BY state OPERATOR(pg_catalog.=) 'running' DESC, slice_no "
									   "LIMIT 1 FOR UPDATE SKIP LOCKED), "
									   "u AS (UPDATE migrate_ext.job_slice s SET state = 'running', worker_pid = $2, "
									   "worker_slot = $3, updated_at = pg_catalog.now() FROM c "
									   "WHERE s.job_id OPERATOR(pg_catalog.=) $1 AND s.slice_no OPERATOR(pg_catalog.=) c.slice_no "
									   "RETURNING s.slice_no) "
									   "SELECT coalesce((SELECT slice_no FROM u), -1)::pg_catalog.int8",
									   3, (Oid[]) {INT8OID, INT4OID, INT4OID},
									   (Datum[]) {Int64GetDatum(job_id), Int32GetDatum(pid), Int32GetDatum(slot)},
									   NULL);
}

/* A slice's state: done, detached, or pending again (given back). */
void
mig_slice_set_state(int64 job_id, int slice_no, const char *state)
{
	mig_catalog_exec("UPDATE migrate_ext.job_slice SET state = $3, rate_recent = NULL, "
					 "updated_at = pg_catalog.now() WHERE job_id OPERATOR(pg_catalog.=) $1 "
					 "AND slice_no OPERATOR(pg_catalog.=) $2",
					 3, (Oid[]) {INT8OID, INT4OID, TEXTOID},
					 (Datum[]) {Int64GetDatum(job_id), Int32GetDatum(slice_no),
						 CStringGetTextDatum(state)}, NULL, 1);
}

/* Nobody works on the job: its running slices are pending again. */
void
mig_slice_release_all(int64 job_id)
{
	if (!mig_job_has_column("parallel"))
		return;
	mig_catalog_exec("UPDATE migrate_ext.job_slice SET state = 'pending', rate_recent = NULL "
					 "WHERE job_id OPERATOR(pg_catalog.=) $1 AND state OPERATOR(pg_catalog.=) 'running'",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(job_id)}, NULL, -1);
}

/* A ctid slice's table was rewritten: its walk starts again. */
void
mig_slice_restart_walk(int64 job_id, int slice_no, Datum upper_key, Oid relfilenode)
{
	mig_catalog_exec("UPDATE migrate_ext.job_slice SET lower_key = NULL, upper_key = $3, "
					 "rows_seen = 0, walk_relfilenode = $4, stripe_end = NULL, stripe_next = NULL "
					 "WHERE job_id OPERATOR(pg_catalog.=) $1 "
					 "AND slice_no OPERATOR(pg_catalog.=) $2",
					 4, (Oid[]) {INT8OID, INT4OID, TEXTARRAYOID, OIDOID},
					 (Datum[]) {Int64GetDatum(job_id), Int32GetDatum(slice_no), upper_key,
						 ObjectIdGetDatum(relfilenode)},
					 (char[]) {' ', ' ', upper_key ? ' ' : 'n', ' '}, 1);
}

/* One batch of a slice committed: its checkpoint and counters. */
void
mig_slice_checkpoint(int64 job_id, int slice_no, const MigJobBatch *b, int64 rate_cap)
{
	mig_catalog_exec("UPDATE migrate_ext.job_slice SET lower_key = $3, rows_done = rows_done + $4, "
					 "rows_seen = rows_seen + $5, batches = batches + 1, rate_recent = $6, "
					 "rate_cap = $7, updated_at = pg_catalog.now() "
					 "WHERE job_id OPERATOR(pg_catalog.=) $1 AND slice_no OPERATOR(pg_catalog.=) $2",
					 7, (Oid[]) {INT8OID, INT4OID, TEXTARRAYOID, INT8OID, INT8OID, FLOAT8OID, INT8OID},
					 (Datum[]) {Int64GetDatum(job_id), Int32GetDatum(slice_no), b->lower_key,
						 Int64GetDatum(b->written), Int64GetDatum(b->seen), Float8GetDatum(b->rate),
						 Int64GetDatum(rate_cap)},
					 (char[]) {' ', ' ', b->lower_key ? ' ' : 'n', ' ', ' ', ' ',
						 rate_cap > 0 ? ' ' : 'n'}, 1);
	if (mig_job_has_column("stripe_next"))
		job_stripe_checkpoint("job_slice", "job_id OPERATOR(pg_catalog.=) $1 "
							  "AND slice_no OPERATOR(pg_catalog.=) $2",
							  Int64GetDatum(job_id), slice_no, b);
}

/*
 * A sliced job's row catches up with its slices, outside the batches (so
 * that the job row is no lock point for them): the sums of the counters,
 * and what this worker adds (state, retries, vacuums, time).  A job paused
 * or ended meanwhile keeps its state.
 */
void
mig_job_sum_slices(int64 job_id, const MigJobBatch *b)
{
	Oid			types[9] = {INT8OID, TEXTOID, TEXTOID, INT8OID, INT4OID, FLOAT8OID,
		INT4OID, TEXTOID, TEXTOID};
	Datum		v[9];
	char		n[10] = "         ";

	v[0] = Int64GetDatum(job_id);
	v[1] = CStringGetTextDatum(mig_job_state_name(b->state));
	v[2] = b->throttle_reason ? CStringGetTextDatum(b->throttle_reason) : (Datum) 0;
	n[2] = b->throttle_reason ? ' ' : 'n';
	v[3] = Int64GetDatum(b->retries);
	v[4] = Int32GetDatum(b->vacuums);
	v[5] = Float8GetDatum(b->active_seconds);
	v[6] = Int32GetDatum(b->next_batch_size);
	v[7] = b->error ? CStringGetTextDatum(b->error) : (Datum) 0;
	n[7] = b->error ? ' ' : 'n';
	v[8] = b->sqlstate ? CStringGetTextDatum(b->sqlstate) : (Datum) 0;
	n[8] = b->sqlstate ? ' ' : 'n';
	mig_catalog_exec("UPDATE migrate_ext.job j SET rows_done = s.done, rows_seen = s.seen, "
					 "batches = s.batches, rate_recent = s.rate, "
					 "state = CASE WHEN j.state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'throttled']) "
					 "THEN $2 ELSE j.state END, "
					 "throttle_reason = CASE WHEN j.state OPERATOR(pg_catalog.=) ANY (ARRAY['running', 'throttled']) "
					 "THEN $3 ELSE j.throttle_reason END, "
					 "retries = j.retries OPERATOR(pg_catalog.+) $4, vacuums = j.vacuums OPERATOR(pg_catalog.+) $5, "
					 "active_seconds = j.active_seconds OPERATOR(pg_catalog.+) $6, batch_size = $7, "
					 "last_error = coalesce($8, j.last_error), last_sqlstate = coalesce($9, j.last_sqlstate), "
					 "updated_at = pg_catalog.now() "
					 "FROM (SELECT coalesce(pg_catalog.sum(rows_done), 0)::int8 AS done, "
					 "coalesce(pg_catalog.sum(rows_seen), 0)::int8 AS seen, "
					 "coalesce(pg_catalog.sum(batches), 0)::int8 AS batches, "
					 "pg_catalog.sum(rate_recent) FILTER (WHERE state OPERATOR(pg_catalog.=) 'running') AS rate "
					 "FROM migrate_ext.job_slice WHERE job_id OPERATOR(pg_catalog.=) $1) s "
					 "WHERE j.id OPERATOR(pg_catalog.=) $1",
					 9, types, v, n, 1);
}
