/*-------------------------------------------------------------------------
 *
 * backfill_apply.c
 *	  One batch of the backfill, written directly: the rows the walk finds
 *	  (backfill_walk.c) are updated with table_tuple_update and their index
 *	  entries inserted, as logical replication's apply does
 *	  (execReplication.c, ExecSimpleRelationUpdate), with the new values
 *	  computed by the dual-write trigger's own code
 *	  (mig_dualwrite_backfill_row).  A table where that would not do what
 *	  the batch's UPDATE does gets the UPDATE (bf_direct_refusal).
 *
 * Why not the UPDATE.  PostgreSQL 15 locks every row an UPDATE writes
 * before it fires a BEFORE ROW UPDATE trigger (GetTupleForTrigger), with a
 * WAL record of its own, and the dual-write trigger is one: that lock, and
 * the trigger call, cost about 15% of a plain UPDATE.  The direct batch
 * writes each row once, with no lock before the write.
 *
 * Concurrent client writes.  The walk's query lists the rows that need
 * writing under one snapshot; the batch fetches each under a later one and
 * updates that version with wait = true, so a client that holds the row
 * makes it wait.  When the update finds that a client updated or deleted
 * the version after the batch's snapshot (TM_Updated, TM_Deleted; also a
 * version the later snapshot no longer sees), the row is skipped: the
 * client's write fired the dual-write trigger (ENABLE ALWAYS, checked
 * before every batch; it cannot be disabled while the batch holds its
 * lock on the table), which computed the new columns from the client's
 * version, so the row is right, or gone.  The UPDATE would have rechecked
 * the filter on the client's version (EvalPlanQual) and skipped it for the
 * same reason.  A client that writes the row after the batch waits for the
 * batch and builds on its version, through its own trigger.
 *
 * Everything runs as the batch's statements do: as the table's owner in a
 * security-restricted operation (the worker's mig_owner_switch), under the
 * owner's search_path (mig_owner_user_path), so index expressions, partial
 * index predicates, CHECK constraints and the up expressions run as they
 * would under the UPDATE.  One batch is still one transaction with its
 * checkpoint (the worker's), and an error fails it as the UPDATE's would:
 * the worker retries smaller batches, and at the end names the failing row
 * with the UPDATE (bf_failing_row), which computes alike.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_index.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "rewrite/prs2lock.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "backfill.h"
#include "migrate_ext.h"

/* The table whose path was last logged, so that each walk says it once. */
static Oid	bf_announced = InvalidOid;

/*
 * Would writing the rows directly do less than the batch's UPDATE does?
 * Returns why (the table then gets the UPDATE), or NULL.  Under the
 * batch's session_replication_role = replica the UPDATE fires only the
 * dual-write trigger (bf_ground_moved refuses user triggers that would
 * fire there); what it does beyond that, and the direct batch does not:
 * fire the table's triggers (fire_triggers, or an internal trigger made
 * ENABLE ALWAYS or REPLICA), compute stored generated columns, recheck
 * deferrable unique and exclusion constraints in AFTER triggers, apply an
 * UPDATE rule, or write through an access method other than heap (a
 * foreign table leaf included).  CHECK and NOT NULL constraints the
 * direct batch checks too, row security does not apply to the owner under
 * the switch, and the partition constraint cannot change: the new
 * columns are never in the partition key.
 */
static const char *
bf_direct_refusal(Relation rel, BfJob *job)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	ListCell   *lc;

	if (job->fire_triggers)
		return "fire_triggers is on";
	if (rel->rd_rel->relkind != RELKIND_RELATION)
		return "it is not a plain table";
	if (rel->rd_tableam != GetHeapamTableAmRoutine())
		return "it does not use the heap access method";
	if (rel->rd_att->constr && rel->rd_att->constr->has_generated_stored)
		return "it has a stored generated column";
	for (int i = 0; rel->rd_rules && i < rel->rd_rules->numLocks; i++)
		if (rel->rd_rules->rules[i]->event == CMD_UPDATE)
			return "it has a rule on UPDATE";
	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if (strcmp(t->tgname, MIG_TRIGGER_NAME) != 0 &&
			(t->tgenabled == TRIGGER_FIRES_ALWAYS || t->tgenabled == TRIGGER_FIRES_ON_REPLICA))
			return "it has a trigger that fires under session_replication_role = replica";
	}
	foreach(lc, RelationGetIndexList(rel))
	{
		HeapTuple	tup = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index index;
		const char *why = NULL;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for index %u", lfirst_oid(lc));
		index = (Form_pg_index) GETSTRUCT(tup);
		if (index->indisexclusion)
			why = "it has an exclusion constraint";
		else if (index->indisunique && !index->indimmediate)
			why = "it has a deferrable unique constraint";
		ReleaseSysCache(tup);
		if (why)
			return why;
	}
	return NULL;
}

