/*-------------------------------------------------------------------------
 *
 * dualwrite.c
 *	  The dual-write trigger: keeps each old/new column pair in step on
 *	  every INSERT and UPDATE (COPY and ON CONFLICT included).
 *
 * It is a BEFORE ROW trigger, so it sees the row after READ COMMITTED's
 * re-check: when an UPDATE waited for a concurrent writer, the row it gets
 * is built on the latest version, and the value it computes is computed
 * from that.  That is what keeps the backfill and client writes from ever
 * leaving a pair diverged.
 *
 * Per pair and row it decides a direction:
 *	 up	   the new column := up(row)
 *	 down  the old column := down(row), then up(row) must give back the new
 *		   value, or the write is rejected: a pair never silently diverges
 *	 check both sides were written; they must agree (new = up(row))
 * Downs are applied first and ups computed on the result, so a split (two
 * new columns from one old one) sees the old column as the downs left it.
 *
 * A down computes an old column, so it belongs to the old column rather
 * than to one pair: in a split, only the last pair can have a down (it is
 * the first to see both new columns), and a write to the first new column
 * must go down through it all the same.
 *
 * On a partitioned table the trigger is created on the parent and
 * PostgreSQL clones it to every partition; a clone fires with the leaf as
 * tg_relation.  The leaf's columns may be numbered otherwise than its root's
 * (a table attached with a dropped column, or another column order), so each
 * leaf gets an entry of its own, its pairs' attnums and expressions mapped
 * from the root's by column name (dw_leaf_pairs).  A leaf's entry is
 * invalidated with the leaf's relcache entry or the root's (a pair added or
 * a phase change invalidates the root's only).
 *
 * The expressions are compiled once per backend with ExecInitExpr and
 * cached per migration and table; the cache entry is rebuilt when the table's
 * relcache entry or any function is invalidated (ALTER TABLE, a phase change
 * that calls CacheInvalidateRelcache, CREATE OR REPLACE FUNCTION of a
 * function that an expression inlined).  Every (re)build checks that the
 * stored expressions still fit the columns' types, so a cooked tree is
 * never run against a column that changed under it (guard.c protects the
 * columns; this is the backstop).  EXECUTE on the functions they call is
 * checked again whenever the writing role is not the one last checked.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/htup_details.h"
#include "access/sysattr.h"
#include "catalog/partition.h"
#include "catalog/pg_attribute.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/tuptable.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/nodeFuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteManip.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/datum.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_dualwrite);

typedef enum DwDirection
{
	DW_UP,
	DW_DOWN,
	DW_CHECK
} DwDirection;

/* One pair, compiled. */
typedef struct DwPair
{
	AttrNumber	old_attnum;
	AttrNumber	new_attnum;
	const char *old_col;
	const char *new_col;
	ExprState  *up;
	ExprState  *down;			/* the old column's down: NULL, no reverse sync */
	FmgrInfo   *new_eq;			/* the new type's equality; NULL: compare images */
	Oid			new_collation;
	DwDirection dir;			/* scratch, per row */
} DwPair;

/*
 * The cache's key: the migration, and the table the trigger fires on (a
 * partitioned table's trigger fires on each leaf, through its clone, with
 * the leaf as tg_relation).
 */
typedef struct DwKey
{
	int64		migration_id;
	Oid			relid;
} DwKey;

/* A migration's compiled state for one table, cached per backend. */
typedef struct DwEntry
{
	DwKey		key;			/* hash key */
	int64		migration_id;
	Oid			relid;			/* the table it fires on */
	Oid			root_relid;		/* the migration's table: relid, or its root */
	bool		valid;
	bool		new_authoritative;	/* cut over: the new side wins by default */
	bool		sole_before_update; /* no other BEFORE UPDATE row trigger */
	MemoryContext cxt;
	TupleDesc	tupdesc;
	TupleTableSlot *slot;		/* the row after the downs */
	ExprContext *econtext;
	int			npairs;
	DwPair	   *pairs;
	int		   *repl_cols;		/* scratch: the columns to replace */
	Datum	   *repl_values;
	bool	   *repl_nulls;
	Datum	   *values;			/* scratch: the row being formed, natts long */
	bool	   *isnull;
	Oid		   *funcs;			/* every function the expressions call */
	int			nfuncs;
	Oid			checked_user;	/* the role whose EXECUTE on them was checked */
} DwEntry;

static HTAB *dw_cache = NULL;

/*
 * The migration whose backfill this process runs (0: none).  Only that
 * migration's trigger, fired directly by a statement of this process (at
 * trigger depth 1, which is the batch UPDATE: the worker runs no other
 * statement on the table), treats the write as the backfill's.  A write
 * that a trigger makes, on this table or any other, is an ordinary write.
 */
static int64 dw_backfill_migration = 0;

