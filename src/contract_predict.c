/*-------------------------------------------------------------------------
 *
 * contract_predict.c
 *	  What mig_validate checks so that mig_contract never fails on a data
 *	  reason after a passed validation.
 *
 * Contract rebuilds on the new column what the old one had; each piece can
 * fail on the data or on the schema: a default that does not fit the new
 * type, a unique index the new values collide in, a foreign key in either
 * direction whose values no longer match (or whose types no longer
 * compare), a foreign key on a partitioned table (which cannot be added NOT
 * VALID), objects that would block dropping the old column.  Each is
 * computed here from the same plan contract would run (contract_plan.c)
 * and returned as a named check with a count and examples.
 *
 * The data checks are single statements over the whole table (a GROUP BY,
 * an anti-join), run through mig_owner_run() as the table's owner: bound
 * under a pinned search_path, operators printed schema-qualified, the user
 * code they meet run under validate's caller's search_path.  A partitioned
 * table is read whole, every leaf (contract_partition.c): a unique index of
 * one includes the partition key, so collisions are within a leaf, and a
 * foreign key to one finds its row in whichever leaf holds it.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_operator.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "parser/parse_coerce.h"
#include "parser/parse_oper.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"

#define PREDICT_EXAMPLES	5

static MigPrediction *
prediction(List **out, const char *name, int64 failing, const char *detail)
{
	MigPrediction *p = palloc0(sizeof(MigPrediction));

	p->name = pstrdup(name);
	p->failing = failing;
	p->detail = pstrdup(detail);
	*out = lappend(*out, p);
	return p;
}

/* run_count's query, for mig_try_subxact */
typedef struct CountQuery
{
	const char *sql;
	const char *user_path;		/* for the user code it meets */
	MemoryContext cxt;			/* where examples is copied */
	int64		failing;
	char	   *examples;
} CountQuery;

static void
count_query(void *arg)
{
	CountQuery *q = (CountQuery *) arg;
	bool		isnull;
	char	   *ex;
	MigRows		rows;

	SPI_connect();

	/*
	 * A snapshot of its own (mig_owner_run takes one).  The statement's
	 * snapshot may no longer protect its xmin (validation released it
	 * between its chunks, horizon.c), and a row a concurrent UPDATE moved
	 * would then be pruned under it and be missing from the count.  The
	 * user code it meets (a CHECK's function, an index expression, a
	 * type's equality) runs under the caller's search_path.
	 */
	if (mig_owner_run(q->sql, 0, NULL, NULL, NULL, q->user_path, 0, &rows) != 1)
		elog(ERROR, "migrate_ext: could not run \"%s\"", q->sql);
	q->failing = DatumGetInt64(SPI_getbinval(rows.vals[0], rows.tupdesc, 1, &isnull));
	if (isnull)
		q->failing = 0;
	ex = SPI_getvalue(rows.vals[0], rows.tupdesc, 2);
	if (ex)
		q->examples = MemoryContextStrdup(q->cxt, ex);
	SPI_finish();
}

/*
 * Run a query returning (count bigint, examples text); fill a prediction's
 * count and detail ("<count> <what>, e.g. <examples>").  In a
 * subtransaction: a query that cannot run (no privilege on a referenced
 * table, say) is a failing check that says why, not an error of
 * mig_validate.
 */
static void
run_count(List **out, const char *name, const char *sql, const char *what,
		  const char *okdetail, const char *user_path)
{
	CountQuery	q = {sql, user_path, CurrentMemoryContext, 0, NULL};
	char	   *error = NULL;
	int64		failing;
	char	   *examples;

	(void) mig_try_subxact(count_query, &q, CurrentMemoryContext, &error);
	failing = q.failing;
	examples = q.examples;

	if (error)
		prediction(out, name, 1, psprintf("could not be checked: %s", error));
	else if (failing > 0)
		prediction(out, name, failing,
				   psprintf(INT64_FORMAT " %s%s%s", failing, what,
							examples ? ", e.g. " : "", examples ? examples : ""));
	else
		prediction(out, name, 0, okdetail);
}

