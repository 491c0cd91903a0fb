/*-------------------------------------------------------------------------
 *
 * contract_views.c
 *	  The views that depend on an old column: found when contract plans,
 *	  captured, dropped and recreated on the new column inside the swap.
 *
 * DROP COLUMN refuses while a view uses the column, and a view cannot be
 * pointed at another column in place.  So every view that depends on an
 * old column, and every view that depends on those (nested, diamonds, any
 * schema), is captured inside the swap transaction, under its lock: the
 * definition printed by pg_get_viewdef under the worker's search_path of
 * pg_catalog (so every name is schema-qualified), its options
 * (security_barrier, security_invoker, check_option), owner, table and
 * column grants, comments, column defaults and INSTEAD OF triggers.  The
 * views are dropped deepest first before the old column goes, and created
 * again shallowest first once the new column carries the old one's name
 * (a new column that keeps its own name carries the old one's only for
 * that moment: renaming a column afterwards is followed by its views).
 * The shape of every view (column names, order and types, but for the
 * migrated column's intended type change) is compared before and after;
 * any difference is an error, and the swap rolls back.
 *
 * Before that, when contract plans (and when validation predicts it), every
 * view is created on the new column under a temporary name, inside a
 * subtransaction that is always rolled back: its definition is its query
 * with the old columns' Vars moved to the new ones, printed and parsed
 * again, so that functions and operators are resolved for the new types.
 * A shape that would change beyond the intended type is a blocker; a view
 * reading the old column whose shape does not change at all is re-pointed
 * in the swap by CREATE OR REPLACE VIEW and keeps its OID, and the views
 * above only such views are not touched.
 *
 * Materialized views are rebuilt beside the old ones before the swap
 * (CREATE MATERIALIZED VIEW under a copy-name, as their owner, with their
 * indexes, grants and comments; the plain views created again that they
 * read get a copy too), and the swap drops the old ones and renames the
 * copies into place.
 *
 * What cannot be carried is refused when contract plans (and so named by
 * validation's contract_blockers): rules other than a view's own,
 * functions or other objects using a view's row type, views whose owner
 * the caller cannot act as, or in a schema where it cannot create,
 * materialized views whose owner cannot create in their schema.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/relation.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_rewrite.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/comment.h"
#include "executor/spi.h"
#include "nodes/makefuncs.h"
#include "parser/parse_utilcmd.h"
#include "tcop/utility.h"
#include "miscadmin.h"
#include "rewrite/rewriteSupport.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datum.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/resowner.h"
#include "utils/ruleutils.h"
#include "access/xact.h"
#include "nodes/nodeFuncs.h"
#include "parser/parsetree.h"
#include "access/attmap.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"

/* One column of a view's shape. */
typedef struct ViewColumn
{
	char	   *name;
	Oid			typid;
	int32		typmod;
	Oid			collid;
} ViewColumn;

/* A view as captured in the swap. */
typedef struct ContractView
{
	Oid			oid;
	char	   *nspname;
	char	   *name;
	char	   *qname;
	char	   *create_sql;		/* CREATE VIEW and everything it had; for a
								 * materialized view, the renames of its copy */
	List	   *shape;			/* of ViewColumn * */
	bool		matview;
} ContractView;

static void replace_statement(ContractPlan *plan, Oid viewoid, StringInfo out);
static List *relation_shape(Oid relid);
static void trigger_sql(Oid viewoid, StringInfo out);

/*
 * A name for a copy: "_mig_" and the original's name, or its OID when that
 * does not fit.  The same every time, so a rerun finds what a failed run
 * built.
 */
char *
mig_contract_copy_name(const char *name, Oid oid)
{
	if (strlen(name) + 5 < NAMEDATALEN)
		return psprintf("_mig_%s", name);
	return psprintf("_mig_%u", oid);
}

/*
 * The relation whose rewrite rule this is (InvalidOid if there is no such
 * rule); *is_return says whether it is the view's _RETURN rule, *relkind is
 * the relation's kind.  Written once: the plan (contract_plan.c) and the
 * view capture here both ask pg_rewrite this, and must agree on it.
 */
Oid
mig_rule_view(Oid ruleoid, bool *is_return, char *relkind)
{
	Relation	rwrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			result = InvalidOid;

	*is_return = false;
	*relkind = '\0';
	rwrel = table_open(RewriteRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_rewrite_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ruleoid));
	scan = systable_beginscan(rwrel, RewriteOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Form_pg_rewrite rw = (Form_pg_rewrite) GETSTRUCT(tup);

		result = rw->ev_class;
		*is_return = strcmp(NameStr(rw->rulename), ViewSelectRuleName) == 0;
		*relkind = get_rel_relkind(rw->ev_class);
	}
	systable_endscan(scan);
	table_close(rwrel, AccessShareLock);
	return result;
}

/*
 * What depends on a view (or its row type): its dependent views go to
 * *found; anything else that a DROP VIEW would refuse for or silently take
 * along, but for the view's own rule, triggers, defaults and type, is a
 * blocker.
 */
static void
view_dependents(Oid viewoid, Oid refclass, Oid refobj, List **found, List **blockers)
{
	Relation	deprel;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;

	deprel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(refclass));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(refobj));
	scan = systable_beginscan(deprel, DependReferenceIndexId, true, NULL, 2, key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);
		ObjectAddress addr;

		if (dep->deptype == DEPENDENCY_INTERNAL)
			continue;			/* the view's own rule, its row type */
		if (dep->classid == RewriteRelationId)
		{
			bool		is_return;
			char		relkind;
			Oid			ev = mig_rule_view(dep->objid, &is_return, &relkind);

			if (ev == viewoid)
			{
				if (!is_return)
					*blockers = lappend(*blockers,
										psprintf("a rule on view %s (mig_contract recreates the view, and would lose it)",
												 get_rel_name(viewoid)));
				continue;
			}
			if (is_return && (relkind == RELKIND_VIEW || relkind == RELKIND_MATVIEW))
			{
				*found = list_append_unique_oid(*found, ev);
				continue;
			}
		}
		if (dep->classid == TriggerRelationId || dep->classid == AttrDefaultRelationId ||
			(dep->classid == TypeRelationId && dep->objid == get_rel_type_id(viewoid)))
			continue;			/* carried with the view */
		if (dep->classid == RelationRelationId && dep->objid == viewoid)
			continue;
		if (dep->classid == RelationRelationId &&
			get_rel_relkind(dep->objid) == RELKIND_INDEX &&
			IndexGetRelation(dep->objid, false) == viewoid)
			continue;			/* a materialized view's index: copied with it */
		ObjectAddressSubSet(addr, dep->classid, dep->objid, dep->objsubid);
		*blockers = lappend(*blockers,
							psprintf("%s (it uses view %s, which mig_contract recreates)",
									 getObjectDescription(&addr, false), get_rel_name(viewoid)));
	}
	systable_endscan(scan);
	table_close(deprel, AccessShareLock);
}

