/*-------------------------------------------------------------------------
 *
 * contract.c
 *	  mig_cutover and mig_contract: the end of a migration.
 *
 * mig_cutover only flips which side of each pair the dual-write trigger
 * treats as authoritative.  mig_contract is the point of no return: it
 * drops the old column and puts the new one in its place, and it must do so
 * without ever queueing production traffic behind a lock, on tables where a
 * plain ALTER TABLE would take the site down.  So it never does anything
 * slow under a strong lock:
 *
 *	 1. everything the old column had is first rebuilt on the new one, each
 *		piece in its own short transaction: indexes with CREATE INDEX
 *		CONCURRENTLY, NOT NULL through a CHECK (col IS NOT NULL) NOT VALID
 *		that is then validated (under SHARE UPDATE EXCLUSIVE, which lets
 *		reads and writes through) so that SET NOT NULL needs no scan, the
 *		foreign keys in both directions NOT VALID and then validated;
 *	 2. then one short transaction under ACCESS EXCLUSIVE swaps the
 *		constraints over to the new indexes, moves the sequence, default and
 *		identity, drops the trigger and the old column and renames the new
 *		column into place.  That is metadata only: milliseconds.
 *
 * Every lock is taken through the lock_timeout ladder of ddl.c.  Each step
 * checks what the steps before it left, so after a failure (a lock that
 * could not be had, a cancel, a crash) a second mig_contract picks up where
 * the first stopped; an index build that failed is dropped before failing.
 *
 * CREATE INDEX CONCURRENTLY must be a top-level statement and waits for
 * every transaction that holds an older snapshot, so none of this can run in
 * the caller's transaction.  mig_contract therefore refuses to run inside a
 * transaction block, checks what it can (and names the views that would
 * stop it) before changing anything, lets go of every lock and of its xmin
 * (horizon.c), and hands the steps to a background worker that runs as the
 * caller's role.  The worker reports through a shm_mq in a DSM segment,
 * exactly as a parallel worker does (pq_redirect_to_shm_mq): its NOTICEs and
 * its error are re-raised in the caller, who waits on its latch without a
 * snapshot, a lock or a catalog access, and can be cancelled; the worker
 * then stops at the next step boundary.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/attmap.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/dependency.h"
#include "catalog/index.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_attrdef.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_depend.h"
#include "catalog/pg_index.h"
#include "catalog/pg_rewrite.h"
#include "catalog/pg_sequence.h"
#include "catalog/pg_type.h"
#include "commands/comment.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_utilcmd.h"
#include "parser/parser.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "rewrite/rewriteManip.h"
#include "rewrite/rewriteSupport.h"
#include "storage/dsm.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/spin.h"
#include "tcop/tcopprot.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/resowner.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PG_FUNCTION_INFO_V1(mig_cutover);
PG_FUNCTION_INFO_V1(mig_contract);
PGDLLEXPORT void mig_contract_worker_main(Datum main_arg);

/* Room for the worker's messages; it blocks when the caller lags. */
#define CONTRACT_QUEUE_SIZE		16384

/* How many times an index build that ran into a lock timeout is retried. */
#define CONTRACT_INDEX_TRIES	3

/*
 * What the caller and the worker share, at the start of the DSM segment;
 * the shm_mq follows it.
 */
typedef struct ContractShared
{
	slock_t		mutex;
	Oid			relid;
	int64		migration_id;
	bool		force;
	/* the caller's lock ladder settings, which the worker adopts */
	int			lock_timeout_ms;
	int			lock_timeout_max_ms;
	int			lock_retries;
	bool		done;			/* set by the worker once contracted */
	bool		caller_gone;	/* set when the caller stops waiting */
} ContractShared;

/* An index of the old column, and its copy on the new one. */
typedef struct ContractIndex
{
	Oid			oldoid;
	char	   *oldname;
	char	   *tmpname;		/* the copy's name until the swap */
	char		contype;		/* CONSTRAINT_PRIMARY, _UNIQUE or 0 */
	char	   *conname;
	bool		deferrable;
	bool		deferred;
	bool		replident;
	bool		clustered;
	IndexStmt  *stmt;			/* CREATE INDEX CONCURRENTLY of the copy */
} ContractIndex;

/* A foreign key from or to the old column, and its copy. */
typedef struct ContractFkey
{
	char	   *oldname;
	char	   *tmpname;
	Oid			conrelid;		/* the referencing table */
	Oid			confrelid;		/* the referenced table */
	char	   *conrel;			/* qualified name of conrelid */
	char	   *adddef;			/* ALTER TABLE ... ADD the copy NOT VALID */
} ContractFkey;

/* A new column and what it takes over from its old column. */
typedef struct ContractColumn
{
	MigPair    *pair;
	char	   *oldname;
	char	   *newname;		/* current name */
	char	   *finalname;		/* name after the swap */
	bool		not_null;
	char	   *nn_check;		/* the CHECK that proves NOT NULL */
	char	   *check_tmp;		/* the check_expr asked for at expand */
	char	   *check_sql;
	char	   *default_sql;
	Oid			owned_seq;		/* a serial's sequence, OWNED BY the old column */
	bool		widen_seq;		/* ... whose type is narrower than the column */
	Oid			ident_seq;		/* an identity's sequence */
	char		identity;
	char	   *comment;
} ContractColumn;

/* Everything mig_contract will do, computed from the catalog. */
typedef struct ContractPlan
{
	Oid			relid;
	int64		migration_id;
	char	   *nspname;
	char	   *relname;
	char	   *qname;
	char	   *new_type_name;	/* for sequences: the new column's type */
	List	   *columns;		/* of ContractColumn * */
	List	   *dropcols;		/* names of the old columns */
	List	   *indexes;		/* of ContractIndex * */
	List	   *fkeys;			/* of ContractFkey * */
	List	   *lockrels;		/* OIDs locked for the swap */
} ContractPlan;

