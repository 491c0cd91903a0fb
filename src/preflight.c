/*-------------------------------------------------------------------------
 *
 * preflight.c
 *	  mig_preflight: find the rows a migration would choke on, before
 *	  mig_expand, changing nothing.
 *
 * Dirty data otherwise shows itself by breaking the application: right
 * after expand, a client write of a value up cannot convert fails.  This
 * dry run cooks up and check_expr exactly as mig_expand would (same
 * parser, same errors) and evaluates them over every row, reporting the
 * rows whose up raises an error, is NULL where the new column will be NOT
 * NULL, fails check_expr, or collides with another row's in a unique index
 * or constraint of the old column that contract would rebuild.
 *
 * A partitioned table is read leaf by leaf (every leaf, whatever its
 * depth; a foreign leaf is refused), each as a table on its own; the
 * expressions, keys and unique indexes are the parent's, naming columns,
 * which every leaf names alike.
 *
 * The table is read as mig_validate reads it: in chunks of CHUNK_BLOCKS
 * heap blocks (TID Range Scans), each one statement with its own snapshot,
 * the xmin horizon released between chunks (mig_release_xmin), and nothing
 * stronger than AccessShareLock taken.  A chunk runs in a subtransaction;
 * when up raises an error in it, the chunk is run again block by block, and
 * a failing block row by row, so each failing row is named with its error
 * and the others are still checked.  Uniqueness is global, so the new keys
 * go into a tuplesort (spilling to disk past work_mem, holding no snapshot)
 * that is read back once the scan is done.
 *
 * User code (up, check_expr, domain checks, index expressions) runs as the
 * table's owner in a security-restricted operation, under the caller's
 * search_path; the statements this file generates are deparsed for and
 * bound under search_path = pg_catalog, pg_temp (mig_owner_run).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_type.h"
#include "storage/bufmgr.h"
#include "storage/itemptr.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/sortsupport.h"
#include "utils/tuplesort.h"
#include "utils/typcache.h"

#include "contract.h"
#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_preflight);

/*
 * 2 MB of heap per statement: every row of a chunk comes back to C (its
 * flags and unique keys), so chunks are smaller than mig_validate's.
 */
#define CHUNK_BLOCKS	256

/* How many failing rows a check names in its detail. */
#define MAX_EXAMPLES	5

/* One line of the result. */
typedef struct PCheck
{
	char	   *name;
	char	   *what;			/* "rows where ...", for the detail */
	bool		passed;
	int64		failing;
	int64		groups;			/* unique checks: colliding groups */
	char	   *note;			/* why it could not be checked, or NULL */
	List	   *examples;		/* of char * */
} PCheck;

/* A unique index of the old column, rebuilt by contract on the new one. */
typedef struct PUnique
{
	PCheck	   *check;
	char	   *index_name;
	int			nkeys;
	int			firstcol;		/* chunk query column of its first key */
	bool		nulls_not_distinct;
	bool		started;		/* start_sort() was tried */
	TupleDesc	desc;			/* the keys, then the row's key text */
	TupleTableSlot *slot;		/* of desc, to feed the sort */
	Tuplesortstate *sort;
	SortSupport ssup;
} PUnique;

/* Everything one preflight works with. */
typedef struct PRun
{
	Relation	rel;
	char	   *qname;
	char	   *key_label;		/* "id", "(a, b)" or "ctid" */
	char	   *key_expr;		/* its text form */
	AttrNumber	old_attnum;
	Node	   *up;
	Node	   *check;			/* over the row, new column substituted */
	bool		not_null;
	bool		not_null_inherited; /* the old column is NOT NULL */
	PCheck	   *up_check;
	PCheck	   *null_check;
	PCheck	   *check_check;
	List	   *uniques;		/* of PUnique * */
	List	   *checks;			/* of PCheck *, in output order */
	StringInfoData inner;		/* the chunk query's inner select list */
	StringInfoData outer;		/* and its outer one */
	int			ncols;			/* columns of the outer select list */
	Relation	scanrel;		/* the leaf being read: rel, or a partition */
	char	   *chunk_sql;		/* run by mig_owner_run() */
	SPIPlanPtr	rows_plan;		/* runs no user code */
	char	   *up_sql;			/* run by mig_owner_run() */
	char	   *user_path;		/* the caller's search_path, for user code */
	MigRows		got;			/* what try_range() read, in rowcxt */
	int64		rows;
	MemoryContext cxt;			/* the function's: results live here */
	MemoryContext rowcxt;		/* one chunk's (or row's) work, then reset */
} PRun;