/* Say once per walk of a table which way its batches write. */
static void
bf_announce(Relation rel, const char *refusal)
{
	if (RelationGetRelid(rel) == bf_announced)
		return;
	bf_announced = RelationGetRelid(rel);
	if (refusal)
		ereport(LOG,
				(errmsg("migrate_ext: the backfill of table %s writes its rows with UPDATE statements: %s",
						mig_qualified_name(RelationGetRelid(rel)), refusal)));
	else
		ereport(LOG,
				(errmsg("migrate_ext: the backfill of table %s writes its rows directly",
						mig_qualified_name(RelationGetRelid(rel)))));
}

/*
 * The executor state of the direct batch: the table as the UPDATE's one
 * result relation, with its indexes open, and a range table whose
 * updatedCols are the new columns, so that index inserts get the same
 * "index unchanged" hint the UPDATE's do (btree's bottom-up deletion).
 */
static EState *
bf_apply_estate(Relation rel, MigMigration *m, ResultRelInfo **rrip)
{
	EState	   *estate = CreateExecutorState();
	RangeTblEntry *rte = makeNode(RangeTblEntry);
	ResultRelInfo *rri = makeNode(ResultRelInfo);
	ListCell   *lc;

	rte->rtekind = RTE_RELATION;
	rte->relid = RelationGetRelid(rel);
	rte->relkind = rel->rd_rel->relkind;
	rte->rellockmode = RowExclusiveLock;
	foreach(lc, m->pairs)
		rte->updatedCols = bms_add_member(rte->updatedCols,
										  ((MigPair *) lfirst(lc))->new_attnum -
										  FirstLowInvalidHeapAttributeNumber);
	ExecInitRangeTable(estate, list_make1(rte));
	InitResultRelInfo(rri, rel, 1, NULL, 0);
	ExecOpenIndices(rri, false);
	estate->es_output_cid = GetCurrentCommandId(true);
	*rrip = rri;
	return estate;
}

/*
 * Write one row: fetch the version at tid, compute its new columns, update
 * it and insert its index entries.  Returns whether it wrote a version.
 */
static bool
bf_apply_row(Relation rel, int64 migration_id, ItemPointer tid, EState *estate,
			 ResultRelInfo *rri, TupleTableSlot *oldslot, TupleTableSlot *newslot,
			 void **dwcache)
{
	HeapTuple	tuple;
	TM_Result	result;
	TM_FailureData tmfd;
	LockTupleMode lockmode;
	bool		update_indexes;
	List	   *recheck;

	/* a version the snapshot no longer sees: a client moved the row since */
	if (!table_tuple_fetch_row_version(rel, tid, estate->es_snapshot, oldslot))
		return false;
	tuple = mig_dualwrite_backfill_row(migration_id, rel, oldslot, dwcache);
	ExecClearTuple(oldslot);
	if (tuple == NULL)
		return false;			/* right already, as the trigger would skip it */
	ExecStoreHeapTuple(tuple, newslot, false);
	if (rel->rd_att->constr)
		ExecConstraints(rri, newslot, estate);

	result = table_tuple_update(rel, tid, newslot, estate->es_output_cid,
								estate->es_snapshot, InvalidSnapshot, true,
								&tmfd, &lockmode, &update_indexes);
	switch (result)
	{
		case TM_Ok:
			break;
		case TM_Updated:
		case TM_Deleted:
			/* a client wrote the row after the snapshot: see the file's header */
			ExecClearTuple(newslot);
			return false;
		default:
			elog(ERROR, "migrate_ext: unexpected result %d updating a row of table \"%s\" in a backfill batch",
				 (int) result, RelationGetRelationName(rel));
	}
	if (update_indexes && rri->ri_NumIndices > 0)
	{
		recheck = ExecInsertIndexTuples(rri, newslot, estate, true, false, NULL, NIL);
		/* nothing deferred: bf_direct_refusal sends such tables to the UPDATE */
		Assert(recheck == NIL);
		list_free(recheck);
	}
	ExecClearTuple(newslot);
	return true;
}

