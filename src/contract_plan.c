/*-------------------------------------------------------------------------
 *
 * contract_plan.c
 *	  What mig_contract must rebuild on the new column, worked out from the
 *	  catalog without changing anything.
 *
 * Everything that depends on an old column is either carried over to the
 * new one or refused before anything changes: the indexes (cloned with the
 * old column's attribute number remapped to the new one's), the primary
 * key and unique constraints, the foreign keys in both directions, NOT NULL
 * and the CHECK asked for at expand, the default, a serial's or an
 * identity's sequence, and the comment.  The caller plans to fail early, in
 * its own session; the worker plans again, since the catalog may have moved
 * in between.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_index.h"
#include "catalog/pg_rewrite.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "access/reloptions.h"
#include "access/toast_compression.h"
#include "nodes/nodeFuncs.h"
#include "commands/comment.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_utilcmd.h"
#include "parser/parser.h"
#include "rewrite/rewriteSupport.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"

/* -------------------------------------------------------------------------
 * Shared checks
 * -------------------------------------------------------------------------
 */

static const char *
attname_of(Oid relid, AttrNumber attnum)
{
	return get_attname(relid, attnum, false);
}

/* -------------------------------------------------------------------------
 * The plan
 * -------------------------------------------------------------------------
 */

/* "view v", or the rule's own description, for a rewrite rule. */
static char *
describe_rule(Oid ruleoid)
{
	ObjectAddress addr;
	bool		is_return;
	char		relkind;
	Oid			ev = mig_rule_view(ruleoid, &is_return, &relkind);

	ObjectAddressSet(addr, RewriteRelationId, ruleoid);
	if (OidIsValid(ev) && is_return)
		ObjectAddressSet(addr, RelationRelationId, ev);
	return getObjectDescription(&addr, false);
}

/* The view or materialized view whose _RETURN rule this is, else InvalidOid. */
static Oid
view_of_rule(Oid ruleoid)
{
	bool		is_return;
	char		relkind;
	Oid			ev = mig_rule_view(ruleoid, &is_return, &relkind);

	return (is_return && (relkind == RELKIND_VIEW || relkind == RELKIND_MATVIEW)) ?
		ev : InvalidOid;
}

/* The column's name on either side of a foreign key, mapped to the new one. */
static char *
fkey_columns(ContractPlan *plan, AttrMap *map, Oid relid, Datum arr)
{
	Datum	   *elems;
	int			n;
	StringInfoData buf;

	deconstruct_array(DatumGetArrayTypeP(arr), INT2OID, 2, true, TYPALIGN_SHORT,
					  &elems, NULL, &n);
	initStringInfo(&buf);
	for (int i = 0; i < n; i++)
	{
		AttrNumber	attnum = DatumGetInt16(elems[i]);

		if (relid == plan->relid)
			attnum = map->attnums[attnum - 1];
		appendStringInfo(&buf, "%s%s", i > 0 ? ", " : "",
						 quote_identifier(attname_of(relid, attnum)));
	}
	return buf.data;
}

static const char *
fkey_action(char action)
{
	switch (action)
	{
		case FKCONSTR_ACTION_RESTRICT:
			return "RESTRICT";
		case FKCONSTR_ACTION_CASCADE:
			return "CASCADE";
		case FKCONSTR_ACTION_SETNULL:
			return "SET NULL";
		case FKCONSTR_ACTION_SETDEFAULT:
			return "SET DEFAULT";
		default:
			return "NO ACTION";
	}
}

/*
 * The copy of a foreign key with the old column replaced by the new one on
 * whichever side it is, as an ALTER TABLE that adds it NOT VALID.
 */