/* -------------------------------------------------------------------------
 * Shared checks
 * -------------------------------------------------------------------------
 */

/*
 * A name for a copy: "_mig_" and the original's name, or its OID when that
 * does not fit.  The same every time, so a rerun finds what a failed run
 * built.
 */
static char *
copy_name(const char *name, Oid oid)
{
	if (strlen(name) + 5 < NAMEDATALEN)
		return psprintf("_mig_%s", name);
	return psprintf("_mig_%u", oid);
}

static const char *
attname_of(Oid relid, AttrNumber attnum)
{
	return get_attname(relid, attnum, false);
}

/* Refuse unless validated (or cut over), or forced; say what is missing. */
static void
check_phase(Relation rel, MigMigration *m, bool force, const char *what)
{
	const char *relname = RelationGetRelationName(rel);

	if (mig_phase_rank(m->phase) >= mig_phase_rank(MIG_PHASE_VALIDATED) || force)
		return;
	if (strcmp(m->phase, MIG_PHASE_EXPANDED) == 0)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": its migration is not validated", what, relname),
				 errdetail("The migration is in phase expanded: the existing rows have not been backfilled."),
				 errhint("Run mig_backfill('%s'), then mig_validate('%s').", relname, relname)));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s table \"%s\": its migration is not validated", what, relname),
			 errdetail("The migration is in phase %s: no validation has passed yet.", m->phase),
			 errhint("Run mig_validate('%s') and fix what it reports.", relname)));
}

/*
 * mig_cutover(tbl)
 *
 * The new columns become authoritative: a write that touches neither side
 * of a pair now recomputes the old side from the new one (down) instead of
 * the other way round, so the old side keeps following the new one and
 * mig_abort still leaves the table as the old application expects.  The
 * trigger of every backend reloads its phase through the relcache
 * invalidation.
 */
Datum
mig_cutover(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	MigMigration *m;

	/* held until commit, so that mig_abort (ACCESS EXCLUSIVE) cannot cross */
	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, false);
	if (strcmp(m->phase, MIG_PHASE_CUTOVER) == 0)
	{
		ereport(NOTICE,
				(errmsg("the migration of table \"%s\" is already cut over",
						RelationGetRelationName(rel))));
		table_close(rel, NoLock);
		PG_RETURN_VOID();
	}
	if (strcmp(m->phase, MIG_PHASE_VALIDATED) != 0)
	{
		if (strcmp(m->phase, MIG_PHASE_EXPANDED) == 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("cannot cut over table \"%s\": its migration is not validated",
							RelationGetRelationName(rel)),
					 errdetail("The migration is in phase expanded: the existing rows have not been backfilled."),
					 errhint("Run mig_backfill('%s'), then mig_validate('%s').",
							 RelationGetRelationName(rel), RelationGetRelationName(rel))));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot cut over table \"%s\": its migration is not validated",
						RelationGetRelationName(rel)),
				 errdetail("The migration is in phase %s: no validation has passed yet.", m->phase),
				 errhint("Run mig_validate('%s') and fix what it reports.",
						 RelationGetRelationName(rel))));
	}

	mig_catalog_set_phase(m->id, MIG_PHASE_CUTOVER, NULL);
	CacheInvalidateRelcache(rel);
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

/* -------------------------------------------------------------------------
 * The plan
 * -------------------------------------------------------------------------
 */