/* Can the caller drop and recreate this view as its owner would have it? */
static void
check_view_rights(Oid viewoid, List **blockers)
{
	HeapTuple	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(viewoid));
	Form_pg_class cls;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", viewoid);
	cls = (Form_pg_class) GETSTRUCT(tup);
	if (!has_privs_of_role(GetUserId(), cls->relowner) ||
		!is_member_of_role(GetUserId(), cls->relowner))
		*blockers = lappend(*blockers,
							psprintf("view %s, owned by %s, which the caller cannot act as to recreate it",
									 NameStr(cls->relname), GetUserNameFromId(cls->relowner, false)));
	else if (pg_namespace_aclcheck(cls->relnamespace, GetUserId(), ACL_CREATE) != ACLCHECK_OK)
		*blockers = lappend(*blockers,
							psprintf("view %s, in schema %s where the caller may not create it again",
									 NameStr(cls->relname), get_namespace_name(cls->relnamespace)));
	else if (cls->relkind == RELKIND_MATVIEW &&
			 pg_namespace_aclcheck(cls->relnamespace, cls->relowner, ACL_CREATE) != ACLCHECK_OK)
		*blockers = lappend(*blockers,
							psprintf("materialized view %s, whose owner %s may not create in schema %s (mig_contract builds its copy as its owner)",
									 NameStr(cls->relname), GetUserNameFromId(cls->relowner, false),
									 get_namespace_name(cls->relnamespace)));
	ReleaseSysCache(tup);
}

/*
 * The views to recreate, from those using an old column directly: every
 * view above them, ordered so that a view comes after every view it reads
 * (shallowest first).  What cannot be carried goes to plan->blockers.
 */
void
mig_contract_plan_views(ContractPlan *plan, List *direct)
{
	List	   *all = list_copy(direct);
	List	   *children = NIL; /* per view of all, in step: the views reading it */
	List	   *ordered = NIL;
	ListCell   *lc;

	/* all grows while it is walked: the closure */
	for (int i = 0; i < list_length(all); i++)
	{
		Oid			v = list_nth_oid(all, i);
		List	   *found = NIL;

		view_dependents(v, RelationRelationId, v, &found, &plan->blockers);
		view_dependents(v, TypeRelationId, get_rel_type_id(v), &found, &plan->blockers);
		check_view_rights(v, &plan->blockers);
		foreach(lc, found)
			all = list_append_unique_oid(all, lfirst_oid(lc));
		children = lappend(children, found);
	}

	/* a view once no view it reads is left to place */
	while (list_length(ordered) < list_length(all))
	{
		bool		placed = false;

		for (int i = 0; i < list_length(all); i++)
		{
			Oid			v = list_nth_oid(all, i);
			bool		ready = !list_member_oid(ordered, v);

			for (int j = 0; ready && j < list_length(all); j++)
				if (list_member_oid(list_nth(children, j), v) &&
					!list_member_oid(ordered, list_nth_oid(all, j)))
					ready = false;
			if (!ready)
				continue;
			ordered = lappend_oid(ordered, v);
			placed = true;
		}
		if (!placed)
			elog(ERROR, "dependency loop among the views of table %u", plan->relid);
	}
	plan->views = ordered;
	foreach(lc, ordered)
	{
		List	   *reads = NIL;

		for (int j = 0; j < list_length(all); j++)
			if (list_member_oid(list_nth(children, j), lfirst_oid(lc)))
				reads = lappend_oid(reads, list_nth_oid(all, j));
		plan->view_reads = lappend(plan->view_reads, reads);
	}

	/*
	 * A query on a view locks the view, then the views it reads, then the
	 * tables: the swap takes its locks in that order too (deepest view
	 * first, the tables last), or a reader holding a view while it waits
	 * for the table would deadlock with the swap at every try.
	 */
	foreach(lc, ordered)
		plan->lockrels = lcons_oid(lfirst_oid(lc), plan->lockrels);
}

/*
 * Where the captured views live: SPI switches to its own context, which
 * SPI_finish frees, at the end of every call.
 */
static MemoryContext capture_cxt = NULL;

/* Run a read-only query with one oid parameter; the rows stay until SPI_finish. */
static void
query_oid(const char *sql, Oid arg)
{
	if (SPI_execute_with_args(sql, 1, (Oid[]) {OIDOID}, (Datum[]) {ObjectIdGetDatum(arg)},
							  NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not run \"%s\"", sql);
	MemoryContextSwitchTo(capture_cxt);
}

/*
 * One GRANT statement for each row of the SPI result at hand, which must be
 * (grantee oid, privilege_type, is_grantable) as pg_catalog.aclexplode()
 * gives them: on object qname, or on its column col when col is not NULL.
 * Written once for the views' grants (here) and the swapped column's grants
 * (contract_worker.c), so that both re-grant alike.
 */
void
mig_contract_append_grants(StringInfo out, const char *qname, const char *col)
{
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		Oid			grantee = DatumGetObjectId(SPI_getbinval(tup, desc, 1, &isnull));
		bool		grantable = DatumGetBool(SPI_getbinval(tup, desc, 3, &isnull));

		appendStringInfo(out, "GRANT %s%s%s%s ON %s TO %s%s;",
						 SPI_getvalue(tup, desc, 2), col ? " (" : "",
						 col ? quote_identifier(col) : "", col ? ")" : "", qname,
						 grantee == InvalidOid ? "PUBLIC" :
						 quote_identifier(GetUserNameFromId(grantee, false)),
						 grantable ? " WITH GRANT OPTION" : "");
	}
}

