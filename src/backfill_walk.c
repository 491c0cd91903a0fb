/*-------------------------------------------------------------------------
 *
 * backfill_walk.c
 *	  The walk of a backfill job over its table: which key it follows (the
 *	  primary key, else a unique NOT NULL key, else physical ctid ranges),
 *	  the upper bound frozen when it starts, the checks that the ground did
 *	  not move under it, and the SQL of one batch: where the batch ends, and
 *	  the UPDATE that makes the dual-write trigger compute the new values,
 *	  or, for the direct batch (backfill_apply.c), the one query that lists
 *	  the batch's rows and which of them need writing.
 *	  The worker (backfill_worker.c) runs these in its batch transactions;
 *	  nothing here commits or sleeps, and what the walk needs of the
 *	  worker's state comes in as arguments.
 *
 * Concurrent client writes (backfill_apply.c says how the direct batch
 * meets them).  The UPDATE runs in READ COMMITTED with
 * mig_backfill_writes set, so the dual-write trigger computes new := up(row)
 * from the row version that is actually being written (a BEFORE ROW trigger
 * fires on the version the UPDATE locked).  When a client updated a row
 * after the batch's snapshot was taken, the UPDATE waits for it and then
 * re-checks the latest version (EvalPlanQual): the WHERE clause "new IS
 * NULL OR new IS DISTINCT FROM up(old)" is evaluated again on the client's
 * version, which the client's trigger already made right, so the row is
 * skipped and the client's value wins; if it is still not right, the
 * trigger computes from that latest version, never from the stale one.  A client that
 * updates a row after the batch wrote it waits for the batch and builds on
 * its version, and its trigger computes new from the client's old value.
 * Either way new = up(old) holds when both have committed.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/partition.h"
#include "catalog/pg_am.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_index.h"
#include "catalog/pg_namespace.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "commands/defrem.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "backfill.h"
#include "contract.h"
#include "migrate_ext.h"

#define BF_SMALL_TABLE_BLOCKS	1280	/* count rows_total exactly below this */

/* ----------------------------------------------------------------
 *		Small helpers
 * ----------------------------------------------------------------
 */

/* A List of C strings as a text[] datum: how key values are stored. */
Datum
bf_text_array(List *l)
{
	Datum	   *elems = palloc(sizeof(Datum) * Max(list_length(l), 1));
	ListCell   *lc;
	int			i = 0;

	foreach(lc, l)
		elems[i++] = CStringGetTextDatum((char *) lfirst(lc));
	return PointerGetDatum(construct_array(elems, i, TEXTOID, -1, false, TYPALIGN_INT));
}

bool
bf_lists_equal(List *a, List *b)
{
	ListCell   *la,
			   *lb;

	if (list_length(a) != list_length(b))
		return false;
	forboth(la, a, lb, b)
		if (strcmp(lfirst(la), lfirst(lb)) != 0)
		return false;
	return true;
}

/* ----------------------------------------------------------------
 *		The walk
 * ----------------------------------------------------------------
 */

/* Does the walk follow physical ctid ranges rather than a key? */
bool
bf_is_ctid(BfJob *job)
{
	return strcmp(job->key_kind, "ctid") == 0;
}

static BlockNumber
bf_block_of(const char *tidtext)
{
	ItemPointer ip = (ItemPointer) DatumGetPointer(DirectFunctionCall1(tidin,
																	   CStringGetDatum(tidtext)));

	return ItemPointerGetBlockNumberNoCheck(ip);
}

static Datum
bf_block_tid(BlockNumber blk)
{
	ItemPointer ip = palloc(sizeof(ItemPointerData));

	ItemPointerSet(ip, blk, 0);
	return PointerGetDatum(ip);
}

static char *
bf_block_text(BlockNumber blk)
{
	return DatumGetCString(DirectFunctionCall1(tidout, bf_block_tid(blk)));
}

/*
 * The walk of one table (or leaf): choose the key, freeze the upper bound,
 * and count the rows (exactly for a small table, else the planner's
 * estimate; -1: unknown).  Sets job's key_kind, key_cols, lower_key (NIL),
 * upper_key and walk_relfilenode.
 */