static PCheck *
add_check(PRun *run, const char *name, const char *what)
{
	PCheck	   *c = palloc0(sizeof(PCheck));

	c->name = pstrdup(name);
	c->what = pstrdup(what);
	c->passed = true;
	run->checks = lappend(run->checks, c);
	return c;
}

static void
add_example(PRun *run, PCheck *c, char *example)
{
	c->passed = false;
	c->failing++;
	if (list_length(c->examples) < MAX_EXAMPLES)
	{
		/* the list outlives the row's memory */
		MemoryContext oldcxt = MemoryContextSwitchTo(run->cxt);

		c->examples = lappend(c->examples, pstrdup(example));
		MemoryContextSwitchTo(oldcxt);
	}
}

/*
 * Casts printed as the calls they are.  Deparsed, an implicit cast
 * disappears and an explicit one reads back as a CAST, which for a length
 * coercion (varchar(n), bit(n)) truncates where the cooked assignment
 * coercion raises an error; "varchar"(x, 26, false) means what the tree
 * means.
 */
static Node *
calls_as_written(Node *node, void *context)
{
	if (node == NULL)
		return NULL;
	node = expression_tree_mutator(node, calls_as_written, context);
	if (IsA(node, FuncExpr) &&
		((FuncExpr *) node)->funcformat != COERCE_EXPLICIT_CALL &&
		((FuncExpr *) node)->funcformat != COERCE_SQL_SYNTAX)
		((FuncExpr *) node)->funcformat = COERCE_EXPLICIT_CALL;
	return node;
}

/*
 * The table as mig_expand sees it once it has added the new column: a
 * copy of the relcache entry whose tuple descriptor has one more
 * attribute, so that check_expr, which names the new column, is cooked by
 * mig_cook_expr exactly as expand cooks it.  Only the parser reads it.
 */
static Relation
relation_with_new_column(Relation rel, const char *name, Oid typid,
						 int32 typmod, Oid collid)
{
	Relation	fake = palloc(sizeof(RelationData));
	TupleDesc	old = RelationGetDescr(rel);
	TupleDesc	desc = CreateTemplateTupleDesc(old->natts + 1);

	memcpy(fake, rel, sizeof(RelationData));
	for (int i = 1; i <= old->natts; i++)
		TupleDescCopyEntry(desc, i, old, i);
	TupleDescInitEntry(desc, old->natts + 1, name, typid, typmod, 0);
	TupleDescInitEntryCollation(desc, old->natts + 1, collid);
	fake->rd_att = desc;
	return fake;
}

/*
 * The key that names example rows: the primary key, else a unique index on
 * plain NOT NULL columns without a predicate, else ctid.
 */
static void
choose_key(PRun *run)
{
	Oid			indexoid = RelationGetPrimaryKeyIndex(run->rel);
	ListCell   *lc;
	Relation	idx;
	StringInfoData label;
	int			nkeys;

	foreach(lc, RelationGetIndexList(run->rel))
	{
		if (OidIsValid(indexoid))
			break;
		idx = index_open(lfirst_oid(lc), AccessShareLock);
		if (idx->rd_index->indisunique && idx->rd_index->indisvalid &&
			RelationGetIndexExpressions(idx) == NIL &&
			RelationGetIndexPredicate(idx) == NIL)
		{
			bool		not_null = true;

			for (int i = 0; i < idx->rd_index->indnkeyatts; i++)
				not_null &= TupleDescAttr(RelationGetDescr(run->rel),
										  idx->rd_index->indkey.values[i] - 1)->attnotnull;
			if (not_null)
				indexoid = lfirst_oid(lc);
		}
		index_close(idx, AccessShareLock);
	}
	if (!OidIsValid(indexoid))
	{
		run->key_label = "ctid";
		run->key_expr = (char *) mig_partition_ctid_key(RelationGetRelid(run->rel));
		if (run->rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
			run->key_label = "partition:ctid";
		return;
	}

	idx = index_open(indexoid, AccessShareLock);
	nkeys = idx->rd_index->indnkeyatts;
	initStringInfo(&label);
	for (int i = 0; i < nkeys; i++)
	{
		AttrNumber	attnum = idx->rd_index->indkey.values[i];

		appendStringInfo(&label, "%s%s", i > 0 ? ", " : "",
						 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(run->rel),
																attnum - 1)->attname)));
	}
	index_close(idx, AccessShareLock);
	if (nkeys == 1)
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

/* Does the expression (over the table, varno 1) use this column? */
static bool
uses_column(Node *expr, AttrNumber attnum)
{
	Bitmapset  *attrs = NULL;

	pull_varattnos(expr, 1, &attrs);
	return bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, attrs);
}

