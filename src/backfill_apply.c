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
#include "storage/latch.h"
#include "storage/proc.h"
#include "storage/procarray.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/wait_event.h"

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
 * Write the rows at tids (sorted), in physical order.  With prune, before
 * the first row of each page, PostgreSQL may prune it (heap_page_prune_opt, as an
 * index scan does; heap_fetch does not): the versions that the window's
 * earlier stripes moved off the page are dead and committed by now, and the
 * space they free lets this stripe's writes stay on the page (HOT, no index
 * entry).  A page past the end of the table was truncated since the
 * listing (a VACUUM between stripes): nothing live was on it, so its rows
 * had moved, right, or gone.  Returns how many rows it wrote.
 */
static int64
bf_write_tids(Relation rel, MigMigration *m, ItemPointerData *tids, int ntids, bool prune)
{
	int64		written = 0;
	ResultRelInfo *rri;
	EState	   *estate;
	TupleTableSlot *oldslot;
	TupleTableSlot *newslot;
	int			nestlevel;
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
	BlockNumber pruned = InvalidBlockNumber;
	void	   *dwcache = NULL;

	if (ntids == 0)
		return 0;
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
		BlockNumber blk = ItemPointerGetBlockNumber(&tids[i]);
		MemoryContext oldcxt;

		CHECK_FOR_INTERRUPTS();
		Assert(i == 0 || ItemPointerCompare(&tids[i - 1], &tids[i]) <= 0);
		if (blk >= nblocks)
			continue;
		if (prune && blk != pruned)
		{
			Buffer		buf = ReadBuffer(rel, blk);

			heap_page_prune_opt(rel, buf);
			ReleaseBuffer(buf);
			pruned = blk;
		}
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
	return written;
}

/* Does row r of a listing (ctid, needs writing, ...) need writing? */
static bool
bf_row_needs(MigRows *rows, uint64 r, ItemPointer tid)
{
	bool		isnull;
	Datum		needs = heap_getattr(rows->vals[r], 2, rows->tupdesc, &isnull);

	if (isnull || !DatumGetBool(needs))
		return false;
	*tid = *(ItemPointer) DatumGetPointer(heap_getattr(rows->vals[r], 1, rows->tupdesc, &isnull));
	return true;
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
	int64		written;

	for (uint64 r = 0; r < rows->numvals; r++)
		if (bf_row_needs(rows, r, &tids[ntids]))
			ntids++;
	qsort(tids, ntids, sizeof(ItemPointerData), bf_tid_cmp);
	written = bf_write_tids(rel, m, tids, ntids, false);
	pfree(tids);
	return written;
}

/* ----------------------------------------------------------------
 *		The striped window
 * ----------------------------------------------------------------
 */

