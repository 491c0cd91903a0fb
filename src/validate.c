/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  mig_validate: prove, before the point of no return, that every row of
 *	  a migrating table is right.
 *
 * The table is read in physical chunks of CHUNK_BLOCKS heap blocks (a TID
 * Range Scan, sequential and cheap), each chunk one statement with its own
 * snapshot.  Between chunks this backend stops advertising an xmin
 * (mig_release_xmin), so a validation of a large table never holds back
 * vacuum for more than one chunk.  The price: a row that a concurrent
 * UPDATE moves to a chunk not yet read (or already read) may be checked
 * twice or not at all.  Such a row was written through the dual-write
 * trigger, which the trigger_enabled check vouches for; a write behind the
 * trigger's back (session_replication_role = replica, a disabled trigger)
 * that happened before the scan reached its row is caught.
 *
 * One statement per chunk computes every check's failing count; only while
 * a check still lacks example keys is a second statement run over the same
 * chunk to name them (by primary key, else a unique key, else ctid), so a
 * table full of failing rows costs no more than a clean one.
 *
 * Each chunk runs in a subtransaction: a row whose up, down or check_expr
 * raises an error makes the chunk be read again row by row, and is counted
 * in the "evaluates" check with its key, instead of ending the validation.
 * Then what contract would meet is checked (contract_predict.c).
 *
 * A partitioned table is read leaf by leaf (contract_partition.c), each
 * leaf in its own chunks, so no snapshot outlives one chunk of one leaf;
 * the dual-write trigger is checked on every leaf (PostgreSQL clones the
 * parent's to each, and a leaf's clone can be disabled on its own).
 *
 * The SQL is generated from the stored expression trees with mig_deparse()
 * under search_path = pg_catalog, pg_temp, and bound under it; the
 * statements that evaluate user code run through mig_owner_run(), as the
 * table's owner with the caller's own search_path (the one the caller's
 * writes would give the code).  The caller must own the table.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/xact.h"
#include "access/table.h"
#include "catalog/index.h"
#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/plancat.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/typcache.h"

#include "contract.h"
#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_validate);

/* 8 MB of heap per statement: ~0.1 s, and one snapshot, per chunk. */
#define CHUNK_BLOCKS	1024

/* How many failing rows a check names in its detail. */
#define MAX_EXAMPLES	5

/* One check: a condition over the chunk query's columns that a failing row meets. */
typedef struct VCheck
{
	char	   *name;
	char	   *cond;			/* NULL: not a row check (trigger_enabled) */
	char	   *what;			/* "rows where ...", for the detail */
	bool		passed;
	int64		failing;
	char	   *detail;
	List	   *examples;		/* of char *, the failing rows' keys */
	char	   *first_error;	/* "evaluates": the first error's message */
} VCheck;

/* Everything one validation run works with. */
typedef struct VRun
{
	Relation	rel;
	MigMigration *m;
	char	   *qname;			/* schema-qualified table */
	List	   *leaves;			/* what holds the rows: the table, or its leaves */
	Relation	scan_rel;		/* the one of them being read */
	char	   *scan_qname;		/* its schema-qualified name */
	char	   *key_label;		/* "id", "(a, b)" or "ctid" */
	char	   *key_expr;		/* its text form, over the table's columns */
	StringInfoData cols;		/* the chunk query's select list */
	List	   *checks;			/* of VCheck * */
	VCheck	   *errors;			/* rows where user code raised an error */
	MemoryContext cxt;			/* where results outlive SPI */
	int64		rows_checked;
	int			sample;			/* 0: exact */
	double		fraction;		/* of rows a sample reads; 1: all */
	char	   *user_path;		/* the caller's search_path, for user code */
} VRun;

static VCheck *
add_check(VRun *run, const char *name, MigPair *pair, char *cond, char *what)
{
	VCheck	   *c = palloc0(sizeof(VCheck));

	/* with several pairs each check names its pair */
	if (pair != NULL && list_length(run->m->pairs) > 1)
		c->name = psprintf("%s:%s", name, pair->new_col);
	else
		c->name = pstrdup(name);
	c->cond = cond;
	c->what = what;
	c->passed = true;
	run->checks = lappend(run->checks, c);
	return c;
}

/*
 * "a IS DISTINCT FROM b", by the type's equality; types without one (json,
 * point, xml) are compared by their text form.
 */
