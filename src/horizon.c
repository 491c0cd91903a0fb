/*-------------------------------------------------------------------------
 *
 * horizon.c
 *	  Being a good neighbour to the rest of the server: letting vacuum and
 *	  concurrent index builds get past a long-running migrate_ext function
 *	  call, and measuring the application's load a backfill yields to.
 *
 * mig_validate() scans a whole table and mig_contract() waits for index
 * builds; both are SQL functions, so they run inside the caller's statement,
 * whose snapshot is registered until the statement ends.  Its xmin would
 * hold back vacuum for the whole scan, and CREATE INDEX CONCURRENTLY (which
 * waits for every transaction with an older snapshot) would wait for the
 * very call that is waiting for it.
 *
 * In READ COMMITTED each statement we run through SPI takes a fresh
 * snapshot, and the caller's statement snapshot is never used to read a
 * table again once such a function has started (a SELECT of a migrate_ext
 * function reads nothing else).  So such a function may stop advertising
 * the old xmin: GetSnapshotData() then advertises the xmin of the next
 * snapshot taken, and SnapshotResetXmin() only ever moves it forward.  In
 * REPEATABLE READ or SERIALIZABLE the transaction snapshot is reused and
 * must stay protected, so nothing is released there.
 *
 * Nor while the transaction has an open cursor (DECLARE, a PL/pgSQL loop
 * over a query, a portal of the extended protocol left between Execute
 * messages): such a portal reads on with the snapshot it was opened with,
 * older than ours, and with the xmin cleared a concurrent DELETE and VACUUM
 * would remove rows it has yet to return.  The snapshot manager offers no
 * public registry of other snapshots we could check more finely, so any portal
 * that is ready to run again (PORTAL_READY, which ours, running, is not)
 * means the xmin stays, and the caller holds back vacuum as any statement
 * does.  A WITH HOLD cursor left from an earlier transaction counts too:
 * conservative, never wrong.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <unistd.h>

#include "access/transam.h"
#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "tcop/pquery.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/portal.h"
#include "utils/timestamp.h"
#include "utils/snapmgr.h"

#include "migrate_ext.h"

/*
 * Does the transaction have a cursor open besides the running portal?
 * (ThereAreNoReadyPortals() would leak its hash scan when it finds one.)
 */
static bool
other_cursors_open(void)
{
	const char *self = ActivePortal ? ActivePortal->name : "";
	int64		n;

	SPI_connect();
	if (SPI_execute_with_args("SELECT pg_catalog.count(*) FROM pg_catalog.pg_cursor() c "
							  "WHERE c.name OPERATOR(pg_catalog.<>) $1 "
							  "AND NOT (c.is_holdable AND c.creation_time OPERATOR(pg_catalog.<) $2)",
							  2, (Oid[]) {TEXTOID, TIMESTAMPTZOID},
							  (Datum[]) {CStringGetTextDatum(self),
								  TimestampTzGetDatum(GetCurrentTransactionStartTimestamp())},
							  NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "migrate_ext: could not list the open cursors");
	n = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1,
									&(bool) {false}));
	SPI_finish();
	return n > 0;
}

/*
 * Stop holding back the xmin horizon with snapshots this backend will not
 * read with again.  Returns false (and does nothing) where the transaction
 * snapshot must stay protected, or an open cursor still reads with an
 * older one.  Call it only between statements that take their own
 * snapshots, never while a scan of the caller with an older snapshot is
 * open.
 */
bool
mig_release_xmin(void)
{
	if (IsolationUsesXactSnapshot())
		return false;
	if (other_cursors_open())
		return false;
	InvalidateCatalogSnapshot();
	MyProc->xmin = InvalidTransactionId;
	return true;
}

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
int
mig_busy_sessions_count(void)
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
 * A session's CPU time so far, in clock ticks, from /proc/<pid>/stat
 * (utime + stime); -1 where it cannot be read (not Linux, or gone).
 */
static int64
session_cpu_ticks(int pid)
{
	char		path[64];
	char		buf[1024];
	FILE	   *f;
	size_t		n;
	char	   *p;
	unsigned long utime;
	unsigned long stime;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (f == NULL)
		return -1;
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* "pid (comm) state ppid ...": comm may hold anything, even ')' */
	p = strrchr(buf, ')');
	if (p == NULL ||
		sscanf(p + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			   &utime, &stime) != 2)
		return -1;
	return (int64) utime + (int64) stime;
}

#define MAX_TRACKED 256

/*
 * How many of this database's client sessions were busy on a CPU, on
 * average, since the last call (a worker calls it once per batch, so the
 * measure covers the batch and the pause after it): the CPU time they used,
 * read from /proc, over the time gone by.  An instantaneous count of
 * sessions running a statement (mig_busy_sessions_count) rarely catches a
 * workload of 50-microsecond statements however busy it keeps the CPUs;
 * their CPU time does not miss them.  Where /proc cannot be read, or on the
 * first call, the instantaneous count.
 */
double
mig_busy_sessions_cpu(void)
{
	static int	prev_pid[MAX_TRACKED];
	static int64 prev_ticks[MAX_TRACKED];
	static int	nprev = 0;
	static TimestampTz prev_at = 0;
	int			cur_pid[MAX_TRACKED];
	int64		cur_ticks[MAX_TRACKED];
	int			ncur = 0;
	int64		used = 0;
	bool		readable = true;
	TimestampTz now = GetCurrentTimestamp();
	long		elapsed_ms = prev_at ? (long) ((now - prev_at) / 1000) : 0;
	int			nbackends;

	pgstat_clear_backend_activity_snapshot();
	nbackends = pgstat_fetch_stat_numbackends();
	for (int i = 1; i <= nbackends && ncur < MAX_TRACKED; i++)
	{
		PgBackendStatus *be = &pgstat_fetch_stat_local_beentry(i)->backendStatus;
		int64		ticks;

		if (be->st_backendType != B_BACKEND || be->st_databaseid != MyDatabaseId ||
			be->st_procpid == MyProcPid)
			continue;
		ticks = session_cpu_ticks(be->st_procpid);
		if (ticks < 0)
		{
			readable = false;
			break;
		}
		cur_pid[ncur] = be->st_procpid;
		cur_ticks[ncur++] = ticks;
		for (int j = 0; j < nprev; j++)
			if (prev_pid[j] == be->st_procpid && ticks >= prev_ticks[j])
				used += ticks - prev_ticks[j];
	}
	memcpy(prev_pid, cur_pid, sizeof(int) * ncur);
	memcpy(prev_ticks, cur_ticks, sizeof(int64) * ncur);
	nprev = readable ? ncur : 0;
	prev_at = now;
	if (!readable || elapsed_ms <= 0)
		return mig_busy_sessions_count();
	return (double) used * 1000.0 / sysconf(_SC_CLK_TCK) / elapsed_ms;
}
