/*-------------------------------------------------------------------------
 *
 * launcher.c
 *	  The launcher: after a start, a restart or a crash, gives every
 *	  interrupted backfill job a new worker, and every contract that
 *	  stopped after its swap one that finishes its foreign keys.
 *
 * Registered only when migrate_ext is in shared_preload_libraries, as a
 * static background worker.  It starts once recovery has finished (never
 * on a standby: the job rows it would resume are replicas of the primary's,
 * whose workers run there; after a promotion it runs and takes the jobs
 * over), and the postmaster starts it again after a crash, when every
 * backfill worker died with the other backends.
 *
 * A backend can connect to one database only, so the launcher connects to
 * none: it reads the list of databases from the shared catalog pg_database
 * (as autovacuum's launcher does) and, one database after another, starts
 * a short-lived worker connected to it, which looks for migrate_ext and its
 * interrupted jobs there (backfill.c), starts a worker that finishes
 * the foreign keys each contracted migration still has recorded after its
 * swap (contract_worker.c), and exits.  A database dropped in the
 * meantime only makes that short worker fail to connect.  Then the launcher
 * waits, doing nothing, until the server shuts down.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_database.h"
#include "commands/dbcommands.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "migrate_ext.h"
#include "migrate_ext_worker.h"

/*
 * How often the worker of a database whose extension is older than the
 * library looks again (it exits 1 and the postmaster restarts it).
 */
#define LAUNCHER_RECHECK_S		5

PGDLLEXPORT void mig_launcher_main(Datum main_arg);
PGDLLEXPORT void mig_launcher_db_main(Datum main_arg);

/* A job to resume: its workers' arguments, and how many. */
typedef struct LauncherJob
{
	MigWorkerArgs *args;
	int			parallel;
} LauncherJob;

static void
start_job_workers(void *arg)
{
	LauncherJob *job = arg;

	(void) mig_job_start_workers(job->args, job->parallel, false);
}

static void
start_finish_worker(void *arg)
{
	MigWorkerArgs *args = arg;

	(void) mig_worker_start("mig_contract_finish_main",
							psprintf("migrate_ext finish of migration " INT64_FORMAT, args->arg),
							args);
}

/*
 * Start a worker with start(arg) in a subtransaction, and log done: when
 * that fails (no free worker slot, say), log why and go on, so that one
 * migration's trouble never keeps the launcher from the next.
 */
static void
launcher_try_start(void (*start) (void *arg), void *arg, const char *done)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		start(arg);
		ReleaseCurrentSubTransaction();
		ereport(LOG, (errmsg_internal("%s", done)));
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

/*
 * In a short-lived worker of the launcher, connected to one database as a
 * superuser: give every interrupted job of this database a new worker, as
 * the roles that started it.  A job whose roles are gone, or can no longer
 * log in, fails with a message that says so.  Returns false when there is
 * nothing more to do here (no extension).
 */
