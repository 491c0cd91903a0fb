/*-------------------------------------------------------------------------
 *
 * relation.c
 *	  What migrate_ext does to a user table as the table's owner.
 *
 * Everything that can run code a table's owner wrote -- its triggers,
 * up/down/check expressions, domain checks, defaults, policies -- runs
 * through mig_owner_switch(), whoever asked for the migration step: a
 * superuser, a member of the owning role, or a background worker that
 * logged in as either.  The switch is the one VACUUM, CREATE INDEX and
 * REFRESH MATERIALIZED VIEW make (see ri_triggers.c and matview.c): the
 * table's owner as current user, inside a security-restricted operation,
 * so that the code cannot SET ROLE or RESET ROLE back to whoever started
 * the step, and with row security not forced on the owner, so that FORCE
 * ROW LEVEL SECURITY cannot hide rows from a backfill, a validation or a
 * contract (they must see every row to be right).
 *
 * Also here, because every layer above needs them, each written once:
 * opening a table a migration function was given; its qualified name; the
 * lock_timeout ladder for strong locks (pg_repack's: a short lock_timeout
 * in a subtransaction, a growing wait on the latch between tries, so that
 * an ALTER TABLE never queues the application behind it for long); the
 * runner for the utility statements migrate_ext generates; the rule for
 * whether the dual-write trigger is enabled, how to find it, which columns
 * it protects and which trigger order it needs (for expand, the guard and
 * contract alike); and the choice of the key that walks and names a table's
 * rows.  The protected columns live here rather than in expr.c because
 * they are a fact about the table's columns that the guard checks against
 * attnums, not something that cooks or prints an expression.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_am.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_trigger.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "common/pg_prng.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "nodes/params.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "tcop/tcopprot.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/lock.h"
#include "storage/proc.h"
#include "storage/sinvaladt.h"
#include "utils/backend_status.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

#include "migrate_ext.h"

static void lock_ladder(int nrels, const Oid *relids, LOCKMODE lockmode,
						const char *why, bool rotate);

/* The role that owns a relation; errors when it is gone. */
Oid
mig_table_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errdetail("It was dropped while migrate_ext worked on it.")));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Become the owner of relid for user code, until mig_owner_restore(save).
 * Settings the code changes (SET LOCAL, a function's SET clause, a plain
 * SET or set_config(..., false)) are undone at the restore through their
 * own GUC nest level, as matview.c undoes them.  On error the aborting
 * (sub)transaction restores identity and settings alike, as it does for
 * VACUUM; a caller that catches errors must roll back a subtransaction.
 */
void
mig_owner_switch(Oid relid, MigOwnerSave *save)
{
	Oid			owner = mig_table_owner(relid);

	Assert(save != NULL);
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(owner,
						   save->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION |
						   SECURITY_NOFORCE_RLS);
	save->nestlevel = NewGUCNestLevel();
	save->active = true;
}

/* Undo mig_owner_switch(). */
void
mig_owner_restore(MigOwnerSave *save)
{
	Assert(save->active);
	Assert(InSecurityRestrictedOperation());
	AtEOXact_GUC(false, save->nestlevel);
	SetUserIdAndSecContext(save->userid, save->sec_context);
	save->active = false;
}

/* ----------------------------------------------------------------
 *		Generated statements that run user code
 * ----------------------------------------------------------------
 */

/* A DestReceiver that keeps the rows in a MigRows, in the caller's context. */
typedef struct MigRowsReceiver
{
	DestReceiver pub;
	MigRows    *rows;
	MemoryContext cxt;
} MigRowsReceiver;

static void
rows_startup(DestReceiver *self, int operation, TupleDesc typeinfo)
{
	MigRowsReceiver *r = (MigRowsReceiver *) self;
	MemoryContext oldcxt = MemoryContextSwitchTo(r->cxt);

	r->rows->tupdesc = CreateTupleDescCopy(typeinfo);
	r->rows->alloced = 16;
	r->rows->numvals = 0;
	r->rows->vals = palloc(sizeof(HeapTuple) * r->rows->alloced);
	MemoryContextSwitchTo(oldcxt);
}

static bool
rows_receive(TupleTableSlot *slot, DestReceiver *self)
{
	MigRowsReceiver *r = (MigRowsReceiver *) self;
	MemoryContext oldcxt = MemoryContextSwitchTo(r->cxt);

	if (r->rows->numvals == r->rows->alloced)
	{
		r->rows->alloced *= 2;
		r->rows->vals = repalloc_huge(r->rows->vals,
									  sizeof(HeapTuple) * r->rows->alloced);
	}
	r->rows->vals[r->rows->numvals++] = ExecCopySlotHeapTuple(slot);
	MemoryContextSwitchTo(oldcxt);
	return true;
}