/*
 * Why stripes.  A batch that writes every row of a run of consecutive keys
 * leaves the table's indexes twice their compact size: the rows grow, no
 * longer fit on their full pages, so every write is a non-HOT update that
 * adds an entry to every index; the primary key's leaf pages (built with
 * fillfactor 90: room for one entry in ten more) get a second entry for
 * each of their keys inside one transaction, and split, because btree's
 * bottom-up deletion cannot remove entries whose old versions are the
 * batch's own, not yet dead.  So the worker lists a window of
 * S batches' worth of rows once (S: migrate_ext.backfill_stripes, 10) and
 * writes it in S transactions, stripe k writing the rows at positions p (in
 * walk order) with p % S == k: each transaction adds at most one entry per ten
 * keys to a leaf, which its free space holds; by the next stripe the
 * previous one's old versions are dead and committed, so bottom-up deletion
 * (the "index unchanged" hint of bf_apply_estate) removes their entries
 * before the leaf would split, and pruning the heap page before writing to
 * it (bf_write_tids) frees the space they took, so that later stripes'
 * writes can stay on their page (HOT: no index entry at all).  Ten stripes:
 * fewer would overfill a leaf's 10% within one transaction; more cost more
 * transactions and a larger window for nothing.
 *
 * Halves (parallel jobs).  "By the next stripe the previous one's old
 * versions are dead" needs every snapshot older than its commit gone
 * (bf_stripe_settle waits for that, at most one batch's time), and the
 * job's other workers always have a transaction open across our commit:
 * with two workers each stripe waited for the other's, and the stripes
 * bought nothing once the wait timed out.  A parallel job (parallel > 1,
 * BfJob.halves) lists 2S batches' worth and writes its two halves in turn (stripe
 * k writes half k % 2), so that two stripes on the same pages have a whole
 * transaction of the worker's between them, in which the other workers'
 * transactions end: the wait is almost always over before it starts.  A
 * job of one worker keeps one half: with the intermediate VACUUMs of one
 * worker (every 5% of the rows) recording the free space of the window's
 * pages, each half's moved rows would fill the other half's pages, and
 * nearly every later write would move too (measured: 5% of the writes HOT
 * instead of 55%); a parallel job's workers VACUUM at least half as often
 * (bf_run), where this does not happen (56%).
 *
 * Checkpoint.  The job's (or slice's) lower_key stays at the window's start
 * until its last stripe commits; meanwhile stripe_end holds the window's
 * bound, stripe_next the next stripe and stripe_count, stripe_halves its
 * layout, committed with each stripe's rows.
 *
 * No row is missed, none written twice:
 *  - every row present at the listing is in exactly one stripe, and its
 *    stripe writes it at its listed TID unless a client moved it since
 *    (then the client's write fired the dual-write trigger, ENABLE ALWAYS,
 *    which made it right: see the file's header);
 *  - a row that reaches the window after the listing (inserted, or its key
 *    updated into it) came through the trigger, right;
 *  - a TID reused since the listing (VACUUM, pruning) holds a version made
 *    after the listing, by the trigger or a batch: right, so
 *    mig_dualwrite_backfill_row leaves it alone;
 *  - when the worker's listing is not the one the checkpoint's stripes came
 *    from (a crash, a restart, pause and resume, another worker taking the
 *    slice: the listing lives in worker memory only), it lists the window
 *    (lower, stripe_end] again, keeps only the rows that still need writing
 *    (the filter: those the committed stripes wrote are right), and gives
 *    them to the remaining stripes stripe_next..S-1 (S: all the window's
 *    stripes, of both halves): each to the stripe of its position, cut in
 *    the layout recorded with the checkpoint (a mig_set of parallel, which
 *    changes the halves, or a new backfill_stripes applies from the next
 *    window), so that rows_seen counts each row of the window once however
 *    often it is resumed; a row whose position moved before stripe_next
 *    (a client's insert or delete in the window) to them in turn;
 *  - a table rewrite between two stripes (VACUUM FULL, CLUSTER: every TID
 *    changes) gives it a new relfilenode: the listing records the one it
 *    read, each stripe compares it under its lock on the table (which a
 *    rewrite's ACCESS EXCLUSIVE lock excludes while the stripe runs) and
 *    lists the window again when it changed; a ctid walk has restarted
 *    already (bf_batch_target), which drops the window;
 *  - a retry after a failed stripe, or a table whose batches now go through
 *    UPDATE (bf_direct_refusal), writes one plain batch from lower_key and
 *    drops the window: the filter finds what the window's stripes left.
 */
#define BF_MAX_STRIPES			32	/* migrate_ext.backfill_stripes's maximum */
#define BF_MAX_HALVES			2	/* a window's halves, written in turn */

/* The stripes of a window: S in each of its halves. */
#define bf_window_stripes(job)	((job)->halves * mig_backfill_stripes)
#define BF_WINDOW_MAX_ROWS		250000	/* worker memory: ctid, flag, key */

typedef struct BfStripeRow
{
	ItemPointerData tid;
	uint8		stripe;
} BfStripeRow;