static bool
resume_interrupted_jobs(void)
{
	List	   *jobs = NIL;
	ListCell   *lc;
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext spicxt;

	SPI_connect();
	if (!OidIsValid(get_extension_oid("migrate_ext", true)))
	{
		SPI_finish();
		return false;
	}
	if (!mig_version_matches())
	{
		/* exit 1: the postmaster starts this worker again in a while */
		ereport(LOG,
				(errmsg("migrate_ext: not resuming the backfill jobs of database \"%s\" yet: the library is version %s, the extension %s",
						get_database_name(MyDatabaseId), MIGRATE_EXT_VERSION,
						mig_extension_version()),
				 errhint("Run ALTER EXTENSION migrate_ext UPDATE in that database; the jobs resume within %d seconds after.",
						 LAUNCHER_RECHECK_S)));
		SPI_finish();
		AbortCurrentTransaction();
		proc_exit(1);
	}
	if (mig_catalog_query(psprintf("SELECT id, role_oid, login_oid, %s FROM migrate_ext.job "
								   "WHERE state IN ('running', 'throttled', 'paused', 'interrupted') "
								   "ORDER BY id",
								   mig_job_has_column("parallel") ? "parallel" : "1"),
						  0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
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
		/* the job's workers, in the argument's slot bits until started */
		args->arg |= (int64) DatumGetInt32(SPI_getbinval(tup, desc, 4, &isnull)) << MIG_JOB_SLOT_SHIFT;
		/* the list must outlive SPI_finish(), which frees SPI's context */
		spicxt = MemoryContextSwitchTo(oldcxt);
		jobs = lappend(jobs, args);
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();

	foreach(lc, jobs)
	{
		MigWorkerArgs *args = lfirst(lc);
		int			parallel = (int) (args->arg >> MIG_JOB_SLOT_SHIFT);
		HeapTuple	tup;
		bool		can_login = false;
		LauncherJob job;

		args->arg &= MIG_JOB_ID_MASK;
		if (mig_job_alive(args->arg))
			continue;

		tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(args->login_oid));
		if (HeapTupleIsValid(tup))
		{
			can_login = ((Form_pg_authid) GETSTRUCT(tup))->rolcanlogin;
			ReleaseSysCache(tup);
		}
		if (!can_login || !SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(args->role_oid)))
		{
			mig_job_end(args->arg, JOB_FAILED,
						"the role that started this job no longer exists or can no longer log in, so the job cannot continue after the restart; start it again with mig_backfill() as the table's owner",
						"28000", 0);
			ereport(WARNING,
					(errmsg("migrate_ext: backfill job " INT64_FORMAT " cannot be resumed: its role is gone or cannot log in",
							args->arg)));
			continue;
		}

		/* mig_status shows it interrupted until the worker takes over */
		mig_job_hold_gate(args->arg);
		mig_job_mark_interrupted(args->arg);
		/* every slice a worker held is claimed again, by all its workers */
		mig_slice_release_all(args->arg);
		/* no free slot: leave it interrupted, say so, go on with the next */
		job.args = args;
		job.parallel = Max(parallel, 1);
		launcher_try_start(start_job_workers, &job,
						   psprintf("migrate_ext: resuming backfill job " INT64_FORMAT " in database \"%s\"",
									args->arg, get_database_name(MyDatabaseId)));
	}
	return true;
}

/*
 * In the same short worker, after the jobs: every migration whose swap
 * committed with foreign keys still recorded to finish (a mig_contract
 * that stopped after its swap: a crash, a restart, a lock it could not
 * get) gets a worker that finishes them as the table's owner
 * (mig_contract_finish_main).  Only what contract_object records, on
 * tables that still exist.  No free slot: a warning, and the DBA's
 * mig_contract finishes them.
 */
static void
finish_contracted(void)
{
	int64	   *ids;
	uint64		nids;
	MemoryContext oldcxt = CurrentMemoryContext;

	SPI_connect();
	if (mig_catalog_query("SELECT m.id FROM migrate_ext.migration m "
						  "WHERE m.phase OPERATOR(pg_catalog.=) 'contracted' "
						  "AND EXISTS (SELECT FROM migrate_ext.contract_object o "
						  "WHERE o.migration_id OPERATOR(pg_catalog.=) m.id) "
						  "AND EXISTS (SELECT FROM pg_catalog.pg_class c "
						  "WHERE c.oid OPERATOR(pg_catalog.=) m.relid) "
						  "ORDER BY m.id",
						  0, NULL, NULL, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.migration");
	/* the ids must outlive SPI_finish(), which frees SPI's context */
	nids = SPI_processed;
	ids = MemoryContextAlloc(oldcxt, sizeof(int64) * Max(nids, 1));
	for (uint64 i = 0; i < nids; i++)
	{
		bool		isnull;

		ids[i] = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[i],
											 SPI_tuptable->tupdesc, 1, &isnull));
	}
	SPI_finish();

	for (uint64 i = 0; i < nids; i++)
	{
		MigWorkerArgs args;

		/* connects as the bootstrap superuser, then becomes the owner */
		memset(&args, 0, sizeof(args));
		args.dboid = MyDatabaseId;
		args.login_oid = BOOTSTRAP_SUPERUSERID;
		args.role_oid = BOOTSTRAP_SUPERUSERID;
		args.arg = ids[i];
		launcher_try_start(start_finish_worker, &args,
						   psprintf("migrate_ext: finishing the foreign keys left after the swap of migration " INT64_FORMAT " in database \"%s\"",
									args.arg, get_database_name(MyDatabaseId)));
	}
}

/* seconds before the postmaster starts a launcher that exited with an error */
#define MIG_LAUNCHER_RESTART	5

