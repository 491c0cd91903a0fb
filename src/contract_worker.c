/*-------------------------------------------------------------------------
 *
 * contract_worker.c
 *	  The background worker of mig_contract: each step in its own short
 *	  transaction.
 *
 * The worker connects as the caller's role, sends its NOTICEs and its
 * error to the caller through the shm_mq that contract.c set up, plans again
 * (contract_plan.c) and runs the steps: the copies of the indexes built
 * concurrently by utility statements run at top level, the constraints
 * (NOT NULL's proof, expand's check_expr, the old column's CHECKs, the
 * foreign keys) added NOT VALID and then validated, and last the swap,
 * which re-checks the finish gate under its lock, sets NOT NULL without a
 * scan, recreates the dependent views (contract_views.c) and carries the
 * column's privileges and settings.
 *
 * Every lock is taken through the lock_timeout ladder of ddl.c.  Whatever
 * a step adds that new writes would meet is recorded by OID
 * (contract_undo.c) and dropped again when a later step fails or the
 * caller cancels, so a stopped contract leaves nothing enforced that was
 * not there before.  Copies of plain indexes stay: a second mig_contract
 * picks up where the first stopped; an index build that failed is dropped
 * before failing.
 *
 * The same file holds the worker the launcher starts after a restart for a
 * contract that stopped after its swap (mig_contract_finish_main): no
 * caller, its messages go to the server log; it runs only the finish of
 * the foreign keys the swap recorded, as the table's owner, under the same
 * lock as mig_contract, and tries again later when the ladder gives up.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "access/table.h"
#include "access/toast_compression.h"
#include "commands/defrem.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/interrupt.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/spin.h"
#include "tcop/utility.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"
#include "migrate_ext_worker.h"

/* How many times an index build that ran into a lock timeout is retried. */
#define CONTRACT_INDEX_TRIES	3

/* -------------------------------------------------------------------------
 * The worker: each step in its own short transaction
 * -------------------------------------------------------------------------
 */

static ContractShared *worker_shared = NULL;
static MemoryContext contract_cxt = NULL;
static bool contract_swapped = false;	/* the swap has committed */
static bool contract_headless = false;	/* started by the launcher: no caller */

/*
 * Seconds the launcher's finishing worker waits before it tries again: the
 * first wait, doubled after each attempt that could not run up to the last.
 * Each attempt may queue the table's writers behind its lock request for up
 * to the ladder's top, and logs a line; a lock held for hours (a prepared
 * transaction, an anti-wraparound VACUUM) must not get that every few
 * seconds for hours.
 */
#define CONTRACT_FINISH_RETRY_S	5
#define CONTRACT_FINISH_RETRY_MAX_S	60

/* The advisory lock a test holds to stop the worker (migrate_ext.test_pause). */
#define MIG_TEST_PAUSE_KEY	7387

/*
 * Stop at a step boundary once the caller has stopped waiting (cancelled,
 * or gone): what the steps so far built is consistent and kept for the next
 * mig_contract, and the old column is untouched.
 */
static void
check_caller(void)
{
	bool		gone;

	SpinLockAcquire(&worker_shared->mutex);
	gone = worker_shared->caller_gone;
	SpinLockRelease(&worker_shared->mutex);
	if (gone)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("mig_contract was cancelled"),
				 errdetail("Its background worker stopped before its next step. The old column is untouched; a new mig_contract picks up where this one stopped.")));
	CHECK_FOR_INTERRUPTS();
}

/* A NOTICE to the caller, between transactions: the step that starts. */
static void
progress(const char *fmt,...)
pg_attribute_printf(1, 2);

static void
progress(const char *fmt,...)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	/* the launcher's worker has no caller: the server log is its reader */
	if (contract_headless)
		ereport(LOG, (errmsg_internal("migrate_ext: %s", buf.data)));
	else
		ereport(NOTICE, (errmsg_internal("%s", buf.data)));
	pfree(buf.data);
}

/*
 * A transaction for one step.  The statements' own notices (index renames,
 * IF EXISTS skips) would only be noise to the caller.
 */
static void
xact_begin(void)
{
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	set_config_option("client_min_messages", "warning", PGC_USERSET, PGC_S_SESSION,
					  GUC_ACTION_LOCAL, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
xact_end(void)
{
	if (ActiveSnapshotSet())
		PopActiveSnapshot();
	CommitTransactionCommand();
}

/*
 * For tests only: after a step named by migrate_ext.test_pause, wait for
 * advisory lock 7387, which the test holds, so that it can kill the worker
 * or make another session's move exactly there.  Holds nothing else.
 */
static void
test_pause(const char *step)
{
	if (mig_test_pause == NULL || strcmp(mig_test_pause, step) != 0)
		return;
	xact_begin();
	(void) set_config_option("lock_timeout", "0", PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, 0, false);
	elog(LOG, "migrate_ext: mig_contract pauses after step \"%s\"", step);
	(void) DirectFunctionCall1(pg_advisory_xact_lock_int8, Int64GetDatum(MIG_TEST_PAUSE_KEY));
	xact_end();
}

/*
 * Run one utility statement at top level in its own transaction, as psql
 * would: the only way to CREATE or DROP an INDEX CONCURRENTLY, which commit
 * transactions of their own.  So it runs, like a portal, in a memory
 * context that outlives those transactions.
 */
static void
run_toplevel(Node *stmt, const char *text)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext runcxt;
	PlannedStmt *pstmt;

	runcxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext utility",
								   ALLOCSET_DEFAULT_SIZES);
	xact_begin();
	MemoryContextSwitchTo(runcxt);
	pstmt = makeNode(PlannedStmt);
	pstmt->commandType = CMD_UTILITY;
	pstmt->canSetTag = false;
	pstmt->utilityStmt = copyObject(stmt);
	pstmt->stmt_location = -1;
	pstmt->stmt_len = 0;
	ProcessUtility(pstmt, text, false, PROCESS_UTILITY_TOPLEVEL, NULL, NULL,
				   None_Receiver, NULL);
	xact_end();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(runcxt);
}

/* The table a copy is built on: the plan's, or a partition's. */
static Oid
copy_relid(ContractPlan *plan, ContractIndex *ci)
{
	return OidIsValid(ci->relid) ? ci->relid : plan->relid;
}

/* 0: no such index, 1: invalid (a failed build), 2: valid.  In a transaction. */
static int
index_state(Oid relid, const char *name)
{
	Oid			indexoid = get_relname_relid(name, get_rel_namespace(relid));

	if (!OidIsValid(indexoid))
		return 0;
	if (get_rel_relkind(indexoid) != RELKIND_INDEX || IndexGetRelation(indexoid, false) != relid)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("relation \"%s\" already exists", name),
				 errdetail("mig_contract builds the copy of an index under this name."),
				 errhint("Rename or drop that relation.")));
	return get_index_isvalid(indexoid) ? 2 : 1;
}

/* 0: no such constraint, 1: NOT VALID, 2: valid.  In a transaction. */
static int
constraint_state(Oid relid, const char *name)
{
	Oid			conoid = get_relation_constraint_oid(relid, name, true);
	HeapTuple	tup;
	int			state;

	if (!OidIsValid(conoid))
		return 0;
	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", conoid);
	state = ((Form_pg_constraint) GETSTRUCT(tup))->convalidated ? 2 : 1;
	ReleaseSysCache(tup);
	return state;
}

static bool
column_not_null(Oid relid, AttrNumber attnum)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
	bool		result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for attribute %d of relation %u", attnum, relid);
	result = ((Form_pg_attribute) GETSTRUCT(tup))->attnotnull;
	ReleaseSysCache(tup);
	return result;
}

/* Drop what a failed index build left (an INVALID index), if anything. */
static void
drop_index(const char *nspname, const char *name)
{
	DropStmt   *drop = makeNode(DropStmt);

	drop->removeType = OBJECT_INDEX;
	drop->objects = list_make1(list_make2(makeString(pstrdup(nspname)), makeString(pstrdup(name))));
	drop->behavior = DROP_RESTRICT;
	drop->missing_ok = true;
	drop->concurrent = true;
	run_toplevel((Node *) drop,
				 psprintf("DROP INDEX CONCURRENTLY IF EXISTS %s",
						  quote_qualified_identifier(nspname, name)));
}