static void
rows_shutdown(DestReceiver *self)
{
}

static void
rows_destroy(DestReceiver *self)
{
	pfree(self);
}

/* The parameters of a generated statement, bound as constants (as SPI does). */
static ParamListInfo
owner_run_params(int nargs, Oid *argtypes, Datum *values, const char *nulls)
{
	ParamListInfo params;

	if (nargs == 0)
		return NULL;
	params = makeParamList(nargs);
	for (int i = 0; i < nargs; i++)
	{
		ParamExternData *prm = &params->params[i];

		prm->value = values[i];
		prm->isnull = (nulls && nulls[i] == 'n');
		prm->pflags = PARAM_FLAG_CONST;
		prm->ptype = argtypes[i];
	}
	return params;
}

/*
 * Parse, analyze and rewrite sql with search_path pinned to pg_catalog,
 * pg_temp: every name migrate_ext's SQL uses (operators, functions, casts,
 * the deparsed expressions) is bound to an OID here, in a GUC level of its
 * own that is left before the plans run.
 */
static List *
owner_run_analyze(const char *sql, int nargs, Oid *argtypes)
{
	List	   *queries = NIL;
	int			nestlevel = NewGUCNestLevel();
	ListCell   *lc;

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	foreach(lc, pg_parse_query(sql))
		queries = list_concat(queries,
							  pg_analyze_and_rewrite_fixedparams(lfirst_node(RawStmt, lc),
																 sql, argtypes, nargs,
																 NULL));
	AtEOXact_GUC(false, nestlevel);
	return queries;
}

/* Run one planned statement as SPI runs a statement that is not read-only. */
static uint64
owner_run_plan(PlannedStmt *stmt, const char *sql, ParamListInfo params,
			   DestReceiver *dest, long tcount)
{
	QueryDesc  *qd;
	uint64		processed;

	if (stmt->commandType == CMD_UTILITY)
		elog(ERROR, "migrate_ext: mig_owner_run() runs no utility statement");
	CommandCounterIncrement();
	PushActiveSnapshot(GetTransactionSnapshot());
	qd = CreateQueryDesc(stmt, sql, GetActiveSnapshot(), InvalidSnapshot,
						 dest, params, NULL, 0);
	ExecutorStart(qd, 0);
	ExecutorRun(qd, ForwardScanDirection, tcount, true);
	processed = qd->estate->es_processed;
	ExecutorFinish(qd);
	ExecutorEnd(qd);
	FreeQueryDesc(qd);
	PopActiveSnapshot();
	CommandCounterIncrement();
	return processed;
}

/*
 * The search_path user code runs under (see mig_owner_run): user_path, or
 * NULL for what RESET gives, in a GUC nest level of its own, which the
 * caller leaves with AtEOXact_GUC(false, level) on the level returned.
 */