void
bf_walk_bounds(Relation rel, BfJob *job, int64 *total, bool *exact)
{
	const char *qname = mig_qualified_name(RelationGetRelid(rel));
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
	ListCell   *lc;

	*total = -1;
	*exact = false;
	job->key_kind = (char *) mig_choose_key(rel, &job->key_cols);
	job->lower_key = NIL;
	job->upper_key = NIL;
	job->stripe_end = NIL;		/* no striped window (backfill_apply.c) */
	job->stripe_next = 0;
	job->stripe_count = 0;
	job->stripe_halves = 0;
	if (bf_is_ctid(job))
	{
		if (nblocks > 0)
			job->upper_key = list_make1(bf_block_text(nblocks));
	}
	else
	{
		StringInfoData sql;

		initStringInfo(&sql);
		appendStringInfoString(&sql, "SELECT ");
		foreach(lc, job->key_cols)
			appendStringInfo(&sql, "%s%s", foreach_current_index(lc) ? ", " : "",
							 quote_identifier(lfirst(lc)));
		appendStringInfo(&sql, " FROM ONLY %s ORDER BY ", qname);
		foreach(lc, job->key_cols)
			appendStringInfo(&sql, "%s%s DESC", foreach_current_index(lc) ? ", " : "",
							 quote_identifier(lfirst(lc)));
		appendStringInfoString(&sql, " LIMIT 1");
		if (SPI_execute(sql.data, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not read the upper bound of the backfill");
		if (SPI_processed == 1)
			for (int i = 1; i <= list_length(job->key_cols); i++)
				job->upper_key = lappend(job->upper_key,
										 SPI_getvalue(SPI_tuptable->vals[0],
													  SPI_tuptable->tupdesc, i));
	}

	if (nblocks == 0)
	{
		*total = 0;
		*exact = true;
	}
	else if (nblocks <= BF_SMALL_TABLE_BLOCKS)
	{
		bool		isnull;

		if (SPI_execute(psprintf("SELECT count(*) FROM ONLY %s", qname), false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not count the rows to backfill");
		*total = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
		*exact = true;
	}
	else if (rel->rd_rel->reltuples >= 0 && rel->rd_rel->relpages > 0)
		*total = (int64) (rel->rd_rel->reltuples / rel->rd_rel->relpages * nblocks);
	job->walk_relfilenode = rel->rd_rel->relfilenode;
}

/*
 * First batch of a job: choose the key, freeze the upper bound, estimate
 * the rows, and move the migration to backfilling.  Sets the worker's
 * *rows_per_block and *vacuum_every from the estimate.
 */
void
bf_start_walk(Relation rel, MigMigration *m, BfJob *job, int64 job_id,
			  double *rows_per_block, int64 *vacuum_every)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(rel);
	int64		total;
	bool		exact;

	bf_walk_bounds(rel, job, &total, &exact);
	*rows_per_block = (total > 0 && nblocks > 0) ? (double) total / nblocks : 100;
	*vacuum_every = Max(BF_VACUUM_MIN_ROWS, (int64) (BF_VACUUM_FRACTION * Max(total, 0)));

	mig_job_start_walk(job_id, job->key_kind, bf_text_array(job->key_cols),
					   job->upper_key ? bf_text_array(job->upper_key) : (Datum) 0,
					   job->upper_key == NIL, total, exact, job->walk_relfilenode);

	if (m->phase == MIG_PHASE_EXPANDED)
		mig_catalog_set_phase(m->id, MIG_PHASE_EXPANDED, MIG_PHASE_BACKFILLING, NULL);
}

/*
 * Does this constraint (of a trigger on the table) cover a new column: its
 * columns on the table, or for a foreign key that references the table, the
 * referenced ones?
 */
static bool
bf_constraint_on_new(Oid conoid, MigMigration *m)
{
	HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	bool		isnull;
	Datum		d;
	ArrayType  *arr;
	int16	   *cols;
	int			n;
	ListCell   *lc;

	if (!HeapTupleIsValid(tup))
		return false;
	d = SysCacheGetAttr(CONSTROID, tup,
						((Form_pg_constraint) GETSTRUCT(tup))->conrelid == m->relid ?
						Anum_pg_constraint_conkey : Anum_pg_constraint_confkey, &isnull);
	if (isnull)
	{
		ReleaseSysCache(tup);
		return false;
	}
	arr = DatumGetArrayTypeP(d);
	cols = (int16 *) ARR_DATA_PTR(arr);
	n = ARR_DIMS(arr)[0];
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		for (int i = 0; i < n; i++)
			if (cols[i] == p->new_attnum)
			{
				ReleaseSysCache(tup);
				return true;
			}
	}
	ReleaseSysCache(tup);
	return false;
}

/*
 * A batch that skips the table's other triggers runs with
 * session_replication_role = replica, where triggers marked ENABLE ALWAYS or
 * ENABLE REPLICA still fire: user code that would then write other tables
 * with their own triggers and foreign-key checks skipped, a power the
 * table's owner does not have.  So a table with such a trigger (other than
 * ours and PostgreSQL's internal ones) needs fire_triggers, as does one with
 * a constraint on a new column that a trigger checks (a foreign key, a
 * deferrable unique or exclusion constraint, added by hand before contract):
 * replica skips those triggers too, and on a new column the batch changes
 * the value they check (on the other columns it changes no key).  Returns
 * what to say, or NULL.
 */
static char *
bf_replica_triggers(Relation rel, MigMigration *m, const char **hint)
{
	TriggerDesc *trigdesc = rel->trigdesc;
	const char *relname = RelationGetRelationName(rel);

	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if (t->tgisinternal && OidIsValid(t->tgconstraint) &&
			bf_constraint_on_new(t->tgconstraint, m))
		{
			*hint = psprintf("Let the backfill fire the table's triggers with mig_set('%s', 'fire_triggers', 'on') and continue with mig_resume('%s'), or add the constraint after the backfill.",
							 relname, relname);
			return psprintf("table \"%s\" has constraint \"%s\" on a new column, checked by a trigger that the session_replication_role = replica the backfill uses to skip the other triggers would skip",
							relname, get_constraint_name(t->tgconstraint));
		}
		if (t->tgisinternal || strcmp(t->tgname, MIG_TRIGGER_NAME) == 0 ||
			(t->tgenabled != TRIGGER_FIRES_ALWAYS && t->tgenabled != TRIGGER_FIRES_ON_REPLICA))
			continue;
		*hint = psprintf("Let the backfill fire the table's triggers with mig_set('%s', 'fire_triggers', 'on') and continue with mig_resume('%s'), or make the trigger ENABLE (origin) while it runs.",
						 relname, relname);
		return psprintf("table \"%s\" has trigger \"%s\" %s, which would run under the session_replication_role = replica that the backfill uses to skip the other triggers, where its own writes would skip the triggers and foreign-key checks of other tables",
						relname, t->tgname,
						t->tgenabled == TRIGGER_FIRES_ALWAYS ? "ENABLE ALWAYS" : "ENABLE REPLICA");
	}
	return NULL;
}

/*
 * Has the ground moved under the job?  Returns NULL when all is as the job
 * needs it, else what changed; *hint says what to do.
 */
char *
bf_ground_moved(Relation rel, MigMigration *m, BfJob *job, const char **hint)
{
	const char *relname = RelationGetRelationName(rel);
	TupleDesc	desc = RelationGetDescr(rel);
	TriggerDesc *trigdesc = rel->trigdesc;
	Trigger    *trig = NULL;
	char		idbuf[32];
	char	   *moved;
	ListCell   *lc;

	snprintf(idbuf, sizeof(idbuf), INT64_FORMAT, m->id);
	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
		if (strcmp(trigdesc->triggers[i].tgname, MIG_TRIGGER_NAME) == 0)
			trig = &trigdesc->triggers[i];
	if (trig == NULL || trig->tgnargs != 1 || strcmp(trig->tgargs[0], idbuf) != 0)
	{
		*hint = psprintf("Client writes are no longer kept in step: abort with mig_abort('%s') and start the migration again.",
						 relname);
		return psprintf("the dual-write trigger \"%s\" of table \"%s\" was dropped",
						MIG_TRIGGER_NAME, relname);
	}
	if (!mig_trigger_fires(trig->tgenabled))
	{
		*hint = psprintf("Enable it again (ALTER TABLE %s ENABLE ALWAYS TRIGGER %s), then run mig_backfill('%s') again: rows that clients wrote meanwhile may be out of step, and a new job rewrites every row that is not right.",
						 quote_identifier(relname), MIG_TRIGGER_NAME, relname);
		return psprintf("the dual-write trigger \"%s\" of table \"%s\" was disabled",
						MIG_TRIGGER_NAME, relname);
	}
	if (!job->fire_triggers && trig->tgenabled != TRIGGER_FIRES_ALWAYS)
	{
		/* the batch skips every trigger that is not ENABLE ALWAYS */
		*hint = psprintf("Enable it again as ALTER TABLE %s ENABLE ALWAYS TRIGGER %s (for a migration begun before migrate_ext 0.2, ALTER EXTENSION migrate_ext UPDATE does it), then continue with mig_resume('%s').",
						 quote_identifier(relname), MIG_TRIGGER_NAME, relname);
		return psprintf("the dual-write trigger \"%s\" of table \"%s\" is no longer ENABLE ALWAYS, so the backfill, which runs with session_replication_role = replica to skip the table's other triggers, would not fire it",
						MIG_TRIGGER_NAME, relname);
	}

	if (!job->fire_triggers && (moved = bf_replica_triggers(rel, m, hint)) != NULL)
		return moved;

	*hint = psprintf("Abort the migration with mig_abort('%s') and start it again.", relname);
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		Form_pg_attribute att;
		ListCell   *lv;

		if (p->new_attnum > desc->natts ||
			(att = TupleDescAttr(desc, p->new_attnum - 1))->attisdropped)
			return psprintf("new column \"%s\" of table \"%s\" was dropped", p->new_col, relname);
		/* by OID and typmod: the text differs under another search_path */
		if (att->atttypid != exprType(p->up) ||
			(exprTypmod(p->up) >= 0 && att->atttypmod != exprTypmod(p->up)))
			return psprintf("new column \"%s\" of table \"%s\" changed type from %s to %s",
							NameStr(att->attname), relname, p->new_type,
							format_type_with_typemod(att->atttypid, att->atttypmod));
		foreach(lv, pull_var_clause(p->up, 0))
		{
			Var		   *var = lfirst(lv);

			if (var->varattno <= 0)
				continue;
			if (var->varattno > desc->natts ||
				(att = TupleDescAttr(desc, var->varattno - 1))->attisdropped)
				return psprintf("a column that the up expression of \"%s\" reads was dropped from table \"%s\"",
								p->new_col, relname);
			if (att->atttypid != var->vartype || att->atttypmod != var->vartypmod)
				return psprintf("column \"%s\" of table \"%s\", which the up expression of \"%s\" reads, changed type",
								NameStr(att->attname), relname, p->new_col);
		}
	}

	foreach(lc, job->key_cols)
	{
		if (get_attnum(RelationGetRelid(rel), lfirst(lc)) == InvalidAttrNumber)
		{
			*hint = psprintf("Start a new job with mig_backfill('%s'): it walks the current key.", relname);
			return psprintf("key column \"%s\" that the backfill of table \"%s\" walks is gone",
							(char *) lfirst(lc), relname);
		}
	}
	return NULL;
}

