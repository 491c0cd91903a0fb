/*-------------------------------------------------------------------------
 *
 * contract_retype.c
 *	  A type change that PostgreSQL makes in the catalog alone (varchar(n)
 *	  to varchar(m > n), varchar to text, numeric(p,s) to numeric(p' > p,s),
 *	  ...): no shadow column, no backfill, one ALTER TABLE.
 *
 * Whether a change needs a rewrite is PostgreSQL's own decision, taken here
 * exactly as ALTER TABLE ... ALTER COLUMN ... TYPE takes it (tablecmds.c,
 * ATPrepAlterColumnType and ATColumnChangeRequiresRewrite): the column,
 * coerced to the new type by assignment and simplified by
 * expression_planner -- which lets a length-coercion function's planner
 * support function (varchar_support, numeric_support, ...) turn a coercion
 * that cannot change a value into a RelabelType -- must come down to the
 * column itself through relabels, domains without constraints and, when
 * TimeZone is UTC, the timestamp <-> timestamptz casts.  No list of types
 * is kept here: a type whose length coercion has a support function is
 * covered as PostgreSQL covers it.
 *
 * Such a change is made as contract makes its swap: every table and view
 * involved locked at once through the lock ladder, the views that depend
 * on the column (nested, diamonds) captured, dropped, and recreated on the
 * new type with their owners, grants and options (contract_views.c), and
 * their shapes compared.  The caller records it as a migration that went
 * from expanded straight to contracted.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_language.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_rewrite.h"
#include "nodes/makefuncs.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_coerce.h"
#include "parser/parse_collate.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/ruleutils.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "contract.h"
#include "migrate_ext.h"

/*
 * Does a CHECK constraint read the column?  ALTER COLUMN ... TYPE adds it
 * again and verifies it with a scan of every row under ACCESS EXCLUSIVE:
 * no rewrite, but a lock as long as one.
 */
static bool
retype_has_check(Relation rel, AttrNumber attnum)
{
	Relation	conrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	conrel = table_open(ConstraintRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_constraint_conrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(RelationGetRelid(rel)));
	scan = systable_beginscan(conrel, ConstraintRelidTypidNameIndexId, true, NULL, 1, &key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_constraint con = (Form_pg_constraint) GETSTRUCT(tup);
		bool		isnull;
		Datum		d;
		ArrayType  *arr;
		int16	   *keys;

		if (con->contype != CONSTRAINT_CHECK)
			continue;
		d = heap_getattr(tup, Anum_pg_constraint_conkey, RelationGetDescr(conrel), &isnull);
		if (isnull)
			continue;
		arr = DatumGetArrayTypeP(d);
		keys = (int16 *) ARR_DATA_PTR(arr);
		for (int i = 0; i < ARR_DIMS(arr)[0]; i++)
			if (keys[i] == attnum)
				found = true;
	}
	systable_endscan(scan);
	table_close(conrel, AccessShareLock);
	return found;
}

/*
 * Does ALTER COLUMN ... TYPE rewrite the table for this change (or, for a
 * CHECK on the column, scan it under its lock)?  The expression is built
 * and judged as tablecmds.c builds and judges it.
 */
bool
mig_retype_needs_rewrite(Relation rel, AttrNumber attnum, Oid typid, int32 typmod)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	Node	   *expr;

	if (retype_has_check(rel, attnum))
		return true;

	expr = (Node *) makeVar(1, attnum, att->atttypid, att->atttypmod,
							att->attcollation, 0);
	expr = coerce_to_target_type(NULL, expr, att->atttypid, typid, typmod,
								 COERCION_ASSIGNMENT, COERCE_IMPLICIT_CAST, -1);
	if (expr == NULL)
		return true;			/* no assignment cast: not ALTER TYPE's case */
	assign_expr_collations(NULL, expr);
	expr = (Node *) expression_planner((Expr *) expr);

	/* ATColumnChangeRequiresRewrite */
	for (;;)
	{
		if (IsA(expr, Var) && ((Var *) expr)->varattno == attnum)
			return false;
		else if (IsA(expr, RelabelType))
			expr = (Node *) ((RelabelType *) expr)->arg;
		else if (IsA(expr, CoerceToDomain))
		{
			CoerceToDomain *d = (CoerceToDomain *) expr;

			if (DomainHasConstraints(d->resulttype))
				return true;
			expr = (Node *) d->arg;
		}
		else if (IsA(expr, FuncExpr) &&
				 (((FuncExpr *) expr)->funcid == F_TIMESTAMPTZ_TIMESTAMP ||
				  ((FuncExpr *) expr)->funcid == F_TIMESTAMP_TIMESTAMPTZ) &&
				 !TimestampTimestampTzRequiresRewrite())
			expr = linitial(((FuncExpr *) expr)->args);
		else
			return true;
	}
}