int
mig_owner_user_path(const char *user_path)
{
	int			nestlevel = NewGUCNestLevel();

	(void) set_config_option("search_path",
							 user_path ? user_path : GetConfigOptionResetString("search_path"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	return nestlevel;
}

/*
 * Run a statement migrate_ext generated (a SELECT or an UPDATE of the
 * table) whose execution runs user code -- triggers, up/down/check
 * expressions, domain checks, defaults, index expressions -- in the user's
 * environment, with migrate_ext's own names pinned.
 *
 * Under a pinned search_path the statement would bind its names safely but
 * run the user's code under that path too (an audit trigger that inserts
 * into an unqualified table fails); under the user's path a planted "=" in
 * a schema first in it would be bound by the statement.  So the two steps
 * are split, as REFRESH MATERIALIZED VIEW splits them (matview.c): the
 * statement is parsed, analyzed and rewritten with search_path =
 * pg_catalog, pg_temp, where every operator, function and cast it names is
 * bound to an OID; then it is planned and run, through the executor
 * directly (no plan cache, which would analyze it again under another
 * search_path), with search_path = user_path: the path the application's
 * own writes would give the code (NULL: what RESET gives, i.e. the owner's
 * ALTER ROLE ... SET in a worker).  Planning is done there too, so that an
 * SQL function the planner inlines is parsed under the path it would run
 * under.  Every other setting is the caller's.  Settings the user's code
 * changes end with the statement.
 *
 * Must be called inside mig_owner_switch(): the code runs as the table's
 * owner, restricted.  A fresh snapshot, the command counter advanced before
 * and after (as SPI does for a statement that is not read-only); AFTER
 * triggers and immediate constraints fire at ExecutorFinish.  Returns the
 * rows processed; when rows is not NULL, the rows returned (at most tcount,
 * 0 for all) are left there, in the caller's memory context.
 */
uint64
mig_owner_run(const char *sql, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls, const char *user_path, long tcount, MigRows *rows)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext runcxt;
	ParamListInfo params;
	List	   *queries;
	List	   *stmts;
	int			nestlevel;
	uint64		processed = 0;
	ListCell   *lc;

	Assert(InSecurityRestrictedOperation());
	/* a session's own path is the caller's, taken before it pinned one */
	Assert(user_path != NULL || IsBackgroundWorker);
	runcxt = AllocSetContextCreate(callercxt, "mig_owner_run", ALLOCSET_DEFAULT_SIZES);
	MemoryContextSwitchTo(runcxt);
	if (rows)
		memset(rows, 0, sizeof(MigRows));
	params = owner_run_params(nargs, argtypes, values, nulls);

	PushActiveSnapshot(GetTransactionSnapshot());
	queries = owner_run_analyze(sql, nargs, argtypes);

	nestlevel = mig_owner_user_path(user_path);
	stmts = pg_plan_queries(queries, sql, CURSOR_OPT_PARALLEL_OK, params);
	PopActiveSnapshot();
	foreach(lc, stmts)
	{
		PlannedStmt *stmt = lfirst_node(PlannedStmt, lc);
		DestReceiver *dest = None_Receiver;

		if (stmt->canSetTag && rows)
		{
			MigRowsReceiver *r = palloc0(sizeof(MigRowsReceiver));

			r->pub.receiveSlot = rows_receive;
			r->pub.rStartup = rows_startup;
			r->pub.rShutdown = rows_shutdown;
			r->pub.rDestroy = rows_destroy;
			r->pub.mydest = DestNone;
			r->rows = rows;
			r->cxt = callercxt;
			dest = &r->pub;
		}
		CHECK_FOR_INTERRUPTS();
		if (stmt->canSetTag)
			processed = owner_run_plan(stmt, sql, params, dest, tcount);
		else
			(void) owner_run_plan(stmt, sql, params, dest, 0);
	}
	AtEOXact_GUC(false, nestlevel);

	MemoryContextSwitchTo(callercxt);
	MemoryContextDelete(runcxt);
	return processed;
}

/* The session's search_path now, to hand to mig_owner_run() later. */
char *
mig_user_search_path(void)
{
	return GetConfigOptionByName("search_path", NULL, false);
}

/*
 * Open the table a migration function was given, after checking that it is
 * an ordinary or a partitioned table the caller owns.  A partitioned table's
 * partitions are locked by mig_partition_leaves (or mig_lock_tree).
 */
Relation
mig_open_table(Oid relid, LOCKMODE lockmode)
{
	Relation	rel;
	char		relkind;

	relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (relkind != RELKIND_RELATION && relkind != RELKIND_PARTITIONED_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not an ordinary table", get_rel_name(relid)),
				 errdetail("migrate_ext migrates columns of ordinary and partitioned tables; this is a %s.",
						   relkind == RELKIND_VIEW ? "view" :
						   relkind == RELKIND_MATVIEW ? "materialized view" :
						   relkind == RELKIND_FOREIGN_TABLE ? "foreign table" :
						   "relation of another kind")));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));

	rel = table_open(relid, lockmode);
	return rel;
}

/*
 * Try once to take the locks, in order, each with the given lock_timeout.
 * Returns -1 when all are held, or the index of the one that timed out or
 * whose wait deadlocked (and then none is held); rethrows anything else.  The subtransaction's locks
 * pass to the caller's transaction when it commits.
 */
static int
try_lock(int nrels, const Oid *relids, LOCKMODE lockmode, int timeout_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile int failed = -1;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		char		buf[32];

		snprintf(buf, sizeof(buf), "%d", timeout_ms);
		set_config_option("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION,
						  GUC_ACTION_LOCAL, true, 0, false);
		for (int i = 0; i < nrels; i++)
		{
			failed = i;
			LockRelationOid(relids[i], lockmode);
		}
		failed = -1;
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		/* a deadlock while we wait: this try lost, like a timeout */
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE &&
			edata->sqlerrcode != ERRCODE_T_R_DEADLOCK_DETECTED)
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		FlushErrorState();
		FreeErrorData(edata);
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();

	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return failed;
}