/* The old column's default must fit the new type: SET DEFAULT coerces it so. */
static void
predict_defaults(ContractPlan *plan, Relation rel, List **out)
{
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		Form_pg_attribute newatt = TupleDescAttr(RelationGetDescr(rel), c->pair->new_attnum - 1);
		Node	   *coerced;

		if (c->default_expr == NULL)
			continue;
		coerced = coerce_to_target_type(NULL, copyObject(c->default_expr),
										exprType(c->default_expr),
										newatt->atttypid, newatt->atttypmod,
										COERCION_ASSIGNMENT, COERCE_IMPLICIT_CAST, -1);
		if (coerced == NULL)
			prediction(out, psprintf("default_fits:%s", c->finalname), 1,
					   psprintf("the default of column %s (%s) is of type %s and cannot become the default of type %s: set another default on the old column, or abort and expand with new_default",
								c->oldname, c->default_sql,
								format_type_be(exprType(c->default_expr)),
								format_type_with_typemod(newatt->atttypid, newatt->atttypmod)));
		else
			prediction(out, psprintf("default_fits:%s", c->finalname), 0,
					   psprintf("the default %s fits type %s", c->default_sql,
								format_type_with_typemod(newatt->atttypid, newatt->atttypmod)));
	}
}

/*
 * A unique index copied to the new column: the new values must not
 * collide.  Indexes on plain columns without a predicate; others are named
 * as not checked (the concurrent build would still fail cleanly).
 */
static void
predict_unique(ContractPlan *plan, List **out, const char *user_path)
{
	ListCell   *lc;

	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		StringInfoData cols;
		StringInfoData notnull;
		ListCell   *lc2;
		bool		simple = ci->stmt->whereClause == NULL;
		char	   *name = psprintf("unique:%s", ci->oldname);

		if (!ci->stmt->unique)
			continue;
		initStringInfo(&cols);
		initStringInfo(&notnull);
		foreach(lc2, ci->stmt->indexParams)
		{
			IndexElem  *elem = lfirst_node(IndexElem, lc2);

			if (elem->name == NULL)
			{
				simple = false;
				break;
			}
			appendStringInfo(&cols, "%s%s", cols.len ? ", " : "", quote_identifier(elem->name));
			appendStringInfo(&notnull, "%s%s IS NOT NULL", notnull.len ? " AND " : "",
							 quote_identifier(elem->name));
		}
		if (!simple)
		{
			prediction(out, name, 0,
					   "not checked (an expression or partial index): contract's concurrent build of its copy fails cleanly if the new values collide");
			continue;
		}
		run_count(out, name,
				  psprintf("SELECT pg_catalog.sum(n)::pg_catalog.int8, "
						   "pg_catalog.string_agg(k, ', ') FILTER (WHERE i <= %d) "
						   "FROM (SELECT pg_catalog.count(*) AS n, ROW(%s)::pg_catalog.text AS k, "
						   "pg_catalog.row_number() OVER () AS i "
						   "FROM %s WHERE %s GROUP BY %s HAVING pg_catalog.count(*) > 1) d",
						   PREDICT_EXAMPLES, cols.data, mig_partition_from(plan->relid),
						   notnull.data, cols.data),
				  psprintf("row(s) share a value in the new column%s that unique index %s requires to be unique",
						   list_length(ci->stmt->indexParams) > 1 ? "s" : "", ci->oldname),
				  psprintf("no two rows collide in the copy of unique index %s", ci->oldname),
				  user_path);
	}
}

/* Column names of one side of a foreign key, mapped to the new columns. */
static List *
fkey_side(ContractPlan *plan, Oid relid, HeapTuple tup, AttrNumber attno, List **types)
{
	Datum	   *elems;
	int			n;
	bool		isnull;
	Datum		d = SysCacheGetAttr(CONSTROID, tup, attno, &isnull);
	List	   *names = NIL;

	deconstruct_array(DatumGetArrayTypeP(d), INT2OID, 2, true, TYPALIGN_SHORT, &elems, NULL, &n);
	for (int i = 0; i < n; i++)
	{
		AttrNumber	attnum = DatumGetInt16(elems[i]);

		if (relid == plan->relid && plan->map->attnums[attnum - 1] != InvalidAttrNumber)
			attnum = plan->map->attnums[attnum - 1];
		names = lappend(names, pstrdup(get_attname(relid, attnum, false)));
		*types = lappend_oid(*types, get_atttype(relid, attnum));
	}
	return names;
}

/*
 * A foreign key moved to the new column, in either direction: the types
 * must compare with an equality operator, and every referencing row must
 * find its row on the new column.
 */