static int
bf_tid_cmp(const void *a, const void *b)
{
	return ItemPointerCompare((ItemPointer) a, (ItemPointer) b);
}

/*
 * Write the rows of a batch that need it (column 2 of rows, column 1 their
 * ctid), in physical order.  Returns how many it wrote.
 */
static int64
bf_apply_rows(Relation rel, MigMigration *m, MigRows *rows)
{
	ItemPointerData *tids = palloc(sizeof(ItemPointerData) * Max(rows->numvals, 1));
	int			ntids = 0;
	int64		written = 0;
	ResultRelInfo *rri;
	EState	   *estate;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	int			nestlevel;
	void	   *dwcache = NULL;

	for (uint64 r = 0; r < rows->numvals; r++)
	{
		bool		isnull;
		Datum		needs = heap_getattr(rows->vals[r], 2, rows->tupdesc, &isnull);

		if (!isnull && DatumGetBool(needs))
			tids[ntids++] = *(ItemPointer) DatumGetPointer(heap_getattr(rows->vals[r], 1,
																		rows->tupdesc, &isnull));
	}
	if (ntids == 0)
		return 0;
	qsort(tids, ntids, sizeof(ItemPointerData), bf_tid_cmp);

	/* as the UPDATE would refuse a table published without a replica identity */
	CheckCmdReplicaIdentity(rel, CMD_UPDATE);
	estate = bf_apply_estate(rel, m, &rri);
	oldslot = table_slot_create(rel, NULL);
	newslot = MakeSingleTupleTableSlot(RelationGetDescr(rel), &TTSOpsHeapTuple);
	PushActiveSnapshot(GetTransactionSnapshot());
	estate->es_snapshot = GetActiveSnapshot();
	nestlevel = mig_owner_user_path(NULL);
	for (int i = 0; i < ntids; i++)
	{
		MemoryContext oldcxt;

		CHECK_FOR_INTERRUPTS();
		ResetPerTupleExprContext(estate);
		oldcxt = MemoryContextSwitchTo(GetPerTupleMemoryContext(estate));
		if (bf_apply_row(rel, m->id, &tids[i], estate, rri, oldslot, newslot, &dwcache))
			written++;
		MemoryContextSwitchTo(oldcxt);
	}
	AtEOXact_GUC(false, nestlevel);
	PopActiveSnapshot();
	ExecDropSingleTupleTableSlot(oldslot);
	ExecDropSingleTupleTableSlot(newslot);
	ExecCloseIndices(rri);
	FreeExecutorState(estate);
	/* the batch's next statements see what it wrote, as after an UPDATE */
	CommandCounterIncrement();
	pfree(tids);
	return written;
}

/*
 * One batch of the walk of rel, the table or one of its leaves: directly
 * when bf_direct_refusal allows it, else by the walk's UPDATE.  Runs inside
 * the worker's owner switch.  Returns the new checkpoint; *seen and
 * *written count the rows covered and written.
 */
List *
bf_apply_batch(Relation rel, MigMigration *m, BfJob *job, int size,
			   double *rows_per_block, int64 *seen, int64 *written)
{
	const char *refusal = bf_direct_refusal(rel, job);
	MigRows		rows;
	List	   *end;

	Assert(InSecurityRestrictedOperation());
	bf_announce(rel, refusal);
	if (refusal != NULL)
	{
		if (bf_is_ctid(job))
			return bf_ctid_batch(rel, m, job, size, rows_per_block, seen, written);
		return bf_key_batch(rel, m, job, size, seen, written);
	}
	if (bf_is_ctid(job))
		end = bf_ctid_rows(rel, m, job, size, rows_per_block, seen, &rows);
	else
		end = bf_key_rows(rel, m, job, size, seen, &rows);
	*written = bf_apply_rows(rel, m, &rows);
	return end;
}