/* "(a, b)" or "a", the key columns as a row. */
static char *
bf_key_row(List *cols, bool desc)
{
	StringInfoData s;
	ListCell   *lc;

	initStringInfo(&s);
	if (list_length(cols) > 1 && !desc)
		appendStringInfoChar(&s, '(');
	foreach(lc, cols)
		appendStringInfo(&s, "%s%s%s", foreach_current_index(lc) ? ", " : "",
						 quote_identifier(lfirst(lc)), desc ? " DESC" : "");
	if (list_length(cols) > 1 && !desc)
		appendStringInfoChar(&s, ')');
	return s.data;
}

/* "($3, $4)" or "$3", parameters first..first+n-1 as a row. */
static char *
bf_param_row(int first, int n)
{
	StringInfoData s;

	initStringInfo(&s);
	if (n > 1)
		appendStringInfoChar(&s, '(');
	for (int i = 0; i < n; i++)
		appendStringInfo(&s, "%s$%d", i ? ", " : "", first + i);
	if (n > 1)
		appendStringInfoChar(&s, ')');
	return s.data;
}

/* Key values (text) as parameters of the key columns' types. */
static void
bf_key_params(Relation rel, List *cols, List *values, Oid *types, Datum *datums)
{
	ListCell   *lc,
			   *lv;
	int			i = 0;

	forboth(lc, cols, lv, values)
	{
		AttrNumber	attnum = get_attnum(RelationGetRelid(rel), lfirst(lc));
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
		Oid			typinput;
		Oid			typioparam;

		getTypeInputInfo(att->atttypid, &typinput, &typioparam);
		types[i] = att->atttypid;
		datums[i] = OidInputFunctionCall(typinput, lfirst(lv), typioparam, att->atttypmod);
		i++;
	}
}