/* A session holding a lock that conflicts with the one we want. */
typedef struct LockBlocker
{
	int			pid;
	char	   *appname;
	TimestampTz xact_start;		/* 0: unknown or hidden */
	TimestampTz query_start;
	bool		visible;		/* may the caller see its times? */
} LockBlocker;

/*
 * The oldest session that holds a lock on relid conflicting with lockmode
 * (what pg_locks and pg_stat_activity would show), read from the lock
 * manager and the backend status array.  Its times are shown only to a
 * role that pg_stat_activity would show them to; they are used for the
 * decision whoever asks.  Returns false when nobody holds one.
 */
static bool
lock_blocker(Oid relid, LOCKMODE lockmode, LockBlocker *b)
{
	LOCKTAG		tag;
	VirtualTransactionId *vxids;
	bool		found = false;

	memset(b, 0, sizeof(*b));
	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	vxids = GetLockConflicts(&tag, lockmode, NULL);
	pgstat_clear_backend_activity_snapshot();
	for (; VirtualTransactionIdIsValid(*vxids); vxids++)
	{
		PGPROC	   *proc = BackendIdGetProc(vxids->backendId);
		int			n = pgstat_fetch_stat_numbackends();

		if (proc == NULL)
			continue;
		for (int i = 1; i <= n; i++)
		{
			PgBackendStatus *be = &pgstat_fetch_stat_local_beentry(i)->backendStatus;

			if (be->st_procpid != proc->pid)
				continue;
			if (!found || (be->st_xact_start_timestamp != 0 &&
						   be->st_xact_start_timestamp < b->xact_start))
			{
				b->pid = be->st_procpid;
				b->appname = pstrdup(be->st_appname ? be->st_appname : "");
				b->xact_start = be->st_xact_start_timestamp;
				b->query_start = be->st_activity_start_timestamp;
				b->visible = has_privs_of_role(GetUserId(), be->st_userid) ||
					has_privs_of_role(GetUserId(), ROLE_PG_READ_ALL_STATS);
			}
			found = true;
			break;
		}
		if (!found)
		{
			/* not in the status array (yet): at least its pid */
			b->pid = proc->pid;
			b->appname = pstrdup("");
			found = true;
		}
	}
	return found;
}

/* How long, in ms, the blocker's transaction has been running, or 0. */
static long
blocker_age_ms(const LockBlocker *b)
{
	if (b->xact_start == 0)
		return 0;
	return (long) ((GetCurrentTimestamp() - b->xact_start) / 1000);
}

/*
 * The ladder's whole budget in wall time: every attempt's lock_timeout
 * (together at most migrate_ext.lock_timeout_max: the most any other
 * session queues behind us in all) plus the longest back-off after each.
 */
static long
ladder_budget_ms(void)
{
	long		timeout = mig_lock_timeout_ms;
	long		queued = 0;
	long		total = 0;

	for (int attempt = 1; attempt <= mig_lock_retries &&
		 queued < mig_lock_timeout_max_ms; attempt++)
	{
		long		t = Min(timeout, mig_lock_timeout_max_ms - queued);

		queued += t;
		total += t + t / 2 + t;
		timeout = Min(timeout * 2, mig_lock_timeout_max_ms);
	}
	return total;
}

/*
 * The error for a strong lock we could not take on relid: names the
 * session that holds a conflicting lock, when there is one, with its
 * application and how long its transaction has run.  Also for a 55P03
 * raised outside the ladder (a statement that ran into lock_timeout).
 */
void
mig_lock_error(Oid relid, LOCKMODE lockmode, const char *why, const char *tried,
			   const char *outcome)
{
	LockBlocker b;
	char	   *relname = get_rel_name(relid);

	if (!lock_blocker(relid, lockmode, &b))
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not lock table \"%s\" to %s", relname, why),
				 errdetail("%s; another transaction held or waited for a conflicting lock. %s",
						   tried, outcome),
				 errhint("Retry; if it keeps failing, look for long transactions on the table in pg_locks and pg_stat_activity.")));
	if (b.visible && b.xact_start != 0)
		ereport(ERROR,
				(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
				 errmsg("could not lock table \"%s\" to %s: process %d holds a conflicting lock",
						relname, why, b.pid),
				 errdetail("%s. Process %d (application_name \"%s\") has been in its transaction for %.1f s, since %s; its last query started at %s. %s",
						   tried, b.pid, b.appname, blocker_age_ms(&b) / 1000.0,
						   timestamptz_to_str(b.xact_start),
						   timestamptz_to_str(b.query_start), outcome),
				 errhint("Wait for process %d to end its transaction, or end it with pg_cancel_backend(%d) or pg_terminate_backend(%d), then retry.",
						 b.pid, b.pid, b.pid)));
	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("could not lock table \"%s\" to %s: process %d holds a conflicting lock",
					relname, why, b.pid),
			 errdetail("%s. Process %d (application_name \"%s\") belongs to a role whose activity you may not see (pg_read_all_stats). %s",
					   tried, b.pid, b.appname, outcome),
			 errhint("Ask its owner or an administrator to end its transaction, then retry.")));
}