/*
 * The tuplesort of one unique index's new keys, and the comparators that
 * find equal neighbours: each key type's default btree ordering, the one
 * contract's rebuilt index has for a key of a new type.  False, with a
 * note, when a key type has none.
 */
static bool
start_sort(PUnique *u, TupleDesc keys)
{
	AttrNumber *attnums = palloc(sizeof(AttrNumber) * (u->nkeys + 1));
	Oid		   *ops = palloc(sizeof(Oid) * (u->nkeys + 1));
	Oid		   *colls = palloc(sizeof(Oid) * (u->nkeys + 1));
	bool	   *nullsfirst = palloc0(sizeof(bool) * (u->nkeys + 1));

	u->desc = keys;
	u->ssup = palloc0(sizeof(SortSupportData) * u->nkeys);
	for (int i = 0; i < u->nkeys; i++)
	{
		Form_pg_attribute att = TupleDescAttr(keys, i);
		TypeCacheEntry *tce = lookup_type_cache(att->atttypid, TYPECACHE_LT_OPR);

		if (!OidIsValid(tce->lt_opr))
		{
			u->check->note = psprintf("not checked: type %s has no default btree operator class",
									  format_type_be(att->atttypid));
			return false;
		}
		attnums[i] = i + 1;
		ops[i] = tce->lt_opr;
		colls[i] = att->attcollation;
		u->ssup[i].ssup_cxt = CurrentMemoryContext;
		u->ssup[i].ssup_collation = att->attcollation;
		u->ssup[i].ssup_nulls_first = false;
		PrepareSortSupportFromOrderingOp(ops[i], &u->ssup[i]);
	}
	/* then by the row's key text: a stable order inside each group */
	attnums[u->nkeys] = u->nkeys + 1;
	ops[u->nkeys] = TextLessOperator;
	colls[u->nkeys] = C_COLLATION_OID;
	u->slot = MakeSingleTupleTableSlot(keys, &TTSOpsVirtual);
	u->sort = tuplesort_begin_heap(keys, u->nkeys + 1, attnums, ops, colls, nullsfirst,
								   work_mem, NULL, TUPLESORT_NONE);
	return true;
}

/*
 * One unique index of the old column: its keys, with the old column
 * replaced by up, go into the chunk query (inner columns x<i>_<j> and p<i>)
 * and an "in" flag says whether a row takes part (the predicate holds and,
 * unless NULLS NOT DISTINCT, no key is NULL).
 */
static void
plan_unique(PRun *run, Relation idx, int n)
{
	PUnique    *u = palloc0(sizeof(PUnique));
	Form_pg_index form = idx->rd_index;
	List	   *exprs = RelationGetIndexExpressions(idx);
	List	   *preds = RelationGetIndexPredicate(idx);
	Node	   *pred = preds ? (Node *) make_ands_explicit(preds) : NULL;
	Oid			relid = RelationGetRelid(run->rel);
	Form_pg_attribute oldatt = TupleDescAttr(RelationGetDescr(run->rel), run->old_attnum - 1);
	StringInfoData in;
	ListCell   *lc = list_head(exprs);

	u->index_name = pstrdup(RelationGetRelationName(idx));
	u->nkeys = form->indnkeyatts;
	u->nulls_not_distinct = form->indnullsnotdistinct;
	u->check = add_check(run, psprintf("unique:%s", u->index_name),
						 psprintf("whose new keys collide in unique index %s", u->index_name));
	run->uniques = lappend(run->uniques, u);

	/* an expression of the old column is type-checked for the old type */
	if (exprType(run->up) != oldatt->atttypid &&
		((exprs && uses_column((Node *) exprs, run->old_attnum)) ||
		 (pred && uses_column(pred, run->old_attnum))))
	{
		u->check->note = "not checked: its expressions or predicate use the column, whose type changes";
		u->nkeys = 0;
		return;
	}

	initStringInfo(&in);
	appendStringInfo(&in, "%s", pred ? psprintf("p%d", n) : "true");
	if (pred)
		appendStringInfo(&run->inner, ", %s AS p%d",
						 mig_deparse(mig_subst_column(pred, run->old_attnum, run->up), relid), n);
	u->firstcol = run->ncols + 1;
	for (int j = 0; j < u->nkeys; j++)
	{
		AttrNumber	attnum = form->indkey.values[j];
		char	   *x = psprintf("x%d_%d", n, j);

		if (attnum == run->old_attnum)
			x = "u";
		else if (attnum != InvalidAttrNumber)
			appendStringInfo(&run->inner, ", %s AS %s",
							 quote_identifier(NameStr(TupleDescAttr(RelationGetDescr(run->rel),
																	attnum - 1)->attname)), x);
		else
		{
			appendStringInfo(&run->inner, ", %s AS %s",
							 mig_deparse(mig_subst_column(lfirst(lc), run->old_attnum, run->up), relid), x);
			lc = lnext(exprs, lc);
		}
		appendStringInfo(&run->outer, ", %s", x);
		if (!u->nulls_not_distinct)
			appendStringInfo(&in, " AND %s IS NOT NULL", x);
	}
	appendStringInfo(&run->outer, ", (%s) IS TRUE", in.data);
	run->ncols += u->nkeys + 1;
}