/*
 * The views that read the column directly; a rule that is not a plain
 * view's (a materialized view, a rule) stops the change, named.
 */
static List *
retype_direct_views(ContractPlan *plan, AttrNumber attnum)
{
	Relation	deprel;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *direct = NIL;

	scan = mig_column_dependents_scan(plan->relid, attnum, &deprel);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);
		bool		is_return;
		char		relkind;
		Oid			ev;
		Oid			view = InvalidOid;

		if (dep->classid != RewriteRelationId)
			continue;			/* ALTER TYPE itself handles the rest */
		ev = mig_rule_view(dep->objid, &is_return, &relkind);
		if (OidIsValid(ev) && relkind == RELKIND_VIEW)
			view = ev;
		else if (OidIsValid(ev))
			plan->blockers = lappend(plan->blockers,
									 psprintf("%s %s",
											  relkind == RELKIND_MATVIEW ?
											  "materialized view" : "a rule of",
											  get_rel_name(ev)));
		if (OidIsValid(view))
			direct = list_append_unique_oid(direct, view);
	}
	systable_endscan(scan);
	table_close(deprel, AccessShareLock);
	return direct;
}

/*
 * Make every session compile the procedural functions of the table's
 * triggers again.  PL/pgSQL keeps, per session, the plans of a trigger's
 * statements with the types of the NEW and OLD fields they read; once a
 * column changed type under them, every later write in those sessions
 * fails with "type of parameter n (bigint) does not match that when
 * preparing the plan (integer)" (an audit trigger inserting NEW.id).  A
 * function whose pg_proc row changed is compiled again at its next call
 * (plpgsql_compile compares the row's xmin and ctid), so the row is
 * written again, unchanged, in the transaction that changes the type.
 */
static Oid
func_language(Oid funcid)
{
	HeapTuple	tup = SearchSysCache1(PROCOID, ObjectIdGetDatum(funcid));
	Oid			lang;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for function %u", funcid);
	lang = ((Form_pg_proc) GETSTRUCT(tup))->prolang;
	ReleaseSysCache(tup);
	return lang;
}

void
mig_retouch_trigger_functions(Oid relid)
{
	Relation	tgrel;
	Relation	procrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	List	   *funcs = NIL;
	ListCell   *lc;

	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);
		Oid			lang = func_language(tg->tgfoid);

		if (!tg->tgisinternal && lang != ClanguageId && lang != INTERNALlanguageId &&
			lang != SQLlanguageId)
			funcs = list_append_unique_oid(funcs, tg->tgfoid);
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);

	procrel = table_open(ProcedureRelationId, RowExclusiveLock);
	foreach(lc, funcs)
	{
		HeapTuple	proc = SearchSysCacheCopy1(PROCOID, ObjectIdGetDatum(lfirst_oid(lc)));

		if (!HeapTupleIsValid(proc))
			elog(ERROR, "cache lookup failed for function %u", lfirst_oid(lc));
		CatalogTupleUpdate(procrel, &proc->t_self, proc);
		heap_freetuple(proc);
	}
	table_close(procrel, RowExclusiveLock);
	CommandCounterIncrement();
}

/* The plan contract_views.c works from: the table, the change, the views. */
static ContractPlan *
retype_plan(Relation rel, AttrNumber attnum, Oid typid)
{
	ContractPlan *plan = palloc0(sizeof(ContractPlan));
	ContractColumn *c = palloc0(sizeof(ContractColumn));
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	ListCell   *lc;

	plan->relid = RelationGetRelid(rel);
	plan->nspname = get_namespace_name(RelationGetNamespace(rel));
	plan->relname = pstrdup(RelationGetRelationName(rel));
	plan->qname = quote_qualified_identifier(plan->nspname, plan->relname);
	/* a partitioned table's ALTER TYPE reaches every partition: lock them all */
	plan->lockrels = find_all_inheritors(plan->relid, NoLock, NULL);
	c->oldname = pstrdup(NameStr(att->attname));
	c->newname = c->finalname = c->oldname;
	c->old_typid = att->atttypid;
	c->new_typid = typid;
	plan->columns = list_make1(c);
	mig_contract_plan_views(plan, retype_direct_views(plan, attnum));
	/* one above the views could only be rebuilt before the change */
	foreach(lc, plan->views)
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_MATVIEW)
			plan->blockers = lappend(plan->blockers,
									 psprintf("materialized view %s", get_rel_name(lfirst_oid(lc))));
	return plan;
}