/* What the trigger is computing, for the context line of an error. */
typedef struct DwErrorContext
{
	Relation	rel;
	const char *column;
	const char *expr;			/* "up" or "down" */
} DwErrorContext;

static void dw_no_down(DwPair *dp, Relation rel) pg_attribute_noreturn();
static void dw_disagree(DwPair *dp, Relation rel, Datum newv, bool newnull,
						Datum upv, bool upnull, bool after_down) pg_attribute_noreturn();

static void
dw_relcache_callback(Datum arg, Oid relid)
{
	HASH_SEQ_STATUS status;
	DwEntry    *e;

	if (dw_cache == NULL)
		return;
	hash_seq_init(&status, dw_cache);
	while ((e = hash_seq_search(&status)) != NULL)
		if (relid == InvalidOid || e->relid == relid || e->root_relid == relid)
			e->valid = false;
}

static void
dw_proc_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	dw_relcache_callback(arg, InvalidOid);
}

void
mig_dualwrite_init(void)
{
	CacheRegisterRelcacheCallback(dw_relcache_callback, (Datum) 0);
	CacheRegisterSyscacheCallback(PROCOID, dw_proc_callback, (Datum) 0);
}

/*
 * Called once by the backfill worker, for the migration it backfills: see
 * dw_backfill_migration.
 */
void
mig_dualwrite_backfill_scope(int64 migration_id)
{
	dw_backfill_migration = migration_id;
}

/* Is this the backfill's own batch UPDATE of its own table? */
static bool
dw_is_backfill(DwEntry *e, TriggerData *td)
{
	if (dw_backfill_migration == 0 || e->migration_id != dw_backfill_migration ||
		!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return false;
	return DatumGetInt32(DirectFunctionCall1(pg_trigger_depth, (Datum) 0)) == 1;
}

static ExprState *
dw_compile(Node *expr)
{
	return ExecInitExpr(expression_planner((Expr *) copyObject(expr)), NULL);
}

/*
 * The stored expression still fits the table: every column it reads has the
 * type it had when the expression was cooked, and it computes the type of
 * the column it writes.  The columns are protected against ALTER TYPE and
 * DROP while the trigger exists, but a cooked tree that no longer fits would
 * make the executor read or store a value of the wrong type, so it is never
 * trusted.
 */
static void
dw_check_types(Relation rel, Node *expr, const char *what, Form_pg_attribute target)
{
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *vars = pull_var_clause(expr, 0);
	ListCell   *lc;

	foreach(lc, vars)
	{
		Var		   *var = lfirst_node(Var, lc);
		Form_pg_attribute att;

		if (var->varattno <= 0 || var->varattno > desc->natts ||
			TupleDescAttr(desc, var->varattno - 1)->attisdropped)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a column that the %s expression of the migration of table \"%s\" reads was dropped",
							what, RelationGetRelationName(rel)),
					 errhint("Abort the migration with mig_abort('%s').",
							 RelationGetRelationName(rel))));
		att = TupleDescAttr(desc, var->varattno - 1);
		if (att->atttypid != var->vartype)
			ereport(ERROR,
					(errcode(ERRCODE_DATATYPE_MISMATCH),
					 errmsg("column \"%s\" of table \"%s\" changed type since the migration began",
							NameStr(att->attname), RelationGetRelationName(rel)),
					 errdetail("Its %s expression was checked against type %s; the column is now %s.",
							   what, format_type_be(var->vartype), format_type_be(att->atttypid)),
					 errhint("Abort the migration with mig_abort('%s') and expand again.",
							 RelationGetRelationName(rel))));
	}
	if (exprType(expr) != target->atttypid)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column \"%s\" of table \"%s\" changed type since the migration began",
						NameStr(target->attname), RelationGetRelationName(rel)),
				 errdetail("Its %s expression computes type %s; the column is now %s.",
						   what, format_type_be(exprType(expr)),
						   format_type_be(target->atttypid)),
				 errhint("Abort the migration with mig_abort('%s') and expand again.",
						 RelationGetRelationName(rel))));
}

static bool
dw_collect_func(Oid funcid, void *context)
{
	List	  **funcs = (List **) context;

	*funcs = list_append_unique_oid(*funcs, funcid);
	return false;
}

static bool
dw_collect_walker(Node *node, void *context)
{
	if (node == NULL)
		return false;
	(void) check_functions_in_node(node, dw_collect_func, context);
	return expression_tree_walker(node, dw_collect_walker, context);
}

/*
 * EXECUTE on every function the expressions call, for the role that writes
 * now.  ExecInitExpr checked it for the role that built the cache; a pooled
 * connection that switches roles (SET ROLE, SECURITY DEFINER callers) is
 * checked again here, once per change of role, not per row.
 */
static void
dw_check_execute(DwEntry *e)
{
	Oid			userid = GetUserId();

	for (int i = 0; i < e->nfuncs; i++)
	{
		AclResult	aclresult = pg_proc_aclcheck(e->funcs[i], userid, ACL_EXECUTE);

		if (aclresult != ACLCHECK_OK)
			aclcheck_error(aclresult, OBJECT_FUNCTION, get_func_name(e->funcs[i]));
	}
	e->checked_user = userid;
}