/* Every valid unique index that uses the old column. */
static void
find_uniques(PRun *run)
{
	ListCell   *lc;
	int			n = 0;

	foreach(lc, RelationGetIndexList(run->rel))
	{
		Relation	idx = index_open(lfirst_oid(lc), AccessShareLock);
		Form_pg_index form = idx->rd_index;
		bool		uses = false;

		for (int j = 0; j < form->indnatts; j++)
			uses |= form->indkey.values[j] == run->old_attnum;
		uses |= uses_column((Node *) RelationGetIndexExpressions(idx), run->old_attnum);
		uses |= uses_column((Node *) RelationGetIndexPredicate(idx), run->old_attnum);
		if (form->indisunique && form->indisvalid && uses)
			plan_unique(run, idx, ++n);
		index_close(idx, AccessShareLock);
	}
}

/* The chunk query over one table (a leaf of a partitioned table). */
static char *
leaf_chunk_sql(PRun *run, const char *qname)
{
	return psprintf("SELECT %s FROM (SELECT %s FROM ONLY %s "
					"WHERE ctid OPERATOR(pg_catalog.>=) $1 "
					"AND ctid OPERATOR(pg_catalog.<) $2 OFFSET 0) s",
					run->outer.data, run->inner.data, qname);
}

/*
 * The checks and the chunk query.  Its inner select computes each value
 * once (OFFSET 0 keeps it from being flattened into the outer one); the
 * outer one returns, per row: k, its key text; up IS NULL; NOT check;
 * then each unique index's keys and "in" flag.
 */
static void
build_query(PRun *run)
{
	Oid			relid = RelationGetRelid(run->rel);

	initStringInfo(&run->inner);
	initStringInfo(&run->outer);
	appendStringInfo(&run->inner, "%s AS k, %s AS u", run->key_expr,
					 mig_deparse(run->up, relid));
	appendStringInfo(&run->outer, "k, u IS NULL, %s", run->check ? "NOT c" : "false");
	if (run->check)
		appendStringInfo(&run->inner, ", %s AS c", mig_deparse(run->check, relid));
	run->ncols = 3;

	run->up_check = add_check(run, "up", "where up raises an error");
	if (run->not_null)
		run->null_check = add_check(run, "not_null",
									run->not_null_inherited ?
									"where up is NULL (the old column is NOT NULL, so the new one will be)" :
									"where up is NULL");
	if (run->check)
		run->check_check = add_check(run, "check_expr", "failing check_expr");
	find_uniques(run);
}

/*
 * The types of one unique index's keys, as the chunk query returns them,
 * and the row's key text after them.
 */
static TupleDesc
unique_desc(PUnique *u, TupleDesc result)
{
	TupleDesc	desc = CreateTemplateTupleDesc(u->nkeys + 1);

	for (int j = 0; j < u->nkeys; j++)
		TupleDescCopyEntry(desc, j + 1, result, u->firstcol + j);
	TupleDescInitEntry(desc, u->nkeys + 1, "k", TEXTOID, -1, 0);
	return desc;
}

/* The text of a row's key; a unique key's columns may be NULL. */
static char *
row_key(HeapTuple tup, TupleDesc desc, int col)
{
	char	   *key = SPI_getvalue(tup, desc, col);

	return key ? key : pstrdup("NULL");
}

/*
 * Count the flags of the rows a chunk query returned, and feed each
 * unique index's keys to its sort.
 */