/*
 * Take a strong lock on the table under the lock_timeout ladder, or fail
 * with an error that names the blocker.
 */
void
mig_lock_table(Oid relid, LOCKMODE lockmode, const char *why)
{
	mig_lock_tables(1, &relid, lockmode, why);
}

/*
 * A session that has held a conflicting lock on one of the tables for
 * longer than the ladder's whole budget is not expected to let go within
 * it: queueing would only stall the application behind us.  Fails naming
 * it; returns when there is none.
 */
static void
refuse_long_blocker(int nrels, const Oid *relids, LOCKMODE lockmode,
					const char *why, long budget)
{
	for (int i = 0; i < nrels; i++)
	{
		LockBlocker b;

		if (lock_blocker(relids[i], lockmode, &b) && blocker_age_ms(&b) > budget)
			mig_lock_error(relids[i], lockmode, why,
					   psprintf("A transaction has held a conflicting lock for longer than the lock ladder's whole budget (%ld ms), so migrate_ext did not queue for the lock at all",
								budget),
					   "Nothing was changed.");
	}
}

/*
 * The same for several tables at once (a table and the tables whose foreign
 * keys point at it): all or none.  A timeout on any of them releases those
 * already taken before the next try, so nobody queues behind a lock we hold
 * while we wait for another.  Each try starts one table further along the
 * list: a transaction that holds one of the tables while it waits for
 * another (a writer updating customer, then orders) deadlocks with every
 * try that takes them the other way round, until the lock_timeout ends it,
 * so the order is changed rather than retried.
 *
 * Before each try it looks at who holds a conflicting lock: one that has
 * held it longer than the ladder's whole budget means no try at all.  The
 * tries' lock_timeouts add up to at most migrate_ext.lock_timeout_max, so
 * that a writer queued behind our lock request waits that long at most in
 * all, however many tries it takes.
 */
void
mig_lock_tables(int nrels, const Oid *relids, LOCKMODE lockmode, const char *why)
{
	lock_ladder(nrels, relids, lockmode, why, true);
}

/*
 * Lock a partitioned table and every partition below it at once, in the
 * order PostgreSQL locks them (find_all_inheritors: the parent first, then
 * breadth first by OID), under the ladder.  The order is never rotated: an
 * application's statement on the parent locks it before the partitions, so
 * taking a partition first would only deadlock with it.  Warns when the
 * locks approach max_locks_per_transaction.  For an ordinary table: the
 * table alone.  Returns the relations locked, parent first.
 */
List *
mig_lock_tree(Oid relid, LOCKMODE lockmode, const char *why)
{
	List	   *tree = find_all_inheritors(relid, NoLock, NULL);
	int			nrels = list_length(tree);
	Oid		   *relids = palloc(sizeof(Oid) * nrels);
	ListCell   *lc;

	Assert(nrels > 0 && linitial_oid(tree) == relid);
	foreach(lc, tree)
		relids[foreach_current_index(lc)] = lfirst_oid(lc);
	if (nrels > 1 && nrels >= max_locks_per_xact * 3 / 4)
		ereport(WARNING,
				(errcode(ERRCODE_WARNING),
				 errmsg("locking table \"%s\" and its partitions takes %d locks at once, close to max_locks_per_transaction (%d)",
						get_rel_name(relid), nrels, max_locks_per_xact),
				 errdetail("The parent and every partition are locked together; the shared lock table holds max_locks_per_transaction * (max_connections + max_prepared_transactions) locks, and a transaction that finds it full fails with \"out of shared memory\"."),
				 errhint("Raise max_locks_per_transaction (a restart) well above the number of partitions.")));
	lock_ladder(nrels, relids, lockmode, why, false);

	/*
	 * A partition attached after the list was read and before the parent's
	 * lock was held: locked the same way, so that no statement of ours
	 * queues for it outside the ladder.  With the parent's lock held (any
	 * mode the callers take conflicts with ATTACH and DETACH) the tree
	 * holds still.
	 */
	foreach(lc, find_all_inheritors(relid, NoLock, NULL))
	{
		Oid			late = lfirst_oid(lc);

		if (list_member_oid(tree, late))
			continue;
		lock_ladder(1, &late, lockmode, why, false);
		tree = lappend_oid(tree, late);
	}
	pfree(relids);
	return tree;
}