/* GRANT statements from one ACL: the view's, or one column's. */
static void
grants_of(ContractView *cv, const char *col, Datum acl, StringInfo out)
{
	if (SPI_execute_with_args("SELECT a.grantee, a.privilege_type, a.is_grantable "
							  "FROM pg_catalog.aclexplode($1) a ORDER BY 1, 2",
							  1, (Oid[]) {ACLITEMARRAYOID}, &acl, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not read the privileges of view %s", cv->name);
	MemoryContextSwitchTo(capture_cxt);
	mig_contract_append_grants(out, cv->qname, col);
}

/* The view's columns: its shape, their grants, comments and defaults. */
static void
capture_columns(ContractView *cv, StringInfo post)
{
	List	   *acls = NIL;
	List	   *aclcols = NIL;

	query_oid("SELECT a.attname, a.atttypid, a.atttypmod, a.attacl, "
			  "pg_catalog.col_description(a.attrelid, a.attnum), "
			  "pg_catalog.pg_get_expr(d.adbin, d.adrelid) "
			  "FROM pg_catalog.pg_attribute a LEFT JOIN pg_catalog.pg_attrdef d "
			  "ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
			  "WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped "
			  "ORDER BY a.attnum", cv->oid);
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		ViewColumn *vc = palloc0(sizeof(ViewColumn));
		bool		isnull;
		Datum		acl;
		char	   *comment = SPI_getvalue(tup, desc, 5);
		char	   *def = SPI_getvalue(tup, desc, 6);

		vc->name = pstrdup(SPI_getvalue(tup, desc, 1));
		vc->typid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		vc->typmod = DatumGetInt32(SPI_getbinval(tup, desc, 3, &isnull));
		cv->shape = lappend(cv->shape, vc);
		acl = SPI_getbinval(tup, desc, 4, &isnull);
		if (!isnull)
		{
			acls = lappend(acls, DatumGetPointer(datumCopy(acl, false, -1)));
			aclcols = lappend(aclcols, vc->name);
		}
		if (comment)
			appendStringInfo(post, "COMMENT ON COLUMN %s.%s IS %s;", cv->qname,
							 quote_identifier(vc->name), quote_literal_cstr(comment));
		if (def)
			appendStringInfo(post, "ALTER VIEW %s ALTER COLUMN %s SET DEFAULT %s;", cv->qname,
							 quote_identifier(vc->name), def);
	}
	for (int i = 0; i < list_length(acls); i++)
		grants_of(cv, list_nth(aclcols, i), PointerGetDatum(list_nth(acls, i)), post);
}

/* The view's INSTEAD OF triggers, as CREATE TRIGGER statements naming it. */
static void
trigger_sql(Oid viewoid, StringInfo out)
{
	query_oid("SELECT pg_catalog.pg_get_triggerdef(t.oid) FROM pg_catalog.pg_trigger t "
			  "WHERE t.tgrelid = $1 AND NOT t.tgisinternal ORDER BY t.tgname", viewoid);
	for (uint64 i = 0; i < SPI_processed; i++)
		appendStringInfo(out, "%s;", SPI_getvalue(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1));
}

/*
 * Everything about one view that DROP VIEW would lose, as the statements
 * that give it back: under its own name, from its definition, in the swap
 * under the view's lock; or (asname, def) for the copy of it that a
 * rebuilt materialized view reads, built before the swap, without its
 * triggers.  SPI connected.
 */
static ContractView *
capture_view(Oid viewoid, const char *asname, const char *def)
{
	ContractView *cv = palloc0(sizeof(ContractView));
	StringInfoData sql;
	StringInfoData post;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	bool		aclnull;
	Datum		acl;
	char	   *opts;
	char	   *comment;
	Oid			owner;

	cv->oid = viewoid;
	cv->nspname = get_namespace_name(get_rel_namespace(viewoid));
	cv->name = get_rel_name(viewoid);
	cv->qname = quote_qualified_identifier(cv->nspname, asname ? asname : cv->name);
	initStringInfo(&sql);
	initStringInfo(&post);

	query_oid("SELECT pg_catalog.pg_get_viewdef(c.oid), "
			  "pg_catalog.array_to_string(c.reloptions, ', '), c.relacl, c.relowner, "
			  "pg_catalog.obj_description(c.oid, 'pg_class') "
			  "FROM pg_catalog.pg_class c WHERE c.oid = $1", viewoid);
	if (SPI_processed != 1)
		elog(ERROR, "cache lookup failed for view %u", viewoid);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	opts = SPI_getvalue(tup, desc, 2);
	appendStringInfo(&sql, "CREATE VIEW %s%s%s%s AS %s%s", cv->qname,
					 opts && *opts ? " WITH (" : "", opts && *opts ? opts : "",
					 opts && *opts ? ")" : "", def ? def : SPI_getvalue(tup, desc, 1),
					 def ? ";" : "");
	/* pg_get_viewdef ends with ';' */
	acl = SPI_getbinval(tup, desc, 3, &aclnull);
	if (!aclnull)
		acl = datumCopy(acl, false, -1);
	owner = DatumGetObjectId(SPI_getbinval(tup, desc, 4, &isnull));
	comment = SPI_getvalue(tup, desc, 5);
	if (comment)
		appendStringInfo(&post, "COMMENT ON VIEW %s IS %s;", cv->qname, quote_literal_cstr(comment));
	if (!aclnull)
		grants_of(cv, NULL, acl, &post);

	/* a copy's triggers are created once it has the view's name */
	if (asname == NULL)
		trigger_sql(viewoid, &post);

	capture_columns(cv, &post);
	appendStringInfo(&sql, "%s ALTER VIEW %s OWNER TO %s;", post.data, cv->qname,
					 quote_identifier(GetUserNameFromId(owner, false)));
	cv->create_sql = sql.data;
	return cv;
}

/*
 * A materialized view of plan->matviews or a view of plan->view_copies,
 * whose copy on the new column was built before the swap: its shape, and
 * the statements that give the copy (and its indexes, or its triggers) the
 * old names once the old one is dropped.  SPI connected.
 */
static ContractView *
capture_copied(Oid mvoid)
{
	ContractView *cv = palloc0(sizeof(ContractView));
	Relation	rel = relation_open(mvoid, NoLock);
	StringInfoData sql;
	ListCell   *lc;

	cv->oid = mvoid;
	cv->matview = get_rel_relkind(mvoid) == RELKIND_MATVIEW;
	cv->nspname = get_namespace_name(get_rel_namespace(mvoid));
	cv->name = get_rel_name(mvoid);
	cv->qname = quote_qualified_identifier(cv->nspname, cv->name);
	cv->shape = relation_shape(mvoid);
	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER %sVIEW %s RENAME TO %s;", cv->matview ? "MATERIALIZED " : "",
					 quote_qualified_identifier(cv->nspname,
												mig_contract_copy_name(cv->name, mvoid)),
					 quote_identifier(cv->name));
	foreach(lc, RelationGetIndexList(rel))
	{
		char	   *idxname = get_rel_name(lfirst_oid(lc));

		appendStringInfo(&sql, "ALTER INDEX %s RENAME TO %s;",
						 quote_qualified_identifier(cv->nspname,
													mig_contract_copy_name(idxname, lfirst_oid(lc))),
						 quote_identifier(idxname));
	}
	relation_close(rel, NoLock);
	if (!cv->matview)
		trigger_sql(mvoid, &sql);
	cv->create_sql = sql.data;
	return cv;
}