/* The listing of the window in progress, in worker memory. */
typedef struct BfWindow
{
	bool		valid;
	int64		migration_id;
	Oid			relid;
	Oid			relfilenode;	/* the table's file the listing read */
	List	   *lower;			/* the window: (lower, end] (ctid: [lower, end)) */
	List	   *end;
	int			nstripes;		/* halves * migrate_ext.backfill_stripes */
	int			halves;
	int			apart;			/* stripes between two on the same pages */
	int			expect;			/* the stripe this listing writes next */
	TransactionId last_xid[BF_MAX_HALVES];	/* of the last stripe of each half
										 * that wrote rows */
	int			nrows;
	BfStripeRow *rows;			/* those to write, in TID order */
	int64		seen[BF_MAX_HALVES * BF_MAX_STRIPES];	/* rows each stripe covers */
	int			count[BF_MAX_HALVES * BF_MAX_STRIPES];	/* rows each stripe writes */
	MemoryContext cxt;
} BfWindow;

static BfWindow bf_window;

static int
bf_stripe_row_cmp(const void *a, const void *b)
{
	return ItemPointerCompare(&((BfStripeRow *) a)->tid, &((BfStripeRow *) b)->tid);
}

static List *
bf_copy_strings(List *l)
{
	List	   *copy = NIL;
	ListCell   *lc;

	foreach(lc, l)
		copy = lappend(copy, pstrdup(lfirst(lc)));
	return copy;
}

/*
 * Is the worker's listing the one the checkpoint's window came from?  Its
 * layout (halves, stripes) is the listing's own: a mig_set of parallel or a
 * new migrate_ext.backfill_stripes applies from the next window, since the
 * stripes already committed covered the rows of their positions in this
 * layout, and a layout cut anew would count some of them again, or miss
 * some, in rows_seen.
 */
static bool
bf_window_current(Relation rel, MigMigration *m, BfJob *job)
{
	BfWindow   *w = &bf_window;

	return w->valid && job->stripe_end != NIL &&
		w->migration_id == m->id && w->relid == RelationGetRelid(rel) &&
		w->relfilenode == rel->rd_rel->relfilenode &&
		w->expect == job->stripe_next &&
		bf_lists_equal(w->lower, job->lower_key) && bf_lists_equal(w->end, job->stripe_end);
}

/*
 * List the window and spread its rows over its nstripes stripes (S).  A new
 * window (first == 0): S * size rows from lower_key, row p of the listing in
 * stripe p % S (of its half, with halves).  A window resumed at stripe
 * first, in the layout it was listed in (job->halves and nstripes): its rows
 * (lower_key, stripe_end] again, those that still need writing in the
 * stripes of their positions, first..S-1.
 */