/*
 * The ladder itself; rotate: start each try one table further along the
 * list (see mig_lock_tables).
 */
static void
lock_ladder(int nrels, const Oid *relids, LOCKMODE lockmode, const char *why,
			bool rotate)
{
	long		budget = ladder_budget_ms();
	long		timeout = mig_lock_timeout_ms;
	long		queued = 0;
	int			failed = -1;
	int			attempt;
	Oid		   *order = palloc(sizeof(Oid) * nrels);
	int			first = 0;

	Assert(nrels > 0);
	for (attempt = 1;; attempt++)
	{
		long		t = Min(timeout, mig_lock_timeout_max_ms - queued);

		Assert(t > 0);
		refuse_long_blocker(nrels, relids, lockmode, why, budget);
		first = rotate ? (attempt - 1) % nrels : 0;
		for (int i = 0; i < nrels; i++)
			order[i] = relids[(first + i) % nrels];
		failed = try_lock(nrels, order, lockmode, (int) t);
		if (failed < 0)
		{
			pfree(order);
			return;
		}
		failed = (first + failed) % nrels;
		queued += t;
		if (attempt >= mig_lock_retries || queued >= mig_lock_timeout_max_ms)
			break;

		/* back off, with jitter, so the queued traffic drains */
		mig_sleep_ms(t / 2 + pg_prng_uint32(&pg_global_prng_state) % (t + 1));
		timeout = Min(timeout * 2, mig_lock_timeout_max_ms);
	}

	mig_lock_error(relids[failed], lockmode, why,
			   psprintf("Tried %d times, queueing %ld ms in all (migrate_ext.lock_timeout_max)",
						attempt, queued),
				   "Nothing was changed.");
}

/*
 * The one SPI runner for utility statements migrate_ext generates (DDL,
 * with every identifier quoted and every type printed from its OID), in the
 * current transaction, as the current user.  sql may hold several
 * statements.
 */
void
mig_run_utility(const char *sql)
{
	int			ret;

	Assert(IsTransactionState());
	SPI_connect();
	ret = SPI_execute(sql, false, 0);
	if (ret < 0)
		elog(ERROR, "migrate_ext: could not run \"%s\": %s", sql,
			 SPI_result_code_string(ret));
	SPI_finish();
}

/*
 * mig_run_utility() as relid's owner, inside a security-restricted
 * operation (mig_owner_switch): for the ALTER statements on the owner's
 * tables that PostgreSQL runs part of as whoever issues them.  SET NOT
 * NULL, ALTER INDEX ... ATTACH PARTITION, ALTER COLUMN ... TYPE and a
 * partitioned table's ADD FOREIGN KEY simplify the table's constraints,
 * index expressions and predicates, calling the owner's functions with
 * constant arguments (CHECK (my_fn(1) AND ...)), which as mig_contract's
 * superuser caller, or the server's finishing worker, made the owner
 * superuser.  PostgreSQL then requires the owner to own every table the
 * statement reaches, a partition included.
 */
void
mig_run_utility_as_owner(Oid relid, const char *sql)
{
	MigOwnerSave owner;

	mig_owner_switch(relid, &owner);
	mig_run_utility(sql);
	mig_owner_restore(&owner);
}

/* A table's name, schema-qualified and quoted, for SQL and messages. */
const char *
mig_qualified_name(Oid relid)
{
	char	   *nspname = get_namespace_name(get_rel_namespace(relid));
	char	   *relname = get_rel_name(relid);

	if (nspname == NULL || relname == NULL)
		elog(ERROR, "cache lookup failed for relation %u", relid);
	return quote_qualified_identifier(nspname, relname);
}

/*
 * Sleep ms milliseconds on the latch: wakes for interrupts (a cancel, a
 * terminate) and exits if the postmaster dies, which pg_usleep would not.
 */
void
mig_sleep_ms(long ms)
{
	pgstat_report_wait_start(PG_WAIT_EXTENSION);
	(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
					 ms, PG_WAIT_EXTENSION);
	pgstat_report_wait_end();
	ResetLatch(MyLatch);
	CHECK_FOR_INTERRUPTS();
}

/*
 * pg_trigger.tgenabled of the table's dual-write trigger, or '\0' when it
 * has none: read from the catalog directly, with no SQL in between.
 */