static ContractFkey *
plan_fkey(ContractPlan *plan, AttrMap *map, Oid conoid)
{
	HeapTuple	tup;
	Form_pg_constraint con;
	ContractFkey *fk = palloc0(sizeof(ContractFkey));
	StringInfoData buf;
	Datum		d;
	bool		isnull;

	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", conoid);
	con = (Form_pg_constraint) GETSTRUCT(tup);

	fk->conoid = conoid;
	fk->oldname = pstrdup(NameStr(con->conname));
	fk->tmpname = mig_contract_copy_name(fk->oldname, conoid);
	fk->conrelid = con->conrelid;
	fk->confrelid = con->confrelid;
	fk->conrel = quote_qualified_identifier(get_namespace_name(get_rel_namespace(con->conrelid)),
											get_rel_name(con->conrelid));

	initStringInfo(&buf);
	appendStringInfo(&buf, "ALTER TABLE %s ADD CONSTRAINT %s FOREIGN KEY (",
					 fk->conrel, quote_identifier(fk->tmpname));
	d = SysCacheGetAttr(CONSTROID, tup, Anum_pg_constraint_conkey, &isnull);
	appendStringInfo(&buf, "%s) REFERENCES %s (", fkey_columns(plan, map, con->conrelid, d),
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(con->confrelid)),
												get_rel_name(con->confrelid)));
	d = SysCacheGetAttr(CONSTROID, tup, Anum_pg_constraint_confkey, &isnull);
	appendStringInfo(&buf, "%s)", fkey_columns(plan, map, con->confrelid, d));
	if (con->confmatchtype == FKCONSTR_MATCH_FULL)
		appendStringInfoString(&buf, " MATCH FULL");
	appendStringInfo(&buf, " ON UPDATE %s ON DELETE %s",
					 fkey_action(con->confupdtype), fkey_action(con->confdeltype));
	d = SysCacheGetAttr(CONSTROID, tup, Anum_pg_constraint_confdelsetcols, &isnull);
	if (!isnull && ArrayGetNItems(ARR_NDIM(DatumGetArrayTypeP(d)), ARR_DIMS(DatumGetArrayTypeP(d))) > 0)
		appendStringInfo(&buf, " (%s)", fkey_columns(plan, map, con->conrelid, d));
	if (con->condeferrable)
		appendStringInfoString(&buf, " DEFERRABLE");
	if (con->condeferred)
		appendStringInfoString(&buf, " INITIALLY DEFERRED");
	appendStringInfoString(&buf, " NOT VALID");
	fk->adddef = buf.data;

	ReleaseSysCache(tup);
	return fk;
}

/*
 * Parse an expression deparsed from a catalog tree, for a statement that
 * will analyze it again: with the old column's Vars moved to the new
 * column, operators and functions must be looked up afresh for the new
 * column's type (an int4 operator must not be applied to a bigint).
 */
static Node *
reparse(Node *expr, Oid relid)
{
	char	   *src = mig_deparse(expr, relid);
	List	   *raw = raw_parser(src, RAW_PARSE_PLPGSQL_EXPR);
	SelectStmt *stmt = (SelectStmt *) linitial_node(RawStmt, raw)->stmt;

	return linitial_node(ResTarget, stmt->targetList)->val;
}

/*
 * The copy of an index of the old column: the same index (method, keys,
 * opclasses, collations, ordering, INCLUDE, predicate, options, tablespace)
 * with the old column's attribute number replaced by the new one's, built
 * from the catalog as partitioning clones indexes.  A plain index, never a
 * constraint: the swap makes a constraint of it.
 */