/*
 * Compile pair p of the migration into e->pairs[i], after checking that its
 * expressions still fit the columns; collect the functions they call.
 */
static void
dw_build_pair(DwEntry *e, int i, Relation rel, MigPair *p, List **funcs)
{
	TupleDesc	desc = RelationGetDescr(rel);
	DwPair	   *dp;
	Form_pg_attribute oldatt;
	Form_pg_attribute newatt;
	TypeCacheEntry *tce;

	dp = &e->pairs[i];
	oldatt = TupleDescAttr(desc, p->old_attnum - 1);
	newatt = TupleDescAttr(desc, p->new_attnum - 1);

	dp->old_attnum = p->old_attnum;
	dp->new_attnum = p->new_attnum;
	dp->old_col = pstrdup(NameStr(oldatt->attname));
	dp->new_col = pstrdup(NameStr(newatt->attname));
	dw_check_types(rel, p->up, "up", newatt);
	if (p->down)
		dw_check_types(rel, p->down, "down", oldatt);
	(void) dw_collect_walker(p->up, funcs);
	(void) dw_collect_walker(p->down, funcs);
	dp->up = dw_compile(p->up);
	dp->down = p->down ? dw_compile(p->down) : NULL;
	/* the old column's down is the one its latest pair gave */
	for (int j = 0; j < i; j++)
	{
		if (e->pairs[j].old_attnum != dp->old_attnum)
			continue;
		if (dp->down)
			e->pairs[j].down = dp->down;
		else if (e->pairs[j].down)
			dp->down = e->pairs[j].down;
	}
	dp->new_collation = newatt->attcollation;
	tce = lookup_type_cache(newatt->atttypid, TYPECACHE_EQ_OPR_FINFO);
	if (OidIsValid(tce->eq_opr_finfo.fn_oid))
	{
		dp->new_eq = palloc(sizeof(FmgrInfo));
		fmgr_info_copy(dp->new_eq, &tce->eq_opr_finfo, e->cxt);
	}
}

/* Is rel a partition, at any depth, of partitioned table root? */
static bool
dw_partition_of(Relation rel, Oid root)
{
	return rel->rd_rel->relispartition &&
		list_member_oid(get_partition_ancestors(RelationGetRelid(rel)), root);
}

/*
 * The attnums of the root's columns in the leaf, by name: a leaf attached
 * from a table of its own (a dropped column, another column order) numbers
 * them differently.  A column the leaf lacks, or that the root dropped,
 * maps past the leaf's last column, where dw_build and dw_check_types see
 * a dropped column.  Read from the syscache: no lock on the root, which a
 * write straight into the leaf does not hold.
 */
static AttrMap *
dw_leaf_attrmap(Relation rel, Oid root)
{
	HeapTuple	reltup = SearchSysCache1(RELOID, ObjectIdGetDatum(root));
	AttrNumber	missing = RelationGetDescr(rel)->natts + 1;
	int			natts;
	AttrMap    *map;

	if (!HeapTupleIsValid(reltup))
		elog(ERROR, "cache lookup failed for relation %u", root);
	natts = ((Form_pg_class) GETSTRUCT(reltup))->relnatts;
	ReleaseSysCache(reltup);
	map = make_attrmap(natts);

	for (int i = 0; i < natts; i++)
	{
		HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(root),
										  Int16GetDatum(i + 1));
		Form_pg_attribute att;

		map->attnums[i] = missing;
		if (!HeapTupleIsValid(tup))
			continue;
		att = (Form_pg_attribute) GETSTRUCT(tup);
		if (!att->attisdropped)
		{
			AttrNumber	leaf = get_attnum(RelationGetRelid(rel), NameStr(att->attname));

			if (leaf > 0)
				map->attnums[i] = leaf;
		}
		ReleaseSysCache(tup);
	}
	return map;
}

static AttrNumber
dw_map_attnum(AttrMap *map, AttrNumber attnum, AttrNumber missing)
{
	return attnum > 0 && attnum <= map->maplen ? map->attnums[attnum - 1] : missing;
}

static Node *
dw_map_expr(Node *expr, AttrMap *map)
{
	bool		whole_row;

	if (expr == NULL)
		return NULL;
	expr = map_variable_attnos(expr, 1, 0, map, InvalidOid, &whole_row);
	Assert(!whole_row);			/* mig_expand refuses whole-row references */
	return expr;
}

/*
 * The migration's pairs as the leaf sees them: the root's attnums and the
 * Vars of up, down and check mapped to the leaf's columns, by name.
 */