/*
 * A copy of a unique index enforces uniqueness of the new column on every
 * write from now on: recorded, so that a contract that stops drops it.
 */
static void
record_index(ContractPlan *plan, ContractIndex *ci)
{
	Oid			indexoid;

	xact_begin();
	indexoid = get_relname_relid(ci->tmpname, get_rel_namespace(copy_relid(plan, ci)));
	if (OidIsValid(indexoid))
		mig_contract_record(plan->migration_id, RelationRelationId, indexoid,
							copy_relid(plan, ci));
	xact_end();
}

/*
 * Build the copy of one index with CREATE INDEX CONCURRENTLY, unless a
 * valid one is there from an earlier run.  A build that fails leaves an
 * INVALID index: it is dropped before failing, and a build that ran into a
 * lock timeout (a long transaction it had to wait for) is tried again.
 */
static void
build_index(ContractPlan *plan, ContractIndex *ci)
{
	Oid			relid = copy_relid(plan, ci);
	RangeVar   *table = ci->stmt->relation;	/* names read outside a transaction */

	for (int attempt = 1;; attempt++)
	{
		int			state;
		volatile bool retry = false;

		check_caller();
		xact_begin();
		state = index_state(relid, ci->tmpname);
		xact_end();
		if (state == 2)
		{
			progress("index \"%s\" is already copied to the new column", ci->oldname);
			break;
		}
		if (state == 1)
			drop_index(table->schemaname, ci->tmpname);

		progress("building a copy of index \"%s\" on the new column concurrently", ci->oldname);
		PG_TRY();
		{
			run_toplevel((Node *) ci->stmt,
						 psprintf("CREATE INDEX CONCURRENTLY %s ON %s (a copy of %s on the new column)",
								  quote_identifier(ci->tmpname),
								  quote_qualified_identifier(table->schemaname, table->relname),
								  quote_identifier(ci->oldname)));
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(contract_cxt);
			edata = CopyErrorData();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			drop_index(table->schemaname, ci->tmpname);
			if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE ||
				attempt >= CONTRACT_INDEX_TRIES)
				ReThrowError(edata);
			FreeErrorData(edata);
			retry = true;
		}
		PG_END_TRY();
		if (!retry)
			break;
		/* let the long transaction it ran into get ahead */
		mig_sleep_ms(mig_lock_timeout_max_ms);
	}
	if (ci->stmt->unique)
		record_index(plan, ci);
}

/* Record a constraint contract has just added under this name, if it has. */
static void
record_constraint(ContractPlan *plan, Oid relid, const char *name)
{
	Oid			conoid = get_relation_constraint_oid(relid, name, true);

	if (OidIsValid(conoid))
		mig_contract_record(plan->migration_id, ConstraintRelationId, conoid, relid);
}

/*
 * NOT NULL (through its CHECK) and the check_expr of expand, added NOT
 * VALID: one short ACCESS EXCLUSIVE lock, no scan.
 */
static void
add_checks(ContractPlan *plan)
{
	StringInfoData sql;
	ListCell   *lc;
	bool		changed;

	check_caller();
	xact_begin();
	initStringInfo(&sql);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null && !column_not_null(plan->relid, c->pair->new_attnum) &&
			constraint_state(plan->relid, c->nn_check) == 0)
			appendStringInfo(&sql, "%s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID",
							 sql.len > 0 ? "," : "", quote_identifier(c->nn_check),
							 quote_identifier(c->newname));
		if (c->check_tmp && constraint_state(plan->relid, c->check_tmp) == 0)
			appendStringInfo(&sql, "%s ADD CONSTRAINT %s CHECK (%s) NOT VALID",
							 sql.len > 0 ? "," : "", quote_identifier(c->check_tmp), c->check_sql);
	}
	foreach(lc, plan->checks)
	{
		ContractCheck *ck = lfirst(lc);

		if (constraint_state(plan->relid, ck->tmpname) == 0)
			appendStringInfo(&sql, "%s ADD CONSTRAINT %s CHECK (%s)%s NOT VALID",
							 sql.len > 0 ? "," : "", quote_identifier(ck->tmpname), ck->sql,
							 ck->noinherit ? " NO INHERIT" : "");
	}
	changed = sql.len > 0;
	if (changed)
	{
		mig_lock_table(plan->relid, AccessExclusiveLock, "add constraints NOT VALID");
		mig_run_utility(psprintf("ALTER TABLE %s%s", plan->qname, sql.data));
		/* enforced on new writes from now on: recorded, for an undo */
		foreach(lc, plan->columns)
		{
			ContractColumn *c = lfirst(lc);

			record_constraint(plan, plan->relid, c->nn_check);
			if (c->check_tmp)
				record_constraint(plan, plan->relid, c->check_tmp);
		}
		foreach(lc, plan->checks)
			record_constraint(plan, plan->relid, ((ContractCheck *) lfirst(lc))->tmpname);
	}
	xact_end();
	if (changed)
		progress("added the NOT NULL and CHECK constraints of the new column%s as NOT VALID",
				 list_length(plan->columns) > 1 ? "s" : "");
}

static void validate(Oid relid, const char *name, const char *what);

/*
 * The parent's ADD FOREIGN KEY of a copy added in the swap, from a leaf's
 * copy as the catalog has it now: the swap renamed the columns it
 * references, so the statement prepared before it names them wrongly.
 * Every name qualified (search_path pinned).
 */
static char *
fkey_from_leaf(const char *conrel, Oid leaf, const char *name)
{
	int			nestlevel = NewGUCNestLevel();
	char	   *def;

	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	def = TextDatumGetCString(DirectFunctionCall1(pg_get_constraintdef,
												  ObjectIdGetDatum(get_relation_constraint_oid(leaf, name, false))));
	AtEOXact_GUC(true, nestlevel);
	return psprintf("ALTER TABLE %s ADD CONSTRAINT %s %s", conrel, quote_identifier(name), def);
}

/*
 * Lock, under the ladder, every relation a foreign key statement on relid
 * (a table, a leaf or a partitioned table) referencing confrelid will lock:
 * both, and every partition below either.  Adding a key to or from a
 * partitioned table locks each partition of it inside the statement; taken
 * there, outside the ladder, such a lock would queue behind a writer that
 * holds a partition and waits for a table we hold, a deadlock.
 */
static void
lock_fkey_tables(Oid relid, Oid confrelid, const char *why)
{
	List	   *rels = list_concat_unique_oid(find_all_inheritors(relid, NoLock, NULL),
											  find_all_inheritors(confrelid, NoLock, NULL));
	Oid		   *relids = palloc(sizeof(Oid) * list_length(rels));
	ListCell   *lc;

	foreach(lc, rels)
		relids[foreach_current_index(lc)] = lfirst_oid(lc);
	mig_lock_tables(list_length(rels), relids, ShareRowExclusiveLock, why);
}

/*
 * A foreign key copy declared on a partitioned table, which PostgreSQL 15
 * cannot add NOT VALID there (the route TAP 070 proves): NOT VALID on each
 * leaf, each in a short transaction of its own, each validated in its own
 * (SHARE UPDATE EXCLUSIVE: reads and writes go on), then the parent's ADD
 * FOREIGN KEY, which finds a matching validated key on every leaf and
 * attaches it without a scan.  Before the swap: every copy is recorded in
 * the transaction that adds it, so a failure or a crash at any step leaves
 * copies that the undo drops, or that the next run finds and goes on from.
 * The leaves' copies keep their copy's name after the swap: a partition's
 * inherited constraint cannot be renamed.
 */