static void
predict_fkey(ContractPlan *plan, ContractFkey *fk, List **out,
			 const char *user_path)
{
	HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(fk->conoid));
	List	   *ftypes = NIL;
	List	   *ptypes = NIL;
	List	   *fcols;
	List	   *pcols;
	StringInfoData match;
	StringInfoData notnull;
	StringInfoData row;
	char	   *name;
	ListCell   *lf,
			   *lp,
			   *ltf,
			   *ltp;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", fk->conoid);
	name = psprintf("fkey_%s:%s", fk->conrelid == plan->relid ? "out" : "in", fk->oldname);
	fcols = fkey_side(plan, fk->conrelid, tup, Anum_pg_constraint_conkey, &ftypes);
	pcols = fkey_side(plan, fk->confrelid, tup, Anum_pg_constraint_confkey, &ptypes);
	ReleaseSysCache(tup);

	initStringInfo(&match);
	initStringInfo(&notnull);
	initStringInfo(&row);
	forfour(lf, fcols, lp, pcols, ltf, ftypes, ltp, ptypes)
	{
		Operator	op = oper(NULL, list_make1(makeString("=")), lfirst_oid(ltf),
							  lfirst_oid(ltp), true, -1);
		Form_pg_operator opform;

		if (op == NULL)
		{
			prediction(out, name, 1,
					   psprintf("types %s and %s of foreign key %s have no equality operator: contract could not move it",
								format_type_be(lfirst_oid(ltf)), format_type_be(lfirst_oid(ltp)),
								fk->oldname));
			return;
		}
		opform = (Form_pg_operator) GETSTRUCT(op);
		appendStringInfo(&match, "%sf.%s OPERATOR(%s.%s) p.%s", match.len ? " AND " : "",
						 quote_identifier(lfirst(lf)),
						 quote_identifier(get_namespace_name(opform->oprnamespace)),
						 NameStr(opform->oprname), quote_identifier(lfirst(lp)));
		ReleaseSysCache(op);
		appendStringInfo(&notnull, "%sf.%s IS NOT NULL", notnull.len ? " AND " : "",
						 quote_identifier(lfirst(lf)));
		appendStringInfo(&row, "%sf.%s", row.len ? ", " : "", quote_identifier(lfirst(lf)));
	}
	run_count(out, name,
			  psprintf("SELECT pg_catalog.count(*), pg_catalog.string_agg(k, ', ') FILTER (WHERE i <= %d) "
					   "FROM (SELECT ROW(%s)::pg_catalog.text AS k, pg_catalog.row_number() OVER () AS i "
					   "FROM %s f WHERE %s AND NOT EXISTS "
					   "(SELECT FROM %s p WHERE %s)) d",
					   PREDICT_EXAMPLES, row.data, mig_partition_from(fk->conrelid), notnull.data,
					   mig_partition_from(fk->confrelid), match.data),
			  psprintf("row(s) of table %s would violate foreign key %s on the new column",
					   get_rel_name(fk->conrelid), fk->oldname),
			  psprintf("every row of table %s matches foreign key %s on the new column",
					   get_rel_name(fk->conrelid), fk->oldname),
			  user_path);
}

/*
 * Everything contract would meet, as named checks (failing 0: passed).
 * Runs as the table's owner in validate.c's transaction; the statements
 * are bound under its pinned search_path, the user code they meet runs
 * under user_path (mig_owner_run).
 */
List *
mig_contract_predict(Relation rel, MigMigration *m, const char *user_path)
{
	ContractPlan *plan = mig_contract_plan_build(rel, m);
	List	   *out = NIL;
	ListCell   *lc;

	if (plan->blockers != NIL)
	{
		StringInfoData buf;

		initStringInfo(&buf);
		foreach(lc, plan->blockers)
			appendStringInfo(&buf, "%s%s", foreach_current_index(lc) ? "; " : "",
							 (char *) lfirst(lc));
		prediction(&out, "contract_blockers", list_length(plan->blockers),
				   psprintf("mig_contract cannot carry what depends on the old column: %s", buf.data));
	}
	else
		prediction(&out, "contract_blockers", 0,
				   "nothing depends on the old column that mig_contract cannot carry");
	predict_defaults(plan, rel, &out);
	foreach(lc, plan->checks)
	{
		ContractCheck *ck = lfirst(lc);

		run_count(&out, psprintf("check:%s", ck->oldname),
				  psprintf("SELECT pg_catalog.count(*), pg_catalog.string_agg(k, ', ') FILTER (WHERE i <= %d) "
						   "FROM (SELECT %s AS k, pg_catalog.row_number() OVER () AS i "
						   "FROM %s WHERE NOT (%s)) d",
						   PREDICT_EXAMPLES, mig_partition_ctid_key(plan->relid),
						   mig_partition_from(plan->relid), ck->sql),
				  psprintf("row(s) would violate CHECK constraint %s re-stated on the new column (by ctid)",
						   ck->oldname),
				  psprintf("every row meets CHECK constraint %s re-stated on the new column",
						   ck->oldname),
				  user_path);
	}
	predict_unique(plan, &out, user_path);
	foreach(lc, plan->fkeys)
		predict_fkey(plan, lfirst(lc), &out, user_path);
	return out;
}