static void
consume_rows(PRun *run, MigRows *tt, uint64 nrows)
{
	MemoryContext oldcxt = MemoryContextSwitchTo(run->rowcxt);
	ListCell   *lc;

	for (uint64 i = 0; i < nrows; i++)
	{
		HeapTuple	tup = tt->vals[i];
		bool		isnull;
		char	   *key = row_key(tup, tt->tupdesc, 1);

		run->rows++;
		if (run->null_check && DatumGetBool(SPI_getbinval(tup, tt->tupdesc, 2, &isnull)))
			add_example(run, run->null_check, key);
		if (run->check_check)
		{
			Datum		bad = SPI_getbinval(tup, tt->tupdesc, 3, &isnull);

			if (!isnull && DatumGetBool(bad))
				add_example(run, run->check_check, key);
		}
		foreach(lc, run->uniques)
		{
			PUnique    *u = lfirst(lc);
			TupleTableSlot *slot;

			if (!u->started)
			{
				MemoryContext spicxt = MemoryContextSwitchTo(run->cxt);

				/* the sort lives in the function's context, past SPI_finish */
				u->started = true;
				if (u->check->note == NULL)
					(void) start_sort(u, unique_desc(u, tt->tupdesc));
				MemoryContextSwitchTo(spicxt);
			}
			if (u->sort == NULL ||
				!DatumGetBool(SPI_getbinval(tup, tt->tupdesc, u->firstcol + u->nkeys, &isnull)))
				continue;
			slot = u->slot;
			ExecClearTuple(slot);
			for (int j = 0; j < u->nkeys; j++)
				slot->tts_values[j] = SPI_getbinval(tup, tt->tupdesc, u->firstcol + j,
													&slot->tts_isnull[j]);
			slot->tts_values[u->nkeys] = CStringGetTextDatum(key);
			slot->tts_isnull[u->nkeys] = false;
			ExecStoreVirtualTuple(slot);
			tuplesort_puttupleslot(u->sort, slot);
		}
	}
	MemoryContextSwitchTo(oldcxt);
}

/*
 * Errors that say something about the server, not about a row: they end
 * the preflight rather than being counted.
 */
static bool
is_row_error(ErrorData *edata)
{
	int			class = ERRCODE_TO_CATEGORY(edata->sqlerrcode);

	return class != ERRCODE_INSUFFICIENT_RESOURCES &&
		class != ERRCODE_PROGRAM_LIMIT_EXCEEDED &&
		class != ERRCODE_OPERATOR_INTERVENTION &&
		class != ERRCODE_SYSTEM_ERROR &&
		class != ERRCODE_INTERNAL_ERROR;
}

/*
 * Run a statement over one TID range in a subtransaction.  Returns NULL when
 * it succeeded (its rows are in run->got, in run->rowcxt), else the error
 * message; errors about the server rather than a row are rethrown.
 */
static char *
try_range(PRun *run, const char *sql, ItemPointer lo, ItemPointer hi)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char	   *volatile message = NULL;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		/* a fresh snapshot for this range; user code in the caller's path */
		MemoryContextSwitchTo(run->rowcxt);
		(void) mig_owner_run(sql, 2, (Oid[]) {TIDOID, TIDOID},
							 (Datum[]) {PointerGetDatum(lo), PointerGetDatum(hi)},
							 NULL, run->user_path, 0, &run->got);
		MemoryContextSwitchTo(oldcxt);
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();

		/*
		 * Out of the subtransaction before anything else, rethrowing too:
		 * a caller's exception block rolls back the innermost one.
		 */
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcxt);
		CurrentResourceOwner = oldowner;
		if (!is_row_error(edata))
			ReThrowError(edata);
		message = pstrdup(edata->message);
		FreeErrorData(edata);
	}
	PG_END_TRY();

	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return message;
}

/*
 * A row whose chunk query raised an error: up's fault when up alone
 * raises one, else check_expr's (or an index expression's).
 */
static void
blame_row(PRun *run, ItemPointer lo, ItemPointer hi, const char *key, char *message)
{
	char	   *up_message = try_range(run, run->up_sql, lo, hi);
	PCheck	   *c = run->up_check;

	if (up_message != NULL)
		message = up_message;
	else
	{
		if (run->check_check)
			c = run->check_check;
		else if (run->uniques != NIL)
			c = ((PUnique *) linitial(run->uniques))->check;
	}
	run->rows++;
	add_example(run, c, psprintf("%s (%s)", key, message));
}