static char *
distinct(const char *a, const char *b, Oid typid)
{
	TypeCacheEntry *tce = lookup_type_cache(typid, TYPECACHE_EQ_OPR);

	if (OidIsValid(tce->eq_opr))
		return psprintf("%s IS DISTINCT FROM %s", a, b);
	return psprintf("%s::pg_catalog.text IS DISTINCT FROM %s::pg_catalog.text", a, b);
}

/* A column of the table by number, quoted; an error if it was dropped. */
static char *
column_sql(VRun *run, AttrNumber attnum, const char *recorded)
{
	TupleDesc	desc = RelationGetDescr(run->rel);

	if (attnum > desc->natts || TupleDescAttr(desc, attnum - 1)->attisdropped)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("column \"%s\" of table \"%s\" was dropped outside migrate_ext",
						recorded, RelationGetRelationName(run->rel)),
				 errhint("Roll the migration back with mig_abort().")));
	return pstrdup(quote_identifier(NameStr(TupleDescAttr(desc, attnum - 1)->attname)));
}

/*
 * The key that names example rows: the one the backfill walks
 * (mig_choose_key), else ctid.
 */
static void
choose_key(VRun *run)
{
	List	   *cols;
	ListCell   *lc;
	StringInfoData label;

	(void) mig_choose_key(run->rel, &cols);
	if (cols == NIL)
	{
		run->key_label = run->rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE ?
			"partition:ctid" : "ctid";
		run->key_expr = (char *) mig_partition_ctid_key(RelationGetRelid(run->rel));
		return;
	}
	initStringInfo(&label);
	foreach(lc, cols)
		appendStringInfo(&label, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_identifier(lfirst(lc)));
	if (list_length(cols) == 1)
	{
		run->key_label = label.data;
		run->key_expr = psprintf("%s::pg_catalog.text", label.data);
	}
	else
	{
		run->key_label = psprintf("(%s)", label.data);
		run->key_expr = psprintf("ROW(%s)::pg_catalog.text", label.data);
	}
}

/*
 * The row checks of every pair, and the chunk query's select list: per
 * pair i, n<i> the new column, u<i> up(row), and where needed o<i> the old
 * column, d<i> down(row), r<i> up(row with old := down(row)), k<i> the check.
 */
static void
build_checks(VRun *run)
{
	ListCell   *lc;

	initStringInfo(&run->cols);
	foreach(lc, run->m->pairs)
	{
		MigPair    *pair = lfirst(lc);
		int			i = foreach_current_index(lc) + 1;
		char	   *newc = column_sql(run, pair->new_attnum, pair->new_col);
		char	   *oldc = column_sql(run, pair->old_attnum, pair->old_col);
		Oid			newtype = exprType(pair->up);
		char	   *n = psprintf("n%d", i);
		char	   *u = psprintf("u%d", i);
		char	   *not_backfilled = psprintf("(%s IS NULL AND %s IS NOT NULL)", n, u);

		appendStringInfo(&run->cols, "%s%s AS %s, %s AS %s",
						 i > 1 ? ", " : "", newc, n,
						 mig_deparse(pair->up, RelationGetRelid(run->rel)), u);

		add_check(run, "backfilled", pair, not_backfilled,
				  psprintf("not yet backfilled (%s NULL where up(%s) is not)", newc, oldc));
		add_check(run, "new_equals_up", pair,
				  psprintf("%s IS NOT NULL AND %s", n, distinct(n, u, newtype)),
				  psprintf("where %s differs from up(%s)", newc, oldc));

		if (pair->down)
		{
			Node	   *roundtrip;
			Oid			oldtype = exprType(pair->down);

			roundtrip = mig_subst_column(pair->up, pair->old_attnum, pair->down);
			appendStringInfo(&run->cols, ", %s AS o%d, %s AS d%d, %s AS r%d",
							 oldc, i, mig_deparse(pair->down, RelationGetRelid(run->rel)), i,
							 mig_deparse(roundtrip, RelationGetRelid(run->rel)), i);

			/*
			 * old = down(new) up to representation: text '{"a":1}' and the
			 * down of its jsonb, '{"a": 1}', are the same value to the
			 * migration.  What matters is that down(new) maps back to new.
			 */
			add_check(run, "old_matches_down", pair,
					  psprintf("NOT %s AND %s AND %s", not_backfilled,
							   distinct(psprintf("o%d", i), psprintf("d%d", i), oldtype),
							   distinct(n, psprintf("r%d", i), newtype)),
					  psprintf("where %s differs from down(%s) and down(%s) does not map back to %s under up",
							   oldc, newc, newc, newc));
		}
		/* asked for, or the old column's, which contract carries over */
		if (pair->not_null ||
			TupleDescAttr(RelationGetDescr(run->rel), pair->old_attnum - 1)->attnotnull)
			add_check(run, "not_null", pair, psprintf("%s IS NULL", n),
					  pair->not_null ? psprintf("with %s NULL", newc) :
					  psprintf("with %s NULL (%s is NOT NULL, and contract makes %s so)",
							   newc, oldc, newc));
		if (pair->check)
		{
			appendStringInfo(&run->cols, ", %s AS k%d",
							 mig_deparse(pair->check, RelationGetRelid(run->rel)), i);
			add_check(run, "check_expr", pair, psprintf("NOT k%d", i),
					  psprintf("failing check_expr (%s)", pair->check_src));
		}
	}

	/* up, down or check_expr raising an error on a row is a failing row too */
	run->errors = add_check(run, "evaluates", NULL, NULL,
							"where up, down or check_expr raise an error");
}