static void
add_fkey_partitioned(ContractPlan *plan, ContractFkey *fk, const char *name)
{
	const char *body = mig_partition_fkey_body(fk);
	MemoryContext cxt = CurrentMemoryContext;	/* outlives the transactions */
	MemoryContext xcxt;
	List	   *leaves = NIL;
	List	   *whats = NIL;
	ListCell   *lc;
	ListCell   *lw;
	char	   *parent;
	bool		done;

	Assert(!fk->at_swap);
	check_caller();
	xact_begin();
	xcxt = CurrentMemoryContext;
	done = constraint_state(fk->conrelid, name) != 0;
	foreach(lc, mig_partition_leaves(fk->conrelid, NoLock))
	{
		char	   *what = psprintf("foreign key \"%s\" on the new column, on partition %s",
									fk->oldname, get_rel_name(lfirst_oid(lc)));

		MemoryContextSwitchTo(cxt);
		leaves = lappend_oid(leaves, lfirst_oid(lc));
		whats = lappend(whats, pstrdup(what));
		MemoryContextSwitchTo(xcxt);
	}
	parent = MemoryContextStrdup(cxt, get_rel_name(fk->conrelid));
	xact_end();
	MemoryContextSwitchTo(cxt);
	if (done)
		return;					/* an earlier run attached the leaves' */
	forboth(lc, leaves, lw, whats)
	{
		Oid			leaf = lfirst_oid(lc);

		check_caller();
		xact_begin();
		if (constraint_state(leaf, name) == 0)
		{
			lock_fkey_tables(leaf, fk->confrelid, "add a foreign key NOT VALID");
			mig_run_utility(psprintf("ALTER TABLE %s%s", mig_qualified_name(leaf), body));
			record_constraint(plan, leaf, name);
		}
		xact_end();
		MemoryContextSwitchTo(cxt);
		test_pause("leaf_fkey_added");
		validate(leaf, name, lfirst(lw));
		test_pause("leaf_fkey_validated");
	}
	check_caller();
	xact_begin();
	lock_fkey_tables(fk->conrelid, fk->confrelid, "attach the partitions' foreign keys");

	/*
	 * As the referencing table's owner: a partition attached since its
	 * leaves were validated gets its copy added and validated here, by a
	 * query whose planning runs that owner's functions (index predicates).
	 */
	mig_run_utility_as_owner(fk->conrelid,
							 psprintf("ALTER TABLE %s%.*s", fk->conrel,
									  (int) (strlen(body) - strlen(" NOT VALID")), body));
	record_constraint(plan, fk->conrelid, name);
	xact_end();
	MemoryContextSwitchTo(cxt);
	progress("added foreign key \"%s\" on the new column to every partition of %s, validated, and attached",
			 fk->oldname, parent);
	test_pause("leaf_fkey_attached");
}

/* A foreign key copy the swap left to finish, as contract_object has it. */
typedef struct FinishKey
{
	Oid			relid;			/* its table: a plain one, or a leaf */
	char	   *name;
	Oid			confrelid;
	Oid			parent;			/* the recorded partitioned table above it */
	char	   *what;			/* for the NOTICE of its validation */
} FinishKey;

/*
 * Read what the swap recorded (record_finish): the copies still there, on
 * the tables they were added to, and the partitioned referencing tables
 * whose ADD FOREIGN KEY attaches their leaves' copies.
 */
static List *
finish_read(int64 migration_id, List **parents)
{
	MemoryContext cxt = CurrentMemoryContext;
	MemoryContext xcxt;
	List	   *objs;
	List	   *keys = NIL;
	ListCell   *lc;

	xact_begin();
	xcxt = CurrentMemoryContext;
	objs = mig_contract_recorded_list(migration_id);
	foreach(lc, objs)
	{
		ContractObject *o = lfirst(lc);

		if (o->classid == RelationRelationId && o->objid == o->relid &&
			get_rel_relkind(o->objid) == RELKIND_PARTITIONED_TABLE)
			*parents = lappend_oid(*parents, o->objid);
	}
	foreach(lc, objs)
	{
		ContractObject *o = lfirst(lc);
		HeapTuple	tup;
		Form_pg_constraint con;
		FinishKey  *k;
		List	   *ancestors;
		ListCell   *lp;

		if (o->classid != ConstraintRelationId)
			continue;
		tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(o->objid));
		if (!HeapTupleIsValid(tup))
			continue;			/* dropped since: nothing to finish */
		con = (Form_pg_constraint) GETSTRUCT(tup);
		if (con->conrelid != o->relid || con->contype != CONSTRAINT_FOREIGN)
		{
			ReleaseSysCache(tup);
			continue;
		}
		k = MemoryContextAllocZero(cxt, sizeof(FinishKey));
		k->relid = o->relid;
		k->name = MemoryContextStrdup(cxt, NameStr(con->conname));
		k->confrelid = con->confrelid;
		ReleaseSysCache(tup);
		ancestors = get_rel_relispartition(k->relid) ? get_partition_ancestors(k->relid) : NIL;
		foreach(lp, *parents)
		{
			if (list_member_oid(ancestors, lfirst_oid(lp)))
				k->parent = lfirst_oid(lp);
		}
		k->what = k->parent ?
			MemoryContextStrdup(cxt, psprintf("foreign key \"%s\" on the new column, on partition %s",
											  k->name, get_rel_name(k->relid))) :
			MemoryContextStrdup(cxt, psprintf("foreign key \"%s\" on the new column", k->name));
		MemoryContextSwitchTo(cxt);
		keys = lappend(keys, k);
		MemoryContextSwitchTo(xcxt);
	}
	MemoryContextSwitchTo(cxt);
	*parents = list_copy(*parents);
	xact_end();
	MemoryContextSwitchTo(cxt);
	return keys;
}

/*
 * The ADD FOREIGN KEY of a partitioned referencing table, which finds every
 * leaf's validated copy and attaches it without a scan, unless an earlier
 * run did.
 */
static void
finish_attach(Oid parent, FinishKey *k)
{
	MemoryContext cxt = CurrentMemoryContext;
	char	   *parentname;
	bool		attached = false;

	test_pause("fkey_attach");
	check_caller();
	xact_begin();
	parentname = MemoryContextStrdup(cxt, get_rel_name(parent));
	if (constraint_state(parent, k->name) == 0)
	{
		lock_fkey_tables(parent, k->confrelid, "attach the partitions' foreign keys");
		/* as its owner, as add_fkey_partitioned attaches them */
		mig_run_utility_as_owner(parent,
								 fkey_from_leaf(mig_qualified_name(parent), k->relid, k->name));
		attached = true;
	}
	xact_end();
	MemoryContextSwitchTo(cxt);
	if (attached)
		progress("added foreign key \"%s\" on the new column to every partition of %s, validated, and attached",
				 k->name, parentname);
	test_pause("fkey_attached");
}

/*
 * What the swap left to finish, from the rows it recorded alone: the
 * foreign keys that reference the table, added NOT VALID in the swap on a
 * plain referencing table or on each leaf of a partitioned one.  Each copy
 * is validated in a transaction of its own (SHARE UPDATE EXCLUSIVE: reads
 * and writes go on), then each partitioned referencing table's ADD FOREIGN
 * KEY attaches its leaves' copies, and the rows go.  Every step looks
 * first whether an earlier run did it, so a worker that died anywhere
 * after the swap, or failed (a row that violates the key, a lock not to be
 * had), leaves a state the next mig_contract finishes; meanwhile every
 * copy is enforced on new rows.
 */
static void
finish_fkeys(int64 migration_id)
{
	List	   *parents = NIL;
	List	   *keys = finish_read(migration_id, &parents);
	List	   *names = NIL;
	ListCell   *lc;
	ListCell   *lp;

	foreach(lc, keys)
	{
		FinishKey  *k = lfirst(lc);

		validate(k->relid, k->name, k->what);
		test_pause("fkey_validated");
	}
	foreach(lp, parents)
	{
		Oid			parent = lfirst_oid(lp);

		list_free(names);
		names = NIL;
		foreach(lc, keys)
		{
			FinishKey  *k = lfirst(lc);
			bool		seen = false;
			ListCell   *ln;

			if (k->parent != parent)
				continue;
			foreach(ln, names)
				seen |= strcmp(lfirst(ln), k->name) == 0;
			if (seen)
				continue;
			names = lappend(names, k->name);
			finish_attach(parent, k);
		}
	}
	check_caller();
	xact_begin();
	mig_catalog_exec("DELETE FROM migrate_ext.contract_object "
					 "WHERE migration_id OPERATOR(pg_catalog.=) $1",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
					 NULL, -1);
	xact_end();
	MemoryContextSwitchTo(contract_cxt);
}