/* A block where the chunk query fails: row by row. */
static void
scan_block_by_rows(PRun *run, BlockNumber b)
{
	ItemPointerData lo;
	ItemPointerData hi;
	SPITupleTable *rows;
	uint64		nrows;

	ItemPointerSet(&lo, b, 0);
	ItemPointerSet(&hi, b + 1, 0);
	if (SPI_execute_plan(run->rows_plan, (Datum[]) {PointerGetDatum(&lo), PointerGetDatum(&hi)},
						 NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not list the rows of a block");
	rows = SPI_tuptable;
	nrows = SPI_processed;
	for (uint64 i = 0; i < nrows; i++)
	{
		bool		isnull;
		ItemPointer tid = (ItemPointer) DatumGetPointer(SPI_getbinval(rows->vals[i],
																	  rows->tupdesc, 1, &isnull));
		MemoryContext oldcxt = MemoryContextSwitchTo(run->rowcxt);
		char	   *key = row_key(rows->vals[i], rows->tupdesc, 2);
		char	   *message;

		CHECK_FOR_INTERRUPTS();
		lo = *tid;
		ItemPointerSet(&hi, ItemPointerGetBlockNumber(tid),
					   ItemPointerGetOffsetNumber(tid) + 1);
		message = try_range(run, run->chunk_sql, &lo, &hi);
		if (message == NULL)
			consume_rows(run, &run->got, run->got.numvals);
		else
			blame_row(run, &lo, &hi, key, message);
		MemoryContextSwitchTo(oldcxt);
		MemoryContextReset(run->rowcxt);
	}
	SPI_freetuptable(rows);
}

/* Read the table chunk by chunk; a failing chunk block by block. */
static void
scan_table(PRun *run)
{
	BlockNumber nblocks = RelationGetNumberOfBlocks(run->scanrel);
	ItemPointerData lo;
	ItemPointerData hi;

	for (BlockNumber b = 0; b < nblocks; b += Min(CHUNK_BLOCKS, nblocks - b))
	{
		BlockNumber end = b + Min(CHUNK_BLOCKS, nblocks - b);

		CHECK_FOR_INTERRUPTS();
		ItemPointerSet(&lo, b, 0);
		ItemPointerSet(&hi, end, 0);
		if (try_range(run, run->chunk_sql, &lo, &hi) == NULL)
		{
			consume_rows(run, &run->got, run->got.numvals);
			MemoryContextReset(run->rowcxt);
		}
		else
		{
			for (BlockNumber bb = b; bb < end; bb++)
			{
				CHECK_FOR_INTERRUPTS();
				ItemPointerSet(&lo, bb, 0);
				ItemPointerSet(&hi, bb + 1, 0);
				if (try_range(run, run->chunk_sql, &lo, &hi) == NULL)
				{
					consume_rows(run, &run->got, run->got.numvals);
					MemoryContextReset(run->rowcxt);
				}
				else
					scan_block_by_rows(run, bb);
			}
		}

		/* this chunk's snapshots are done with: let vacuum move on */
		mig_release_xmin();
	}
}

/* One group of equal keys: "id 3, 17 (x@y.org)". */
static char *
describe_group(PUnique *u, TupleTableSlot *first, List *keys)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, keys)
		appendStringInfo(&buf, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 (char *) lfirst(lc));
	appendStringInfoString(&buf, " (");
	for (int j = 0; j < u->nkeys; j++)
	{
		Oid			outfunc;
		bool		varlena;
		Form_pg_attribute att = TupleDescAttr(u->desc, j);

		getTypeOutputInfo(att->atttypid, &outfunc, &varlena);
		appendStringInfo(&buf, "%s%s", j > 0 ? ", " : "",
						 first->tts_isnull[j] ? "NULL" :
						 OidOutputFunctionCall(outfunc, first->tts_values[j]));
	}
	appendStringInfoChar(&buf, ')');
	return buf.data;
}

static bool
same_keys(PUnique *u, TupleTableSlot *a, TupleTableSlot *b)
{
	for (int j = 0; j < u->nkeys; j++)
		if (ApplySortComparator(a->tts_values[j], a->tts_isnull[j],
								b->tts_values[j], b->tts_isnull[j], &u->ssup[j]) != 0)
			return false;
	return true;
}

/*
 * Read one unique index's sorted keys back: equal neighbours collide.
 * Every row of a colliding group fails; the first groups are named.
 */