static List *
dw_leaf_pairs(Relation rel, MigMigration *m)
{
	AttrMap    *map = dw_leaf_attrmap(rel, m->relid);
	AttrNumber	missing = RelationGetDescr(rel)->natts + 1;
	List	   *pairs = NIL;
	ListCell   *lc;

	foreach(lc, m->pairs)
	{
		MigPair    *p = palloc(sizeof(MigPair));

		memcpy(p, lfirst(lc), sizeof(MigPair));
		p->old_attnum = dw_map_attnum(map, p->old_attnum, missing);
		p->new_attnum = dw_map_attnum(map, p->new_attnum, missing);
		p->up = dw_map_expr(p->up, map);
		p->down = dw_map_expr(p->down, map);
		p->check = dw_map_expr(p->check, map);
		pairs = lappend(pairs, p);
	}
	return pairs;
}

/* (Re)build an entry's compiled state from the catalog. */
static void
dw_build(DwEntry *e, Relation rel)
{
	MigMigration *m;
	MemoryContext oldcxt;
	ListCell   *lc;
	int			i = 0;
	TupleDesc	desc = RelationGetDescr(rel);
	List	   *funcs = NIL;

	if (e->cxt)
		MemoryContextDelete(e->cxt);
	e->cxt = AllocSetContextCreate(CacheMemoryContext, "migrate_ext dual-write",
								   ALLOCSET_SMALL_SIZES);

	oldcxt = MemoryContextSwitchTo(e->cxt);
	m = mig_catalog_by_id(e->migration_id);
	if (m == NULL || m->phase >= MIG_PHASE_CONTRACTED ||
		(m->relid != RelationGetRelid(rel) && !dw_partition_of(rel, m->relid)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("trigger \"%s\" on table \"%s\" belongs to no active migration",
						MIG_TRIGGER_NAME, RelationGetRelationName(rel)),
				 errhint("Drop the trigger, or start a migration with mig_expand().")));
	if (m->relid != RelationGetRelid(rel))
		m->pairs = dw_leaf_pairs(rel, m);

	e->relid = RelationGetRelid(rel);
	e->root_relid = m->relid;
	e->new_authoritative = m->phase >= MIG_PHASE_CUTOVER;
	e->sole_before_update = true;
	for (int t = 0; rel->trigdesc && t < rel->trigdesc->numtriggers; t++)
	{
		Trigger    *trig = &rel->trigdesc->triggers[t];

		if (TRIGGER_TYPE_MATCHES(trig->tgtype, TRIGGER_TYPE_ROW, TRIGGER_TYPE_BEFORE,
								 TRIGGER_TYPE_UPDATE) &&
			strcmp(trig->tgname, MIG_TRIGGER_NAME) != 0)
			e->sole_before_update = false;
	}
	e->tupdesc = CreateTupleDescCopy(desc);
	e->slot = MakeSingleTupleTableSlot(e->tupdesc, &TTSOpsHeapTuple);
	e->econtext = CreateStandaloneExprContext();
	e->npairs = list_length(m->pairs);
	e->pairs = palloc0(sizeof(DwPair) * e->npairs);
	e->repl_cols = palloc(sizeof(int) * e->npairs * 2);
	e->repl_values = palloc(sizeof(Datum) * e->npairs * 2);
	e->repl_nulls = palloc(sizeof(bool) * e->npairs * 2);
	e->values = palloc(sizeof(Datum) * desc->natts);
	e->isnull = palloc(sizeof(bool) * desc->natts);

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		/*
		 * A column dropped by hand leaves nothing to keep in step: skip the
		 * pair rather than fail every write to the table; validation reports
		 * it.
		 */
		if (p->old_attnum > desc->natts || p->new_attnum > desc->natts ||
			TupleDescAttr(desc, p->old_attnum - 1)->attisdropped ||
			TupleDescAttr(desc, p->new_attnum - 1)->attisdropped)
		{
			ereport(WARNING,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("a column of pair \"%s\" -> \"%s\" of table \"%s\" was dropped; the pair is no longer kept in step",
							p->old_col, p->new_col, RelationGetRelationName(rel)),
					 errhint("Abort the migration with mig_abort().")));
			e->npairs--;
			continue;
		}
		dw_build_pair(e, i++, rel, p, &funcs);
	}
	e->nfuncs = list_length(funcs);
	e->funcs = palloc(sizeof(Oid) * Max(e->nfuncs, 1));
	foreach(lc, funcs)
		e->funcs[foreach_current_index(lc)] = lfirst_oid(lc);
	e->checked_user = InvalidOid;
	MemoryContextSwitchTo(oldcxt);
}