char
mig_trigger_tgenabled(Oid relid)
{
	Relation	tgrel;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	char		tgenabled = '\0';

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_trigger_tgrelid, BTEqualStrategyNumber,
				F_OIDEQ, ObjectIdGetDatum(relid));
	ScanKeyInit(&key[1], Anum_pg_trigger_tgname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum(MIG_TRIGGER_NAME));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 2, key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		tgenabled = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled;
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return tgenabled;
}

/*
 * The one rule for "is the dual-write trigger enabled": does it fire for
 * the application's writes?  Clients run with session_replication_role =
 * origin, for which a trigger fires when enabled (O) or always (A); one
 * disabled (D) or enabled on replicas only (R) lets writes through without
 * keeping the columns in step.
 */
bool
mig_trigger_fires(char tgenabled)
{
	return tgenabled == TRIGGER_FIRES_ON_ORIGIN || tgenabled == TRIGGER_FIRES_ALWAYS;
}

/* OID of migrate_ext.dualwrite(), or InvalidOid */
static Oid
dualwrite_func(void)
{
	List	   *name = list_make2(makeString("migrate_ext"), makeString("dualwrite"));

	return LookupFuncName(name, 0, NULL, true);
}

/*
 * The migration id a pg_trigger row passes to migrate_ext.dualwrite(), or
 * false when the row is not a dual-write trigger.
 */
static bool
trigger_migration(HeapTuple tup, TupleDesc desc, Oid funcid, int64 *migration_id)
{
	Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);
	bool		isnull;
	Datum		args;
	bytea	   *ba;

	if (tg->tgfoid != funcid || tg->tgnargs != 1)
		return false;
	args = heap_getattr(tup, Anum_pg_trigger_tgargs, desc, &isnull);
	if (isnull)
		return false;
	ba = DatumGetByteaPP(args);
	/* tgargs: each argument NUL-terminated */
	*migration_id = pg_strtoint64(pnstrdup(VARDATA_ANY(ba), VARSIZE_ANY_EXHDR(ba)));
	return true;
}

/*
 * The dual-write trigger of the table, if it has one: its migration id in
 * *migration_id.  Read from pg_trigger, so that it needs no lock on the
 * table beyond what the caller holds.
 */
Oid
mig_dualwrite_trigger(Oid relid, int64 *migration_id, char *tgenabled)
{
	Oid			funcid = dualwrite_func();
	Oid			result = InvalidOid;
	Relation	tgrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(funcid))
		return InvalidOid;
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		int64		id;

		if (!trigger_migration(tup, RelationGetDescr(tgrel), funcid, &id))
			continue;
		result = ((Form_pg_trigger) GETSTRUCT(tup))->oid;
		if (migration_id)
			*migration_id = id;
		if (tgenabled)
			*tgenabled = ((Form_pg_trigger) GETSTRUCT(tup))->tgenabled;
		break;
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return result;
}

/*
 * The dual-write trigger that passes migration_id, on whatever table
 * (*relid): after a dump and restore the table that carries it has another
 * OID than the catalog recorded.  A scan of all of pg_trigger.
 */
Oid
mig_dualwrite_trigger_of(int64 migration_id, Oid *relid)
{
	Oid			funcid = dualwrite_func();
	Oid			result = InvalidOid;
	Relation	tgrel;
	SysScanDesc scan;
	HeapTuple	tup;

	*relid = InvalidOid;
	if (!OidIsValid(funcid))
		return InvalidOid;
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	scan = systable_beginscan(tgrel, InvalidOid, false, NULL, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		int64		id;

		if (trigger_migration(tup, RelationGetDescr(tgrel), funcid, &id) &&
			id == migration_id)
		{
			result = ((Form_pg_trigger) GETSTRUCT(tup))->oid;
			*relid = ((Form_pg_trigger) GETSTRUCT(tup))->tgrelid;
			break;
		}
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return result;
}

/*
 * Every column a migration reads or writes: the old and new column of each
 * pair and the columns its expressions read.
 */
Bitmapset *
mig_protected_columns(List *pairs)
{
	Bitmapset  *cols = NULL;
	ListCell   *lc;

	foreach(lc, pairs)
	{
		MigPair    *p = lfirst(lc);
		List	   *vars;
		ListCell   *lv;

		cols = bms_add_member(cols, p->old_attnum);
		cols = bms_add_member(cols, p->new_attnum);
		vars = pull_var_clause(p->up, 0);
		if (p->down)
			vars = list_concat(vars, pull_var_clause(p->down, 0));
		if (p->check)
			vars = list_concat(vars, pull_var_clause(p->check, 0));
		foreach(lv, vars)
		{
			Var		   *var = lfirst_node(Var, lv);

			if (var->varattno > 0)
				cols = bms_add_member(cols, var->varattno);
		}
	}
	return cols;
}

/*
 * Refuse a BEFORE ROW trigger for INSERT or UPDATE that PostgreSQL would
 * fire after the dual-write trigger (triggers fire in byte order of their
 * names): it could change the old column after its value was copied.
 */
void
mig_check_trigger_order(Relation rel, const char *dwname)
{
	TriggerDesc *trigdesc = rel->trigdesc;

	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if (!TRIGGER_FOR_ROW(t->tgtype) || !TRIGGER_FOR_BEFORE(t->tgtype) ||
			!(TRIGGER_FOR_INSERT(t->tgtype) || TRIGGER_FOR_UPDATE(t->tgtype)))
			continue;
		if (strcmp(t->tgname, dwname) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("trigger \"%s\" on table \"%s\" would fire after the dual-write trigger \"%s\"",
							t->tgname, RelationGetRelationName(rel), dwname),
					 errdetail("PostgreSQL fires BEFORE ROW triggers in the byte order of their names; a trigger that fires after \"%s\" could change the old column after its new value was computed, and the pair would diverge.",
							   dwname),
					 errhint("Rename the trigger so that its name sorts before \"%s\" (names of ASCII letters, digits and underscores below \"zz\" do).",
							 dwname)));
	}
}