static ContractIndex *
plan_index(ContractPlan *plan, AttrMap *map, Oid indexoid)
{
	Relation	idx = index_open(indexoid, AccessShareLock);
	Form_pg_index form = idx->rd_index;
	ContractIndex *ci = palloc0(sizeof(ContractIndex));
	IndexStmt  *stmt;
	Oid			conoid;
	ListCell   *lc;
	int			keyno = 0;
	bool		has_exprs = false;

	ci->oldoid = indexoid;
	ci->oldname = pstrdup(RelationGetRelationName(idx));
	ci->tmpname = mig_contract_copy_name(ci->oldname, indexoid);
	ci->replident = form->indisreplident;
	ci->clustered = form->indisclustered;

	stmt = generateClonedIndexStmt(makeRangeVar(plan->nspname, plan->relname, -1),
								   idx, map, &conoid);
	if (OidIsValid(conoid))
	{
		HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
		Form_pg_constraint con;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for constraint %u", conoid);
		con = (Form_pg_constraint) GETSTRUCT(tup);
		ci->contype = con->contype;
		ci->conname = pstrdup(NameStr(con->conname));
		ci->deferrable = con->condeferrable;
		ci->deferred = con->condeferred;
		ReleaseSysCache(tup);
	}

	/* simple key columns are cloned by name: give them the new one's */
	foreach(lc, list_concat_copy(stmt->indexParams, stmt->indexIncludingParams))
	{
		IndexElem  *elem = lfirst_node(IndexElem, lc);
		AttrNumber	attnum = form->indkey.values[keyno++];

		if (attnum != InvalidAttrNumber)
			elem->name = pstrdup(attname_of(plan->relid, map->attnums[attnum - 1]));
		else
		{
			elem->expr = reparse(elem->expr, plan->relid);
			has_exprs = true;
		}
	}
	if (stmt->whereClause)
	{
		stmt->whereClause = reparse(stmt->whereClause, plan->relid);
		has_exprs = true;
	}
	stmt->transformed = !has_exprs;
	stmt->idxname = ci->tmpname;
	stmt->primary = false;
	stmt->isconstraint = false;
	stmt->deferrable = false;
	stmt->initdeferred = false;
	stmt->concurrent = true;
	ci->stmt = stmt;

	index_close(idx, AccessShareLock);
	return ci;
}

/*
 * Look at everything that depends on an old column.  Indexes, primary key,
 * unique and foreign key constraints, the default and a serial's or an
 * identity's sequence are carried over to the new column (col is NULL for
 * a column split into several, whose such objects cannot be); anything
 * else would make DROP COLUMN fail, or silently take something with it, so
 * it is collected in blockers.
 */
static void
scan_dependents(ContractPlan *plan, Relation rel, AttrNumber attnum,
				ContractColumn *col, List **blockers, List **indexes,
				List **fkeys)
{
	Relation	deprel;
	SysScanDesc scan;
	HeapTuple	tup;

	scan = mig_column_dependents_scan(plan->relid, attnum, &deprel);

	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);
		ObjectAddress addr;
		bool		carried = false;

		ObjectAddressSubSet(addr, dep->classid, dep->objid, dep->objsubid);
		/* the dual-write trigger (guard.c): contract drops it first */
		if (dep->classid == TriggerRelationId &&
			dep->objid == mig_dualwrite_trigger(RelationGetRelid(rel), NULL, NULL))
			continue;
		if (dep->classid == RewriteRelationId)
		{
			Oid			view = view_of_rule(dep->objid);

			/* a view of an old column that has a new one is recreated */
			if (OidIsValid(view) && col != NULL)
				plan->viewdirect = list_append_unique_oid(plan->viewdirect, view);
			else
				*blockers = lappend(*blockers, describe_rule(dep->objid));
			continue;
		}
		if (dep->classid == RelationRelationId && col != NULL)
		{
			char		relkind = get_rel_relkind(dep->objid);

			if (relkind == RELKIND_INDEX || relkind == RELKIND_PARTITIONED_INDEX)
			{
				*indexes = list_append_unique_oid(*indexes, dep->objid);
				carried = true;
			}
			else if (relkind == RELKIND_SEQUENCE && dep->deptype == DEPENDENCY_AUTO)
			{
				col->owned_seq = dep->objid;
				carried = true;
			}
			else if (relkind == RELKIND_SEQUENCE && dep->deptype == DEPENDENCY_INTERNAL)
			{
				col->ident_seq = dep->objid;
				carried = true;
			}
		}
		else if (dep->classid == ConstraintRelationId)
		{
			HeapTuple	ctup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(dep->objid));
			Form_pg_constraint con;

			if (!HeapTupleIsValid(ctup))
				elog(ERROR, "cache lookup failed for constraint %u", dep->objid);
			con = (Form_pg_constraint) GETSTRUCT(ctup);
			if (OidIsValid(con->conparentid))
				carried = true; /* a partition's copy: follows its parent */
			else if (col != NULL && con->contype == CONSTRAINT_FOREIGN)
			{
				*fkeys = list_append_unique_oid(*fkeys, dep->objid);
				carried = true;
			}
			else if (col != NULL && con->contype == CONSTRAINT_CHECK)
			{
				/* re-stated on the new column */
				plan->checkoids = list_append_unique_oid(plan->checkoids, dep->objid);
				carried = true;
			}
			else if (col != NULL && (con->contype == CONSTRAINT_PRIMARY ||
									 con->contype == CONSTRAINT_UNIQUE))
			{
				/* the constraint's index depends on the constraint only */
				*indexes = list_append_unique_oid(*indexes, con->conindid);
				carried = true;
			}
			ReleaseSysCache(ctup);
		}
		else if (dep->classid == AttrDefaultRelationId)
		{
			ObjectAddress coladdr = GetAttrDefaultColumnAddress(dep->objid);

			/* its own default goes with it; another column's expression not */
			carried = (coladdr.objectId == plan->relid && coladdr.objectSubId == attnum);
		}

		if (!carried)
			*blockers = lappend(*blockers, getObjectDescription(&addr, false));
	}
	systable_endscan(scan);
	table_close(deprel, AccessShareLock);
}