static DwEntry *
dw_lookup(int64 migration_id, Relation rel)
{
	DwEntry    *e;
	DwKey		key;
	bool		found;

	if (dw_cache == NULL)
	{
		HASHCTL		ctl;

		ctl.keysize = sizeof(DwKey);
		ctl.entrysize = sizeof(DwEntry);
		ctl.hcxt = CacheMemoryContext;
		dw_cache = hash_create("migrate_ext dual-write cache", 16, &ctl,
							   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	}
	memset(&key, 0, sizeof(key));
	key.migration_id = migration_id;
	key.relid = RelationGetRelid(rel);
	e = hash_search(dw_cache, &key, HASH_ENTER, &found);
	if (!found)
	{
		e->cxt = NULL;
		e->valid = false;
		e->migration_id = migration_id;
		e->relid = RelationGetRelid(rel);
		e->root_relid = e->relid;
	}

	/*
	 * An invalidation that arrives while we read the catalog marks the entry
	 * invalid again: build until one build saw no invalidation.
	 */
	while (!e->valid)
	{
		e->valid = true;
		PG_TRY();
		{
			dw_build(e, rel);
		}
		PG_CATCH();
		{
			e->valid = false;
			PG_RE_THROW();
		}
		PG_END_TRY();
	}
	return e;
}

/*
 * The row in the slot with the replacements applied, as a new tuple.  The
 * slot's values are usually deformed already (we read from it), so this
 * avoids heap_modify_tuple_by_cols()'s second full deform.
 */
static HeapTuple
dw_form(DwEntry *e, TupleTableSlot *slot, int nrepl)
{
	int			natts = slot->tts_tupleDescriptor->natts;

	slot_getallattrs(slot);
	memcpy(e->values, slot->tts_values, sizeof(Datum) * natts);
	memcpy(e->isnull, slot->tts_isnull, sizeof(bool) * natts);
	for (int i = 0; i < nrepl; i++)
	{
		e->values[e->repl_cols[i] - 1] = e->repl_values[i];
		e->isnull[e->repl_cols[i] - 1] = e->repl_nulls[i];
	}
	return heap_form_tuple(slot->tts_tupleDescriptor, e->values, e->isnull);
}

/* IS NOT DISTINCT FROM, by the type's equality where it has one. */
static bool
dw_equal(DwPair *dp, Datum a, bool anull, Datum b, bool bnull,
		 Form_pg_attribute att)
{
	if (anull || bnull)
		return anull && bnull;
	if (dp->new_eq)
		return DatumGetBool(FunctionCall2Coll(dp->new_eq, dp->new_collation, a, b));
	return datum_image_eq(a, b, att->attbyval, att->attlen);
}

/* Did the UPDATE change this column's value (byte for byte)? */
static bool
dw_changed(TupleTableSlot *oldslot, TupleTableSlot *newslot, AttrNumber attnum,
		   Form_pg_attribute att)
{
	bool		onull,
				nnull;
	Datum		o = slot_getattr(oldslot, attnum, &onull);
	Datum		n = slot_getattr(newslot, attnum, &nnull);

	if (onull || nnull)
		return onull != nnull;
	return !datum_image_eq(o, n, att->attbyval, att->attlen);
}

/*
 * Did the UPDATE write this column?  A column outside the SET list cannot
 * differ from the row it updates (even after a READ COMMITTED re-check, both
 * sides come from the same latest version) unless another BEFORE trigger
 * changed it, so only the columns in the SET list need comparing.
 */
static bool
dw_written(DwEntry *e, TriggerData *td, TupleTableSlot *newslot,
		   AttrNumber attnum, TupleDesc desc)
{
	if (e->sole_before_update &&
		!bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, td->tg_updatedcols))
		return false;
	return dw_changed(td->tg_trigslot, newslot, attnum, TupleDescAttr(desc, attnum - 1));
}

static char *
dw_value_text(Datum v, bool isnull, Form_pg_attribute att)
{
	Oid			outfn;
	bool		varlena;

	if (isnull)
		return "NULL";
	getTypeOutputInfo(att->atttypid, &outfn, &varlena);
	return OidOutputFunctionCall(outfn, v);
}

static void
dw_no_down(DwPair *dp, Relation rel)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
			 errmsg("cannot write column \"%s\" of table \"%s\" without writing \"%s\"",
					dp->new_col, RelationGetRelationName(rel), dp->old_col),
			 errdetail("The migration has no down expression, so \"%s\" cannot be computed from \"%s\" and the pair would diverge.",
					   dp->old_col, dp->new_col),
			 errhint("Write \"%s\" instead (migrate_ext.writer = 'old'), or abort and expand again with a down expression.",
					 dp->old_col)));
}

/* Has an earlier pair (of a split) already computed this old column? */
static bool
dw_replaced(DwEntry *e, int nrepl, AttrNumber attnum)
{
	for (int i = 0; i < nrepl; i++)
		if (e->repl_cols[i] == attnum)
			return true;
	return false;
}

/*
 * Decide, for one pair and row, which side the write came from.
 */