/* A foreign key copy, NOT VALID: a short SHARE ROW EXCLUSIVE on both tables. */
static void
add_fkey(ContractPlan *plan, ContractFkey *fk)
{
	bool		added = false;
	bool		partitioned;

	if (fk->at_swap)
		return;					/* added in the swap (contract_partition.c) */
	check_caller();
	xact_begin();
	partitioned = get_rel_relkind(fk->conrelid) == RELKIND_PARTITIONED_TABLE;
	xact_end();
	if (partitioned)
	{
		add_fkey_partitioned(plan, fk, fk->tmpname);
		return;
	}
	check_caller();
	xact_begin();
	if (constraint_state(fk->conrelid, fk->tmpname) == 0)
	{
		lock_fkey_tables(fk->conrelid, fk->confrelid, "add a foreign key NOT VALID");
		mig_run_utility(fk->adddef);
		record_constraint(plan, fk->conrelid, fk->tmpname);
		added = true;
	}
	xact_end();
	if (added)
		progress("added foreign key \"%s\" on the new column as NOT VALID", fk->oldname);
}

/*
 * A row that violates a constraint being validated: PostgreSQL's error
 * (23503 or 23514, naming the table and the constraint, and the key in its
 * detail) with what contract was doing and what to do about it.  Any other
 * error goes out as it is.
 */
static void
pg_attribute_noreturn()
validate_failed(const char *relname, const char *name, const char *what)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(contract_cxt);
	edata = CopyErrorData();
	if (edata->sqlerrcode != ERRCODE_FOREIGN_KEY_VIOLATION &&
		edata->sqlerrcode != ERRCODE_CHECK_VIOLATION)
	{
		FreeErrorData(edata);
		PG_RE_THROW();
	}
	FlushErrorState();
	edata->detail = psprintf("%s%smig_contract was validating %s: constraint \"%s\" of table \"%s\" (added NOT VALID, so enforced on new rows only) has a row that violates it.",
							 edata->detail ? edata->detail : "", edata->detail ? " " : "",
							 what, name, relname);
	edata->hint = pstrdup("Fix or delete the row (mig_validate names such rows), then run mig_contract again.");
	ReThrowError(edata);
}

/*
 * VALIDATE CONSTRAINT in its own transaction: it scans, but under SHARE
 * UPDATE EXCLUSIVE, which lets reads and writes through.
 */
static void
validate(Oid relid, const char *name, const char *what)
{
	int			state;
	char	   *sql;
	char	   *relname;
	MigOwnerSave owner;

	if (name == NULL)
		return;
	check_caller();
	xact_begin();
	state = constraint_state(relid, name);
	xact_end();
	if (state != 1)
		return;

	progress("validating %s", what);
	xact_begin();
	relname = get_rel_name(relid);
	mig_lock_table(relid, ShareUpdateExclusiveLock, "validate a constraint");
	sql = psprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s",
				   quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
											  get_rel_name(relid)),
				   quote_identifier(name));
	/*
	 * The check expressions and the table's domains run as its owner, in
	 * the owner's environment: search_path as the owner's role settings
	 * give it (RESET's value here, mig_worker_apply_role_settings), which
	 * the statement can take because it names nothing through search_path
	 * (a qualified table, a constraint of it; a foreign key's query is
	 * PostgreSQL's own, qualified throughout).
	 */
	mig_owner_switch(relid, &owner);
	(void) set_config_option("search_path", GetConfigOptionResetString("search_path"),
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	PG_TRY();
	{
		mig_run_utility(sql);
	}
	PG_CATCH();
	{
		validate_failed(relname, name, what);
	}
	PG_END_TRY();
	mig_owner_restore(&owner);
	xact_end();
}

/*
 * A CHECK of a partitioned table: each leaf's first, each in a transaction
 * of its own, then the parent's (no rows, no scan).  Of any other table:
 * its own.
 */
static void
validate_check(ContractPlan *plan, const char *name, const char *what)
{
	ListCell   *lc;

	foreach(lc, plan->leaves)
		validate(lfirst_oid(lc), name, what);
	validate(plan->relid, name, what);
}

/*
 * SET NOT NULL, which skips its scan because a validated CHECK (col IS NOT
 * NULL) proves it.  Part of the swap, so that a contract that stops before
 * it leaves no NOT NULL.  As the table's owner, inside a security-restricted
 * operation (mig_owner_switch): to find that proof PostgreSQL simplifies
 * every CHECK constraint of the table (and of each partition), which runs
 * any function of the owner's called there with constant arguments, as the
 * role that runs the statement -- otherwise whoever ran mig_contract, a
 * superuser or, under SET ROLE, a role that could RESET ROLE back to one.
 * The statements name no object through search_path.
 */
static void
swap_not_null(ContractPlan *plan)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null && !column_not_null(plan->relid, c->pair->new_attnum))
			appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;",
							 plan->qname, quote_identifier(c->newname));
	}
	if (sql.len == 0)
		return;
	mig_run_utility_as_owner(plan->relid, sql.data);
}

/*
 * Drop the CHECK (col IS NOT NULL) that proved NOT NULL.  A statement of its
 * own, after swap_not_null: in one ALTER TABLE the DROP CONSTRAINT would run
 * first and the proof be gone.
 */
static void
not_null_sql(ContractPlan *plan, StringInfo sql)
{
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (constraint_state(plan->relid, c->nn_check) > 0)
			appendStringInfo(sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
							 plan->qname, quote_identifier(c->nn_check));
	}
}

/*
 * ADD GENERATED ... AS IDENTITY for the new column, with the old identity's
 * options and its position: the next value it would have given.
 */
static char *
identity_sql(ContractPlan *plan, ContractColumn *c)
{
	HeapTuple	tup;
	Form_pg_sequence seq;
	char	   *seqname;
	int64		last;
	bool		called;
	int64		start;
	bool		isnull;
	StringInfoData sql;
	int64		typmin,
				typmax;

	seqname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(c->ident_seq)),
										 get_rel_name(c->ident_seq));
	SPI_connect();
	if (SPI_execute(psprintf("SELECT last_value, is_called FROM %s", seqname), true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read sequence %s", seqname);
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	called = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();

	tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(c->ident_seq));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for sequence %u", c->ident_seq);
	seq = (Form_pg_sequence) GETSTRUCT(tup);
	start = called ? last + seq->seqincrement : last;
	typmin = seq->seqtypid == INT2OID ? PG_INT16_MIN : seq->seqtypid == INT4OID ? PG_INT32_MIN : PG_INT64_MIN;
	typmax = seq->seqtypid == INT2OID ? PG_INT16_MAX : seq->seqtypid == INT4OID ? PG_INT32_MAX : PG_INT64_MAX;

	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s ADD GENERATED %s AS IDENTITY "
					 "(SEQUENCE NAME %s INCREMENT BY " INT64_FORMAT " START WITH " INT64_FORMAT
					 " CACHE " INT64_FORMAT " %s",
					 plan->qname, quote_identifier(c->finalname),
					 c->identity == ATTRIBUTE_IDENTITY_ALWAYS ? "ALWAYS" : "BY DEFAULT",
					 seqname, seq->seqincrement, start, seq->seqcache,
					 seq->seqcycle ? "CYCLE" : "NO CYCLE");
	/* bounds that were the old type's defaults become the new type's */
	if (seq->seqmin != (seq->seqincrement > 0 ? 1 : typmin))
		appendStringInfo(&sql, " MINVALUE " INT64_FORMAT, seq->seqmin);
	if (seq->seqmax != (seq->seqincrement > 0 ? typmax : -1))
		appendStringInfo(&sql, " MAXVALUE " INT64_FORMAT, seq->seqmax);
	appendStringInfoChar(&sql, ')');
	ReleaseSysCache(tup);
	return sql.data;
}