/* Is t1 an integer type narrower than t2? */
static bool
narrower_integer(Oid t1, Oid t2)
{
	int			r1 = t1 == INT2OID ? 1 : t1 == INT4OID ? 2 : t1 == INT8OID ? 3 : 0;
	int			r2 = t2 == INT2OID ? 1 : t2 == INT4OID ? 2 : t2 == INT8OID ? 3 : 0;

	return r1 > 0 && r2 > r1;
}

/*
 * The columns of the plan, and the attribute map from old to new (an old
 * column of several pairs, a split, maps to nothing); *oldattnums gets each
 * old column once.
 */
static void
plan_columns(ContractPlan *plan, Relation rel, MigMigration *m, List **oldattnums)
{
	TupleDesc	desc = RelationGetDescr(rel);
	AttrMap    *map = plan->map;
	ListCell   *lc;

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		if (p->old_attnum > desc->natts || p->new_attnum > desc->natts ||
			TupleDescAttr(desc, p->old_attnum - 1)->attisdropped ||
			TupleDescAttr(desc, p->new_attnum - 1)->attisdropped)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a column of the migration of table \"%s\" was dropped behind its back",
							plan->relname),
					 errdetail("Column pair \"%s\" -> \"%s\" no longer exists.", p->old_col, p->new_col),
					 errhint("Abort the migration with mig_abort('%s').", plan->relname)));
		if (p->keep_old)
			continue;			/* the old column stays, with all it has */
		if (list_member_int(*oldattnums, p->old_attnum))
			map->attnums[p->old_attnum - 1] = InvalidAttrNumber;
		else
		{
			*oldattnums = lappend_int(*oldattnums, p->old_attnum);
			map->attnums[p->old_attnum - 1] = p->new_attnum;
			plan->dropcols = lappend(plan->dropcols,
									 pstrdup(NameStr(TupleDescAttr(desc, p->old_attnum - 1)->attname)));
		}
	}

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		Form_pg_attribute oldatt = TupleDescAttr(desc, p->old_attnum - 1);
		Form_pg_attribute newatt = TupleDescAttr(desc, p->new_attnum - 1);
		ContractColumn *c = palloc0(sizeof(ContractColumn));

		c->pair = p;
		c->oldname = pstrdup(NameStr(oldatt->attname));
		c->newname = pstrdup(NameStr(newatt->attname));
		c->finalname = p->in_place ? c->oldname : c->newname;
		c->old_typid = oldatt->atttypid;
		c->new_typid = newatt->atttypid;
		c->stattarget = -1;		/* plan_props takes the old column's, if any */

		/*
		 * NOT NULL is a property of the data: it goes to the new column, and
		 * to each column of a split, whose validation names the NULLs.
		 */
		c->not_null = p->not_null || (oldatt->attnotnull && !p->keep_old);
		c->nn_check = psprintf("_mig_nn_%d", p->new_attnum);
		if (p->check)
		{
			c->check_tmp = psprintf("_mig_check_%d", p->ord);
			c->check_sql = mig_deparse(p->check, plan->relid);
		}
		plan->columns = lappend(plan->columns, c);
	}
}