/*
 * Is this relation a copy this migration's contract built and recorded?
 * (contract_undo.c's mig_contract_recorded, which sits above this file.)
 */
static bool
copy_recorded(ContractPlan *plan, Oid copy)
{
	bool		found;

	SPI_connect();
	if (mig_catalog_query("SELECT FROM migrate_ext.contract_object "
						  "WHERE migration_id OPERATOR(pg_catalog.=) $1 "
						  "AND classid OPERATOR(pg_catalog.=) $2 AND objid OPERATOR(pg_catalog.=) $3",
						  3, (Oid[]) {INT8OID, OIDOID, OIDOID},
						  (Datum[]) {Int64GetDatum(plan->migration_id),
						  ObjectIdGetDatum(RelationRelationId), ObjectIdGetDatum(copy)},
						  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.contract_object");
	found = SPI_processed > 0;
	SPI_finish();
	return found;
}

/*
 * Capture every view of the plan and return the DROP statements, deepest
 * first.  In the swap transaction, under the views' locks.
 */
List *
mig_contract_capture_views(ContractPlan *plan, StringInfo drop_sql)
{
	List	   *views = NIL;

	ListCell   *lc;

	/* the copies are still those built (by OID): none taken over since */
	foreach(lc, plan->views)
	{
		Oid			v = lfirst_oid(lc);
		char	   *copyname = mig_contract_copy_name(get_rel_name(v), v);
		Oid			copy = get_relname_relid(copyname, get_rel_namespace(v));

		if ((!list_member_oid(plan->matviews, v) && !list_member_oid(plan->view_copies, v)) ||
			list_member_oid(plan->view_keep, v))
			continue;
		/* nobody else has a reason to hold a copy: no waiting in the swap */
		if (OidIsValid(copy) && !ConditionalLockRelationOid(copy, AccessExclusiveLock))
			ereport(ERROR,
					(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
					 errmsg("could not lock relation \"%s\", the copy of view \"%s\"",
							copyname, get_rel_name(v)),
					 errdetail("Another session holds a lock on it; the swap did not wait."),
					 errhint("Run mig_contract again.")));
		if (!OidIsValid(copy) || get_relname_relid(copyname, get_rel_namespace(v)) != copy ||
			!copy_recorded(plan, copy))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("relation \"%s\" is not the copy of %sview \"%s\" that mig_contract built",
							copyname, get_rel_relkind(v) == RELKIND_MATVIEW ? "materialized " : "",
							get_rel_name(v)),
					 errdetail("It was dropped or replaced after mig_contract built it; the swap did not use it."),
					 errhint("Drop or rename relation \"%s\" if it is there, then run mig_contract again: it builds the copy again.",
							 copyname)));
	}

	capture_cxt = CurrentMemoryContext;
	SPI_connect();
	/* what is captured outlives SPI */
	MemoryContextSwitchTo(capture_cxt);
	foreach(lc, plan->views)
	{
		Oid			v = lfirst_oid(lc);

		if (list_member_oid(plan->view_keep, v))
			continue;
		views = lappend(views, list_member_oid(plan->matviews, v) ||
						list_member_oid(plan->view_copies, v) ?
						capture_copied(v) : capture_view(v, NULL, NULL));
	}
	for (int i = list_length(views) - 1; i >= 0; i--)
	{
		ContractView *cv = list_nth(views, i);

		appendStringInfo(drop_sql, "DROP %sVIEW %s;", cv->matview ? "MATERIALIZED " : "",
						 cv->qname);
	}
	/* re-pointed in place, shallowest first, while the old column is there */
	foreach(lc, plan->views)
		if (list_member_oid(plan->view_replace, lfirst_oid(lc)))
			replace_statement(plan, lfirst_oid(lc), drop_sql);
	SPI_finish();
	return views;
}

/* Are two types the pair's old and new type (the intended change)? */
static bool
intended_change(ContractPlan *plan, ViewColumn *before, ViewColumn *after)
{
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (before->typid == c->old_typid && after->typid == c->new_typid)
			return true;
	}
	return false;
}

/*
 * Create the views again, shallowest first, and compare each one's shape
 * with what it was.  In the swap transaction: an error rolls it all back.
 */