/*
 * Change the column's type in the catalog, with its views, in the caller's
 * transaction.  new_default, when given, replaces the column's default.
 * Returns a description of the change for the migration's history.
 */
char *
mig_retype_run(Relation rel, AttrNumber attnum, Oid typid, int32 typmod,
			   Node *new_default)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), attnum - 1);
	ContractPlan *plan = retype_plan(rel, attnum, typid);
	char	   *col = pstrdup(quote_identifier(NameStr(att->attname)));
	char	   *from = format_type_with_typemod(att->atttypid, att->atttypmod);
	char	   *to = format_type_with_typemod(typid, typmod);
	Oid			collation = att->attcollation;
	Oid			relid = plan->relid;
	int			nrels = list_length(plan->lockrels);
	Oid		   *rels = palloc(sizeof(Oid) * nrels);
	StringInfoData detail;
	StringInfoData sql;
	List	   *views;
	ListCell   *lc;
	int			nestlevel;

	if (plan->blockers != NIL)
	{
		initStringInfo(&detail);
		foreach(lc, plan->blockers)
			appendStringInfo(&detail, "%s%s uses it.", foreach_current_index(lc) > 0 ? "\n" : "",
							 (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot change the type of column %s of table \"%s\" in place", col,
						plan->relname),
				 errdetail_internal("%s", detail.data),
				 errhint("Drop it, or change it to not use the column, then call mig_expand again; nothing was changed.")));
	}

	/* ALTER TABLE refuses a table this backend has open; the caller's lock stays */
	table_close(rel, NoLock);
	foreach(lc, plan->lockrels)
		rels[foreach_current_index(lc)] = lfirst_oid(lc);
	mig_lock_tables(nrels, rels, AccessExclusiveLock, "change the column's type in the catalog");

	/* the views are captured and recreated with every name qualified */
	nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
							 PGC_S_SESSION, GUC_ACTION_SAVE, true, 0, false);
	initStringInfo(&sql);
	views = mig_contract_capture_views(plan, &sql);
	if (sql.len > 0)
		mig_run_utility(sql.data);
	resetStringInfo(&sql);
	if (new_default)
		appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s DROP DEFAULT;", plan->qname, col);
	appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s TYPE %s", plan->qname, col,
					 format_type_extended(typid, typmod,
											  FORMAT_TYPE_TYPEMOD_GIVEN | FORMAT_TYPE_FORCE_QUALIFY));
	if (OidIsValid(collation) && type_is_collatable(typid))
		appendStringInfo(&sql, " COLLATE %s", generate_collation_name(collation));
	appendStringInfoChar(&sql, ';');
	if (new_default)
		appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s;", plan->qname,
						 col, mig_deparse(new_default, relid));

	/*
	 * As the table's owner, restricted: to see whether an index on the
	 * column can be kept, ALTER ... TYPE simplifies the index's expressions,
	 * which calls the owner's functions with constant arguments there
	 * (((col || my_fn(1)))) as the role that runs it -- mig_expand's caller
	 * otherwise.  The views were dropped as the caller, and are created
	 * again as the caller, with their owners.
	 */
	mig_run_utility_as_owner(relid, sql.data);
	CommandCounterIncrement();
	mig_contract_recreate_views(plan, views);
	mig_retouch_trigger_functions(relid);
	AtEOXact_GUC(true, nestlevel);

	initStringInfo(&detail);
	appendStringInfo(&detail, "no rewrite: column %s changed from %s to %s in the catalog alone",
					 col, from, to);
	if (views != NIL)
		appendStringInfo(&detail, ", %d dependent view%s recreated", list_length(views),
						 list_length(views) > 1 ? "s" : "");
	return detail.data;
}