/* The chunk's rows: a block range, thinned to the sample fraction. */
static char *
chunk_source(VRun *run, bool with_key)
{
	return psprintf("(SELECT %s%s%s%s FROM ONLY %s "
					"WHERE ctid >= $1 AND ctid < $2%s) s",
					run->cols.data, with_key ? ", " : "", with_key ? run->key_expr : "",
					with_key ? " AS k" : "",
					run->scan_qname,
					run->fraction < 1.0 ? " AND pg_catalog.random() < $3" : "");
}

/*
 * The dual-write trigger: present, and enabled for ordinary sessions; on a
 * partitioned table on the parent and on every leaf (its clones, which
 * fire for the rows), the first that does not fire named.
 */
static void
check_trigger(VRun *run)
{
	VCheck	   *c = add_check(run, "trigger_enabled", NULL, NULL, NULL);
	char		tgenabled;
	Oid			culprit = RelationGetRelid(run->rel);
	ListCell   *lc;

	tgenabled = mig_trigger_tgenabled(culprit);
	c->failing = mig_trigger_fires(tgenabled) ? 0 : 1;
	if (run->rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
	{
		foreach(lc, run->leaves)
		{
			char		leaf_enabled = mig_trigger_tgenabled(lfirst_oid(lc));

			if (mig_trigger_fires(leaf_enabled))
				continue;
			if (c->failing++ == 0)
			{
				culprit = lfirst_oid(lc);
				tgenabled = leaf_enabled;
			}
		}
	}
	c->passed = c->failing == 0;
	if (c->failing > 0 && culprit != RelationGetRelid(run->rel))
		c->detail = psprintf("trigger %s on partition %s %s: its rows are not dual-written; enable it, then backfill and validate again",
							 MIG_TRIGGER_NAME, get_rel_name(culprit),
							 tgenabled == '\0' ? "is missing" :
							 tgenabled == TRIGGER_FIRES_ON_REPLICA ? "is enabled on replicas only" :
							 "is disabled");
	else if (tgenabled == '\0')
		c->detail = psprintf("trigger %s is missing: writes are not dual-written",
							 MIG_TRIGGER_NAME);
	else if (!c->passed)
		c->detail = psprintf("trigger %s is %s (tgenabled = '%c'): writes are not dual-written; enable it, then backfill and validate again",
							 MIG_TRIGGER_NAME,
							 tgenabled == TRIGGER_FIRES_ON_REPLICA ? "enabled on replicas only" : "disabled",
							 tgenabled);
	else
		c->detail = psprintf("trigger %s is enabled", MIG_TRIGGER_NAME);
}

/*
 * Name up to MAX_EXAMPLES failing rows of one check in one chunk.  Its own
 * statement: run only while the check still lacks examples.
 */
static void
collect_examples(VRun *run, VCheck *c, Datum *params, const char *nulls)
{
	char	   *sql;
	Oid			types[3] = {TIDOID, TIDOID, FLOAT8OID};
	MemoryContext oldcxt;
	MigRows		rows;

	sql = psprintf("SELECT k FROM %s WHERE %s LIMIT %d",
				   chunk_source(run, true), c->cond,
				   MAX_EXAMPLES - list_length(c->examples));
	(void) mig_owner_run(sql, run->fraction < 1.0 ? 3 : 2, types, params, nulls,
						 run->user_path, 0, &rows);
	oldcxt = MemoryContextSwitchTo(run->cxt);
	for (uint64 i = 0; i < rows.numvals; i++)
		c->examples = lappend(c->examples,
							  pstrdup(SPI_getvalue(rows.vals[i], rows.tupdesc, 1)));
	MemoryContextSwitchTo(oldcxt);
	pfree(sql);
}

/*
 * Count every check's failing rows in one TID range (and name examples
 * while a check lacks them).  Errors from user code propagate.
 */
static void
scan_range(VRun *run, const char *sql, Datum *params, const char *nulls)
{
	ListCell   *lc;
	int			col = 2;
	bool		isnull;
	Oid			types[3] = {TIDOID, TIDOID, FLOAT8OID};
	MigRows		rows;

	/* a fresh snapshot for this range; user code in the caller's path */
	if (mig_owner_run(sql, run->fraction < 1.0 ? 3 : 2, types, params, nulls,
					  run->user_path, 0, &rows) != 1)
		elog(ERROR, "migrate_ext: could not run the validation query");
	run->rows_checked += DatumGetInt64(SPI_getbinval(rows.vals[0], rows.tupdesc, 1,
													 &isnull));
	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);
		int64		failing;

		if (c->cond == NULL)
			continue;
		failing = DatumGetInt64(SPI_getbinval(rows.vals[0], rows.tupdesc, col++, &isnull));
		c->failing += failing;
		if (failing > 0)
			c->passed = false;
	}

	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);

		if (!c->passed && c->cond && list_length(c->examples) < MAX_EXAMPLES &&
			c->failing > list_length(c->examples))
			collect_examples(run, c, params, nulls);
	}
}