/*
 * Under the swap's lock nothing can change any more: check once more what
 * the swap builds on, the gate included (a validation that failed, or the
 * trigger disabled, while contract was building).  Returns the phase.
 */
static MigPhase
swap_recheck(ContractPlan *plan, bool force)
{
	MigMigration *m;
	Relation	rel;
	ListCell   *lc;

	rel = mig_open_table(plan->relid, NoLock);
	m = mig_catalog_by_id(plan->migration_id);
	if (m == NULL || m->phase >= MIG_PHASE_CONTRACTED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" ended while mig_contract ran", plan->relname),
				 errdetail("It is now in phase %s.", m ? mig_phase_name(m->phase) : "unknown")));
	mig_finish_gate(rel, m, force, "contract");
	table_close(rel, NoLock);
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		bool		built = true;
		ListCell   *lc2;

		if (ci->parts == NIL)
			built = index_state(plan->relid, ci->tmpname) == 2;
		foreach(lc2, ci->parts)
		{
			ContractIndex *part = lfirst(lc2);

			if (part->leaf)
				built &= index_state(part->relid, part->tmpname) == 2;
		}
		if (!built)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the copy of index \"%s\" disappeared while mig_contract ran", ci->oldname),
					 errhint("Run mig_contract again.")));
	}
	return m->phase;
}

/*
 * The first half of the swap: NOT NULL's proof, then what goes with the old column
 * (the trigger, the old foreign keys and key constraints, a serial's
 * ownership), and the old columns.
 */
static void
swap_drop_sql(ContractPlan *plan, StringInfo sql)
{
	ListCell   *lc;

	not_null_sql(plan, sql);
	appendStringInfo(sql, "DROP TRIGGER %s ON %s;", quote_identifier(MIG_TRIGGER_NAME), plan->qname);
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		appendStringInfo(sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
						 fk->conrel, quote_identifier(fk->oldname));
	}
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);

		if (ci->contype)
			appendStringInfo(sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
							 plan->qname, quote_identifier(ci->conname));
	}
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		char	   *seqname;

		if (!OidIsValid(c->owned_seq))
			continue;
		seqname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(c->owned_seq)),
											 get_rel_name(c->owned_seq));
		appendStringInfo(sql, "ALTER SEQUENCE %s OWNED BY %s.%s;", seqname, plan->qname,
						 quote_identifier(c->newname));
		if (c->widen_seq)
			appendStringInfo(sql, "ALTER SEQUENCE %s AS %s;", seqname, plan->new_type_name);
	}
	if (plan->dropcols == NIL)
		return;					/* keep_old: the old columns stay */
	appendStringInfo(sql, "ALTER TABLE %s", plan->qname);
	foreach(lc, plan->dropcols)
		appendStringInfo(sql, "%s DROP COLUMN %s", foreach_current_index(lc) > 0 ? "," : "",
						 quote_identifier(lfirst(lc)));
	appendStringInfoChar(sql, ';');
}

/* The old names are free: the new column and the copies take them. */
static void
swap_rename_sql(ContractPlan *plan, StringInfo sql)
{
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->pair->in_place && strcmp(c->newname, c->finalname) != 0)
			appendStringInfo(sql, "ALTER TABLE %s RENAME COLUMN %s TO %s;", plan->qname,
							 quote_identifier(c->newname), quote_identifier(c->finalname));
	}
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		const char *final = ci->contype ? ci->conname : ci->oldname;

		if (ci->parts != NIL)
		{
			mig_partition_rename_sql(plan, ci, sql);
			continue;
		}
		if (ci->contype)
			appendStringInfo(sql, "ALTER TABLE %s ADD CONSTRAINT %s %s USING INDEX %s%s%s;",
							 plan->qname, quote_identifier(ci->conname),
							 ci->contype == CONSTRAINT_PRIMARY ? "PRIMARY KEY" : "UNIQUE",
							 quote_identifier(ci->tmpname),
							 ci->deferrable ? " DEFERRABLE" : "",
							 ci->deferred ? " INITIALLY DEFERRED" : "");
		else
			appendStringInfo(sql, "ALTER INDEX %s RENAME TO %s;",
							 quote_qualified_identifier(plan->nspname, ci->tmpname),
							 quote_identifier(ci->oldname));
		if (ci->replident)
			appendStringInfo(sql, "ALTER TABLE %s REPLICA IDENTITY USING INDEX %s;",
							 plan->qname, quote_identifier(final));
		if (ci->clustered)
			appendStringInfo(sql, "ALTER TABLE %s CLUSTER ON %s;",
							 plan->qname, quote_identifier(final));
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		if (fk->at_swap)
			continue;			/* added under its own name */
		appendStringInfo(sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;", fk->conrel,
						 quote_identifier(fk->tmpname), quote_identifier(fk->oldname));
		mig_partition_fkey_rename_sql(fk, sql);
	}
	/* the old CHECKs went with the old column: the copies take their names */
	foreach(lc, plan->checks)
	{
		ContractCheck *ck = lfirst(lc);

		appendStringInfo(sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;", plan->qname,
						 quote_identifier(ck->tmpname), quote_identifier(ck->oldname));
	}
}

/*
 * GRANT statements that give the new column the old one's privileges, with
 * their grant options.  Read before the old column goes; the grants are
 * then the caller's (the owner's), whoever had granted them.
 */
static void
grants_sql(ContractPlan *plan, ContractColumn *c, StringInfo sql)
{
	SPI_connect();
	if (SPI_execute_with_args("SELECT a.grantee, a.privilege_type, a.is_grantable "
							  "FROM pg_catalog.pg_attribute t, "
							  "LATERAL pg_catalog.aclexplode(t.attacl) a "
							  "WHERE t.attrelid OPERATOR(pg_catalog.=) $1 "
							  "AND t.attnum OPERATOR(pg_catalog.=) $2 ORDER BY 1, 2",
							  2, (Oid[]) {OIDOID, INT2OID},
							  (Datum[]) {ObjectIdGetDatum(plan->relid),
							  Int16GetDatum(c->pair->old_attnum)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read the privileges of column \"%s\"", c->oldname);
	mig_contract_append_grants(sql, plan->qname, c->finalname);
	SPI_finish();
}

/*
 * The old column's statistics target, options, storage and compression,
 * for the new one.
 */
static void
props_sql(ContractPlan *plan, ContractColumn *c, StringInfo sql)
{
	const char *col = quote_identifier(c->finalname);
	ListCell   *lc;

	if (c->stattarget >= 0)
		appendStringInfo(sql, "ALTER TABLE %s ALTER COLUMN %s SET STATISTICS %d;",
						 plan->qname, col, c->stattarget);
	foreach(lc, c->options)
	{
		DefElem    *def = lfirst_node(DefElem, lc);

		/* the server's own bookkeeping, not a user's option */
		if (strncmp(def->defname, "pg_", 3) == 0)
			continue;
		appendStringInfo(sql, "ALTER TABLE %s ALTER COLUMN %s SET (%s = %s);",
						 plan->qname, col, quote_identifier(def->defname),
						 quote_literal_cstr(defGetString(def)));
	}
	if (c->storage)
		appendStringInfo(sql, "ALTER TABLE %s ALTER COLUMN %s SET STORAGE %s;", plan->qname, col,
						 c->storage == TYPSTORAGE_PLAIN ? "PLAIN" :
						 c->storage == TYPSTORAGE_EXTERNAL ? "EXTERNAL" :
						 c->storage == TYPSTORAGE_MAIN ? "MAIN" : "EXTENDED");
	if (c->compression)
		appendStringInfo(sql, "ALTER TABLE %s ALTER COLUMN %s SET COMPRESSION %s;", plan->qname,
						 col, GetCompressionMethodName(c->compression));
}

/* What the new columns take over: identity, default, CHECK name, comment. */
static void
swap_column_sql(ContractPlan *plan, List *identities, StringInfo sql)
{
	ListCell   *lc;

	foreach(lc, identities)
		appendStringInfo(sql, "%s;", (char *) lfirst(lc));
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->default_sql)
			appendStringInfo(sql, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s;",
							 plan->qname, quote_identifier(c->finalname), c->default_sql);
		if (c->check_tmp)
			appendStringInfo(sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;",
							 plan->qname, quote_identifier(c->check_tmp),
							 quote_identifier(ChooseConstraintName(plan->relname, c->finalname, "check",
																   get_rel_namespace(plan->relid), NIL)));
		if (c->comment)
			appendStringInfo(sql, "COMMENT ON COLUMN %s.%s IS %s;", plan->qname,
							 quote_identifier(c->finalname), quote_literal_cstr(c->comment));
	}
}