/* "view v", or the rule's own description, for a rewrite rule. */
static char *
describe_rule(Oid ruleoid)
{
	Relation	rwrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	ObjectAddress addr;

	ObjectAddressSet(addr, RewriteRelationId, ruleoid);
	rwrel = table_open(RewriteRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_rewrite_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ruleoid));
	scan = systable_beginscan(rwrel, RewriteOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Form_pg_rewrite rw = (Form_pg_rewrite) GETSTRUCT(tup);

		if (strcmp(NameStr(rw->rulename), ViewSelectRuleName) == 0)
			ObjectAddressSet(addr, RelationRelationId, rw->ev_class);
	}
	systable_endscan(scan);
	table_close(rwrel, AccessShareLock);
	return getObjectDescription(&addr, false);
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

	fk->oldname = pstrdup(NameStr(con->conname));
	fk->tmpname = copy_name(fk->oldname, conoid);
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
	ci->tmpname = copy_name(ci->oldname, indexoid);
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
	ScanKeyData key[3];
	SysScanDesc scan;
	HeapTuple	tup;

	deprel = table_open(DependRelationId, AccessShareLock);
	ScanKeyInit(&key[0], Anum_pg_depend_refclassid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(RelationRelationId));
	ScanKeyInit(&key[1], Anum_pg_depend_refobjid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(plan->relid));
	ScanKeyInit(&key[2], Anum_pg_depend_refobjsubid, BTEqualStrategyNumber, F_INT4EQ,
				Int32GetDatum(attnum));
	scan = systable_beginscan(deprel, DependReferenceIndexId, true, NULL, 3, key);

	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_depend dep = (Form_pg_depend) GETSTRUCT(tup);
		ObjectAddress addr;
		bool		carried = false;

		ObjectAddressSubSet(addr, dep->classid, dep->objid, dep->objsubid);
		if (dep->classid == RewriteRelationId)
		{
			*blockers = lappend(*blockers, describe_rule(dep->objid));
			continue;
		}
		if (dep->classid == RelationRelationId && col != NULL)
		{
			char		relkind = get_rel_relkind(dep->objid);

			if (relkind == RELKIND_INDEX)
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
 * Check everything that can be checked and compute every step, without
 * changing anything.  The caller runs it to fail early, with the error in
 * its own session; the worker runs it again to get the plan it executes.
 * Takes no lock that outlives it.
 */
static ContractPlan *
contract_plan(Relation rel, MigMigration *m, bool force)
{
	ContractPlan *plan = palloc0(sizeof(ContractPlan));
	TupleDesc	desc = RelationGetDescr(rel);
	AttrMap    *map;
	List	   *blockers = NIL;
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

	check_phase(rel, m, force, "contract");

	map = make_attrmap(desc->natts);
	for (int i = 0; i < desc->natts; i++)
		map->attnums[i] = i + 1;

	/* the columns; an old column of several pairs is a split */
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
		if (list_member_int(oldattnums, p->old_attnum))
			map->attnums[p->old_attnum - 1] = InvalidAttrNumber;
		else
		{
			oldattnums = lappend_int(oldattnums, p->old_attnum);
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
		bool		split = map->attnums[p->old_attnum - 1] == InvalidAttrNumber;
		ContractColumn *c = palloc0(sizeof(ContractColumn));

		c->pair = p;
		c->oldname = pstrdup(NameStr(oldatt->attname));
		c->newname = pstrdup(NameStr(newatt->attname));
		c->finalname = p->in_place ? c->oldname : c->newname;
		c->not_null = p->not_null || (!split && oldatt->attnotnull);
		c->nn_check = psprintf("_mig_nn_%d", p->new_attnum);
		if (p->check)
		{
			c->check_tmp = psprintf("_mig_check_%d", p->ord);
			c->check_sql = mig_deparse(p->check, plan->relid);
		}
		plan->columns = lappend(plan->columns, c);
	}

	/* what depends on each old column */
	foreach(lc, oldattnums)
	{
		AttrNumber	attnum = lfirst_int(lc);
		ContractColumn *owner = NULL;
		ListCell   *lc2;

		if (map->attnums[attnum - 1] != InvalidAttrNumber)
			foreach(lc2, plan->columns)
				if (((ContractColumn *) lfirst(lc2))->pair->old_attnum == attnum)
					owner = lfirst(lc2);
		scan_dependents(plan, rel, attnum, owner, &blockers, &indexoids, &fkoids);
	}

	if (blockers != NIL)
	{
		StringInfoData detail;

		initStringInfo(&detail);
		foreach(lc, blockers)
			appendStringInfo(&detail, "%s%s depends on it.", foreach_current_index(lc) > 0 ? "\n" : "",
							 (char *) lfirst(lc));
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot contract table \"%s\": other objects use its old column%s %s",
						plan->relname, list_length(plan->dropcols) > 1 ? "s" : "",
						"that mig_contract would drop"),
				 errdetail_internal("%s", detail.data),
				 errhint("Drop them, or change them to use the new column, then run mig_contract again; nothing was changed.")));
	}

	/* the defaults, sequences and comments of the columns taken over */
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		Form_pg_attribute oldatt = TupleDescAttr(desc, c->pair->old_attnum - 1);
		Form_pg_attribute newatt = TupleDescAttr(desc, c->pair->new_attnum - 1);

		if (map->attnums[c->pair->old_attnum - 1] != c->pair->new_attnum)
			continue;
		c->identity = oldatt->attidentity;
		c->comment = GetComment(plan->relid, RelationRelationId, c->pair->old_attnum);
		if (oldatt->atthasdef && desc->constr)
		{
			for (int i = 0; i < desc->constr->num_defval; i++)
				if (desc->constr->defval[i].adnum == c->pair->old_attnum)
					c->default_sql = mig_deparse(stringToNode(desc->constr->defval[i].adbin),
												 plan->relid);
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

	/* indexes and foreign keys, with every table they touch */
	foreach(lc, indexoids)
	{
		Oid			indexoid = lfirst_oid(lc);

		if (get_index_isvalid(indexoid))
			plan->indexes = lappend(plan->indexes, plan_index(plan, map, indexoid));
		else
			ereport(NOTICE,
					(errmsg("index \"%s\" is invalid and is not carried over to the new column",
							get_rel_name(indexoid))));
	}
	foreach(lc, fkoids)
	{
		ContractFkey *fk = plan_fkey(plan, map, lfirst_oid(lc));

		if (!pg_class_ownercheck(fk->conrelid, GetUserId()))
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errmsg("must be owner of table \"%s\" to move its foreign key \"%s\" to the new column",
							get_rel_name(fk->conrelid), fk->oldname)));
		plan->fkeys = lappend(plan->fkeys, fk);
		plan->lockrels = list_append_unique_oid(plan->lockrels, fk->conrelid);
		plan->lockrels = list_append_unique_oid(plan->lockrels, fk->confrelid);
	}
	return plan;
}

/* -------------------------------------------------------------------------
 * The worker: each step in its own short transaction
 * -------------------------------------------------------------------------
 */

static ContractShared *worker_shared = NULL;
static MemoryContext contract_cxt = NULL;

/*
 * Stop at a step boundary once the caller has stopped waiting (cancelled,
 * or gone): what the steps so far built is consistent and kept for the next
 * mig_contract, and the old column is untouched.
 */
static void
check_caller(void)
{
	bool		gone;

	SpinLockAcquire(&worker_shared->mutex);
	gone = worker_shared->caller_gone;
	SpinLockRelease(&worker_shared->mutex);
	if (gone)
		ereport(ERROR,
				(errcode(ERRCODE_QUERY_CANCELED),
				 errmsg("mig_contract was cancelled"),
				 errdetail("Its background worker stopped before its next step. The old column is untouched; a new mig_contract picks up where this one stopped.")));
	CHECK_FOR_INTERRUPTS();
}