void
mig_contract_recreate_views(ContractPlan *plan, List *views)
{
	ListCell   *lc;

	foreach(lc, views)
	{
		ContractView *cv = lfirst(lc);
		Oid			newoid;
		ListCell   *b;
		int			attnum = 0;

		SPI_connect();
		if (SPI_execute(cv->create_sql, false, 0) < 0)
			elog(ERROR, "migrate_ext: could not run \"%s\"", cv->create_sql);
		SPI_finish();
		CommandCounterIncrement();
		newoid = get_relname_relid(cv->name, get_namespace_oid(cv->nspname, false));
		foreach(b, cv->shape)
		{
			ViewColumn *before = lfirst(b);
			ViewColumn	after;
			HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(newoid),
											  Int16GetDatum(++attnum));
			bool		same;

			if (!HeapTupleIsValid(tup))
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
						 errmsg("view %s lost column \"%s\" when mig_contract recreated it",
								cv->qname, before->name),
						 errdetail("Nothing was changed: the swap was rolled back.")));
			after.name = NameStr(((Form_pg_attribute) GETSTRUCT(tup))->attname);
			after.typid = ((Form_pg_attribute) GETSTRUCT(tup))->atttypid;
			after.typmod = ((Form_pg_attribute) GETSTRUCT(tup))->atttypmod;
			same = strcmp(after.name, before->name) == 0 &&
				((after.typid == before->typid && after.typmod == before->typmod) ||
				 intended_change(plan, before, &after));
			ReleaseSysCache(tup);
			if (!same)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_TABLE_DEFINITION),
						 errmsg("view %s would change shape when mig_contract recreates it",
								cv->qname),
						 errdetail("Column %d was \"%s\" of type %s; it would be \"%s\" of type %s. Nothing was changed: the swap was rolled back.",
								   attnum, before->name, format_type_with_typemod(before->typid, before->typmod),
								   after.name, format_type_with_typemod(after.typid, after.typmod))));
		}
	}
}

/* -------------------------------------------------------------------------
 * The views on the new column, predicted before anything changes
 * -------------------------------------------------------------------------
 */

/* repoint_walker's state */
typedef struct RepointContext
{
	ContractPlan *plan;
	List	   *from;			/* views of the plan ... */
	List	   *to;				/* ... and what stands in for them */
	List	   *rtables;		/* the range tables in scope, innermost first */
} RepointContext;

/*
 * Move every Var of an old column of the plan's table to its new column
 * (with its type), at any query level; read the views of ctx->from as those
 * of ctx->to.  In place, on a copy of the view's query.
 */
static bool
repoint_walker(Node *node, RepointContext *ctx)
{
	if (node == NULL)
		return false;
	if (IsA(node, Var))
	{
		Var		   *var = (Var *) node;
		RangeTblEntry *rte;
		AttrNumber	to;

		if (var->varattno <= 0 || var->varlevelsup >= list_length(ctx->rtables))
			return false;
		rte = rt_fetch(var->varno, (List *) list_nth(ctx->rtables, var->varlevelsup));
		if (rte->rtekind != RTE_RELATION || rte->relid != ctx->plan->relid ||
			var->varattno > ctx->plan->map->maplen)
			return false;
		to = ctx->plan->map->attnums[var->varattno - 1];
		if (to == InvalidAttrNumber || to == var->varattno)
			return false;
		get_atttypetypmodcoll(ctx->plan->relid, to, &var->vartype, &var->vartypmod,
							  &var->varcollid);
		var->varattno = to;
		var->varattnosyn = to;
		return false;
	}
	if (IsA(node, Query))
	{
		Query	   *q = (Query *) node;
		ListCell   *lc;
		bool		result;

		foreach(lc, q->rtable)
		{
			RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);
			ListCell   *f,
					   *t;

			if (rte->rtekind != RTE_RELATION)
				continue;
			forboth(f, ctx->from, t, ctx->to)
				if (lfirst_oid(f) == rte->relid)
				{
					rte->relid = lfirst_oid(t);
					break;
				}
		}
		ctx->rtables = lcons(q->rtable, ctx->rtables);
		result = query_tree_walker(q, repoint_walker, (void *) ctx, 0);
		ctx->rtables = list_delete_first(ctx->rtables);
		return result;
	}
	return expression_tree_walker(node, repoint_walker, (void *) ctx);
}

/*
 * A view's query with every old column replaced by its new one and the
 * views of from read as those of to, printed as SQL: fully qualified under
 * the search_path of pg_catalog, which the caller has.  Re-parsed, its
 * functions and operators are looked up afresh for the new types
 * (sum(bigint) is numeric where sum(int) was bigint).
 */
static char *
repointed_query(ContractPlan *plan, Oid viewoid, List *from, List *to)
{
	Relation	rel = relation_open(viewoid, AccessShareLock);
	Query	   *query = NULL;
	RepointContext ctx = {plan, from, to, NIL};

	for (int i = 0; rel->rd_rules != NULL && i < rel->rd_rules->numLocks; i++)
	{
		RewriteRule *rule = rel->rd_rules->rules[i];

		if (rule->event == CMD_SELECT && list_length(rule->actions) == 1)
			query = copyObject(linitial_node(Query, rule->actions));
	}
	relation_close(rel, NoLock);
	if (query == NULL)
		elog(ERROR, "view %u has no _RETURN rule", viewoid);
	(void) repoint_walker((Node *) query, &ctx);
	return pg_get_querydef(query, false);
}

/* A relation's columns now, in order. */
static List *
relation_shape(Oid relid)
{
	Relation	rel = relation_open(relid, AccessShareLock);
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *shape = NIL;

	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		ViewColumn *vc = palloc(sizeof(ViewColumn));

		if (att->attisdropped)
			continue;
		vc->name = pstrdup(NameStr(att->attname));
		vc->typid = att->atttypid;
		vc->typmod = att->atttypmod;
		vc->collid = att->attcollation;
		shape = lappend(shape, vc);
	}
	relation_close(rel, NoLock);
	return shape;
}

/*
 * Compare a view's shape now with its stand-in's on the new column: returns
 * whether anything differs at all (then CREATE OR REPLACE cannot re-point
 * it); what differs beyond the intended change goes to plan->blockers.
 */