/*
 * Create the views again on the new columns.  A new column that keeps its
 * own name carries the old one's for that moment, so that the captured
 * definitions read it; renamed back, its views follow it.
 */
static void
swap_views(ContractPlan *plan, List *views)
{
	StringInfoData there;
	StringInfoData back;
	ListCell   *lc;

	if (views == NIL)
		return;
	initStringInfo(&there);
	initStringInfo(&back);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->pair->in_place || plan->map->attnums[c->pair->old_attnum - 1] != c->pair->new_attnum)
			continue;
		appendStringInfo(&there, "ALTER TABLE %s RENAME COLUMN %s TO %s;", plan->qname,
						 quote_identifier(c->newname), quote_identifier(c->oldname));
		appendStringInfo(&back, "ALTER TABLE %s RENAME COLUMN %s TO %s;", plan->qname,
						 quote_identifier(c->oldname), quote_identifier(c->newname));
	}
	if (there.len > 0)
		mig_run_utility(there.data);
	mig_contract_recreate_views(plan, views);
	if (back.len > 0)
		mig_run_utility(back.data);
}

/*
 * In the swap, once the rows of what contract added before it are deleted:
 * record what is left to finish after it, the foreign keys that reference
 * the table added NOT VALID by mig_partition_swap.  Each copy by OID on its
 * table (a plain referencing table's, or each leaf's of a partitioned one)
 * and a partitioned referencing table itself (classid pg_class, objid and
 * relid its OID): its ADD FOREIGN KEY attaches its leaves' copies.  The
 * worker validates and attaches from these rows alone and deletes them once
 * done, so a worker that died after the swap leaves them for the next
 * mig_contract to finish (finish_fkeys).
 */
static void
record_finish(ContractPlan *plan)
{
	ListCell   *lc;

	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);
		List	   *leaves;
		ListCell   *lc2;

		if (!fk->at_swap)
			continue;
		leaves = mig_partition_leaves(fk->conrelid, NoLock);
		if (leaves == NIL)
		{
			/* no leaf to copy it from, nor a row to check */
			ereport(WARNING,
					(errmsg("foreign key \"%s\" of partitioned table %s, which has no partition, was not moved",
							fk->oldname, fk->conrel),
					 errhint("Add it again by hand on the new column.")));
			continue;
		}
		if (get_rel_relkind(fk->conrelid) == RELKIND_PARTITIONED_TABLE)
			mig_contract_record(plan->migration_id, RelationRelationId, fk->conrelid,
								fk->conrelid);
		foreach(lc2, leaves)
			mig_contract_record(plan->migration_id, ConstraintRelationId,
								get_relation_constraint_oid(lfirst_oid(lc2), fk->oldname, false),
								lfirst_oid(lc2));
	}
}

/*
 * The swap: one transaction under ACCESS EXCLUSIVE on every table involved,
 * taken all at once through the lock ladder.  Only catalog changes: NOT
 * NULL is set (proved by the validated CHECK), the constraints move to the
 * indexes built before, the sequence, default and identity move, the
 * trigger and the old columns go, the new columns take their place, and the
 * migration is marked contracted, all or nothing.
 */
static void
swap(ContractPlan *plan, bool force)
{
	int			nrels = list_length(plan->lockrels);
	Oid		   *rels = palloc(sizeof(Oid) * nrels);
	StringInfoData sql;
	StringInfoData grants;
	List	   *identities = NIL;
	List	   *views;
	MigPhase	phase;
	ListCell   *lc;

	check_caller();
	progress("swapping the columns of table \"%s\" under a short ACCESS EXCLUSIVE lock",
			 plan->relname);
	xact_begin();
	foreach(lc, plan->lockrels)
		rels[foreach_current_index(lc)] = lfirst_oid(lc);
	mig_lock_tables(nrels, rels, AccessExclusiveLock, "swap the old column for the new one");
	phase = swap_recheck(plan, force);
	swap_not_null(plan);

	/* read the identities' positions while their sequences exist */
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (OidIsValid(c->ident_seq))
			identities = lappend(identities, identity_sql(plan, c));
	}
	/* and the old columns' privileges, while they exist */
	initStringInfo(&grants);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->has_acl)
			grants_sql(plan, c, &grants);
	}
	/* the views, captured before they go, deepest first */
	initStringInfo(&sql);
	views = mig_contract_capture_views(plan, &sql);
	swap_drop_sql(plan, &sql);
	mig_run_utility(sql.data);
	mig_partition_swap(plan);

	resetStringInfo(&sql);
	swap_rename_sql(plan, &sql);
	if (sql.len > 0)
		mig_run_utility(sql.data);
	swap_views(plan, views);

	resetStringInfo(&sql);
	swap_column_sql(plan, identities, &sql);
	appendStringInfoString(&sql, grants.data);
	foreach(lc, plan->columns)
		props_sql(plan, lfirst(lc), &sql);
	if (sql.len > 0)
		mig_run_utility(sql.data);
	/* sessions' PL/pgSQL triggers compiled for the old types (contract_retype.c) */
	mig_retouch_trigger_functions(plan->relid);

	/* the copies are the real ones now: nothing is left to undo */
	mig_catalog_exec("DELETE FROM migrate_ext.contract_object "
					 "WHERE migration_id OPERATOR(pg_catalog.=) $1",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(plan->migration_id)},
					 NULL, -1);
	/* but for what is left to finish after the swap, recorded now */
	record_finish(plan);
	mig_catalog_set_phase(plan->migration_id, phase, MIG_PHASE_CONTRACTED,
						  force ? "forced: contracted without a passed validation" : NULL);
	xact_end();
}

/*
 * The copies of the materialized views on the new column (and of the views
 * created again that they read), each built beside the old one in a
 * transaction of its own, shallowest first (contract_views.c); the swap
 * drops the old ones and gives the copies their names.
 */
static void
build_matviews(ContractPlan *plan)
{
	List	   *from = NIL;
	List	   *to = NIL;
	List	   *kept = NIL;
	ListCell   *lc;

	xact_begin();
	foreach(lc, plan->view_keep)
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_MATVIEW)
			kept = lappend(kept, MemoryContextStrdup(contract_cxt, get_rel_name(lfirst_oid(lc))));
	xact_end();
	foreach(lc, kept)
		progress("materialized view \"%s\" reads the column through views that keep their shape: it keeps its rows, computed from the old column (REFRESH it after contract if up changed values)",
				 (char *) lfirst(lc));
	foreach(lc, plan->views)
	{
		Oid			mvoid = lfirst_oid(lc);
		Oid			copy;
		char	   *name;
		MemoryContext oldcxt;

		if (!list_member_oid(plan->matviews, mvoid) &&
			!list_member_oid(plan->view_copies, mvoid))
			continue;
		check_caller();
		xact_begin();
		name = MemoryContextStrdup(contract_cxt, get_rel_name(mvoid));
		xact_end();
		progress("building a copy of %sview \"%s\" on the new column",
				 list_member_oid(plan->matviews, mvoid) ? "materialized " : "", name);
		xact_begin();
		copy = get_relname_relid(mig_contract_copy_name(get_rel_name(mvoid), mvoid),
								 get_rel_namespace(mvoid));
		/* left by a contract that stopped before it could drop it */
		if (OidIsValid(copy) &&
			mig_contract_recorded(plan->migration_id, RelationRelationId, copy))
		{
			mig_run_utility(psprintf("DROP %sVIEW %s CASCADE",
									 get_rel_relkind(copy) == RELKIND_MATVIEW ? "MATERIALIZED " : "",
									 mig_qualified_name(copy)));
			CommandCounterIncrement();
		}
		copy = mig_contract_build_copy(plan, mvoid, from, to);
		/* a copy is dropped again if contract stops before its swap */
		mig_contract_record(plan->migration_id, RelationRelationId, copy, copy);
		xact_end();
		oldcxt = MemoryContextSwitchTo(contract_cxt);
		from = lappend_oid(from, mvoid);
		to = lappend_oid(to, copy);
		MemoryContextSwitchTo(oldcxt);
	}
}