/* A NOTICE to the caller, between transactions: the step that starts. */
static void
progress(const char *fmt,...)
pg_attribute_printf(1, 2);

static void
progress(const char *fmt,...)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		va_list		args;
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}
	ereport(NOTICE, (errmsg_internal("%s", buf.data)));
	pfree(buf.data);
}

/*
 * A transaction for one step.  The statements' own notices (index renames,
 * IF EXISTS skips) would only be noise to the caller.
 */
static void
xact_begin(void)
{
	StartTransactionCommand();
	set_config_option("client_min_messages", "warning", PGC_USERSET, PGC_S_SESSION,
					  GUC_ACTION_LOCAL, true, 0, false);
	PushActiveSnapshot(GetTransactionSnapshot());
}

static void
xact_end(void)
{
	if (ActiveSnapshotSet())
		PopActiveSnapshot();
	CommitTransactionCommand();
}

/* Run statements through SPI in the current transaction, as the caller's role. */
static void
run_sql(const char *sql)
{
	SPI_connect();
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "migrate_ext: could not run \"%s\"", sql);
	SPI_finish();
}

/*
 * Run one utility statement at top level in its own transaction, as psql
 * would: the only way to CREATE or DROP an INDEX CONCURRENTLY, which commit
 * transactions of their own.  So it runs, like a portal, in a memory
 * context that outlives those transactions.
 */
static void
run_toplevel(Node *stmt, const char *text)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	MemoryContext runcxt;
	PlannedStmt *pstmt;

	runcxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext utility",
								   ALLOCSET_DEFAULT_SIZES);
	xact_begin();
	MemoryContextSwitchTo(runcxt);
	pstmt = makeNode(PlannedStmt);
	pstmt->commandType = CMD_UTILITY;
	pstmt->canSetTag = false;
	pstmt->utilityStmt = copyObject(stmt);
	pstmt->stmt_location = -1;
	pstmt->stmt_len = 0;
	ProcessUtility(pstmt, text, false, PROCESS_UTILITY_TOPLEVEL, NULL, NULL,
				   None_Receiver, NULL);
	xact_end();
	MemoryContextSwitchTo(oldcxt);
	MemoryContextDelete(runcxt);
}

/* 0: no such index, 1: invalid (a failed build), 2: valid.  In a transaction. */
static int
index_state(ContractPlan *plan, const char *name)
{
	Oid			indexoid = get_relname_relid(name, get_rel_namespace(plan->relid));

	if (!OidIsValid(indexoid))
		return 0;
	if (get_rel_relkind(indexoid) != RELKIND_INDEX || IndexGetRelation(indexoid, false) != plan->relid)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_OBJECT),
				 errmsg("relation \"%s\" already exists", name),
				 errdetail("mig_contract builds the copy of an index under this name."),
				 errhint("Rename or drop that relation.")));
	return get_index_isvalid(indexoid) ? 2 : 1;
}

/* 0: no such constraint, 1: NOT VALID, 2: valid.  In a transaction. */
static int
constraint_state(Oid relid, const char *name)
{
	Oid			conoid = get_relation_constraint_oid(relid, name, true);
	HeapTuple	tup;
	int			state;

	if (!OidIsValid(conoid))
		return 0;
	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(conoid));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for constraint %u", conoid);
	state = ((Form_pg_constraint) GETSTRUCT(tup))->convalidated ? 2 : 1;
	ReleaseSysCache(tup);
	return state;
}

static bool
column_not_null(Oid relid, AttrNumber attnum)
{
	HeapTuple	tup = SearchSysCache2(ATTNUM, ObjectIdGetDatum(relid), Int16GetDatum(attnum));
	bool		result;

	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for attribute %d of relation %u", attnum, relid);
	result = ((Form_pg_attribute) GETSTRUCT(tup))->attnotnull;
	ReleaseSysCache(tup);
	return result;
}

/* Drop what a failed index build left (an INVALID index), if anything. */
static void
drop_index(ContractPlan *plan, const char *name)
{
	DropStmt   *drop = makeNode(DropStmt);

	drop->removeType = OBJECT_INDEX;
	drop->objects = list_make1(list_make2(makeString(plan->nspname), makeString(pstrdup(name))));
	drop->behavior = DROP_RESTRICT;
	drop->missing_ok = true;
	drop->concurrent = true;
	run_toplevel((Node *) drop,
				 psprintf("DROP INDEX CONCURRENTLY IF EXISTS %s",
						  quote_qualified_identifier(plan->nspname, name)));
}

/*
 * Build the copy of one index with CREATE INDEX CONCURRENTLY, unless a
 * valid one is there from an earlier run.  A build that fails leaves an
 * INVALID index: it is dropped before failing, and a build that ran into a
 * lock timeout (a long transaction it had to wait for) is tried again.
 */
static void
build_index(ContractPlan *plan, ContractIndex *ci)
{
	for (int attempt = 1;; attempt++)
	{
		int			state;
		volatile bool retry = false;

		check_caller();
		xact_begin();
		state = index_state(plan, ci->tmpname);
		xact_end();
		if (state == 2)
		{
			progress("index \"%s\" is already copied to the new column", ci->oldname);
			return;
		}
		if (state == 1)
			drop_index(plan, ci->tmpname);

		progress("building a copy of index \"%s\" on the new column concurrently", ci->oldname);
		PG_TRY();
		{
			run_toplevel((Node *) ci->stmt,
						 psprintf("CREATE INDEX CONCURRENTLY %s ON %s (a copy of %s on the new column)",
								  quote_identifier(ci->tmpname), plan->qname,
								  quote_identifier(ci->oldname)));
		}
		PG_CATCH();
		{
			ErrorData  *edata;

			MemoryContextSwitchTo(contract_cxt);
			edata = CopyErrorData();
			FlushErrorState();
			AbortOutOfAnyTransaction();
			drop_index(plan, ci->tmpname);
			if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE ||
				attempt >= CONTRACT_INDEX_TRIES)
				ReThrowError(edata);
			FreeErrorData(edata);
			retry = true;
		}
		PG_END_TRY();
		if (!retry)
			return;
		pg_usleep(1000L * mig_lock_timeout_max_ms);
	}
}