/*
 * "SET new1 = new1, ..." and the filter "new1 IS NULL OR new1 IS DISTINCT
 * FROM (up1) OR ...".  The dual-write trigger computes every new value from
 * the row version it writes (mig_backfill_writes), and skips the row when
 * they are all right already; so up() is computed once per row written
 * (twice would be the price of SET new1 = (up1)), and a first backfill,
 * where the new columns are NULL, does not compute it in the filter at all.
 * A rerun filters out, without locking them, the rows that are right.
 * Types without a built-in equality (json, or one defined outside
 * pg_catalog) are compared as text.  The UPDATEs run through
 * mig_owner_run(): bound under search_path = pg_catalog, pg_temp, as the
 * deparsed expressions expect, run under the owner's.
 */
static void
bf_update_clauses(Relation rel, MigMigration *m, StringInfo set, StringInfo filter)
{
	ListCell   *lc;

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), p->new_attnum - 1);
		const char *col = quote_identifier(NameStr(att->attname));
		char	   *up = mig_deparse(p->up, RelationGetRelid(rel));
		TypeCacheEntry *tce = lookup_type_cache(att->atttypid, TYPECACHE_EQ_OPR);
		Oid			upcoll = exprCollation(p->up);
		const char *sep = foreach_current_index(lc) ? ", " : "";
		const char *or = foreach_current_index(lc) ? " OR " : "";

		appendStringInfo(set, "%s%s = %s", sep, col, col);
		if (!OidIsValid(tce->eq_opr) || mig_operator_namespace(tce->eq_opr) != PG_CATALOG_NAMESPACE)
			appendStringInfo(filter, "%s%s IS NULL OR %s::text IS DISTINCT FROM (%s)::text",
							 or, col, col, up);
		else if (OidIsValid(att->attcollation) && OidIsValid(upcoll) &&
				 upcoll != att->attcollation)
			appendStringInfo(filter, "%s%s IS NULL OR %s IS DISTINCT FROM (%s) COLLATE %s",
							 or, col, col, up, generate_collation_name(att->attcollation));
		else
			appendStringInfo(filter, "%s%s IS NULL OR %s IS DISTINCT FROM (%s)", or, col, col, up);
	}
}

/*
 * The key range (lower, upper] of a key walk's next batch, as a condition
 * on parameters $1...: appends it to range, fills types and values, and
 * returns how many parameters it took.
 */
static int
bf_key_range(Relation rel, BfJob *job, StringInfo range, Oid *types, Datum *values)
{
	int			nk = list_length(job->key_cols);
	int			np = 0;

	if (job->lower_key)
	{
		bf_key_params(rel, job->key_cols, job->lower_key, types, values);
		appendStringInfo(range, "%s > %s AND ", bf_key_row(job->key_cols, false),
						 bf_param_row(1, nk));
		np = nk;
	}
	bf_key_params(rel, job->key_cols, job->upper_key, types + np, values + np);
	appendStringInfo(range, "%s <= %s", bf_key_row(job->key_cols, false),
					 bf_param_row(np + 1, nk));
	return np + nk;
}

/* The walk's key columns, quoted, as a comma-separated list (new in cols). */
static void
bf_key_list(List *key_cols, StringInfo cols)
{
	ListCell   *lc;

	initStringInfo(cols);
	foreach(lc, key_cols)
		appendStringInfo(cols, "%s%s", foreach_current_index(lc) ? ", " : "",
						 quote_identifier(lfirst(lc)));
}

/*
 * One batch along a key: the rows of (lower, end], end being the size-th
 * key after lower or, near the end, the frozen upper bound.  Returns the
 * new checkpoint; *seen and *written count the rows covered and written.
 */