/*
 * A planned column's old and new attributes, as rel's descriptor has them;
 * returns whether the new column takes over the old one's objects (the
 * map sends the old column to it: not so for a split's columns, nor for a
 * kept old column).  Written once for plan_takeover and plan_props, which
 * must agree on which columns they carry.
 */
static bool
column_atts(ContractPlan *plan, TupleDesc desc, ContractColumn *c,
			Form_pg_attribute *oldatt, Form_pg_attribute *newatt)
{
	*oldatt = TupleDescAttr(desc, c->pair->old_attnum - 1);
	*newatt = TupleDescAttr(desc, c->pair->new_attnum - 1);
	return plan->map->attnums[c->pair->old_attnum - 1] == c->pair->new_attnum;
}

/* The defaults, sequences and comments of the columns taken over. */
static void
plan_takeover(ContractPlan *plan, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		Form_pg_attribute oldatt;
		Form_pg_attribute newatt;
		bool		takes_over = column_atts(plan, desc, c, &oldatt, &newatt);

		/* new_default, cooked at expand for the new column, wins */
		if (c->pair->new_default)
		{
			c->default_expr = c->pair->new_default;
			c->default_sql = mig_deparse(c->default_expr, plan->relid);
		}
		if (!takes_over)
			continue;
		c->identity = oldatt->attidentity;
		c->comment = GetComment(plan->relid, RelationRelationId, c->pair->old_attnum);
		if (oldatt->atthasdef && desc->constr)
		{
			for (int i = 0; i < desc->constr->num_defval; i++)
				if (desc->constr->defval[i].adnum == c->pair->old_attnum &&
					c->pair->new_default == NULL)
				{
					c->default_expr = stringToNode(desc->constr->defval[i].adbin);
					c->default_sql = mig_deparse(c->default_expr, plan->relid);
				}
		}
		if (OidIsValid(c->owned_seq))
		{
			HeapTuple	tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(c->owned_seq));

			if (!HeapTupleIsValid(tup))
				elog(ERROR, "cache lookup failed for sequence %u", c->owned_seq);
			c->widen_seq = narrower_integer(((Form_pg_sequence) GETSTRUCT(tup))->seqtypid,
											newatt->atttypid);
			ReleaseSysCache(tup);
			plan->lockrels = list_append_unique_oid(plan->lockrels, c->owned_seq);
		}
		if (OidIsValid(c->ident_seq))
			plan->lockrels = list_append_unique_oid(plan->lockrels, c->ident_seq);
		if (c->widen_seq || c->identity)
			plan->new_type_name = format_type_be_qualified(newatt->atttypid);
	}
}

/* The copies of the indexes and foreign keys, with every table they touch. */
static void
plan_objects(ContractPlan *plan, List *indexoids, List *fkoids)
{
	ListCell   *lc;

	foreach(lc, indexoids)
	{
		Oid			indexoid = lfirst_oid(lc);

		if (get_index_isvalid(indexoid))
			plan->indexes = lappend(plan->indexes, plan_index(plan, plan->map, indexoid));
		else
			ereport(NOTICE,
					(errmsg("index \"%s\" is invalid and is not carried over to the new column",
							get_rel_name(indexoid))));
	}
	foreach(lc, fkoids)
	{
		ContractFkey *fk = plan_fkey(plan, plan->map, lfirst_oid(lc));

		if (!pg_class_ownercheck(fk->conrelid, GetUserId()))
			plan->blockers = lappend(plan->blockers,
									 psprintf("foreign key %s of table %s (which mig_contract must move to the new column, and only its owner can)",
											  fk->oldname, get_rel_name(fk->conrelid)));
		plan->fkeys = lappend(plan->fkeys, fk);
		plan->lockrels = list_append_unique_oid(plan->lockrels, fk->conrelid);
		plan->lockrels = list_append_unique_oid(plan->lockrels, fk->confrelid);
		/*
		 * the swap drops and adds the key on every partition of its table,
		 * and its triggers on every partition of the referenced one
		 */
		if (get_rel_relkind(fk->conrelid) == RELKIND_PARTITIONED_TABLE)
			plan->lockrels = list_concat_unique_oid(plan->lockrels,
													find_all_inheritors(fk->conrelid, NoLock, NULL));
		if (get_rel_relkind(fk->confrelid) == RELKIND_PARTITIONED_TABLE)
			plan->lockrels = list_concat_unique_oid(plan->lockrels,
													find_all_inheritors(fk->confrelid, NoLock, NULL));
	}
}