/*
 * NOT NULL (through its CHECK) and the check_expr of expand, added NOT
 * VALID: one short ACCESS EXCLUSIVE lock, no scan.
 */
static void
add_checks(ContractPlan *plan)
{
	StringInfoData sql;
	ListCell   *lc;
	bool		changed;

	check_caller();
	xact_begin();
	initStringInfo(&sql);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null && !column_not_null(plan->relid, c->pair->new_attnum) &&
			constraint_state(plan->relid, c->nn_check) == 0)
			appendStringInfo(&sql, "%s ADD CONSTRAINT %s CHECK (%s IS NOT NULL) NOT VALID",
							 sql.len > 0 ? "," : "", quote_identifier(c->nn_check),
							 quote_identifier(c->newname));
		if (c->check_tmp && constraint_state(plan->relid, c->check_tmp) == 0)
			appendStringInfo(&sql, "%s ADD CONSTRAINT %s CHECK (%s) NOT VALID",
							 sql.len > 0 ? "," : "", quote_identifier(c->check_tmp), c->check_sql);
	}
	changed = sql.len > 0;
	if (changed)
	{
		mig_lock_table(plan->relid, AccessExclusiveLock, "add constraints NOT VALID");
		run_sql(psprintf("ALTER TABLE %s%s", plan->qname, sql.data));
	}
	xact_end();
	if (changed)
		progress("added the NOT NULL and CHECK constraints of the new column%s as NOT VALID",
				 list_length(plan->columns) > 1 ? "s" : "");
}

/* A foreign key copy, NOT VALID: a short SHARE ROW EXCLUSIVE on both tables. */
static void
add_fkey(ContractPlan *plan, ContractFkey *fk)
{
	bool		added = false;

	check_caller();
	xact_begin();
	if (constraint_state(fk->conrelid, fk->tmpname) == 0)
	{
		Oid			rels[2] = {fk->conrelid, fk->confrelid};

		mig_lock_tables(fk->conrelid == fk->confrelid ? 1 : 2, rels,
						ShareRowExclusiveLock, "add a foreign key NOT VALID");
		run_sql(fk->adddef);
		added = true;
	}
	xact_end();
	if (added)
		progress("added foreign key \"%s\" on the new column as NOT VALID", fk->oldname);
}

/*
 * VALIDATE CONSTRAINT in its own transaction: it scans, but under SHARE
 * UPDATE EXCLUSIVE, which lets reads and writes through.
 */
static void
validate(Oid relid, const char *name, const char *what)
{
	int			state;

	if (name == NULL)
		return;
	check_caller();
	xact_begin();
	state = constraint_state(relid, name);
	xact_end();
	if (state != 1)
		return;

	progress("validating %s", what);
	xact_begin();
	mig_lock_table(relid, ShareUpdateExclusiveLock, "validate a constraint");
	run_sql(psprintf("ALTER TABLE %s VALIDATE CONSTRAINT %s",
					 quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												get_rel_name(relid)),
					 quote_identifier(name)));
	xact_end();
}

/*
 * SET NOT NULL, which skips its scan because a validated CHECK (col IS NOT
 * NULL) proves it, then drop that CHECK.  Two statements: in one ALTER
 * TABLE the DROP CONSTRAINT would run first and the proof be gone.
 */
static void
set_not_null(ContractPlan *plan)
{
	StringInfoData sql;
	ListCell   *lc;
	bool		changed;

	check_caller();
	xact_begin();
	initStringInfo(&sql);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null && !column_not_null(plan->relid, c->pair->new_attnum))
			appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET NOT NULL;",
							 plan->qname, quote_identifier(c->newname));
	}
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (constraint_state(plan->relid, c->nn_check) > 0)
			appendStringInfo(&sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
							 plan->qname, quote_identifier(c->nn_check));
	}
	changed = sql.len > 0;
	if (changed)
	{
		mig_lock_table(plan->relid, AccessExclusiveLock, "set NOT NULL");
		run_sql(sql.data);
	}
	xact_end();
	if (changed)
		progress("set NOT NULL on the new column%s, proved by the validated CHECK without a scan",
				 list_length(plan->columns) > 1 ? "s" : "");
}

/*
 * ADD GENERATED ... AS IDENTITY for the new column, with the old identity's
 * options and its position: the next value it would have given.
 */