static DwDirection
dw_direction(DwEntry *e, DwPair *dp, TriggerData *td, TupleTableSlot *newslot,
			 Relation rel)
{
	MigWriter	writer = (MigWriter) mig_writer;
	TupleDesc	desc = RelationGetDescr(rel);

	if (writer == MIG_WRITER_OLD)
		return DW_UP;
	if (writer == MIG_WRITER_NEW)
	{
		if (dp->down == NULL)
			dw_no_down(dp, rel);
		return DW_DOWN;
	}

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		bool		old_written = dw_written(e, td, newslot, dp->old_attnum, desc);
		bool		new_written = dw_written(e, td, newslot, dp->new_attnum, desc);

		if (old_written && new_written)
			return DW_CHECK;
		if (old_written)
			return DW_UP;
		if (!new_written)
			return (e->new_authoritative && dp->down) ? DW_DOWN : DW_UP;
	}
	else
	{
		bool		isnull;

		(void) slot_getattr(newslot, dp->new_attnum, &isnull);
		if (isnull)
			return DW_UP;
		(void) slot_getattr(newslot, dp->old_attnum, &isnull);
		if (!isnull)
			return DW_CHECK;
	}

	/* only the new side was written */
	if (dp->down == NULL)
		dw_no_down(dp, rel);
	return DW_DOWN;
}

/*
 * Reject the row: the new value the client wrote (or, after a down, the one
 * it still holds) is not what up() gives for the row.
 */
static void
dw_disagree(DwPair *dp, Relation rel, Datum newv, bool newnull,
			Datum upv, bool upnull, bool after_down)
{
	Form_pg_attribute att = TupleDescAttr(RelationGetDescr(rel), dp->new_attnum - 1);

	if (after_down)
		ereport(ERROR,
				(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
				 errmsg("value written to column \"%s\" of table \"%s\" does not survive the round trip through \"%s\"",
						dp->new_col, RelationGetRelationName(rel), dp->old_col),
				 errdetail("\"%s\" = %s gives \"%s\" by down, whose up is %s.",
						   dp->new_col, dw_value_text(newv, newnull, att), dp->old_col,
						   dw_value_text(upv, upnull, att)),
				 errhint("Write a value that up(down(value)) leaves unchanged, or write \"%s\" instead.",
						 dp->old_col)));
	ereport(ERROR,
			(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
			 errmsg("columns \"%s\" and \"%s\" of table \"%s\" were both written and disagree",
					dp->old_col, dp->new_col, RelationGetRelationName(rel)),
			 errdetail("\"%s\" = %s, but up(\"%s\") gives %s.",
					   dp->new_col, dw_value_text(newv, newnull, att), dp->old_col,
					   dw_value_text(upv, upnull, att)),
			 errhint("Set migrate_ext.writer to 'old' or 'new' to say which side this client writes.")));
}

/*
 * A round trip through a split's down failed, the down gave NULL, and a
 * sibling new column is NULL (nothing to fill it with: the old column was
 * NULL too): the sibling, not the value written, is why.
 */
static void
dw_null_sibling(DwEntry *e, DwPair *dp, Relation rel, TupleTableSlot *slot)
{
	bool		oldnull;

	(void) slot_getattr(slot, dp->old_attnum, &oldnull);
	if (!oldnull)
		return;
	for (int j = 0; j < e->npairs; j++)
	{
		DwPair	   *sib = &e->pairs[j];
		bool		isnull;

		if (sib == dp || sib->old_attnum != dp->old_attnum)
			continue;
		(void) slot_getattr(slot, sib->new_attnum, &isnull);
		if (isnull)
			ereport(ERROR,
					(errcode(ERRCODE_INTEGRITY_CONSTRAINT_VIOLATION),
					 errmsg("cannot write column \"%s\" of table \"%s\" while column \"%s\" is NULL",
							dp->new_col, RelationGetRelationName(rel), sib->new_col),
					 errdetail("\"%s\" is computed by down from every new column of the split, and \"%s\" has no value for this row yet.",
							   dp->old_col, sib->new_col),
					 errhint("Write \"%s\" in the same statement, or write \"%s\" instead.",
							 sib->new_col, dp->old_col)));
	}
}

/*
 * An error in an up or down expression fails the client's write; say that
 * the migration is why.
 */
static void
dw_error_callback(void *arg)
{
	DwErrorContext *ctx = (DwErrorContext *) arg;

	if (ctx->column)
		errcontext("migrate_ext computing column \"%s\" of table \"%s\" by its %s expression",
				   ctx->column, RelationGetRelationName(ctx->rel), ctx->expr);
}

/*
 * A split written from the new side on a row the backfill has not reached:
 * the old column's down reads every sibling, and a sibling this UPDATE did
 * not set is still NULL, so the down would compute a wrong old value and
 * the round trip would blame the value written.  Compute each such sibling
 * first from up(old), as the backfill would have, on the row as written
 * (the old column still holds its value).  Fills e->repl_* with them and
 * returns how many.  An INSERT has no sibling to wait for.
 */