List *
bf_key_batch(Relation rel, MigMigration *m, BfJob *job, int size,
			 int64 *seen, int64 *written)
{
	int			nk = list_length(job->key_cols);
	const char *qname = mig_qualified_name(RelationGetRelid(rel));
	Oid		   *types = palloc(sizeof(Oid) * (3 * nk + 1));
	Datum	   *values = palloc(sizeof(Datum) * (3 * nk + 1));
	StringInfoData range;
	StringInfoData cols;
	StringInfoData sql;
	StringInfoData set;
	StringInfoData filter;
	int			np = 0;
	List	   *end = NIL;
	bool		isnull;

	Assert(nk > 0 && size > 0);
	Assert(job->upper_key != NIL && list_length(job->upper_key) == nk);
	/* (lower, upper] and the batch size */
	initStringInfo(&range);
	np = bf_key_range(rel, job, &range, types, values);

	/* the size-th key after lower; none: the last batch, up to upper */
	bf_key_list(job->key_cols, &cols);
	types[np] = INT8OID;
	values[np] = Int64GetDatum(size - 1);
	initStringInfo(&sql);
	appendStringInfo(&sql, "SELECT %s FROM ONLY %s WHERE %s ORDER BY %s OFFSET $%d LIMIT 1",
					 cols.data, qname, range.data, cols.data, np + 1);
	if (SPI_execute_with_args(sql.data, np + 1, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not find the end of a backfill batch");
	if (SPI_processed == 1)
	{
		*seen = size;
		for (int i = 1; i <= nk; i++)
			end = lappend(end, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i));
	}
	else
	{
		resetStringInfo(&sql);
		appendStringInfo(&sql, "SELECT count(*) FROM ONLY %s WHERE %s", qname, range.data);
		if (SPI_execute_with_args(sql.data, np, types, values, NULL, false, 1) != SPI_OK_SELECT)
			elog(ERROR, "could not count the rows of a backfill batch");
		*seen = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
											1, &isnull));
		end = job->upper_key;
	}

	/* the same range, up to end */
	np -= nk;
	bf_key_params(rel, job->key_cols, end, types + np, values + np);
	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	resetStringInfo(&sql);
	appendStringInfo(&sql, "UPDATE ONLY %s SET %s WHERE %s AND (%s)",
					 qname, set.data, range.data, filter.data);
	*written = mig_owner_run(sql.data, np + nk, types, values, NULL, NULL, 0, NULL);
	return end;
}

/*
 * The blocks [*lo, *end) of a batch over physical ctid ranges: from the
 * checkpoint, as many blocks as hold about size rows at rows_per_block, or
 * up to the number of blocks the table had when the job started.
 */
static void
bf_ctid_range(BfJob *job, int size, double rows_per_block, BlockNumber *lo, BlockNumber *end)
{
	BlockNumber hi = bf_block_of(linitial(job->upper_key));
	BlockNumber nblocks = (BlockNumber) Max(1.0, size / Max(rows_per_block, 1.0));

	*lo = job->lower_key ? bf_block_of(linitial(job->lower_key)) : 0;
	*end = (hi - *lo <= nblocks) ? hi : *lo + nblocks;
	Assert(*lo <= *end && *end <= hi);
}

/*
 * One batch over physical ctid ranges: blocks [lower, lower + n) where n
 * blocks hold about size rows, or up to the number of blocks the table had
 * when the job started.  Returns the new checkpoint.  *rows_per_block, the
 * worker's estimate, sizes the range and is refined from what it holds.
 */