static char *
identity_sql(ContractPlan *plan, ContractColumn *c)
{
	HeapTuple	tup;
	Form_pg_sequence seq;
	char	   *seqname;
	int64		last;
	bool		called;
	int64		start;
	bool		isnull;
	StringInfoData sql;
	int64		typmin,
				typmax;

	seqname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(c->ident_seq)),
										 get_rel_name(c->ident_seq));
	SPI_connect();
	if (SPI_execute(psprintf("SELECT last_value, is_called FROM %s", seqname), true, 1) != SPI_OK_SELECT ||
		SPI_processed != 1)
		elog(ERROR, "could not read sequence %s", seqname);
	last = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1, &isnull));
	called = DatumGetBool(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 2, &isnull));
	SPI_finish();

	tup = SearchSysCache1(SEQRELID, ObjectIdGetDatum(c->ident_seq));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for sequence %u", c->ident_seq);
	seq = (Form_pg_sequence) GETSTRUCT(tup);
	start = called ? last + seq->seqincrement : last;
	typmin = seq->seqtypid == INT2OID ? PG_INT16_MIN : seq->seqtypid == INT4OID ? PG_INT32_MIN : PG_INT64_MIN;
	typmax = seq->seqtypid == INT2OID ? PG_INT16_MAX : seq->seqtypid == INT4OID ? PG_INT32_MAX : PG_INT64_MAX;

	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s ADD GENERATED %s AS IDENTITY "
					 "(SEQUENCE NAME %s INCREMENT BY " INT64_FORMAT " START WITH " INT64_FORMAT
					 " CACHE " INT64_FORMAT " %s",
					 plan->qname, quote_identifier(c->finalname),
					 c->identity == ATTRIBUTE_IDENTITY_ALWAYS ? "ALWAYS" : "BY DEFAULT",
					 seqname, seq->seqincrement, start, seq->seqcache,
					 seq->seqcycle ? "CYCLE" : "NO CYCLE");
	/* bounds that were the old type's defaults become the new type's */
	if (seq->seqmin != (seq->seqincrement > 0 ? 1 : typmin))
		appendStringInfo(&sql, " MINVALUE " INT64_FORMAT, seq->seqmin);
	if (seq->seqmax != (seq->seqincrement > 0 ? typmax : -1))
		appendStringInfo(&sql, " MAXVALUE " INT64_FORMAT, seq->seqmax);
	appendStringInfoChar(&sql, ')');
	ReleaseSysCache(tup);
	return sql.data;
}

/*
 * The swap: one transaction under ACCESS EXCLUSIVE on every table involved,
 * taken all at once through the lock ladder.  Only catalog changes: the
 * constraints move to the indexes built before, the sequence, default and
 * identity move, the trigger and the old columns go, the new columns take
 * their place, and the migration is marked contracted, all or nothing.
 */
static void
swap(ContractPlan *plan, bool force)
{
	int			nrels = list_length(plan->lockrels);
	Oid		   *rels = palloc(sizeof(Oid) * nrels);
	MigMigration *m;
	Relation	rel;
	StringInfoData sql;
	List	   *identities = NIL;
	ListCell   *lc;

	check_caller();
	progress("swapping the columns of table \"%s\" under a short ACCESS EXCLUSIVE lock",
			 plan->relname);
	xact_begin();
	foreach(lc, plan->lockrels)
		rels[foreach_current_index(lc)] = lfirst_oid(lc);
	mig_lock_tables(nrels, rels, AccessExclusiveLock, "swap the old column for the new one");

	/* under the lock, nothing can change any more: check what we build on */
	rel = mig_open_table(plan->relid, NoLock);
	m = mig_catalog_by_id(plan->migration_id);
	if (m == NULL || mig_phase_rank(m->phase) >= mig_phase_rank(MIG_PHASE_CONTRACTED))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" ended while mig_contract ran", plan->relname),
				 errdetail("It is now in phase %s.", m ? m->phase : "unknown")));
	check_phase(rel, m, force, "contract");
	table_close(rel, NoLock);
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);

		if (index_state(plan, ci->tmpname) != 2)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the copy of index \"%s\" disappeared while mig_contract ran", ci->oldname),
					 errhint("Run mig_contract again.")));
	}

	initStringInfo(&sql);
	appendStringInfo(&sql, "DROP TRIGGER %s ON %s;", quote_identifier(MIG_TRIGGER_NAME), plan->qname);
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		appendStringInfo(&sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
						 fk->conrel, quote_identifier(fk->oldname));
	}
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);

		if (ci->contype)
			appendStringInfo(&sql, "ALTER TABLE %s DROP CONSTRAINT %s;",
							 plan->qname, quote_identifier(ci->conname));
	}
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);
		char	   *seqname;

		if (!OidIsValid(c->owned_seq))
			continue;
		seqname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(c->owned_seq)),
											 get_rel_name(c->owned_seq));
		appendStringInfo(&sql, "ALTER SEQUENCE %s OWNED BY %s.%s;", seqname, plan->qname,
						 quote_identifier(c->newname));
		if (c->widen_seq)
			appendStringInfo(&sql, "ALTER SEQUENCE %s AS %s;", seqname, plan->new_type_name);
	}
	/* read the identities' positions while their sequences exist */
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (OidIsValid(c->ident_seq))
			identities = lappend(identities, identity_sql(plan, c));
	}
	appendStringInfo(&sql, "ALTER TABLE %s", plan->qname);
	foreach(lc, plan->dropcols)
		appendStringInfo(&sql, "%s DROP COLUMN %s", foreach_current_index(lc) > 0 ? "," : "",
						 quote_identifier(lfirst(lc)));
	appendStringInfoChar(&sql, ';');
	run_sql(sql.data);

	/* the old names are free: the new objects take them */
	resetStringInfo(&sql);
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->pair->in_place && strcmp(c->newname, c->finalname) != 0)
			appendStringInfo(&sql, "ALTER TABLE %s RENAME COLUMN %s TO %s;", plan->qname,
							 quote_identifier(c->newname), quote_identifier(c->finalname));
	}
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		const char *final = ci->contype ? ci->conname : ci->oldname;

		if (ci->contype)
			appendStringInfo(&sql, "ALTER TABLE %s ADD CONSTRAINT %s %s USING INDEX %s%s%s;",
							 plan->qname, quote_identifier(ci->conname),
							 ci->contype == CONSTRAINT_PRIMARY ? "PRIMARY KEY" : "UNIQUE",
							 quote_identifier(ci->tmpname),
							 ci->deferrable ? " DEFERRABLE" : "",
							 ci->deferred ? " INITIALLY DEFERRED" : "");
		else
			appendStringInfo(&sql, "ALTER INDEX %s RENAME TO %s;",
							 quote_qualified_identifier(plan->nspname, ci->tmpname),
							 quote_identifier(ci->oldname));
		if (ci->replident)
			appendStringInfo(&sql, "ALTER TABLE %s REPLICA IDENTITY USING INDEX %s;",
							 plan->qname, quote_identifier(final));
		if (ci->clustered)
			appendStringInfo(&sql, "ALTER TABLE %s CLUSTER ON %s;",
							 plan->qname, quote_identifier(final));
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		appendStringInfo(&sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;", fk->conrel,
						 quote_identifier(fk->tmpname), quote_identifier(fk->oldname));
	}
	foreach(lc, identities)
		appendStringInfo(&sql, "%s;", (char *) lfirst(lc));
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->default_sql)
			appendStringInfo(&sql, "ALTER TABLE %s ALTER COLUMN %s SET DEFAULT %s;",
							 plan->qname, quote_identifier(c->finalname), c->default_sql);
		if (c->check_tmp)
			appendStringInfo(&sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;",
							 plan->qname, quote_identifier(c->check_tmp),
							 quote_identifier(ChooseConstraintName(plan->relname, c->finalname, "check",
																   get_rel_namespace(plan->relid), NIL)));
		if (c->comment)
			appendStringInfo(&sql, "COMMENT ON COLUMN %s.%s IS %s;", plan->qname,
							 quote_identifier(c->finalname), quote_literal_cstr(c->comment));
	}
	if (sql.len > 0)
		run_sql(sql.data);

	mig_catalog_set_phase(plan->migration_id, MIG_PHASE_CONTRACTED,
						  force ? "forced: contracted without a passed validation" : NULL);
	xact_end();
}