static void
bf_window_list(Relation rel, MigMigration *m, BfJob *job, int size, int first,
			   int nstripes, double *rows_per_block)
{
	BfWindow   *w = &bf_window;
	MigRows		rows;
	int64		listed;
	List	   *end;
	int			halves = job->halves;
	int			left = nstripes - first;
	uint64		half;
	int			nshifted = 0;
	MemoryContext oldcxt;

	Assert(first >= 0 && first < nstripes && halves >= 1 && halves <= BF_MAX_HALVES &&
		   nstripes % halves == 0 && nstripes <= BF_MAX_HALVES * BF_MAX_STRIPES);
	if (first == 0)
	{
		size = Min(size, BF_WINDOW_MAX_ROWS / nstripes) * nstripes;
		if (bf_is_ctid(job))
			end = bf_ctid_rows(rel, m, job, size, rows_per_block, &listed, &rows);
		else
			end = bf_key_rows(rel, m, job, size, &listed, &rows);
	}
	else
	{
		BfJob		window = *job;
		double		rpb = *rows_per_block;

		/* the whole window: its bound as the walk's, and no size limit */
		window.upper_key = job->stripe_end;
		if (bf_is_ctid(job))
			end = bf_ctid_rows(rel, m, &window, INT_MAX, &rpb, &listed, &rows);
		else
			end = bf_key_rows(rel, m, &window, INT_MAX, &listed, &rows);
		Assert(bf_lists_equal(end, job->stripe_end));
	}

	if (w->cxt == NULL)
		w->cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext stripes",
									   ALLOCSET_DEFAULT_SIZES);
	MemoryContextReset(w->cxt);
	oldcxt = MemoryContextSwitchTo(w->cxt);
	w->valid = true;
	w->migration_id = m->id;
	w->relid = RelationGetRelid(rel);
	w->relfilenode = rel->rd_rel->relfilenode;
	w->lower = bf_copy_strings(job->lower_key);
	w->end = bf_copy_strings(end);
	w->nstripes = nstripes;
	w->halves = halves;
	w->apart = halves;
	w->expect = first;
	memset(w->last_xid, 0, sizeof(w->last_xid));
	w->rows = palloc(sizeof(BfStripeRow) * Max(rows.numvals, 1));
	w->nrows = 0;
	half = (rows.numvals + halves - 1) / halves;
	memset(w->seen, 0, sizeof(w->seen));
	memset(w->count, 0, sizeof(w->count));
	for (uint64 r = 0; r < rows.numvals; r++)
	{
		BfStripeRow *row = &w->rows[w->nrows];
		int			pos = (int) (halves * ((r % half) % (nstripes / halves)) + r / half);

		/*
		 * Covered once.  A row right already: by the stripe of its position,
		 * if that is still to run (those before it ran).  A row to write: by
		 * the stripe of its position too, so that a window resumed again
		 * finds the rows its committed stripes wrote before first, as in the
		 * first listing; one that sits before first all the same (rows
		 * deleted, inserted or moved since the first listing shift the
		 * positions; a layout not recorded) goes to the remaining stripes in
		 * turn, and is covered by the stripe that writes it.
		 */
		if (!bf_row_needs(&rows, r, &row->tid))
		{
			if (pos >= first)
				w->seen[pos]++;
			continue;
		}
		row->stripe = (uint8) (pos >= first ? pos : first + nshifted++ % left);
		w->seen[row->stripe]++;
		w->count[row->stripe]++;
		w->nrows++;
	}
	qsort(w->rows, w->nrows, sizeof(BfStripeRow), bf_stripe_row_cmp);
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Before the next stripe's transaction (called by the worker before it
 * starts it, outside any transaction: a snapshot of its own would hold the
 * horizon back too): wait, at most max_ms, until no other session's
 * snapshot is older than the commit of the last stripe on the same pages
 * (the one before, or the one before that with halves), so that the versions it
 * left dead are removable and the next stripe's index inserts can delete
 * their entries bottom-up instead of splitting the leaf, and pruning can
 * free their space.  Another backfill worker of the same job (parallel)
 * always has a transaction running across our commit; without the wait the
 * stripes would not help it at all (the key 1.99x its compact size with two
 * workers).  A longer client transaction is not waited for beyond max_ms.
 */