/* The schema of an operator, or InvalidOid when it is gone. */
Oid
mig_operator_namespace(Oid opno)
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
 * Can a walk follow this index?  A plain btree over NOT NULL columns with
 * their default ordering and collation, whose comparison operators are
 * built in (the batches' SQL runs with search_path = pg_catalog, so "(a, b)
 * > ($1, $2)" must find exactly the index's operators).  Sets *cols to the
 * key columns' names.
 */
static bool
key_index_walkable(Relation rel, Oid indexoid, List **cols)
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
			!OidIsValid(gt) || mig_operator_namespace(gt) != PG_CATALOG_NAMESPACE)
			ok = false;
		else
			*cols = lappend(*cols, pstrdup(NameStr(att->attname)));
	}
	index_close(ind, AccessShareLock);
	return ok;
}

/*
 * The one key chooser, for the backfill's walk and for naming rows in
 * validation: the primary key, else the unique NOT NULL key with the fewest
 * columns, else physical ctid ranges.  Returns "primary key", "unique key"
 * or "ctid" (stored as job.key_kind); *cols gets the key's column names
 * (NIL for ctid).
 */
const char *
mig_choose_key(Relation rel, List **cols)
{
	Oid			pk = RelationGetPrimaryKeyIndex(rel);
	List	   *best = NIL;
	ListCell   *lc;

	if (OidIsValid(pk) && key_index_walkable(rel, pk, cols))
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
		if (unique && key_index_walkable(rel, indexoid, &c) &&
			(best == NIL || list_length(c) < list_length(best)))
			best = c;
	}
	*cols = best;
	return best ? "unique key" : "ctid";
}

/*
 * Begin a scan of pg_depend for every object that depends on column attnum
 * of relid; *deprel is pg_depend, opened AccessShareLock.  The caller ends
 * the scan and closes *deprel.  Written once for contract's plan (what the
 * old column takes along) and its retype (the views that read the column),
 * which must look at the same rows.
 */
SysScanDesc
mig_column_dependents_scan(Oid relid, AttrNumber attnum, Relation *deprel)
{
	ScanKeyData key[3];

	*deprel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(RelationRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	ScanKeyInit(&key[2], Anum_pg_depend_refobjsubid, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(attnum));
	return systable_beginscan(*deprel, DependReferenceIndexId, true, NULL, 3, key);
}

/*
 * Run fn(arg) in an internal subtransaction and catch any error it raises:
 * the subtransaction is rolled back and false is returned, with the error's
 * message copied into msgcxt as *msg.  Either way the caller's memory
 * context and resource owner are current again afterwards.  Written once
 * for the checks that turn an error of user code or of a query into a
 * failing check that says why (validate.c's ranges, contract_predict.c's
 * counts), so that both clean up alike.
 */
bool
mig_try_subxact(void (*fn) (void *arg), void *arg, MemoryContext msgcxt,
				char **msg)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	volatile bool ok = true;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		fn(arg);
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(cxt);
		CurrentResourceOwner = owner;
		*msg = MemoryContextStrdup(msgcxt, edata->message);
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	return ok;
}