static bool
compare_shape(ContractPlan *plan, Oid viewoid, List *before, List *after)
{
	bool		changed = list_length(before) != list_length(after);

	for (int i = 0; i < Max(list_length(before), list_length(after)); i++)
	{
		ViewColumn *b = i < list_length(before) ? list_nth(before, i) : NULL;
		ViewColumn *a = i < list_length(after) ? list_nth(after, i) : NULL;
		char	   *qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(viewoid)),
													   get_rel_name(viewoid));

		if (b == NULL || a == NULL || strcmp(a->name, b->name) != 0)
		{
			plan->blockers = lappend(plan->blockers,
									 psprintf("view %s, whose column %d would be \"%s\" instead of \"%s\" on the new column",
											  qname, i + 1, a ? a->name : "(none)",
											  b ? b->name : "(none)"));
			return true;
		}
		if (a->typid == b->typid && a->typmod == b->typmod && a->collid == b->collid)
			continue;
		changed = true;
		if ((a->typid == b->typid && a->typmod == b->typmod) || intended_change(plan, b, a))
			continue;
		plan->blockers = lappend(plan->blockers,
								 psprintf("view %s, whose column \"%s\" would change from %s to %s on the new column (more than the migrated column's own change)",
										  qname, b->name, format_type_with_typemod(b->typid, b->typmod),
										  format_type_with_typemod(a->typid, a->typmod)));
	}
	return changed;
}

/*
 * Does a stand-in still read an old column?  Its definition is printed
 * from the view's query with the old columns' Vars moved, but a name in it
 * can still reach the old column (a join's USING or NATURAL column): then
 * CREATE OR REPLACE cannot re-point the view, and it is created again.
 */
static bool
reads_old_column(ContractPlan *plan, Oid standin)
{
	Relation	deprel;
	ScanKeyData key[2];
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;

	deprel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_classid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(RewriteRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_objid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(get_rewrite_oid(standin, ViewSelectRuleName, false)));
	scan = systable_beginscan(deprel, DependDependerIndexId, true, NULL, 2, key);
	while (!found && HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);

		found = dep->refclassid == RelationRelationId && dep->refobjid == plan->relid &&
			dep->refobjsubid > 0 && dep->refobjsubid <= plan->map->maplen &&
			plan->map->attnums[dep->refobjsubid - 1] != dep->refobjsubid;
	}
	systable_endscan(scan);
	table_close(deprel, AccessShareLock);
	return found;
}

/*
 * A stand-in for one view of the plan on the new column (the views below
 * it already have theirs), created under a temporary name; returns whether
 * its shape differs from the view's (or it could not be re-pointed).  In
 * predict_views' subtransaction.
 */
static bool
predict_view(ContractPlan *plan, Oid viewoid, List **from, List **to)
{
	Oid			nsp = get_rel_namespace(viewoid);
	char	   *tmpname = psprintf("_mig_pred_%u", viewoid);
	char	   *sql;
	Oid			copy;

	sql = psprintf("CREATE VIEW %s AS %s",
				   quote_qualified_identifier(get_namespace_name(nsp), tmpname),
				   repointed_query(plan, viewoid, *from, *to));
	SPI_connect();
	if (SPI_execute(sql, false, 0) != SPI_OK_UTILITY)
		elog(ERROR, "migrate_ext: could not run \"%s\"", sql);
	SPI_finish();
	CommandCounterIncrement();
	copy = get_relname_relid(tmpname, nsp);
	Assert(OidIsValid(copy));
	*from = lappend_oid(*from, viewoid);
	*to = lappend_oid(*to, copy);
	return compare_shape(plan, viewoid, relation_shape(viewoid), relation_shape(copy)) ||
		reads_old_column(plan, copy);
}

/*
 * Which views of the plan keep their OID: a view reading an old column
 * whose shape does not change at all is re-pointed with CREATE OR REPLACE
 * (plan->view_replace), and the views above only such views need nothing
 * (with those, plan->view_keep).  The others, and every view above one of
 * them, are dropped and created again.
 */
static void
choose_kept(ContractPlan *plan, List *changed)
{
	List	   *recreate = NIL;
	ListCell   *lc;
	ListCell   *r;

	foreach(lc, plan->views)
	{
		Oid			v = lfirst_oid(lc);
		bool		direct = list_member_oid(plan->viewdirect, v);
		List	   *reads = list_nth(plan->view_reads, foreach_current_index(lc));

		bool		matview = get_rel_relkind(v) == RELKIND_MATVIEW;

		if ((direct && (matview || list_member_oid(changed, v))) ||
			list_length(list_difference_oid(reads, recreate)) != list_length(reads))
		{
			recreate = lappend_oid(recreate, v);
			if (matview)
				plan->matviews = lappend_oid(plan->matviews, v);
		}
		else
		{
			plan->view_keep = lappend_oid(plan->view_keep, v);
			if (direct)
				plan->view_replace = lappend_oid(plan->view_replace, v);
		}
	}

	/*
	 * A materialized view's copy is built before the swap: the views it
	 * reads that are created again get a copy on the new column beside
	 * them too, deepest reader first, so that each is marked before the
	 * views it reads are looked at.
	 */
	for (int i = list_length(plan->views) - 1; i >= 0; i--)
	{
		Oid			v = list_nth_oid(plan->views, i);

		if (!list_member_oid(plan->matviews, v) && !list_member_oid(plan->view_copies, v))
			continue;
		foreach(r, (List *) list_nth(plan->view_reads, i))
			if (list_member_oid(recreate, lfirst_oid(r)) &&
				get_rel_relkind(lfirst_oid(r)) == RELKIND_VIEW)
				plan->view_copies = list_append_unique_oid(plan->view_copies, lfirst_oid(r));
	}
}

/*
 * Predict every view of the plan on the new column, shallowest first:
 * each is created under a temporary name from its definition with the old
 * column replaced by the new one (and the views it reads by their
 * stand-ins), inside a subtransaction that is always rolled back, so that
 * nothing lasts and no lock beyond a read's is taken on the table.  A view
 * whose shape would change beyond the migrated column's own type change,
 * or that could not be created on the new column, goes to plan->blockers;
 * the views whose shape does not change at all keep their OIDs.
 */
