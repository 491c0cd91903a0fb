/*-------------------------------------------------------------------------
 *
 * worker.c
 *	  Starting migrate_ext's background workers, and connecting them as
 *	  the role that asked for them.
 *
 * Every worker (a backfill, a contract's index builds) runs with the
 * privileges of the role that started it, so it can do nothing that role
 * could not.  bgw_extra carries the database, the session user (who can log
 * in: it did) and the current user (who may be a NOLOGIN role reached by
 * SET ROLE or a SECURITY DEFINER function), as pg_squeeze's worker does.
 * The worker logs in as the session user and then becomes the current user.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/pg_db_role_setting.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "tcop/tcopprot.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "migrate_ext_worker.h"

/*
 * Start a worker running migrate_ext's function entry, and wait until the
 * postmaster has started it.  Errors when no slot is free.  Returns the
 * worker's pid, or 0 when the worker had already exited by the time we
 * looked (a short job finishes before WaitForBackgroundWorkerStartup
 * returns): the caller reads what it did from the catalog (or its shm_mq),
 * as it does for a worker that exits later.
 */
pid_t
mig_worker_start(const char *entry, const char *name, const MigWorkerArgs *args)
{
	return mig_worker_start_handle(entry, name, args, NULL);
}

/*
 * The same, also returning the worker's handle (when handlep is not NULL),
 * for a caller that waits for the worker through a shm_mq and must notice
 * if it dies before attaching (shm_mq_set_handle).
 */
pid_t
mig_worker_start_handle(const char *entry, const char *name,
						const MigWorkerArgs *args, BackgroundWorkerHandle **handlep)
{
	BackgroundWorker worker;
	BackgroundWorkerHandle *handle;
	BgwHandleStatus status;
	pid_t		pid;

	StaticAssertStmt(sizeof(MigWorkerArgs) <= BGW_EXTRALEN, "MigWorkerArgs too large");

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = BGW_NEVER_RESTART;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "migrate_ext");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", entry);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "migrate_ext");
	memcpy(worker.bgw_extra, args, sizeof(MigWorkerArgs));
	worker.bgw_notify_pid = MyProcPid;

	if (!RegisterDynamicBackgroundWorker(&worker, &handle))
		ereport(ERROR,
				(errcode(ERRCODE_CONFIGURATION_LIMIT_EXCEEDED),
				 errmsg("could not start a migrate_ext background worker: no free worker slot"),
				 errdetail("All %d slots of max_worker_processes are in use.",
						   max_worker_processes),
				 errhint("Raise max_worker_processes (it needs a restart), or wait for other background workers to finish.")));

	status = WaitForBackgroundWorkerStartup(handle, &pid);

	/*
	 * A worker that already finished (STOPPED before we looked: a short
	 * job) counts as started; its callers read how it ended from the
	 * catalog or from its queue.
	 */
	if (status == BGWH_STOPPED)
		pid = 0;
	else if (status != BGWH_STARTED)
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_RESOURCES),
				 errmsg("could not start a migrate_ext background worker"),
				 errhint("The postmaster died.")));
	if (handlep)
		*handlep = handle;
	return pid;
}

/* Arguments for a worker started on behalf of the current session. */
void
mig_worker_args_for_caller(MigWorkerArgs *args, int64 arg)
{
	memset(args, 0, sizeof(MigWorkerArgs));
	args->dboid = MyDatabaseId;
	args->login_oid = GetSessionUserId();
	args->role_oid = GetUserId();
	args->arg = arg;
}

/*
 * In the worker: read the arguments, connect, and become the role.  Must be
 * called first thing in a worker's main function.
 */
void
mig_worker_connect(MigWorkerArgs *args)
{
	memcpy(args, MyBgworkerEntry->bgw_extra, sizeof(MigWorkerArgs));

	pqsignal(SIGTERM, die);
	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	BackgroundWorkerUnblockSignals();
	BackgroundWorkerInitializeConnectionByOid(args->dboid, args->login_oid, 0);

	/*
	 * The login role's settings may carry timeouts meant for its clients:
	 * the worker's own set-up must not die of them.  Each step sets its own.
	 */
	SetConfigOption("lock_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("statement_timeout", "0", PGC_SUSET, PGC_S_OVERRIDE);
	SetConfigOption("idle_in_transaction_session_timeout", "0", PGC_SUSET,
					PGC_S_OVERRIDE);

	if (args->role_oid != args->login_oid)
	{
		SetCurrentStatementStartTimestamp();
		StartTransactionCommand();
		SetCurrentRoleId(args->role_oid, superuser_arg(args->role_oid));
		CommitTransactionCommand();
	}
}

/*
 * ApplySetting() of one (database, role) row at PGC_S_DATABASE_USER, minus
 * the settings that would change who the worker is: "role" (an owner may
 * store ALTER ROLE owner SET role = 'postgres' for herself, which her own
 * logins refuse, but a worker that logged in as a superuser would take)
 * and "session_authorization".
 */
static void
apply_setting(Snapshot snapshot, Relation relsetting, Oid databaseid, Oid roleid)
{
	ScanKeyData keys[2];
	SysScanDesc scan;
	HeapTuple	tup;

	ScanKeyInit(&keys[0], Anum_pg_db_role_setting_setdatabase,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(databaseid));
	ScanKeyInit(&keys[1], Anum_pg_db_role_setting_setrole,
				BTEqualStrategyNumber, F_OIDEQ, ObjectIdGetDatum(roleid));
	scan = systable_beginscan(relsetting, DbRoleSettingDatidRolidIndexId, true,
							  snapshot, 2, keys);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_db_role_setting_setconfig,
									 RelationGetDescr(relsetting), &isnull);
		ArrayType  *a;

		if (isnull)
			continue;
		a = GUCArrayDelete(DatumGetArrayTypePCopy(d), "role");
		if (a)
			a = GUCArrayDelete(a, "session_authorization");
		/* at SUSET, as at login: pg_db_role_setting was checked on insert */
		if (a)
			ProcessGUCArray(a, PGC_SUSET, PGC_S_DATABASE_USER, GUC_ACTION_SET);
	}
	systable_endscan(scan);
}

/*
 * Give the session the settings that the table owner's own sessions get in
 * this database (ALTER ROLE owner [IN DATABASE db] SET ...), over the login
 * role's, so that the owner's triggers and expressions see the environment
 * the application's writes give them.  Both at the source of the login
 * role's database-specific settings, the owner's general ones first, so
 * that the owner's win over every setting of the login role (and over
 * ALTER DATABASE ... SET), and the owner's database-specific ones over its
 * general ones, as at the owner's own login.  Settings the worker made
 * itself (PGC_S_OVERRIDE and PGC_S_SESSION, higher sources) stay:
 * migrate_ext's own statements do not depend on these.  Call in a
 * transaction.
 */
void
mig_worker_apply_role_settings(Oid roleid)
{
	Relation	relsetting;
	Snapshot	snapshot;

	Assert(IsTransactionState());
	relsetting = table_open(DbRoleSettingRelationId, AccessShareLock);
	snapshot = RegisterSnapshot(GetCatalogSnapshot(DbRoleSettingRelationId));
	apply_setting(snapshot, relsetting, InvalidOid, roleid);
	apply_setting(snapshot, relsetting, MyDatabaseId, roleid);
	UnregisterSnapshot(snapshot);
	table_close(relsetting, AccessShareLock);
}