/*
 * Fill in what the launcher and its per-database workers have in common:
 * a database connection, started once recovery is over, with type
 * "migrate_ext launcher". The caller sets the name and the arguments.
 */
static void
launcher_worker_init(BackgroundWorker *worker, const char *function,
					 int restart_time)
{
	memset(worker, 0, sizeof(*worker));
	worker->bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker->bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker->bgw_restart_time = restart_time;
	snprintf(worker->bgw_library_name, BGW_MAXLEN, "migrate_ext");
	snprintf(worker->bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker->bgw_type, BGW_MAXLEN, "migrate_ext launcher");
}

/* Called from _PG_init while shared_preload_libraries are loaded. */
void
mig_launcher_register(void)
{
	BackgroundWorker worker;

	launcher_worker_init(&worker, "mig_launcher_main", MIG_LAUNCHER_RESTART);
	snprintf(worker.bgw_name, BGW_MAXLEN, "migrate_ext launcher");
	RegisterBackgroundWorker(&worker);
}

/* The databases that accept connections, read from pg_database. */
static List *
launcher_databases(void)
{
	List	   *result = NIL;
	MemoryContext resultcxt = CurrentMemoryContext;
	Relation	rel;
	TableScanDesc scan;
	HeapTuple	tup;

	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	(void) GetTransactionSnapshot();
	rel = table_open(DatabaseRelationId, AccessShareLock);
	scan = table_beginscan_catalog(rel, 0, NULL);
	while (HeapTupleIsValid(tup = heap_getnext(scan, ForwardScanDirection)))
	{
		Form_pg_database db = (Form_pg_database) GETSTRUCT(tup);

		if (db->datallowconn)
		{
			MemoryContext oldcxt = MemoryContextSwitchTo(resultcxt);

			result = lappend_oid(result, db->oid);
			MemoryContextSwitchTo(oldcxt);
		}
	}
	table_endscan(scan);
	table_close(rel, AccessShareLock);
	CommitTransactionCommand();
	return result;
}

/*
 * Start the short worker for one database and wait until it has exited, so
 * that the launcher never takes more than one slot of max_worker_processes
 * besides the backfill workers themselves.  A database whose extension has
 * not been updated to the library's version yet keeps its worker's slot:
 * the worker exits 1, and the postmaster starts it again every
 * LAUNCHER_RECHECK_S seconds until the versions match; the launcher does
 * not wait for that and goes on with the next database.
 */
static void
launcher_visit(Oid dboid)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	pid_t		pid;

	launcher_worker_init(&worker, "mig_launcher_db_main", LAUNCHER_RECHECK_S);
	snprintf(worker.bgw_name, BGW_MAXLEN, "migrate_ext launcher for database %u", dboid);
	worker.bgw_main_arg = ObjectIdGetDatum(dboid);
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
	{
		ereport(WARNING,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("migrate_ext launcher: no free worker slot to resume the backfill jobs of database %u",
						dboid),
				 errhint("Raise max_worker_processes, or resume them by hand with mig_resume().")));
		return;
	}
	if (WaitForBackgroundWorkerStartup(handle, &pid) == BGWH_STARTED)
	{
		/* until it has exited: for good (stopped), or to be started again */
		while (GetBackgroundWorkerPid(handle, &pid) == BGWH_STARTED)
		{
			(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L,
							 PG_WAIT_EXTENSION);
			ResetLatch(MyLatch);
			CHECK_FOR_INTERRUPTS();
		}
	}
	pfree(handle);
}

void
mig_launcher_main(Datum main_arg)
{
	List	   *dbs;
	ListCell   *lc;

	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnection(NULL, NULL, 0);

	dbs = launcher_databases();
	foreach(lc, dbs)
	{
		CHECK_FOR_INTERRUPTS();
		launcher_visit(lfirst_oid(lc));
	}

	/* nothing more to do until the next start */
	for (;;)
	{
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
}

/* The short worker of one database, as its bootstrap superuser. */
void
mig_launcher_db_main(Datum main_arg)
{
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(DatumGetObjectId(main_arg), InvalidOid, 0);

	SetCurrentStatementStartTimestamp();

	StartTransactionCommand();
	PushActiveSnapshot(GetTransactionSnapshot());
	if (resume_interrupted_jobs())
		finish_contracted();
	PopActiveSnapshot();
	CommitTransactionCommand();
	proc_exit(0);
}