static void
find_collisions(PRun *run, PUnique *u)
{
	TupleTableSlot *slots[2];
	int			cur = 0;
	int64		size = 0;
	List	   *keys = NIL;
	MemoryContext oldcxt;

	slots[0] = MakeSingleTupleTableSlot(u->desc, &TTSOpsMinimalTuple);
	slots[1] = MakeSingleTupleTableSlot(u->desc, &TTSOpsMinimalTuple);
	tuplesort_performsort(u->sort);
	for (;;)
	{
		bool		more = tuplesort_gettupleslot(u->sort, true, true, slots[cur], NULL);

		if (more)
			slot_getallattrs(slots[cur]);
		if (size > 0 && more && same_keys(u, slots[1 - cur], slots[cur]))
		{
			size++;
			if (list_length(keys) < MAX_EXAMPLES)
			{
				oldcxt = MemoryContextSwitchTo(run->rowcxt);
				keys = lappend(keys, TextDatumGetCString(slots[cur]->tts_values[u->nkeys]));
				MemoryContextSwitchTo(oldcxt);
			}
			/* the group's first row is in the other slot: keep it there */
			continue;
		}
		if (size > 1)
		{
			u->check->failing += size;
			u->check->groups++;
			u->check->passed = false;
			if (list_length(u->check->examples) < MAX_EXAMPLES)
				u->check->examples = lappend(u->check->examples,
											 describe_group(u, slots[1 - cur], keys));
		}
		if (!more)
			break;

		/* a new group: the last one's keys are done with */
		MemoryContextReset(run->rowcxt);
		oldcxt = MemoryContextSwitchTo(run->rowcxt);
		size = 1;
		keys = list_make1(TextDatumGetCString(slots[cur]->tts_values[u->nkeys]));
		MemoryContextSwitchTo(oldcxt);
		cur = 1 - cur;
	}
	tuplesort_end(u->sort);
	ExecDropSingleTupleTableSlot(u->slot);
	ExecDropSingleTupleTableSlot(slots[0]);
	ExecDropSingleTupleTableSlot(slots[1]);
}

/*
 * Prepare the statements over one leaf (or the table) and read it: generated
 * SQL bound under a pinned search_path, user code run under the caller's
 * (mig_owner_run).
 */
static void
scan_leaf(PRun *run, Oid leaf)
{
	Oid			types[2] = {TIDOID, TIDOID};
	char	   *qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(leaf)),
												   get_rel_name(leaf));

	run->scanrel = leaf == RelationGetRelid(run->rel) ? run->rel : table_open(leaf, NoLock);
	run->chunk_sql = leaf_chunk_sql(run, qname);
	run->rows_plan = SPI_prepare(psprintf("SELECT ctid, %s FROM ONLY %s "
										  "WHERE ctid OPERATOR(pg_catalog.>=) $1 "
										  "AND ctid OPERATOR(pg_catalog.<) $2",
										  run->key_expr, qname), 2, types);
	run->up_sql = psprintf("SELECT (%s) IS NULL FROM ONLY %s "
						   "WHERE ctid OPERATOR(pg_catalog.>=) $1 "
						   "AND ctid OPERATOR(pg_catalog.<) $2",
						   mig_deparse(run->up, RelationGetRelid(run->rel)),
						   qname);
	if (run->rows_plan == NULL)
		elog(ERROR, "migrate_ext: could not prepare the rows of \"%s\": %s", qname,
			 SPI_result_code_string(SPI_result));

	scan_table(run);
	SPI_freeplan(run->rows_plan);
	if (run->scanrel != run->rel)
		table_close(run->scanrel, NoLock);
}

/*
 * Scan, as the owner, under a pinned search_path: the table, or each leaf of
 * a partitioned table in turn, each in its own chunks (the expressions and
 * keys name columns, which every leaf names alike).
 */
static void
run_scan(PRun *run)
{
	MigOwnerSave save;
	ListCell   *lc;

	/* user code runs as the owner, restricted, row security not forced */
	mig_owner_switch(RelationGetRelid(run->rel), &save);
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);

	SPI_connect();
	foreach(lc, mig_partition_leaves(RelationGetRelid(run->rel), AccessShareLock))
		scan_leaf(run, lfirst_oid(lc));
	SPI_finish();

	mig_owner_restore(&save);
}

/* Each check's detail, from its counts and examples. */
static char *
check_detail(PRun *run, PCheck *c)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	if (c->note)
	{
		appendStringInfoString(&buf, c->note);
		return buf.data;
	}
	if (c->failing > 0 && c->groups > 0)
		appendStringInfo(&buf, INT64_FORMAT " rows in " INT64_FORMAT " %s %s",
						 c->failing, c->groups, c->groups == 1 ? "group" : "groups",
						 c->what);
	else if (c->failing > 0)
		appendStringInfo(&buf, INT64_FORMAT " %s %s", c->failing,
						 c->failing == 1 ? "row" : "rows", c->what);
	foreach(lc, c->examples)
		appendStringInfo(&buf, "%s%s", foreach_current_index(lc) == 0 ?
						 psprintf(", e.g. %s ", run->key_label) :
						 c->groups > 0 ? "; " : ", ",
						 (char *) lfirst(lc));
	if (c->failing > 0)
		appendStringInfoString(&buf, "; ");
	appendStringInfo(&buf, "all " INT64_FORMAT " rows checked", run->rows);
	return buf.data;
}