typedef struct RemapContext
{
	AttrMap    *map;
	TupleDesc	desc;
} RemapContext;

/* Move every Var of the table to its column in the map, with its type. */
static Node *
remap_mutator(Node *node, RemapContext *ctx)
{
	if (node == NULL)
		return NULL;
	if (IsA(node, Var) && ((Var *) node)->varlevelsup == 0)
	{
		Var		   *var = (Var *) copyObject(node);
		AttrNumber	to = var->varattno > 0 ? ctx->map->attnums[var->varattno - 1] : 0;
		Form_pg_attribute att;

		if (to == InvalidAttrNumber)
			return (Node *) var;	/* a system column, or a split's */
		att = TupleDescAttr(ctx->desc, to - 1);

		var->varattno = to;
		var->varattnosyn = to;
		var->vartype = att->atttypid;
		var->vartypmod = att->atttypmod;
		var->varcollid = att->attcollation;
		return (Node *) var;
	}
	return expression_tree_mutator(node, remap_mutator, (void *) ctx);
}

/*
 * The CHECK constraints of the old column, re-stated on the new one: added
 * NOT VALID under a temporary name, validated, and given their own name
 * back once the old column (and with it the old constraint) is gone.
 */
static void
plan_checks(ContractPlan *plan, Relation rel)
{
	ListCell   *lc;
	RemapContext ctx;

	ctx.map = plan->map;
	ctx.desc = RelationGetDescr(rel);
	foreach(lc, plan->checkoids)
	{
		Oid			conoid = lfirst_oid(lc);
		HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
		Form_pg_constraint con;
		ContractCheck *ck = palloc0(sizeof(ContractCheck));
		bool		isnull;
		Datum		d;
		Node	   *expr;

		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for constraint %u", conoid);
		con = (Form_pg_constraint) GETSTRUCT(tup);
		ck->oldname = pstrdup(NameStr(con->conname));
		ck->tmpname = mig_contract_copy_name(ck->oldname, conoid);
		ck->noinherit = con->connoinherit;
		d = SysCacheGetAttr(CONSTROID, tup, Anum_pg_constraint_conbin, &isnull);
		Assert(!isnull);
		expr = remap_mutator(stringToNode(TextDatumGetCString(d)), &ctx);
		ck->expr = expr;
		ck->sql = mig_deparse(expr, plan->relid);
		ReleaseSysCache(tup);
		plan->checks = lappend(plan->checks, ck);
	}
}

/*
 * What else the old column had, for the swap: column privileges (with
 * grant option), statistics target, options, storage, compression.  What
 * cannot be carried is said in a NOTICE.
 */
static void
plan_props(ContractPlan *plan, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	ListCell   *lc;

	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		Form_pg_attribute oldatt;
		Form_pg_attribute newatt;
		HeapTuple	tup;
		bool		isnull;
		Datum		d;

		if (!column_atts(plan, desc, c, &oldatt, &newatt))
			continue;
		tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(plan->relid),
							  Int16GetDatum(c->pair->old_attnum));
		if (!HeapTupleIsValid(tup))
			elog(ERROR, "cache lookup failed for attribute %d of relation %u",
				 c->pair->old_attnum, plan->relid);
		d = SysCacheGetAttr(ATTNUM, tup, Anum_pg_attribute_attacl, &isnull);
		c->has_acl = !isnull;
		d = SysCacheGetAttr(ATTNUM, tup, Anum_pg_attribute_attoptions, &isnull);
		if (!isnull)
			c->options = untransformRelOptions(d);
		ReleaseSysCache(tup);
		c->stattarget = oldatt->attstattarget;
		if (oldatt->attstorage != get_typstorage(oldatt->atttypid))
		{
			if (get_typstorage(newatt->atttypid) != TYPSTORAGE_PLAIN)
				c->storage = oldatt->attstorage;
			else
				ereport(NOTICE,
						(errmsg("the storage of column \"%s\" is not carried over: type %s has only PLAIN",
								c->oldname, format_type_be(newatt->atttypid))));
		}
		if (CompressionMethodIsValid(oldatt->attcompression))
		{
			if (get_typstorage(newatt->atttypid) != TYPSTORAGE_PLAIN)
				c->compression = oldatt->attcompression;
			else
				ereport(NOTICE,
						(errmsg("the compression of column \"%s\" is not carried over: type %s is not compressible",
								c->oldname, format_type_be(newatt->atttypid))));
		}
		if (OidIsValid(oldatt->attcollation) && OidIsValid(newatt->attcollation) &&
			oldatt->attcollation != newatt->attcollation)
			ereport(NOTICE,
					(errmsg("column \"%s\" keeps collation \"%s\" given at expand, not the old column's \"%s\"",
							c->finalname, get_collation_name(newatt->attcollation),
							get_collation_name(oldatt->attcollation)),
					 errhint("Changing it at contract would rewrite the table; it is chosen at mig_expand.")));
	}
}