void
mig_contract_predict_views(ContractPlan *plan)
{
	MemoryContext cxt = CurrentMemoryContext;
	ResourceOwner owner = CurrentResourceOwner;
	List	   *from = NIL;
	List	   *to = NIL;
	List	   *changed = NIL;
	volatile Oid current = InvalidOid;
	volatile bool ok = true;
	ListCell   *lc;

	if (plan->views == NIL)
		return;
	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(cxt);
	PG_TRY();
	{
		/* the definitions are printed fully qualified */
		(void) set_config_option("search_path", "pg_catalog, pg_temp", PGC_USERSET,
								 PGC_S_SESSION, GUC_ACTION_LOCAL, true, 0, false);
		foreach(lc, plan->views)
		{
			current = lfirst_oid(lc);
			if (predict_view(plan, current, &from, &to))
				changed = lappend_oid(changed, current);
		}
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		plan->blockers = lappend(plan->blockers,
								 psprintf("view %s, which could not be created on the new column (%s)",
										  get_rel_name(current), edata->message));
		FreeErrorData(edata);
		ok = false;
	}
	PG_END_TRY();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	if (ok)
		choose_kept(plan, changed);
}

/*
 * CREATE OR REPLACE VIEW for a view of plan->view_replace: its definition
 * on the new column, its options.  In the swap, before the old column goes:
 * the view then reads the new column by its attribute number, and follows
 * its rename.  SPI connected, search_path pg_catalog.
 */
static void
replace_statement(ContractPlan *plan, Oid viewoid, StringInfo out)
{
	char	   *opts;

	query_oid("SELECT pg_catalog.array_to_string(c.reloptions, ', ') "
			  "FROM pg_catalog.pg_class c WHERE c.oid = $1", viewoid);
	if (SPI_processed != 1)
		elog(ERROR, "cache lookup failed for view %u", viewoid);
	opts = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	appendStringInfo(out, "CREATE OR REPLACE VIEW %s%s%s%s AS %s;",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(viewoid)),
												get_rel_name(viewoid)),
					 opts && *opts ? " WITH (" : "", opts && *opts ? opts : "",
					 opts && *opts ? ")" : "", repointed_query(plan, viewoid, NIL, NIL));
}

/*
 * CREATE INDEX for the copy of one index of a materialized view, on its
 * copy (same columns, same order: the attribute numbers stay), under the
 * copy-name of the index.  Not concurrently: nobody reads the copy yet.
 */
static void
copy_matview_index(Oid indexoid, const char *nspname, const char *copyname)
{
	Relation	idx = index_open(indexoid, AccessShareLock);
	AttrMap    *map = make_attrmap(RelationGetDescr(idx)->natts);
	Oid			conoid;
	IndexStmt  *stmt;
	PlannedStmt *pstmt = makeNode(PlannedStmt);
	Relation	heap = relation_open(idx->rd_index->indrelid, NoLock);

	free_attrmap(map);
	map = make_attrmap(RelationGetDescr(heap)->natts);
	for (int i = 0; i < map->maplen; i++)
		map->attnums[i] = i + 1;
	relation_close(heap, NoLock);
	stmt = generateClonedIndexStmt(makeRangeVar(pstrdup(nspname), pstrdup(copyname), -1),
								   idx, map, &conoid);
	stmt->idxname = mig_contract_copy_name(RelationGetRelationName(idx), indexoid);
	stmt->concurrent = false;
	index_close(idx, AccessShareLock);

	pstmt->commandType = CMD_UTILITY;
	pstmt->canSetTag = false;
	pstmt->utilityStmt = (Node *) stmt;
	pstmt->stmt_location = -1;
	pstmt->stmt_len = 0;
	ProcessUtility(pstmt, "CREATE INDEX (the copy of an index of a materialized view)",
				   false, PROCESS_UTILITY_QUERY, NULL, NULL, None_Receiver, NULL);
	CommandCounterIncrement();
}

/*
 * Build the copy of a materialized view of plan->matviews beside it, on the
 * new column, populated: CREATE MATERIALIZED VIEW under its copy-name with
 * its storage parameters and tablespace, as its owner (inside the owner
 * switch), then its indexes, grants and comments.  from/to: the copies
 * built before it, which it reads instead of their originals.  In a
 * transaction of its own before the swap, taking no lock on the table
 * beyond a read's.  Returns its OID, for the caller to record.
 */