/* try_range's scan, for mig_try_subxact */
typedef struct RangeScan
{
	VRun	   *run;
	const char *sql;
	Datum	   *params;
	const char *nulls;
} RangeScan;

static void
range_scan(void *arg)
{
	RangeScan  *r = (RangeScan *) arg;

	scan_range(r->run, r->sql, r->params, r->nulls);
}

/*
 * scan_range() in a subtransaction, so that an error raised by up, down or
 * check_expr on some row is caught: returns false (and the error's message
 * in *msg) when it was.  The counts of a range that failed are undone.
 */
static bool
try_range(VRun *run, const char *sql, Datum *params, const char *nulls, char **msg)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *saved = NIL;
	int64		saved_rows = run->rows_checked;
	ListCell   *lc;
	RangeScan	r = {run, sql, params, nulls};
	bool		ok;

	MemoryContextSwitchTo(run->cxt);
	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);
		VCheck	   *copy = palloc(sizeof(VCheck));

		memcpy(copy, c, sizeof(VCheck));
		copy->examples = list_copy(c->examples);
		saved = lappend(saved, copy);
	}
	MemoryContextSwitchTo(cxt);
	ok = mig_try_subxact(range_scan, &r, run->cxt, msg);
	if (!ok)
	{
		/* back to the counts before this range */
		run->rows_checked = saved_rows;
		foreach(lc, run->checks)
			memcpy(lfirst(lc), list_nth(saved, foreach_current_index(lc)), sizeof(VCheck));
	}
	return ok;
}