/*
 * The steps: copies of the indexes, the constraints NOT VALID then
 * validated, the copies of the materialized views, and the swap.
 */
static void
run_steps(ContractPlan *plan, bool force)
{
	ListCell   *lc;

	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		ListCell   *lc2;

		if (ci->parts == NIL)
			build_index(plan, ci);
		/* on a partitioned table, each leaf's copy; the rest in the swap */
		foreach(lc2, ci->parts)
		{
			if (((ContractIndex *) lfirst(lc2))->leaf)
				build_index(plan, lfirst(lc2));
		}
	}
	add_checks(plan);
	foreach(lc, plan->fkeys)
		add_fkey(plan, lfirst(lc));
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null)
			validate_check(plan, c->nn_check,
						   psprintf("that column \"%s\" has no NULL", c->finalname));
		validate_check(plan, c->check_tmp,
					   psprintf("the CHECK constraint of column \"%s\"", c->finalname));
	}
	foreach(lc, plan->checks)
	{
		ContractCheck *ck = lfirst(lc);

		validate_check(plan, ck->tmpname,
					   psprintf("CHECK constraint \"%s\" re-stated on the new column", ck->oldname));
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		if (!fk->at_swap)
			validate(fk->conrelid, fk->tmpname,
					 psprintf("foreign key \"%s\" on the new column", fk->oldname));
	}
	build_matviews(plan);
	swap(plan, force);
	contract_swapped = true;
	test_pause("swapped");
	/* the foreign keys added NOT VALID in the swap: validated now */
	finish_fkeys(plan->migration_id);
}

/*
 * A step failed or the caller cancelled: before the error goes out, drop
 * what this and earlier runs added that is enforced on new writes (the NOT
 * VALID constraints, the unique index copies), so that the table enforces
 * nothing it did not before.  Plain index copies stay for the next run.  If
 * that cannot be done either (a lock not to be had), the error says so and
 * mig_abort or the next mig_contract removes them.  After the swap nothing
 * is dropped: the copies are the only keys now, and what is left to finish
 * stays recorded for the next mig_contract.  Re-throws the error.
 */
static void
pg_attribute_noreturn()
undo_after_failure(int64 migration_id, const char *relname)
{
	ErrorData  *edata;
	volatile int dropped = -1;

	/*
	 * The context current at the throw may belong to the transaction that
	 * the abort below deletes: everything from here lives in contract_cxt.
	 */
	MemoryContextSwitchTo(contract_cxt);
	edata = CopyErrorData();

	FlushErrorState();
	AbortOutOfAnyTransaction();
	if (contract_swapped)
	{
		edata->detail = psprintf("%s%sThe columns of table \"%s\" are swapped (the migration is contracted); the foreign keys that reference it are enforced on new rows of every table and partition that declares them, but not all are validated and attached yet.",
								 edata->detail ? edata->detail : "", edata->detail ? " " : "",
								 relname);
		if (edata->hint == NULL)
			edata->hint = psprintf("Run mig_contract('%s') again to finish them.", relname);
		ReThrowError(edata);
	}
	PG_TRY();
	{
		xact_begin();
		dropped = mig_contract_undo(migration_id);
		xact_end();
	}
	PG_CATCH();
	{
		FlushErrorState();
		AbortOutOfAnyTransaction();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(contract_cxt);
	if (dropped > 0)
		edata->detail = psprintf("%s%sWhat mig_contract had added that writes would meet (%d constraints or unique index copies) was dropped: the table enforces nothing it did not before.",
								 edata->detail ? edata->detail : "", edata->detail ? " " : "",
								 dropped);
	else if (dropped < 0)
		edata->detail = psprintf("%s%sWhat mig_contract had added could not be dropped: mig_abort('%s') or the next mig_contract removes it.",
								 edata->detail ? edata->detail : "", edata->detail ? " " : "",
								 relname);
	ReThrowError(edata);
}

/*
 * Only one mig_contract per table at a time: a session-level lock of the
 * worker's own (an advisory lock tag that the SQL-level advisory lock
 * functions never use, which mig_status reads as fkeys_finishing), gone
 * when the worker exits.  Taken without waiting: whether it was got.
 */
static bool
try_lock_contract(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, relid, 0, 3);
	return LockAcquire(&tag, ExclusiveLock, true, true) != LOCKACQUIRE_NOT_AVAIL;
}

/* The same for mig_contract's worker: an error when another holds it. */
static void
lock_contract(Oid relid)
{
	if (try_lock_contract(relid))
		return;
	/* the table's name is read from the catalog: in a transaction */
	xact_begin();
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_IN_USE),
			 errmsg("mig_contract is already running on table \"%s\"", get_rel_name(relid)),
			 errdetail("Another mig_contract, or the server's own worker that finishes the foreign keys left after a swap (mig_status.fkeys_finishing), holds it."),
			 errhint("Wait for it to finish.")));
}

/*
 * The worker's main function: connect as the caller, attach the caller's
 * queue so that every NOTICE and the error go to the caller, plan again
 * (the catalog may have moved since the caller checked), and run the steps.
 */
void
mig_contract_worker_main(Datum main_arg)
{
	MigWorkerArgs args;
	dsm_segment *seg;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	ContractShared *sh;
	ContractPlan *plan;
	Relation	rel;
	MigMigration *m;
	char	   *relname;
	char		buf[32];

	mig_worker_connect(&args);
	seg = dsm_attach((dsm_handle) args.arg);
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("mig_contract's caller went away before its worker started")));
	dsm_pin_mapping(seg);
	sh = worker_shared = dsm_segment_address(seg);
	mq = (shm_mq *) ((char *) sh + MAXALIGN(sizeof(ContractShared)));
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);
	pq_redirect_to_shm_mq(seg, mqh);

	contract_cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext contract",
										 ALLOCSET_DEFAULT_SIZES);

	/*
	 * The owner's ALTER ROLE ... SET settings, for the owner's code that the
	 * steps run (PGC_S_USER: the worker's own settings below, made at
	 * PGC_S_SESSION, and those of mig_worker_connect, at PGC_S_OVERRIDE,
	 * win over them).
	 */
	xact_begin();
	if (SearchSysCacheExists1(RELOID, ObjectIdGetDatum(sh->relid)))
		mig_worker_apply_role_settings(mig_table_owner(sh->relid));
	xact_end();

	/* the caller's ladder; generated SQL is deparsed for this search_path */
	snprintf(buf, sizeof(buf), "%d", sh->lock_timeout_ms);
	SetConfigOption("migrate_ext.lock_timeout", buf, PGC_USERSET, PGC_S_SESSION);
	snprintf(buf, sizeof(buf), "%d", sh->lock_timeout_max_ms);
	SetConfigOption("migrate_ext.lock_timeout_max", buf, PGC_USERSET, PGC_S_SESSION);
	/* every other lock a statement takes waits at most the ladder's top */
	SetConfigOption("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION);
	snprintf(buf, sizeof(buf), "%d", sh->lock_retries);
	SetConfigOption("migrate_ext.lock_retries", buf, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("application_name", "migrate_ext contract", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_read_only", "off", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_USERSET, PGC_S_SESSION);

	lock_contract(sh->relid);

	xact_begin();
	/* the plan, and the migration it points into, outlive the transaction */
	MemoryContextSwitchTo(contract_cxt);
	rel = mig_open_table(sh->relid, AccessShareLock);
	relname = pstrdup(RelationGetRelationName(rel));
	plan = NULL;
	if (!sh->finish)
	{
		m = mig_catalog_active(sh->relid, false);
		if (m->id != sh->migration_id)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the migration of table \"%s\" changed while mig_contract started",
							relname)));
		plan = mig_contract_plan(rel, m, sh->force);
	}
	table_close(rel, AccessShareLock);
	xact_end();
	MemoryContextSwitchTo(contract_cxt);

	PG_TRY();
	{
		if (plan != NULL)
			run_steps(plan, sh->force);
		else
		{
			/* contracted by a run that did not finish after its swap */
			contract_swapped = true;
			progress("finishing the foreign keys that reference table \"%s\", left by a mig_contract that stopped after its swap",
					 relname);
			finish_fkeys(sh->migration_id);
		}
	}
	PG_CATCH();
	{
		undo_after_failure(sh->migration_id, relname);
	}
	PG_END_TRY();
	MemoryContextSwitchTo(contract_cxt);

	progress("table \"%s\" is contracted", relname);
	SpinLockAcquire(&sh->mutex);
	sh->done = true;
	SpinLockRelease(&sh->mutex);
}