static Oid
build_matview(ContractPlan *plan, Oid mvoid, List *from, List *to)
{
	Oid			nsp = get_rel_namespace(mvoid);
	ContractView cv = {0};
	char	   *copyname = mig_contract_copy_name(get_rel_name(mvoid), mvoid);
	StringInfoData sql;
	StringInfoData post;
	Relation	rel;
	Oid			copy;
	MigOwnerSave owner;
	ListCell   *lc;

	cv.oid = mvoid;
	cv.nspname = get_namespace_name(nsp);
	cv.name = get_rel_name(mvoid);
	cv.qname = quote_qualified_identifier(cv.nspname, copyname);
	rel = relation_open(mvoid, AccessShareLock);
	initStringInfo(&sql);
	initStringInfo(&post);
	capture_cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(capture_cxt);
	query_oid("SELECT pg_catalog.array_to_string(c.reloptions, ', '), t.spcname, c.relacl, "
			  "pg_catalog.obj_description(c.oid, 'pg_class'), c.relispopulated "
			  "FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_tablespace t ON t.oid OPERATOR(pg_catalog.=) c.reltablespace "
			  "WHERE c.oid OPERATOR(pg_catalog.=) $1", mvoid);
	if (SPI_processed != 1)
		elog(ERROR, "cache lookup failed for materialized view %u", mvoid);
	{
		HeapTuple	tup = SPI_tuptable->vals[0];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		char	   *opts = SPI_getvalue(tup, desc, 1);
		char	   *spc = SPI_getvalue(tup, desc, 2);
		char	   *comment = SPI_getvalue(tup, desc, 4);
		bool		aclnull;
		Datum		acl = SPI_getbinval(tup, desc, 3, &aclnull);
		bool		isnull;
		bool		populated = DatumGetBool(SPI_getbinval(tup, desc, 5, &isnull));

		/* one never refreshed stays so */
		appendStringInfo(&sql, "CREATE MATERIALIZED VIEW %s%s%s%s%s%s AS %s WITH %sDATA", cv.qname,
						 opts && *opts ? " WITH (" : "", opts && *opts ? opts : "",
						 opts && *opts ? ")" : "", spc ? " TABLESPACE " : "",
						 spc ? quote_identifier(spc) : "",
						 repointed_query(plan, mvoid, from, to), populated ? "" : "NO ");
		if (comment)
			appendStringInfo(&post, "COMMENT ON MATERIALIZED VIEW %s IS %s;", cv.qname,
							 quote_literal_cstr(comment));
		if (!aclnull)
			grants_of(&cv, NULL, datumCopy(acl, false, -1), &post);
	}
	capture_columns(&cv, &post);
	SPI_finish();

	/* built by its owner, as REFRESH would */
	mig_owner_switch(mvoid, &owner);
	mig_run_utility(sql.data);
	CommandCounterIncrement();
	foreach(lc, RelationGetIndexList(rel))
	{
		Oid			indexoid = lfirst_oid(lc);
		char	   *comment = GetComment(indexoid, RelationRelationId, 0);

		copy_matview_index(indexoid, cv.nspname, copyname);
		if (comment)
			appendStringInfo(&post, "COMMENT ON INDEX %s IS %s;",
							 quote_qualified_identifier(cv.nspname,
														mig_contract_copy_name(get_rel_name(indexoid), indexoid)),
							 quote_literal_cstr(comment));
	}
	if (post.len > 0)
		mig_run_utility(post.data);
	mig_owner_restore(&owner);
	relation_close(rel, NoLock);

	copy = get_relname_relid(copyname, nsp);
	Assert(OidIsValid(copy));
	return copy;
}

/*
 * The copy of a view of plan->view_copies beside it on the new column,
 * under its copy-name, with its options, owner, grants, comments and
 * defaults (its triggers come at the swap).  From/to as for
 * build_matview.
 */
static Oid
build_view_copy(ContractPlan *plan, Oid viewoid, List *from, List *to)
{
	char	   *copyname = mig_contract_copy_name(get_rel_name(viewoid), viewoid);
	ContractView *cv;

	capture_cxt = CurrentMemoryContext;
	SPI_connect();
	MemoryContextSwitchTo(capture_cxt);
	cv = capture_view(viewoid, copyname, repointed_query(plan, viewoid, from, to));
	SPI_finish();
	mig_run_utility(cv->create_sql);
	CommandCounterIncrement();
	return get_relname_relid(copyname, get_rel_namespace(viewoid));
}

/*
 * SELECT on each new column for every role that may read its old column by
 * a column grant: a copy is built as its owner (and reads the copies of
 * views as theirs), who must read the new column as it read the old one.
 * The swap gives the new column all of the old one's privileges anyway;
 * this is the part that reading needs, given before, by the caller (the
 * table's owner).  GRANT is idempotent: each copy's transaction repeats it.
 */
static void
grant_new_columns(ContractPlan *plan)
{
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	SPI_connect();
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (SPI_execute_with_args("SELECT a.grantee, a.privilege_type, false "
								  "FROM pg_catalog.pg_attribute t, "
								  "LATERAL pg_catalog.aclexplode(t.attacl) a "
								  "WHERE t.attrelid OPERATOR(pg_catalog.=) $1 "
								  "AND t.attnum OPERATOR(pg_catalog.=) $2 "
								  "AND a.privilege_type OPERATOR(pg_catalog.=) 'SELECT' ORDER BY 1",
								  2, (Oid[]) {OIDOID, INT2OID},
								  (Datum[]) {ObjectIdGetDatum(plan->relid),
								  Int16GetDatum(c->pair->old_attnum)},
								  NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read the privileges of column \"%s\"", c->oldname);
		mig_contract_append_grants(&sql, plan->qname, c->newname);
	}
	SPI_finish();
	if (sql.len > 0)
		mig_run_utility(sql.data);
}

/*
 * Build the copy of a materialized view of plan->matviews, or of a view of
 * plan->view_copies, beside it on the new column.  from/to: the copies
 * built before it, which it reads instead of their originals.  In a
 * transaction of its own before the swap, taking no lock on the table
 * beyond a read's.  Returns the copy's OID, for the caller to record.
 */
/*
 * Refuse a copy-name that a relation already has: someone else's (a copy
 * left by a contract that stopped was dropped before, by its recorded
 * OID), which is neither dropped nor used.
 */
static void
refuse_taken(const char *copyname, Oid nsp, const char *what, const char *name)
{
	if (OidIsValid(get_relname_relid(copyname, nsp)))
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("relation \"%s\" already exists", copyname),
				 errdetail("mig_contract builds the copy of %s \"%s\" under this name.",
						   what, name),
				 errhint("Rename or drop that relation.")));
}

Oid
mig_contract_build_copy(ContractPlan *plan, Oid relid, List *from, List *to)
{
	char	   *name = get_rel_name(relid);
	Oid			nsp = get_rel_namespace(relid);
	bool		matview = get_rel_relkind(relid) == RELKIND_MATVIEW;
	Oid			copy;

	refuse_taken(mig_contract_copy_name(name, relid), nsp,
				 matview ? "materialized view" : "view", name);
	if (matview)
	{
		Relation	rel = relation_open(relid, AccessShareLock);
		ListCell   *lc;

		/* and its indexes' copies, in its schema too */
		foreach(lc, RelationGetIndexList(rel))
			refuse_taken(mig_contract_copy_name(get_rel_name(lfirst_oid(lc)), lfirst_oid(lc)),
						 nsp, "index", get_rel_name(lfirst_oid(lc)));
		relation_close(rel, NoLock);
	}
	grant_new_columns(plan);
	copy = matview ? build_matview(plan, relid, from, to) :
		build_view_copy(plan, relid, from, to);
	Assert(OidIsValid(copy));
	return copy;
}