/* The key of the row at a TID, read without evaluating any user code. */
static char *
row_key(VRun *run, ItemPointer tid)
{
	char	   *key = NULL;

	if (SPI_execute_with_args(psprintf("SELECT %s FROM ONLY %s WHERE ctid = $1",
									   run->key_expr, run->scan_qname),
							  1, (Oid[]) {TIDOID}, (Datum[]) {PointerGetDatum(tid)},
							  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not read a row's key");
	if (SPI_processed == 1)
		key = MemoryContextStrdup(run->cxt, SPI_getvalue(SPI_tuptable->vals[0],
														 SPI_tuptable->tupdesc, 1));
	SPI_freetuptable(SPI_tuptable);
	return key ? key : pstrdup("?");
}

/*
 * A chunk where user code raised an error: go through it row by row, each
 * row's checks in a subtransaction of their own, so that the rows that
 * raise are counted (with their keys and the first error) in the
 * "evaluates" check and every other row is checked as usual.
 */
static void
scan_rows(VRun *run, const char *sql, BlockNumber from, BlockNumber to)
{
	ItemPointerData lo;
	ItemPointerData hi;
	Datum		params[3];
	char		nulls[4] = "   ";
	List	   *tids = NIL;
	ListCell   *lc;

	ItemPointerSet(&lo, from, 0);
	ItemPointerSet(&hi, to, 0);
	if (SPI_execute_with_args(psprintf("SELECT ctid FROM ONLY %s WHERE ctid >= $1 AND ctid < $2",
									   run->scan_qname),
							  2, (Oid[]) {TIDOID, TIDOID},
							  (Datum[]) {PointerGetDatum(&lo), PointerGetDatum(&hi)},
							  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not list a chunk's rows");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		ItemPointer tid = (ItemPointer) DatumGetPointer(SPI_getbinval(SPI_tuptable->vals[i],
																	  SPI_tuptable->tupdesc, 1, &isnull));
		ItemPointer copy = palloc(sizeof(ItemPointerData));

		ItemPointerCopy(tid, copy);
		tids = lappend(tids, copy);
	}
	SPI_freetuptable(SPI_tuptable);

	params[0] = PointerGetDatum(&lo);
	params[1] = PointerGetDatum(&hi);
	params[2] = Float8GetDatum(1.0);
	foreach(lc, tids)
	{
		ItemPointer tid = lfirst(lc);
		char	   *msg = NULL;

		CHECK_FOR_INTERRUPTS();
		ItemPointerCopy(tid, &lo);
		ItemPointerSet(&hi, ItemPointerGetBlockNumber(tid), ItemPointerGetOffsetNumber(tid) + 1);
		if (try_range(run, sql, params, nulls, &msg))
			continue;
		run->rows_checked++;
		run->errors->failing++;
		run->errors->passed = false;
		if (run->errors->first_error == NULL)
			run->errors->first_error = msg;
		if (list_length(run->errors->examples) < MAX_EXAMPLES)
		{
			char	   *key = row_key(run, tid);
			MemoryContext oldcxt = MemoryContextSwitchTo(run->cxt);

			run->errors->examples = lappend(run->errors->examples, key);
			MemoryContextSwitchTo(oldcxt);
		}
	}
}

/*
 * Read one table that holds rows (the migrated table, or one of its leaf
 * partitions) chunk by chunk, counting every check's failing rows.  Each
 * chunk runs in a subtransaction: a chunk where up, down or check_expr
 * raises an error on some row is gone through again row by row.
 */
static void
scan_leaf(VRun *run, Oid leafid, const char *counts)
{
	BlockNumber nblocks;
	char	   *sql;
	ItemPointerData lo;
	ItemPointerData hi;
	Datum		params[3];
	char		nulls[4] = "   ";

	/* locked by mig_partition_leaves, or the table itself */
	run->scan_rel = leafid == RelationGetRelid(run->rel) ? run->rel :
		table_open(leafid, NoLock);
	run->scan_qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(run->scan_rel)),
												 RelationGetRelationName(run->scan_rel));
	nblocks = RelationGetNumberOfBlocks(run->scan_rel);
	sql = psprintf("%s FROM %s", counts, chunk_source(run, false));

	params[0] = PointerGetDatum(&lo);
	params[1] = PointerGetDatum(&hi);
	params[2] = Float8GetDatum(run->fraction);
	for (BlockNumber b = 0; b < nblocks; b += Min(CHUNK_BLOCKS, nblocks - b))
	{
		BlockNumber end = b + Min(CHUNK_BLOCKS, nblocks - b);
		char	   *msg;

		CHECK_FOR_INTERRUPTS();
		ItemPointerSet(&lo, b, 0);
		ItemPointerSet(&hi, end, 0);
		if (!try_range(run, sql, params, nulls, &msg))
			scan_rows(run, sql, b, end);

		/* this chunk's snapshots are done with: let vacuum move on */
		mig_release_xmin();
	}
	if (run->scan_rel != run->rel)
		table_close(run->scan_rel, NoLock);
	run->scan_rel = NULL;
}

/* Read every table that holds the rows: the table, or each leaf partition. */
static void
scan_table(VRun *run)
{
	StringInfoData counts;
	ListCell   *lc;

	initStringInfo(&counts);
	appendStringInfoString(&counts, "SELECT pg_catalog.count(*)");
	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);

		if (c->cond)
			appendStringInfo(&counts, ", pg_catalog.count(*) FILTER (WHERE %s)", c->cond);
	}

	SPI_connect();
	foreach(lc, run->leaves)
		scan_leaf(run, lfirst_oid(lc), counts.data);
	SPI_finish();
}