/* -------------------------------------------------------------------------
 * The launcher's worker: what a swap left to finish, after a restart
 * -------------------------------------------------------------------------
 */

/*
 * Is migration_id's swap committed with foreign keys still recorded to
 * finish, on a table that still exists?  If so, become the table's owner
 * (the session's user: neither SET ROLE nor SET SESSION AUTHORIZATION can
 * lead back to the superuser the worker connected as), take the owner's
 * role settings, and say which table.  Only work the catalog records is
 * ever done: a migration with no rows left, or whose table is gone, is
 * nothing to do.
 */
static bool
finish_pending(int64 migration_id, Oid *relid, char **relname)
{
	bool		pending = false;
	bool		isnull;
	Oid			owner;

	xact_begin();
	SPI_connect();
	if (mig_catalog_query("SELECT m.relid FROM migrate_ext.migration m "
						  "WHERE m.id OPERATOR(pg_catalog.=) $1 "
						  "AND m.phase OPERATOR(pg_catalog.=) 'contracted' "
						  "AND EXISTS (SELECT FROM migrate_ext.contract_object o "
						  "WHERE o.migration_id OPERATOR(pg_catalog.=) m.id) "
						  "AND EXISTS (SELECT FROM pg_catalog.pg_class c "
						  "WHERE c.oid OPERATOR(pg_catalog.=) m.relid)",
						  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
						  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.migration");
	if (SPI_processed == 1)
	{
		*relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[0],
												SPI_tuptable->tupdesc, 1, &isnull));
		pending = true;
	}
	SPI_finish();
	if (pending)
	{
		*relname = MemoryContextStrdup(contract_cxt, mig_qualified_name(*relid));
		owner = mig_table_owner(*relid);
		SetSessionAuthorization(owner, superuser_arg(owner));
		mig_worker_apply_role_settings(owner);
	}
	xact_end();
	MemoryContextSwitchTo(contract_cxt);
	return pending;
}

/*
 * The finish failed: log why.  A lock the ladder could not get (the
 * traffic held it), a deadlock or a concurrent change is tried again
 * later; anything else (a row that violates the key, a privilege) waits
 * for a DBA's mig_contract, which reports it.
 */
static bool
finish_failed(const char *relname, int delay_s)
{
	ErrorData  *edata;
	bool		retry;

	MemoryContextSwitchTo(contract_cxt);
	edata = CopyErrorData();
	FlushErrorState();
	AbortOutOfAnyTransaction();
	retry = edata->sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		edata->sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		edata->sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE ||
		edata->sqlerrcode == ERRCODE_OBJECT_IN_USE;
	if (retry)
		ereport(LOG,
				(errcode(edata->sqlerrcode),
				 errmsg("migrate_ext: could not finish the foreign keys that reference table %s yet: %s",
						relname, edata->message),
				 errdetail("Trying again in %d seconds; the keys are enforced on new rows meanwhile.",
						   delay_s)));
	else
		ereport(WARNING,
				(errcode(edata->sqlerrcode),
				 errmsg("migrate_ext: could not finish the foreign keys that reference table %s: %s",
						relname, edata->message),
				 edata->detail ? errdetail_internal("%s", edata->detail) : 0,
				 errhint("Fix the cause, then run mig_contract('%s') to finish them.", relname)));
	FreeErrorData(edata);
	return retry;
}

/*
 * One attempt, under the lock of mig_contract on the table.  Returns
 * whether to try again later.
 */
static bool
finish_attempt(int64 migration_id, const char *relname, int delay_s)
{
	volatile bool retry = false;

	PG_TRY();
	{
		progress("finishing the foreign keys that reference table %s, left by a mig_contract that stopped after its swap",
				 relname);
		finish_fkeys(migration_id);
		progress("table %s is contracted: its foreign keys are finished", relname);
	}
	PG_CATCH();
	{
		retry = finish_failed(relname, delay_s);
	}
	PG_END_TRY();
	return retry;
}

/*
 * The worker the launcher starts after a start, a restart or a crash for a
 * migration whose swap committed but whose recorded foreign keys are not
 * finished (launcher.c): it does exactly what mig_contract's finish does,
 * as the table's owner, through the same lock ladder (the ladder's
 * settings are the server's, or the owner's role settings), and when the
 * ladder gives up it waits, longer each time, and tries again, so that it
 * never queues the traffic for longer than the ladder allows, nor often.  Connected as the bootstrap superuser (the owner may not
 * be able to log in), it is the owner from its first step on.
 */
void
mig_contract_finish_main(Datum main_arg)
{
	MigWorkerArgs args;
	ContractShared local;
	Oid			relid;
	char	   *relname;
	char		buf[32];
	bool		locked = false;
	int			delay_s = CONTRACT_FINISH_RETRY_S;

	mig_worker_connect(&args);
	memset(&local, 0, sizeof(local));
	SpinLockInit(&local.mutex);
	local.migration_id = args.arg;
	local.finish = true;
	worker_shared = &local;
	contract_headless = true;
	/* every step of the finish comes after the swap */
	contract_swapped = true;
	contract_cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext contract",
										 ALLOCSET_DEFAULT_SIZES);

	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("application_name", "migrate_ext contract", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_read_only", "off", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("default_transaction_isolation", "read committed", PGC_USERSET, PGC_S_SESSION);

	/*
	 * The lock of mig_contract on the table (lock_contract), held from the
	 * first attempt to the exit, retries and waits included: exactly one of
	 * this worker and a DBA's mig_contract finishes; the DBA's is refused
	 * while this worker holds it (mig_status shows it), and this worker,
	 * while the DBA's runs, looks again later and usually finds nothing
	 * left.
	 */
	while (finish_pending(local.migration_id, &relid, &relname))
	{
		/* the ladder as the server's configuration has it now */
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}
		snprintf(buf, sizeof(buf), "%d", mig_lock_timeout_max_ms);
		SetConfigOption("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION);
		if (!locked)
		{
			locked = try_lock_contract(relid);
			if (locked)
				continue;		/* what is pending, now that no one else runs */
			ereport(LOG,
					(errmsg("migrate_ext: mig_contract is running on table %s: looking again in %d seconds whether it finished its foreign keys",
							relname, delay_s)));
		}
		else if (!finish_attempt(local.migration_id, relname, delay_s))
			break;
		MemoryContextSwitchTo(contract_cxt);
		mig_sleep_ms(delay_s * 1000L);
		delay_s = Min(delay_s * 2, CONTRACT_FINISH_RETRY_MAX_S);
	}
	proc_exit(0);
}