List *
bf_ctid_batch(Relation rel, MigMigration *m, BfJob *job, int size,
			  double *rows_per_block, int64 *seen, int64 *written)
{
	const char *qname = mig_qualified_name(RelationGetRelid(rel));
	BlockNumber lo;
	BlockNumber end;
	Oid			types[2] = {TIDOID, TIDOID};
	Datum		values[2];
	StringInfoData set;
	StringInfoData filter;
	bool		isnull;

	bf_ctid_range(job, size, *rows_per_block, &lo, &end);
	values[0] = bf_block_tid(lo);
	values[1] = bf_block_tid(end);
	if (SPI_execute_with_args(psprintf("SELECT count(*) FROM ONLY %s WHERE ctid >= $1 AND ctid < $2",
									   qname),
							  2, types, values, NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not count the rows of a backfill batch");
	*seen = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	if (*seen > 0)
		*rows_per_block = (double) *seen / (end - lo);

	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	*written = mig_owner_run(psprintf("UPDATE ONLY %s SET %s WHERE ctid >= $1 AND ctid < $2 AND (%s)",
									  qname, set.data, filter.data),
							 2, types, values, NULL, NULL, 0, NULL);
	return list_make1(bf_block_text(end));
}

/*
 * The direct batch's rows along a key (backfill_apply.c writes them): the
 * first size rows of (lower, upper] in key order, each with its ctid and
 * whether it needs writing, by the filter the batch's UPDATE would use
 * (bf_update_clauses), in one ordered query instead of the end key, the
 * count and the UPDATE's scan.  Fewer than size rows: the last batch, which
 * ends at upper, as bf_key_batch's does.  Rows are left in *rows: ctid,
 * needs writing, then the key columns.  Returns the new checkpoint.
 */
List *
bf_key_rows(Relation rel, MigMigration *m, BfJob *job, int size, int64 *seen,
			MigRows *rows)
{
	int			nk = list_length(job->key_cols);
	Oid		   *types = palloc(sizeof(Oid) * (2 * nk + 1));
	Datum	   *values = palloc(sizeof(Datum) * (2 * nk + 1));
	StringInfoData range;
	StringInfoData set;
	StringInfoData filter;
	StringInfoData cols;
	List	   *end = NIL;
	int			np;

	Assert(nk > 0 && size > 0);
	Assert(job->upper_key != NIL && list_length(job->upper_key) == nk);
	initStringInfo(&range);
	np = bf_key_range(rel, job, &range, types, values);
	types[np] = INT8OID;
	values[np] = Int64GetDatum(size);
	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	bf_key_list(job->key_cols, &cols);
	(void) mig_owner_run(psprintf("SELECT ctid, (%s), %s FROM ONLY %s WHERE %s ORDER BY %s LIMIT $%d",
								  filter.data, cols.data,
								  mig_qualified_name(RelationGetRelid(rel)), range.data,
								  cols.data, np + 1),
						 np + 1, types, values, NULL, NULL, 0, rows);
	*seen = (int64) rows->numvals;
	if (rows->numvals < (uint64) size)
		return job->upper_key;
	for (int i = 3; i <= nk + 2; i++)
		end = lappend(end, SPI_getvalue(rows->vals[rows->numvals - 1], rows->tupdesc, i));
	return end;
}

/*
 * The direct batch's rows over physical ctid ranges: the blocks that
 * bf_ctid_batch would cover, each row with its ctid and whether it needs
 * writing (bf_update_clauses's filter), in one scan instead of the count
 * and the UPDATE's.  Returns the new checkpoint.
 */
List *
bf_ctid_rows(Relation rel, MigMigration *m, BfJob *job, int size,
			 double *rows_per_block, int64 *seen, MigRows *rows)
{
	BlockNumber lo;
	BlockNumber end;
	Oid			types[2] = {TIDOID, TIDOID};
	Datum		values[2];
	StringInfoData set;
	StringInfoData filter;

	bf_ctid_range(job, size, *rows_per_block, &lo, &end);
	values[0] = bf_block_tid(lo);
	values[1] = bf_block_tid(end);
	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	(void) mig_owner_run(psprintf("SELECT ctid, (%s) FROM ONLY %s WHERE ctid >= $1 AND ctid < $2",
								  filter.data, mig_qualified_name(RelationGetRelid(rel))),
						 2, types, values, NULL, NULL, 0, rows);
	*seen = (int64) rows->numvals;
	if (*seen > 0)
		*rows_per_block = (double) *seen / (end - lo);
	return list_make1(bf_block_text(end));
}

/*
 * The rows a failed batch covered, in walk order, at most limit: their ctid
 * first, then their key values (none for a ctid walk), left in SPI_tuptable.
 */
static void
bf_batch_rows(Relation rel, BfJob *job, int limit)
{
	const char *qname = mig_qualified_name(RelationGetRelid(rel));
	int			nk = list_length(job->key_cols);
	Oid		   *types = palloc(sizeof(Oid) * (2 * nk + 2));
	Datum	   *values = palloc(sizeof(Datum) * (2 * nk + 2));
	StringInfoData sql;
	int			np = 0;

	initStringInfo(&sql);
	if (bf_is_ctid(job))
	{
		types[0] = types[1] = TIDOID;
		values[0] = bf_block_tid(job->lower_key ? bf_block_of(linitial(job->lower_key)) : 0);
		values[1] = bf_block_tid(bf_block_of(linitial(job->upper_key)));
		np = 2;
		appendStringInfo(&sql, "SELECT ctid FROM ONLY %s WHERE ctid >= $1 AND ctid < $2 ORDER BY ctid",
						 qname);
	}
	else
	{
		ListCell   *lc;

		appendStringInfoString(&sql, "SELECT ctid");
		foreach(lc, job->key_cols)
			appendStringInfo(&sql, ", %s", quote_identifier(lfirst(lc)));
		appendStringInfo(&sql, " FROM ONLY %s WHERE ", qname);
		if (job->lower_key)
		{
			bf_key_params(rel, job->key_cols, job->lower_key, types, values);
			appendStringInfo(&sql, "%s > %s AND ", bf_key_row(job->key_cols, false),
							 bf_param_row(1, nk));
			np = nk;
		}
		bf_key_params(rel, job->key_cols, job->upper_key, types + np, values + np);
		appendStringInfo(&sql, "%s <= %s ORDER BY %s", bf_key_row(job->key_cols, false),
						 bf_param_row(np + 1, nk), bf_key_row(job->key_cols, false));
		np += nk;
	}
	if (SPI_execute_with_args(sql.data, np, types, values, NULL, true, limit) != SPI_OK_SELECT)
		elog(ERROR, "could not read the rows of a failed backfill batch");
}

/*
 * Does the batch's UPDATE of rows [lo, hi) fail?  Tried in a subtransaction
 * that is always rolled back: nothing is written.
 */
static bool
bf_rows_fail(const char *sql, SPITupleTable *rows, uint64 lo, uint64 hi)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	Datum	   *tids = palloc(sizeof(Datum) * (hi - lo));
	Datum		arr;
	volatile bool failed = false;

	Assert(lo < hi);
	for (uint64 r = lo; r < hi; r++)
	{
		bool		isnull;

		tids[r - lo] = SPI_getbinval(rows->vals[r], rows->tupdesc, 1, &isnull);
	}
	arr = PointerGetDatum(construct_array(tids, (int) (hi - lo), TIDOID, sizeof(ItemPointerData),
										  false, TYPALIGN_SHORT));

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcxt);
	PG_TRY();
	{
		(void) mig_owner_run(sql, 1, (Oid[]) {TIDARRAYOID}, &arr, NULL, NULL, 0, NULL);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(oldcxt);
		FlushErrorState();
		failed = true;
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	pfree(tids);
	return failed;
}

/* "id = 42", "(a, b) = (1, x)" or "ctid (3,7)": row r of bf_batch_rows. */
static char *
bf_row_name(BfJob *job, SPITupleTable *rows, uint64 r)
{
	HeapTuple	tup = rows->vals[r];
	int			nk = list_length(job->key_cols);
	StringInfoData key;

	initStringInfo(&key);
	if (bf_is_ctid(job))
	{
		appendStringInfo(&key, "ctid %s", SPI_getvalue(tup, rows->tupdesc, 1));
		return key.data;
	}
	appendStringInfo(&key, "%s = ", bf_key_row(job->key_cols, false));
	if (nk > 1)
		appendStringInfoChar(&key, '(');
	for (int i = 0; i < nk; i++)
		appendStringInfo(&key, "%s%s", i ? ", " : "", SPI_getvalue(tup, rows->tupdesc, i + 2));
	if (nk > 1)
		appendStringInfoChar(&key, ')');
	return key.data;
}

/*
 * A batch failed with an error that is not a lock wait or a cancel: which
 * row?  Bisects the first limit rows after the checkpoint (the failed batch
 * was no larger), in walk order, running the batch's UPDATE on prefixes of
 * them by ctid, each time in a subtransaction rolled back at once: about
 * log2(limit) statements.  Returns the first row that fails (bf_row_name),
 * or NULL when they all pass together (the error was not the rows').  Runs as the batch does: as the owner, with the same settings;
 * writes nothing.  A row a client moved meanwhile is skipped, as the batch
 * would: the client's write made it right.
 */
char *
bf_failing_row(Relation rel, MigMigration *m, BfJob *job, int limit)
{
	const char *qname = mig_qualified_name(RelationGetRelid(rel));
	SPITupleTable *rows;
	uint64		lo = 0;
	uint64		hi;
	StringInfoData set;
	StringInfoData filter;
	char	   *sql;

	Assert(limit > 0 && job->upper_key != NIL);
	initStringInfo(&set);
	initStringInfo(&filter);
	bf_update_clauses(rel, m, &set, &filter);
	sql = psprintf("UPDATE ONLY %s SET %s WHERE ctid OPERATOR(pg_catalog.=) ANY ($1) AND (%s)",
				   qname, set.data, filter.data);

	bf_batch_rows(rel, job, limit);
	rows = SPI_tuptable;
	hi = SPI_processed;
	if (hi == 0 || !bf_rows_fail(sql, rows, 0, hi))
		return NULL;

	/*
	 * The shortest failing prefix: rows [0, lo) pass, [0, hi) fail, so row
	 * hi - 1 is the first that fails.  Prefixes, not halves, so that a
	 * failure that takes two rows (a duplicate under a unique constraint)
	 * names the second.
	 */
	lo = 0;
	while (hi - lo > 1)
	{
		uint64		mid = lo + (hi - lo) / 2;

		if (bf_rows_fail(sql, rows, 0, mid))
			hi = mid;
		else
			lo = mid;
	}
	return bf_row_name(job, rows, hi - 1);
}

/*
 * Was the table rewritten (VACUUM FULL, CLUSTER, SET TABLESPACE, TRUNCATE)
 * since its ctid walk started?  Its rows then sit in other blocks of a new
 * file, and the checkpoint means nothing: the walk must start again, from
 * block 0 up to the new file's size (which holds every row the old bound
 * did, and rows already right are skipped without a write).  A key walk
 * does not care.  A job from before walk_relfilenode was recorded starts
 * again too: it cannot tell.  A catalog older than the library, which
 * cannot record the file, is not checked.
 */
bool
bf_rewritten(Relation rel, BfJob *job)
{
	if (job->key_kind == NULL || !bf_is_ctid(job) || !job->walk_known)
		return false;
	return job->walk_relfilenode != rel->rd_rel->relfilenode;
}

/* Has the checkpoint reached the bound frozen when the walk started? */
bool
bf_walk_complete(BfJob *job)
{
	if (job->upper_key == NIL)
		return true;
	if (job->lower_key == NIL)
		return false;
	if (bf_is_ctid(job))
		return bf_block_of(linitial(job->lower_key)) >= bf_block_of(linitial(job->upper_key));
	return bf_lists_equal(job->lower_key, job->upper_key);
}

/* ----------------------------------------------------------------
 *		Slices: the leaves of a partitioned table, or ranges of one heap
 * ----------------------------------------------------------------
 */

/* Record one slice of a job, walked from lower (NIL: the start) to upper. */
static void
bf_insert_slice(int64 job_id, int slice_no, Relation rel, BfJob *walk, List *lower,
				List *upper, int64 rows)
{
	MigSlice	s;

	s.job_id = job_id;
	s.slice_no = slice_no;
	s.relid = RelationGetRelid(rel);
	s.relname = mig_qualified_name(s.relid);
	s.key_kind = walk->key_kind;
	s.key_cols = bf_text_array(walk->key_cols);
	s.lower_key = lower ? bf_text_array(lower) : (Datum) 0;
	s.upper_key = upper ? bf_text_array(upper) : (Datum) 0;
	s.rows_total = rows;
	s.relfilenode = walk->walk_relfilenode;
	mig_slice_insert(&s);
}

/*
 * The leaf partitions of parent that are not in known (relids already
 * sliced): one slice each, numbered from *next_no on, with the leaf's own
 * key (its primary key includes the partition key) or ctid walk and bound.
 * Adds their rows to *total (unless unknown, then *exact is false).
 * Returns how many slices it added.
 */
int
bf_plan_leaves(Relation parent, int64 job_id, List *known, int *next_no,
			   int64 *total, bool *exact)
{
	int			added = 0;
	ListCell   *lc;

	foreach(lc, mig_partition_leaves(RelationGetRelid(parent), AccessShareLock))
	{
		Oid			leafid = lfirst_oid(lc);
		Relation	leaf;
		BfJob		walk = {0};
		int64		rows;
		bool		rows_exact;

		if (list_member_oid(known, leafid))
			continue;
		leaf = table_open(leafid, NoLock);
		bf_walk_bounds(leaf, &walk, &rows, &rows_exact);
		bf_insert_slice(job_id, (*next_no)++, leaf, &walk, NIL, walk.upper_key, rows);
		table_close(leaf, NoLock);
		if (rows >= 0)
			*total += rows;
		*exact = *exact && rows_exact;
		added++;
	}
	return added;
}

/*
 * The key that has n keys before it in the walk's range (lower, upper], or
 * NIL when there are not that many.
 */
static List *
bf_nth_key(Relation rel, BfJob *walk, int64 n)
{
	int			nk = list_length(walk->key_cols);
	Oid		   *types = palloc(sizeof(Oid) * (2 * nk + 1));
	Datum	   *values = palloc(sizeof(Datum) * (2 * nk + 1));
	StringInfoData range;
	StringInfoData cols;
	List	   *key = NIL;
	int			np;

	initStringInfo(&range);
	np = bf_key_range(rel, walk, &range, types, values);
	types[np] = INT8OID;
	values[np] = Int64GetDatum(Max(n, 0));
	bf_key_list(walk->key_cols, &cols);
	if (SPI_execute_with_args(psprintf("SELECT %s FROM ONLY %s WHERE %s ORDER BY %s OFFSET $%d LIMIT 1",
									   cols.data, mig_qualified_name(RelationGetRelid(rel)),
									   range.data, cols.data, np + 1),
							  np + 1, types, values, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not split the backfill into ranges");
	if (SPI_processed == 1)
		for (int i = 1; i <= nk; i++)
			key = lappend(key, SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, i));
	return key;
}

/*
 * What is left of a walk, from its checkpoint (NIL: the start) to its bound,
 * split for parallel workers into up to n disjoint ranges numbered from
 * first_no: key ranges (lower, upper] cut about every rows/n keys, each cut
 * read from the one before it (OFFSET over the range, so the whole split
 * reads the remainder's keys once), or block ranges [lower, upper) of a ctid
 * walk.  rows is how many rows are left (an estimate; -1: unknown).  Returns
 * how many it made (fewer when fewer rows are left).
 */
static int
bf_cut_ranges(Relation rel, int64 job_id, BfJob *walk, int first_no, int n, int64 rows)
{
	List	   *lower = walk->lower_key;
	int			made = 0;

	if (walk->upper_key == NIL || bf_walk_complete(walk))
		return 0;
	if (rows < 2L * n)
		n = 1;
	if (bf_is_ctid(walk))
	{
		BlockNumber lo = lower ? bf_block_of(linitial(lower)) : 0;
		BlockNumber nblocks = bf_block_of(linitial(walk->upper_key)) - lo;

		n = Min(n, (int) Max(nblocks, 1));
		for (int i = 0; i < n; i++)
		{
			BlockNumber hi = lo + (BlockNumber) ((uint64) nblocks * (i + 1) / n);
			List	   *upper = list_make1(bf_block_text(hi));

			bf_insert_slice(job_id, first_no + made++, rel, walk, lower, upper,
							rows >= 0 ? rows / n : -1);
			lower = upper;
		}
		return made;
	}
	for (int i = 1; i <= n; i++)
	{
		BfJob		rest = *walk;
		List	   *upper;

		/* the next cut, rows / n keys after the last one */
		rest.lower_key = lower;
		upper = i == n ? walk->upper_key :
			bf_nth_key(rel, &rest, rows * i / n - rows * (i - 1) / n - 1);
		if (upper == NIL || (lower && bf_lists_equal(lower, upper)))
			continue;
		bf_insert_slice(job_id, first_no + made++, rel, walk, lower, upper,
						rows >= 0 ? rows / n : -1);
		lower = upper;
		if (bf_lists_equal(upper, walk->upper_key))
			break;
	}
	return made;
}

/*
 * One heap split for parallel workers into n disjoint ranges, numbered
 * from 0 (bf_cut_ranges), when its job starts.  Returns how many it made.
 */
int
bf_plan_ranges(Relation rel, int64 job_id, int n, int64 *total, bool *exact)
{
	BfJob		walk = {0};

	bf_walk_bounds(rel, &walk, total, exact);
	return bf_cut_ranges(rel, job_id, &walk, 0, n, *total);
}

/*
 * A running walk of one key goes parallel: what is left of it, from its
 * checkpoint to its frozen bound, split into up to n ranges numbered from
 * first_no, each with the walk's key and table file (bf_cut_ranges).
 * Returns how many.
 */
int
bf_plan_remainder(Relation rel, BfJob *job, int64 job_id, int first_no, int n,
				  int64 rows_left)
{
	Assert(job->key_kind != NULL && job->stripe_end == NIL);
	return bf_cut_ranges(rel, job_id, job, first_no, n, rows_left);
}

/*
 * The migration as seen from a leaf partition: the attribute numbers of
 * its pairs and the Vars of its expressions mapped from the parent's
 * columns to the leaf's (a partition attached from a table of its own may
 * number its columns differently, or have dropped ones).
 */
MigMigration *
bf_leaf_migration(MigMigration *m, Relation parent, Relation leaf)
{
	MigMigration *lm = palloc(sizeof(MigMigration));
	ListCell   *lc;

	*lm = *m;
	lm->pairs = NIL;
	foreach(lc, m->pairs)
	{
		MigPair    *p = palloc(sizeof(MigPair));

		*p = *(MigPair *) lfirst(lc);
		p->old_attnum = get_attnum(RelationGetRelid(leaf), p->old_col);
		p->new_attnum = get_attnum(RelationGetRelid(leaf), p->new_col);
		p->up = linitial(map_partition_varattnos(list_make1(p->up), 1, leaf, parent));
		if (p->down)
			p->down = linitial(map_partition_varattnos(list_make1(p->down), 1, leaf, parent));
		if (p->check)
			p->check = linitial(map_partition_varattnos(list_make1(p->check), 1, leaf, parent));
		lm->pairs = lappend(lm->pairs, p);
	}
	return lm;
}