static char *
text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * Cook up and check_expr as mig_expand(tbl, col, type => type, up => up,
 * check_expr => check_expr) would, with the same errors.  check_expr names
 * the new column as an in-place expand names it, _mig_new_<col>; it is
 * evaluated with up substituted for it.
 */
static void
cook(PRun *run, const char *col, const char *type, const char *up_src,
	 const char *check_src)
{
	Form_pg_attribute oldatt;
	Oid			typid;
	int32		typmod;
	char		shadow[NAMEDATALEN];

	run->old_attnum = get_attnum(RelationGetRelid(run->rel), col);
	if (run->old_attnum == InvalidAttrNumber || run->old_attnum < 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						col, RelationGetRelationName(run->rel))));
	oldatt = TupleDescAttr(RelationGetDescr(run->rel), run->old_attnum - 1);
	if (oldatt->attgenerated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("column \"%s\" is a generated column", col)));
	if (type)
		parseTypeString(type, &typid, &typmod, false);
	else
	{
		typid = oldatt->atttypid;
		typmod = oldatt->atttypmod;
	}
	if (get_typtype(typid) == TYPTYPE_PSEUDO)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column cannot be of pseudo-type %s", format_type_be(typid))));

	snprintf(shadow, sizeof(shadow), "_mig_new_%s", col);
	if (get_attnum(RelationGetRelid(run->rel), shadow) != InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" already exists",
						shadow, RelationGetRelationName(run->rel)),
				 errhint("Finish or abort the migration that added it first.")));

	run->up = up_src ? mig_cook_expr(run->rel, up_src, "up", typid, typmod, false)
		: mig_default_cast(run->rel, run->old_attnum, typid, typmod);
	run->up = calls_as_written(run->up, NULL);
	run->not_null_inherited = oldatt->attnotnull;
	if (check_src)
	{
		/* the new column takes the old one's collation when the type stays */
		Oid			collid = typid == oldatt->atttypid ? oldatt->attcollation
			: get_typcollation(typid);
		Relation	fake = relation_with_new_column(run->rel, shadow, typid, typmod, collid);
		Node	   *check = mig_cook_expr(fake, check_src, "check", BOOLOID, -1, true);

		run->check = mig_subst_column(check, RelationGetDescr(run->rel)->natts + 1, run->up);
	}
}

/*
 * mig_preflight(tbl, col, type, up, not_null, check_expr)
 *
 * The rows a migration of col with these arguments would choke on, one
 * result row per check: up raising an error, NULLs where the new column
 * will be NOT NULL, check_expr failing, and collisions in each unique
 * index or constraint of the old column.  Changes nothing.
 */
Datum
mig_preflight(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	PRun		run;
	ListCell   *lc;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl and col must not be NULL")));
	InitMaterializedSRF(fcinfo, 0);

	memset(&run, 0, sizeof(run));
	run.cxt = CurrentMemoryContext;
	run.rowcxt = AllocSetContextCreate(CurrentMemoryContext, "mig_preflight rows",
									   ALLOCSET_DEFAULT_SIZES);
	/* AccessShareLock, held to the end: the table's shape must not change */
	run.rel = mig_open_table(PG_GETARG_OID(0), AccessShareLock);
	run.qname = quote_qualified_identifier(get_namespace_name(RelationGetNamespace(run.rel)),
										   RelationGetRelationName(run.rel));
	cook(&run, NameStr(*PG_GETARG_NAME(1)), text_arg(fcinfo, 2), text_arg(fcinfo, 3),
		 text_arg(fcinfo, 5));
	run.not_null = (!PG_ARGISNULL(4) && PG_GETARG_BOOL(4)) || run.not_null_inherited;
	run.user_path = mig_user_search_path();

	/* deparsed for the pinned search_path the scan runs under */
	{
		int			save_nestlevel = NewGUCNestLevel();

		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
		choose_key(&run);
		build_query(&run);
		AtEOXact_GUC(true, save_nestlevel);
	}
	run_scan(&run);

	foreach(lc, run.uniques)
	{
		PUnique    *u = lfirst(lc);

		if (u->sort)
			find_collisions(&run, u);
	}

	foreach(lc, run.checks)
	{
		PCheck	   *c = lfirst(lc);
		Datum		values[4];
		bool		nulls[4] = {false, false, false, false};

		values[0] = CStringGetTextDatum(c->name);
		values[1] = BoolGetDatum(c->passed && c->note == NULL);
		values[2] = Int64GetDatum(c->failing);
		values[3] = CStringGetTextDatum(check_detail(&run, c));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}

	table_close(run.rel, NoLock);
	return (Datum) 0;
}