static int
dw_fill_siblings(DwEntry *e, TriggerData *td, TupleTableSlot *newslot,
				 DwErrorContext *ectx)
{
	ExprContext *econtext = e->econtext;
	TupleDesc	desc = RelationGetDescr(td->tg_relation);
	int			nrepl = 0;

	if (!TRIGGER_FIRED_BY_UPDATE(td->tg_event))
		return 0;
	econtext->ecxt_scantuple = newslot;
	for (int i = 0; i < e->npairs; i++)
	{
		DwPair	   *dp = &e->pairs[i];

		if (dp->dir != DW_DOWN)
			continue;
		for (int j = 0; j < e->npairs; j++)
		{
			DwPair	   *sib = &e->pairs[j];
			bool		isnull;
			Datum		v;

			if (j == i || sib->old_attnum != dp->old_attnum ||
				dw_replaced(e, nrepl, sib->new_attnum))
				continue;
			(void) slot_getattr(newslot, sib->new_attnum, &isnull);
			if (!isnull || dw_written(e, td, newslot, sib->new_attnum, desc))
				continue;
			ectx->column = sib->new_col;
			ectx->expr = "up";
			v = ExecEvalExprSwitchContext(sib->up, econtext, &isnull);
			ectx->column = NULL;
			if (isnull)
				continue;
			Assert(nrepl < e->npairs);
			e->repl_cols[nrepl] = sib->new_attnum;
			e->repl_values[nrepl] = v;
			e->repl_nulls[nrepl] = false;
			nrepl++;
		}
	}
	return nrepl;
}

/*
 * The downs, on the row as written (with the siblings of a split that the
 * backfill has not reached filled in first): fills e->repl_* with those
 * siblings and the old columns the downs compute, and returns how many.
 */
static int
dw_downs(DwEntry *e, TriggerData *td, TupleTableSlot *newslot, DwErrorContext *ectx)
{
	ExprContext *econtext = e->econtext;
	Relation	rel = td->tg_relation;
	int			nrepl;

	for (int i = 0; i < e->npairs; i++)
		e->pairs[i].dir = dw_direction(e, &e->pairs[i], td, newslot, rel);

	nrepl = dw_fill_siblings(e, td, newslot, ectx);
	econtext->ecxt_scantuple = newslot;
	if (nrepl > 0)
	{
		ExecStoreHeapTuple(dw_form(e, newslot, nrepl), e->slot, false);
		econtext->ecxt_scantuple = e->slot;
	}
	for (int i = 0; i < e->npairs; i++)
	{
		DwPair	   *dp = &e->pairs[i];

		if (dp->dir == DW_DOWN && !dw_replaced(e, nrepl, dp->old_attnum))
		{
			bool		isnull;
			Datum		v;

			ectx->column = dp->old_col;
			ectx->expr = "down";
			v = ExecEvalExprSwitchContext(dp->down, econtext, &isnull);
			ectx->column = NULL;

			e->repl_cols[nrepl] = dp->old_attnum;
			e->repl_values[nrepl] = v;
			e->repl_nulls[nrepl] = isnull;
			nrepl++;
		}
	}
	return nrepl;
}

/*
 * The ups and checks, on the row as the downs left it: fills e->repl_*
 * with the new columns whose stored value is not up's, and returns how many.
 */
static int
dw_ups(DwEntry *e, Relation rel, TupleTableSlot *evalslot, DwErrorContext *ectx)
{
	ExprContext *econtext = e->econtext;
	TupleDesc	desc = RelationGetDescr(rel);
	int			nrepl = 0;

	econtext->ecxt_scantuple = evalslot;
	for (int i = 0; i < e->npairs; i++)
	{
		DwPair	   *dp = &e->pairs[i];
		Form_pg_attribute newatt = TupleDescAttr(desc, dp->new_attnum - 1);
		bool		upnull;
		bool		curnull;
		Datum		upv;
		Datum		curv;

		ectx->column = dp->new_col;
		ectx->expr = "up";
		upv = ExecEvalExprSwitchContext(dp->up, econtext, &upnull);
		ectx->column = NULL;
		curv = slot_getattr(evalslot, dp->new_attnum, &curnull);

		if (dp->dir == DW_UP)
		{
			/* skip the copy when the stored value is already right */
			if (curnull == upnull && (upnull || datum_image_eq(upv, curv, newatt->attbyval, newatt->attlen)))
				continue;
			e->repl_cols[nrepl] = dp->new_attnum;
			e->repl_values[nrepl] = upv;
			e->repl_nulls[nrepl] = upnull;
			nrepl++;
		}
		else if (!dw_equal(dp, upv, upnull, curv, curnull, newatt))
		{
			if (dp->dir == DW_DOWN)
				dw_null_sibling(e, dp, rel, evalslot);
			dw_disagree(dp, rel, curv, curnull, upv, upnull, dp->dir == DW_DOWN);
		}
	}
	return nrepl;
}