void
bf_stripe_settle(int max_ms)
{
	BfWindow   *w = &bf_window;
	TransactionId *last;
	TimestampTz until;

	if (!w->valid)
		return;
	last = &w->last_xid[w->expect % w->apart];
	if (!TransactionIdIsValid(*last))
		return;
	until = TimestampTzPlusMilliseconds(GetCurrentTimestamp(), max_ms);
	for (;;)
	{
		int			n;
		VirtualTransactionId *older = GetCurrentVirtualXIDs(*last, true, false,
														   PROC_IN_VACUUM | PROC_IN_SAFE_IC, &n);

		pfree(older);
		if (n == 0 || GetCurrentTimestamp() >= until)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH, 5,
						 PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	*last = InvalidTransactionId;
}

/*
 * One stripe of the window in progress, or the first of a new one.
 * Returns the checkpoint: lower_key until the window's last stripe, then
 * the window's end; sets job's stripe_end and stripe_next for the
 * checkpoint.
 */
static List *
bf_stripe_batch(Relation rel, MigMigration *m, BfJob *job, int size,
				double *rows_per_block, int64 *seen, int64 *written)
{
	BfWindow   *w = &bf_window;
	int			k = job->stripe_end != NIL ? job->stripe_next : 0;
	ItemPointerData *tids;
	int			ntids = 0;
	int			next;

	/* a listing in memory goes on in its own layout (bf_window_current) */
	if (k == 0 || !bf_window_current(rel, m, job))
	{
		int			nstripes = bf_window_stripes(job);

		/*
		 * A window resumed from its checkpoint alone is cut in the layout it
		 * was listed in, whatever parallel or migrate_ext.backfill_stripes
		 * became since (bf_window_current); a checkpoint without one (written
		 * by an older library) in today's, and when backfill_stripes was
		 * lowered, the rest goes in the last stripe.
		 */
		if (job->stripe_end != NIL && k > 0 &&
			job->stripe_halves >= 1 && job->stripe_halves <= BF_MAX_HALVES &&
			job->stripe_count > k && job->stripe_count % job->stripe_halves == 0 &&
			job->stripe_count <= BF_MAX_HALVES * BF_MAX_STRIPES)
		{
			job->halves = job->stripe_halves;
			nstripes = job->stripe_count;
		}
		k = Min(Max(k, 0), nstripes - 1);
		if (job->stripe_end == NIL || k == 0)
			bf_window_list(rel, m, job, size, 0, nstripes, rows_per_block);
		else
		{
			if (w->valid && w->relid == RelationGetRelid(rel) &&
				w->relfilenode != rel->rd_rel->relfilenode)
				ereport(LOG,
						(errmsg("migrate_ext: table %s was rewritten between two stripes of a backfill window; the window's rows are listed again",
								mig_qualified_name(RelationGetRelid(rel)))));
			bf_window_list(rel, m, job, size, k, nstripes, rows_per_block);
		}
	}
	Assert(w->valid && w->expect == k && k < w->nstripes);

	tids = palloc(sizeof(ItemPointerData) * Max(w->count[k], 1));
	for (int i = 0; i < w->nrows; i++)
		if (w->rows[i].stripe == k)
			tids[ntids++] = w->rows[i].tid;
	Assert(ntids == w->count[k]);
	*written = bf_write_tids(rel, m, tids, ntids, true);
	pfree(tids);
	if (*written > 0)
		w->last_xid[k % w->apart] = GetTopTransactionIdIfAny();

	/* the next stripe with rows to write; those without are covered now */
	*seen = w->seen[k];
	for (next = k + 1; next < w->nstripes && w->count[next] == 0; next++)
		*seen += w->seen[next];
	w->expect = next;
	if (next == w->nstripes)
	{
		List	   *end = bf_copy_strings(w->end);

		w->valid = false;
		job->stripe_end = NIL;
		job->stripe_next = 0;
		return end;
	}
	job->stripe_end = bf_copy_strings(w->end);
	job->stripe_next = next;
	job->stripe_count = w->nstripes;
	job->stripe_halves = w->halves;
	return job->lower_key;
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
	if (mig_backfill_stripes <= 1)
		job->striped = false;
	if (refusal != NULL || !job->striped)
	{
		/* one plain batch from lower_key: a window in progress is dropped */
		job->stripe_end = NIL;
		job->stripe_next = 0;
	}
	job->write_path = refusal ? psprintf("UPDATE: %s", refusal) :
		job->striped ? "direct, striped" : "direct";
	if (refusal != NULL)
	{
		if (bf_is_ctid(job))
			return bf_ctid_batch(rel, m, job, size, rows_per_block, seen, written);
		return bf_key_batch(rel, m, job, size, seen, written);
	}
	if (job->striped)
		return bf_stripe_batch(rel, m, job, size, rows_per_block, seen, written);
	if (bf_is_ctid(job))
		end = bf_ctid_rows(rel, m, job, size, rows_per_block, seen, &rows);
	else
		end = bf_key_rows(rel, m, job, size, seen, &rows);
	*written = bf_apply_rows(rel, m, &rows);
	return end;
}