/*
 * What contract would meet (contract_predict.c): each a check of its own,
 * its detail already written.
 */
static void
add_predictions(VRun *run)
{
	ListCell   *lc;

	foreach(lc, mig_contract_predict(run->rel, run->m, run->user_path))
	{
		MigPrediction *p = lfirst(lc);
		VCheck	   *c = add_check(run, p->name, NULL, NULL, NULL);

		c->failing = p->failing;
		c->passed = p->failing == 0;
		c->detail = p->detail;
	}
}

/* The state of the migration's latest backfill job when it is still live. */
static char *
live_job(VRun *run, int64 *job_id)
{
	char	   *state = NULL;

	SPI_connect();
	if (mig_catalog_query("SELECT job_id, state FROM migrate_ext.progress "
							  "WHERE migration_id OPERATOR(pg_catalog.=) $1 "
							  "AND state IN ('running', 'throttled', 'paused')",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(run->m->id)},
							  NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.progress");
	if (SPI_processed > 0)
	{
		*job_id = strtoi64(SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1),
						   NULL, 10);
		state = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2);
		state = MemoryContextStrdup(TopTransactionContext, state);
	}
	SPI_finish();
	return state;
}

/* Write each check's detail from its counts and examples. */
static void
finish_details(VRun *run, const char *job_state, int64 job_id)
{
	char	   *scope;
	ListCell   *lc;

	if (run->sample == 0)
		scope = psprintf("all " INT64_FORMAT " rows checked", run->rows_checked);
	else
		scope = psprintf("random sample: " INT64_FORMAT " rows checked", run->rows_checked);

	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);
		StringInfoData buf;
		ListCell   *ec;

		if (c->cond == NULL && c != run->errors)
			continue;
		initStringInfo(&buf);
		if (job_state && strncmp(c->name, "backfilled", strlen("backfilled")) == 0)
		{
			c->passed = false;
			appendStringInfo(&buf, "backfill job " INT64_FORMAT " is still %s; ",
							 job_id, job_state);
		}
		if (c->failing > 0)
		{
			appendStringInfo(&buf, INT64_FORMAT " %s %s", c->failing,
							 c->failing == 1 ? "row" : "rows", c->what);
			foreach(ec, c->examples)
				appendStringInfo(&buf, "%s%s", foreach_current_index(ec) == 0 ?
								 psprintf(", e.g. %s ", run->key_label) : ", ",
								 (char *) lfirst(ec));
			if (c->first_error)
				appendStringInfo(&buf, "; first error: %s", c->first_error);
			appendStringInfoString(&buf, "; ");
		}
		appendStringInfoString(&buf, scope);
		c->detail = buf.data;
	}
}