/*
 * Compute every step without changing anything or checking the gate; what
 * would stop contract is collected in plan->blockers.  Validation uses it
 * to predict contract; mig_contract_plan() to run it.
 */
ContractPlan *
mig_contract_plan_build(Relation rel, MigMigration *m)
{
	ContractPlan *plan = palloc0(sizeof(ContractPlan));
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *indexoids = NIL;
	List	   *fkoids = NIL;
	List	   *oldattnums = NIL;
	ListCell   *lc;

	plan->relid = RelationGetRelid(rel);
	plan->migration_id = m->id;
	plan->nspname = get_namespace_name(RelationGetNamespace(rel));
	plan->relname = pstrdup(RelationGetRelationName(rel));
	plan->qname = quote_qualified_identifier(plan->nspname, plan->relname);
	plan->lockrels = list_make1_oid(plan->relid);
	plan->map = make_attrmap(desc->natts);
	for (int i = 0; i < desc->natts; i++)
		plan->map->attnums[i] = i + 1;

	plan_columns(plan, rel, m, &oldattnums);

	/* what depends on each old column */
	foreach(lc, oldattnums)
	{
		AttrNumber	attnum = lfirst_int(lc);
		ContractColumn *owner = NULL;
		ListCell   *lc2;

		if (plan->map->attnums[attnum - 1] != InvalidAttrNumber)
			foreach(lc2, plan->columns)
				if (((ContractColumn *) lfirst(lc2))->pair->old_attnum == attnum)
					owner = lfirst(lc2);
		scan_dependents(plan, rel, attnum, owner, &plan->blockers, &indexoids, &fkoids);
	}
	plan_takeover(plan, rel);
	plan_objects(plan, indexoids, fkoids);
	plan_checks(plan, rel);
	plan_props(plan, rel);
	mig_contract_plan_views(plan, plan->viewdirect);
	mig_contract_predict_views(plan);
	mig_partition_plan(plan);
	return plan;
}

/*
 * Check everything that can be checked and compute every step, without
 * changing anything.  The caller runs it to fail early, with the error in
 * its own session; the worker runs it again to get the plan it executes.
 * Takes no lock that outlives it.
 */
ContractPlan *
mig_contract_plan(Relation rel, MigMigration *m, bool force)
{
	ContractPlan *plan;
	StringInfoData detail;
	ListCell   *lc;

	mig_finish_gate(rel, m, force, "contract");
	plan = mig_contract_plan_build(rel, m);
	if (plan->blockers == NIL)
		return plan;

	initStringInfo(&detail);
	foreach(lc, plan->blockers)
		appendStringInfo(&detail, "%s%s depends on it.", foreach_current_index(lc) > 0 ? "\n" : "",
						 (char *) lfirst(lc));
	ereport(ERROR,
			(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
			 errmsg("cannot contract table \"%s\": other objects use its old column%s %s",
					plan->relname, list_length(plan->dropcols) > 1 ? "s" : "",
					"that mig_contract would drop"),
			 errdetail_internal("%s", detail.data),
			 errhint("Drop them, or change them to use the new column, then run mig_contract again; nothing was changed.")));
	return NULL;				/* keep compiler quiet */
}