/*
 * Only one mig_contract per table at a time: a session-level lock of the
 * worker's own (an advisory lock tag that the SQL-level advisory lock
 * functions never use), gone when the worker exits.
 */
static void
lock_contract(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_ADVISORY(tag, MyDatabaseId, relid, 0, 3);
	if (LockAcquire(&tag, ExclusiveLock, true, true) == LOCKACQUIRE_NOT_AVAIL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_IN_USE),
				 errmsg("mig_contract is already running on table \"%s\"", get_rel_name(relid)),
				 errhint("Wait for it to finish.")));
}

/*
 * The worker's main function: connect as the caller, attach the caller's
 * queue so that every NOTICE and the error go to the caller, plan again
 * (the catalog may have moved since the caller checked), and run the steps.
 */
void
mig_contract_worker_main(Datum main_arg)
{
	MigWorkerArgs args;
	dsm_segment *seg;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	ContractShared *sh;
	ContractPlan *plan;
	Relation	rel;
	MigMigration *m;
	ListCell   *lc;
	char		buf[32];

	mig_worker_connect(&args);
	seg = dsm_attach((dsm_handle) args.arg);
	if (seg == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("mig_contract's caller went away before its worker started")));
	dsm_pin_mapping(seg);
	sh = worker_shared = dsm_segment_address(seg);
	mq = (shm_mq *) ((char *) sh + MAXALIGN(sizeof(ContractShared)));
	shm_mq_set_sender(mq, MyProc);
	mqh = shm_mq_attach(mq, seg, NULL);
	pq_redirect_to_shm_mq(seg, mqh);

	contract_cxt = AllocSetContextCreate(TopMemoryContext, "migrate_ext contract",
										 ALLOCSET_DEFAULT_SIZES);

	/* the caller's ladder; generated SQL is deparsed for this search_path */
	snprintf(buf, sizeof(buf), "%d", sh->lock_timeout_ms);
	SetConfigOption("migrate_ext.lock_timeout", buf, PGC_USERSET, PGC_S_SESSION);
	snprintf(buf, sizeof(buf), "%d", sh->lock_timeout_max_ms);
	SetConfigOption("migrate_ext.lock_timeout_max", buf, PGC_USERSET, PGC_S_SESSION);
	/* every other lock a statement takes waits at most the ladder's top */
	SetConfigOption("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION);
	snprintf(buf, sizeof(buf), "%d", sh->lock_retries);
	SetConfigOption("migrate_ext.lock_retries", buf, PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_USERSET, PGC_S_SESSION);
	SetConfigOption("application_name", "migrate_ext contract", PGC_USERSET, PGC_S_SESSION);

	lock_contract(sh->relid);

	xact_begin();
	/* the plan, and the migration it points into, outlive the transaction */
	MemoryContextSwitchTo(contract_cxt);
	rel = mig_open_table(sh->relid, AccessShareLock);
	m = mig_catalog_active(sh->relid, false);
	if (m->id != sh->migration_id)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the migration of table \"%s\" changed while mig_contract started",
						RelationGetRelationName(rel))));
	plan = contract_plan(rel, m, sh->force);
	table_close(rel, AccessShareLock);
	xact_end();
	MemoryContextSwitchTo(contract_cxt);

	foreach(lc, plan->indexes)
		build_index(plan, lfirst(lc));
	add_checks(plan);
	foreach(lc, plan->fkeys)
		add_fkey(plan, lfirst(lc));
	foreach(lc, plan->columns)
	{
		ContractColumn *c = lfirst(lc);

		if (c->not_null)
			validate(plan->relid, c->nn_check,
					 psprintf("that column \"%s\" has no NULL", c->finalname));
		validate(plan->relid, c->check_tmp,
				 psprintf("the CHECK constraint of column \"%s\"", c->finalname));
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		validate(fk->conrelid, fk->tmpname,
				 psprintf("foreign key \"%s\" on the new column", fk->oldname));
	}
	set_not_null(plan);
	swap(plan, sh->force);
	MemoryContextSwitchTo(contract_cxt);

	progress("table \"%s\" is contracted", plan->relname);
	SpinLockAcquire(&sh->mutex);
	sh->done = true;
	SpinLockRelease(&sh->mutex);
}