/* The phase the migration had before it was validated, from the log. */
static MigPhase
phase_before_validated(int64 migration_id)
{
	MigPhase	phase = MIG_PHASE_BACKFILLED;

	SPI_connect();
	if (mig_catalog_query("SELECT phase FROM migrate_ext.phase_log "
							  "WHERE migration_id OPERATOR(pg_catalog.=) $1 AND phase OPERATOR(pg_catalog.<>) 'validated' "
							  "ORDER BY at DESC LIMIT 1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
							  NULL, false, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.phase_log");
	if (SPI_processed > 0)
		phase = mig_phase_parse(SPI_getvalue(SPI_tuptable->vals[0],
											 SPI_tuptable->tupdesc, 1));
	SPI_finish();
	return phase;
}

/* Keep the results for mig_checklist: one row per check, one run number. */
static void
store_results(VRun *run)
{
	ListCell   *lc;

	foreach(lc, run->checks)
	{
		VCheck	   *c = lfirst(lc);
		int			ord = foreach_current_index(lc) + 1;

		mig_catalog_exec(psprintf("INSERT INTO migrate_ext.validation (run, migration_id, by_role, "
								  "sample, rows_checked, ord, check_name, passed, failing, detail) "
								  "VALUES (%s, $1, $2, $3, $4, $5, $6, $7, $8, $9)",
								  ord == 1 ? "nextval('migrate_ext.validation_run_seq')"
								  : "currval('migrate_ext.validation_run_seq')"),
						 9, (Oid[]) {INT8OID, TEXTOID, INT4OID, INT8OID, INT4OID, TEXTOID,
						 BOOLOID, INT8OID, TEXTOID},
						 (Datum[]) {Int64GetDatum(run->m->id),
						 CStringGetTextDatum(GetUserNameFromId(GetUserId(), false)),
						 Int32GetDatum(run->sample), Int64GetDatum(run->rows_checked),
						 Int32GetDatum(ord), CStringGetTextDatum(c->name),
						 BoolGetDatum(c->passed), Int64GetDatum(c->failing),
						 CStringGetTextDatum(c->detail)},
						 run->sample == 0 ? "  n      " : "         ", 1);
	}
}

/*
 * mig_validate(tbl, sample)
 *
 * Runs every check over the whole table (or over about `sample` random
 * rows) and returns one row per check.  An exact run whose checks all pass
 * moves the migration to phase validated; any failed run (exact or sample:
 * a failing row is proof either way) moves a validated migration back to
 * the phase it had before.  A cut-over migration is never moved.
 */
Datum
mig_validate(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			relid;
	VRun		run;
	int			save_nestlevel;
	char	   *job_state;
	int64		job_id = 0;
	MigOwnerSave owner;
	bool		all_passed = true;
	ListCell   *lc;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be NULL")));
	relid = PG_GETARG_OID(0);
	memset(&run, 0, sizeof(run));
	run.cxt = CurrentMemoryContext;
	run.fraction = 1.0;
	if (!PG_ARGISNULL(1))
	{
		run.sample = PG_GETARG_INT32(1);
		if (run.sample <= 0)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("sample must be a positive number of rows"),
					 errhint("Omit it for an exact validation of every row.")));
	}

	InitMaterializedSRF(fcinfo, 0);

	/* AccessShareLock, held to the end: the table's shape must not change */
	run.rel = mig_open_table(relid, AccessShareLock);
	run.leaves = mig_partition_leaves(relid, AccessShareLock);
	run.m = mig_catalog_active(relid, false);
	run.qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(run.rel)),
										   RelationGetRelationName(run.rel));
	if (run.sample > 0)
	{
		double		tuples = 0;

		foreach(lc, run.leaves)
		{
			Relation	leaf = table_open(lfirst_oid(lc), NoLock);
			BlockNumber pages;
			double		leaf_tuples;
			double		allvisfrac;

			estimate_rel_size(leaf, NULL, &pages, &leaf_tuples, &allvisfrac);
			tuples += leaf_tuples;
			table_close(leaf, NoLock);
		}
		if (tuples > run.sample)
			run.fraction = run.sample / tuples;
	}
	job_state = live_job(&run, &job_id);

	/*
	 * The generated SQL names everything outside pg_catalog explicitly; the
	 * user code it runs sees the caller's search_path (mig_owner_run).
	 */
	run.user_path = mig_user_search_path();
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	check_trigger(&run);
	choose_key(&run);
	build_checks(&run);
	/* every row, whatever the policies: as the owner, RLS not forced */
	mig_owner_switch(relid, &owner);
	scan_table(&run);
	add_predictions(&run);
	mig_owner_restore(&owner);
	AtEOXact_GUC(true, save_nestlevel);

	finish_details(&run, job_state, job_id);
	foreach(lc, run.checks)
	{
		VCheck	   *c = lfirst(lc);
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		all_passed &= c->passed;
		values[0] = CStringGetTextDatum(c->name);
		values[1] = BoolGetDatum(c->passed);
		values[2] = Int64GetDatum(c->failing);
		values[3] = CStringGetTextDatum(c->detail);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	store_results(&run);

	if (all_passed && run.sample == 0 &&
		run.m->phase < MIG_PHASE_VALIDATED)
	{
		(void) mig_catalog_move_phase(run.m->id, run.m->phase, MIG_PHASE_VALIDATED,
									  "every check passed");
		ereport(NOTICE,
				(errmsg("the migration of table \"%s\" is validated",
						RelationGetRelationName(run.rel))));
	}
	else if (!all_passed && run.m->phase == MIG_PHASE_VALIDATED)
	{
		MigPhase	back = phase_before_validated(run.m->id);

		(void) mig_catalog_move_phase(run.m->id, MIG_PHASE_VALIDATED, back,
									  "a validation failed");
		ereport(NOTICE,
				(errmsg("the migration of table \"%s\" is no longer validated: back to phase %s",
						RelationGetRelationName(run.rel), mig_phase_name(back))));
	}

	table_close(run.rel, NoLock);
	return (Datum) 0;
}