/*
 * The backfill's write of one row, as the row in slot: every pair goes up
 * (the backfill never propagates down), and the row as the ups leave it
 * comes back, or NULL when every new value is right already (so no new row
 * version is written, and the row is not counted).  One function for the
 * trigger, when it fires on the backfill's own UPDATE, and for the
 * backfill's direct batch (backfill_apply.c), which writes without the
 * UPDATE: both compute alike, with the same error context.
 */
static HeapTuple
dw_backfill_row(DwEntry *e, Relation rel, TupleTableSlot *slot)
{
	DwErrorContext ectx;
	ErrorContextCallback errcallback;
	int			nrepl;

	ectx.rel = rel;
	ectx.column = NULL;
	errcallback.callback = dw_error_callback;
	errcallback.arg = &ectx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	for (int i = 0; i < e->npairs; i++)
		e->pairs[i].dir = DW_UP;
	nrepl = dw_ups(e, rel, slot, &ectx);

	error_context_stack = errcallback.previous;
	return nrepl > 0 ? dw_form(e, slot, nrepl) : NULL;
}

/*
 * mig_dualwrite_backfill_row: the direct batch's entry to dw_backfill_row,
 * for migration_id's pairs as rel (the table, or one of its leaves) numbers
 * them.  *cache (NULL at the batch's first row) remembers the entry for the
 * next rows of the same table, as the trigger's fn_extra does: no lookup
 * per row; an invalidated entry is looked up, and rebuilt, again.  The
 * result is allocated in the caller's memory context; the expressions'
 * scratch memory lives until the next call.
 */
HeapTuple
mig_dualwrite_backfill_row(int64 migration_id, Relation rel, TupleTableSlot *slot,
						   void **cache)
{
	DwEntry    *e = (DwEntry *) *cache;

	if (e == NULL || !e->valid)
		*cache = e = dw_lookup(migration_id, rel);
	Assert(e->relid == RelationGetRelid(rel));

	if (unlikely(e->checked_user != GetUserId()))
		dw_check_execute(e);
	ResetExprContext(e->econtext);
	return dw_backfill_row(e, rel, slot);
}

Datum
mig_dualwrite(PG_FUNCTION_ARGS)
{
	TriggerData *td = (TriggerData *) fcinfo->context;
	Relation	rel;
	DwEntry    *e;
	HeapTuple	tuple;
	TupleTableSlot *newslot;
	TupleTableSlot *evalslot;
	int			nrepl;
	bool		any_down;
	bool		backfill;
	DwErrorContext ectx;
	ErrorContextCallback errcallback;

	if (!CALLED_AS_TRIGGER(fcinfo) || !TRIGGER_FIRED_BEFORE(td->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(td->tg_event) ||
		!(TRIGGER_FIRED_BY_INSERT(td->tg_event) || TRIGGER_FIRED_BY_UPDATE(td->tg_event)) ||
		td->tg_trigger->tgnargs != 1)
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("migrate_ext.dualwrite() must be fired BEFORE INSERT OR UPDATE FOR EACH ROW by migrate_ext")));

	rel = td->tg_relation;

	/*
	 * The FmgrInfo belongs to this trigger of this statement, so it can
	 * remember the entry: no lookup per row.  Entries never move.
	 */
	e = (DwEntry *) fcinfo->flinfo->fn_extra;
	if (e == NULL || !e->valid)
	{
		e = dw_lookup(pg_strtoint64(td->tg_trigger->tgargs[0]), rel);
		fcinfo->flinfo->fn_extra = e;
	}
	if (unlikely(e->checked_user != GetUserId()))
		dw_check_execute(e);
	backfill = dw_is_backfill(e, td);

	if (TRIGGER_FIRED_BY_UPDATE(td->tg_event))
	{
		tuple = td->tg_newtuple;
		newslot = td->tg_newslot;
	}
	else
	{
		tuple = td->tg_trigtuple;
		newslot = td->tg_trigslot;
	}

	ResetExprContext(e->econtext);
	if (backfill)
		return PointerGetDatum(dw_backfill_row(e, rel, newslot));

	ectx.rel = rel;
	ectx.column = NULL;
	errcallback.callback = dw_error_callback;
	errcallback.arg = &ectx;
	errcallback.previous = error_context_stack;
	error_context_stack = &errcallback;

	nrepl = dw_downs(e, td, newslot, &ectx);
	any_down = nrepl > 0;
	evalslot = newslot;
	if (any_down)
	{
		tuple = dw_form(e, newslot, nrepl);
		ExecStoreHeapTuple(tuple, e->slot, false);
		evalslot = e->slot;
	}
	nrepl = dw_ups(e, rel, evalslot, &ectx);

	error_context_stack = errcallback.previous;

	if (nrepl > 0)
		tuple = dw_form(e, evalslot, nrepl);
	if (any_down)
		ExecClearTuple(e->slot);

	return PointerGetDatum(tuple);
}