/* -------------------------------------------------------------------------
 * The caller
 * -------------------------------------------------------------------------
 */

/* The caller stops waiting (done, or cancelled): the worker stops too. */
static void
contract_caller_detach(dsm_segment *seg, Datum arg)
{
	ContractShared *sh = (ContractShared *) DatumGetPointer(arg);

	SpinLockAcquire(&sh->mutex);
	sh->caller_gone = true;
	SpinLockRelease(&sh->mutex);
}

/* Does this transaction hold any lock on the relation? */
static bool
locked_by_me(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	for (LOCKMODE mode = 1; mode <= MaxLockMode; mode++)
		if (LockHeldByMe(&tag, mode))
			return true;
	return false;
}

/*
 * mig_contract(tbl, force)
 *
 * Checks, then runs the steps in a background worker and waits for it,
 * relaying its NOTICEs and its error.  While it waits it holds no lock on
 * any table involved and no snapshot: the worker's CREATE INDEX
 * CONCURRENTLY waits for both.
 */
Datum
mig_contract(PG_FUNCTION_ARGS)
{
	Oid			relid;
	bool		force;
	Relation	rel;
	MigMigration *m;
	ContractPlan *plan;
	ListCell   *lc;
	dsm_segment *seg;
	ContractShared *sh;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	MigWorkerArgs args;
	BackgroundWorkerHandle *handle;
	bool		done;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be NULL")));
	relid = PG_GETARG_OID(0);
	force = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);

	if (IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("mig_contract cannot run inside a transaction block"),
				 errdetail("It builds indexes concurrently and commits each step on its own."),
				 errhint("Run it as a statement of its own, outside BEGIN ... COMMIT.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("mig_contract must run at isolation level READ COMMITTED"),
				 errdetail("Its concurrent index builds wait for every older snapshot, and this transaction's would be one of them."),
				 errhint("SET default_transaction_isolation = 'read committed' first.")));

	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, true);
	if (m == NULL)
	{
		MigMigration *last = mig_catalog_latest(relid);

		if (last != NULL && strcmp(last->phase, MIG_PHASE_CONTRACTED) == 0)
		{
			ereport(NOTICE,
					(errmsg("the migration of table \"%s\" is already contracted",
							RelationGetRelationName(rel))));
			table_close(rel, AccessShareLock);
			PG_RETURN_VOID();
		}
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" has no active migration", RelationGetRelationName(rel)),
				 errhint("Start one with mig_expand().")));
	}
	plan = contract_plan(rel, m, force);
	table_close(rel, AccessShareLock);

	foreach(lc, plan->lockrels)
		if (locked_by_me(lfirst_oid(lc)))
			ereport(ERROR,
					(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
					 errmsg("mig_contract cannot run in a transaction that has used table \"%s\"",
							get_rel_name(lfirst_oid(lc))),
					 errdetail("Its steps would wait for this transaction's lock, and it for them."),
					 errhint("Run it as a statement of its own.")));

	/*
	 * From here on, no catalog access until the worker is gone: a snapshot
	 * would make its index builds wait for this transaction.
	 */
	(void) mig_release_xmin();

	seg = dsm_create(MAXALIGN(sizeof(ContractShared)) + CONTRACT_QUEUE_SIZE, 0);
	sh = dsm_segment_address(seg);
	memset(sh, 0, sizeof(ContractShared));
	SpinLockInit(&sh->mutex);
	sh->relid = relid;
	sh->migration_id = m->id;
	sh->force = force;
	sh->lock_timeout_ms = mig_lock_timeout_ms;
	sh->lock_timeout_max_ms = mig_lock_timeout_max_ms;
	sh->lock_retries = mig_lock_retries;
	mq = shm_mq_create((char *) sh + MAXALIGN(sizeof(ContractShared)), CONTRACT_QUEUE_SIZE);
	shm_mq_set_receiver(mq, MyProc);
	on_dsm_detach(seg, contract_caller_detach, PointerGetDatum(sh));

	mig_worker_args_for_caller(&args, (int64) dsm_segment_handle(seg));
	mig_worker_start_handle("mig_contract_worker_main",
							psprintf("migrate_ext contract of %s", plan->relname),
							&args, &handle);
	mqh = shm_mq_attach(mq, seg, handle);

	for (;;)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res = shm_mq_receive(mqh, &nbytes, &data, true);

		if (res == SHM_MQ_SUCCESS)
		{
			StringInfoData msg;
			char		msgtype;

			initStringInfo(&msg);
			appendBinaryStringInfo(&msg, data, nbytes);
			msgtype = pq_getmsgbyte(&msg);
			if (msgtype == 'E' || msgtype == 'N')
			{
				ErrorData	edata;

				pq_parse_errornotice(&msg, &edata);
				/* the worker's FATAL (it was terminated) is our ERROR */
				edata.elevel = Min(edata.elevel, ERROR);
				ThrowErrorData(&edata);
			}
			pfree(msg.data);
			continue;
		}
		if (res == SHM_MQ_DETACHED)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}

	SpinLockAcquire(&sh->mutex);
	done = sh->done;
	SpinLockRelease(&sh->mutex);
	dsm_detach(seg);
	if (!done)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the background worker of mig_contract on table \"%s\" exited before finishing",
						plan->relname),
				 errhint("See the server log, then run mig_contract again: it picks up where it stopped.")));
	PG_RETURN_VOID();
}
