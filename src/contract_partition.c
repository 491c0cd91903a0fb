/*-------------------------------------------------------------------------
 *
 * contract_partition.c
 *	  What the finish (validation, contract) needs to know about a
 *	  partitioned table: its leaves, and how to read each of them.
 *
 * A partitioned table has no rows of its own: every row lives in a leaf
 * partition, a plain table, possibly several levels down (sub-partitioned
 * levels are partitioned tables too).  Validation reads each leaf in its
 * own chunks (validate.c), and the checks that predict contract read the
 * whole hierarchy rather than ONLY the parent, which would see no row at
 * all (contract_predict.c).  Columns are named, never numbered, in the SQL
 * this serves: a leaf attached from a table of its own may number its
 * columns differently from its parent, but names them the same.
 *
 * A leaf that is a foreign table holds rows migrate_ext cannot prove or
 * move: such a hierarchy is refused.
 *
 * Contract on a partitioned table takes the routes PostgreSQL 15 allows
 * (proven in TAP 070):
 *  - an index of the old column: its copy is built CONCURRENTLY on each
 *    leaf; in the swap, CREATE INDEX ... ON ONLY on the parent and on each
 *    sub-partitioned level (catalog only), and ALTER INDEX ... ATTACH
 *    PARTITION of every leaf's and level's copy;
 *  - a primary key or unique constraint (which includes the partition key):
 *    its copy is a unique index built CONCURRENTLY on each leaf; in the
 *    swap each leaf makes its constraint of it (ADD CONSTRAINT ... USING
 *    INDEX, which a partitioned table does not accept), and the parent's
 *    ADD PRIMARY KEY / UNIQUE attaches those without building any index
 *    (a plain leaf index would not do: the parent builds a new one then);
 *  - a foreign key referencing the partitioned table: it needs the parent's
 *    key, which exists only from the swap on, so it is added NOT VALID in
 *    the swap (catalog only) and validated after it, under locks that let
 *    reads and writes through; validation predicted that it holds;
 *  - NOT NULL and the CHECKs: added NOT VALID on the parent, they are every
 *    leaf's; each leaf's is validated in a transaction of its own (one
 *    leaf's scan, one snapshot), then the parent's, which has no rows of
 *    its own; SET NOT NULL on the parent then scans no leaf;
 *  - the swap locks the parent and every partition at once, in
 *    find_all_inheritors order, through the lock ladder.
 *  - a foreign key declared on a partitioned table: PostgreSQL 15 cannot
 *    add it NOT VALID there, so its copy is added NOT VALID on each leaf,
 *    validated on each, then the parent's ADD FOREIGN KEY attaches them
 *    without a scan (contract_worker.c); in the swap every level's copy
 *    takes the old name (mig_partition_fkey_rename_sql).  One that
 *    references a partitioned table being migrated needs the new key, made
 *    only in the swap: it is added NOT VALID on each leaf in the swap,
 *    validated on each after it, then attached by the parent's.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "catalog/index.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_inherits.h"
#include "commands/defrem.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "parser/parse_utilcmd.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "contract.h"
#include "migrate_ext.h"

/*
 * The leaf partitions of a partitioned table, each locked in lockmode, in
 * the order PostgreSQL locks them (find_all_inheritors: breadth first, by
 * OID within a level, so that two sessions never lock them in opposite
 * orders).  For an ordinary table: the table itself.
 */
List *
mig_partition_leaves(Oid relid, LOCKMODE lockmode)
{
	List	   *leaves = NIL;
	ListCell   *lc;

	if (get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		return list_make1_oid(relid);
	foreach(lc, find_all_inheritors(relid, lockmode, NULL))
	{
		Oid			child = lfirst_oid(lc);
		char		relkind = get_rel_relkind(child);

		if (relkind == RELKIND_PARTITIONED_TABLE)
			continue;
		if (relkind != RELKIND_RELATION)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("partition \"%s\" of table \"%s\" is not an ordinary table",
							get_rel_name(child), get_rel_name(relid)),
					 errdetail("migrate_ext reads and moves the rows of ordinary tables only; a foreign table partition holds rows it can neither prove nor move."),
					 errhint("Detach partition \"%s\" for the migration.", get_rel_name(child))));
		leaves = lappend_oid(leaves, child);
	}
	return leaves;
}

/*
 * How the SQL of the finish reads a table's rows: ONLY an ordinary table
 * (not its inheritance children, which migrate_ext refuses anyway), and a
 * partitioned table whole.
 */
char *
mig_partition_from(Oid relid)
{
	char	   *qname = quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
												   get_rel_name(relid));

	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
		return qname;
	return psprintf("ONLY %s", qname);
}

/*
 * The expression that names a row where no key does: its ctid, and on a
 * partitioned table the leaf it lives in (ctids repeat across leaves).
 */
const char *
mig_partition_ctid_key(Oid relid)
{
	if (get_rel_relkind(relid) == RELKIND_PARTITIONED_TABLE)
		return "(tableoid::pg_catalog.regclass::pg_catalog.text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) ctid::pg_catalog.text)";
	return "ctid::pg_catalog.text";
}

/* -------------------------------------------------------------------------
 * Contract on a partitioned table
 * -------------------------------------------------------------------------
 */

/* The name of a copy, as contract_plan.c names them: "_mig_" and the name. */
static char *
part_copy_name(Oid indexoid)
{
	const char *name = get_rel_name(indexoid);

	if (strlen(name) + 5 < NAMEDATALEN)
		return psprintf("_mig_%s", name);
	return psprintf("_mig_%u", indexoid);
}

static char *
qualified(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/*
 * The copies of one index of a partitioned table below its parent: one per
 * index of the old index's partition tree (each sub-level's, each leaf's),
 * deepest first, each knowing the copy it attaches to.
 */
static void
plan_index_parts(ContractPlan *plan, ContractIndex *ci)
{
	List	   *tree = find_all_inheritors(ci->oldoid, NoLock, NULL);
	ListCell   *lc;

	foreach(lc, tree)
	{
		Oid			oldidx = lfirst_oid(lc);
		Oid			table;
		Oid			parentidx;
		ContractIndex *part;

		if (oldidx == ci->oldoid)
			continue;
		table = IndexGetRelation(oldidx, false);
		parentidx = get_partition_parent(oldidx, false);
		part = palloc0(sizeof(ContractIndex));
		part->oldoid = oldidx;
		part->oldname = get_rel_name(oldidx);
		part->tmpname = part_copy_name(oldidx);
		part->relid = table;
		part->leaf = get_rel_relkind(oldidx) == RELKIND_INDEX;
		part->contype = ci->contype;
		part->deferrable = ci->deferrable;
		part->deferred = ci->deferred;
		if (ci->contype)
		{
			Oid			conoid = get_index_constraint(oldidx);

			part->conname = OidIsValid(conoid) ? get_constraint_name(conoid) :
				pstrdup(part->oldname);
		}
		part->attach_to =
			quote_qualified_identifier(get_namespace_name(get_rel_namespace(parentidx)),
									   parentidx == ci->oldoid ? ci->tmpname :
									   part_copy_name(parentidx));
		part->stmt = copyObject(ci->stmt);
		part->stmt->relation = makeRangeVar(get_namespace_name(get_rel_namespace(table)),
											get_rel_name(table), -1);
		part->stmt->idxname = part->tmpname;
		part->stmt->concurrent = part->leaf;
		part->stmt->relation->inh = part->leaf;
		/* the levels of a constraint get theirs from the parent's */
		if (part->leaf || !ci->contype)
			ci->parts = lcons(part, ci->parts);
	}
}

/*
 * Complete a plan for a partitioned table: the per-leaf copies of its
 * indexes, the foreign keys that reference it moved in the swap, and every
 * partition locked with the parent.
 */
void
mig_partition_plan(ContractPlan *plan)
{
	ListCell   *lc;

	if (get_rel_relkind(plan->relid) != RELKIND_PARTITIONED_TABLE)
		return;
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);
		ListCell   *lc2;

		plan_index_parts(plan, ci);
		if (ci->replident)
			plan->blockers = lappend(plan->blockers,
									 psprintf("the replica identity index %s of partitioned table %s (mig_contract does not move it yet: set REPLICA IDENTITY DEFAULT or FULL first)",
											  ci->oldname, plan->relname));
		foreach(lc2, ci->stmt->indexParams)
		{
			if (ci->contype && lfirst_node(IndexElem, lc2)->name == NULL)
			{
				plan->blockers = lappend(plan->blockers,
										 psprintf("constraint %s of partitioned table %s on an expression (a partitioned table's key names columns only)",
												  ci->conname, plan->relname));
				break;
			}
		}
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		char	   *tmp;
		char	   *at;

		if (fk->confrelid != plan->relid)
			continue;
		fk->at_swap = true;

		/*
		 * Under the old key's own name: its clones (one per referenced
		 * partition) would otherwise take that name, free once the old key
		 * is gone, before the rename could.
		 */
		tmp = psprintf("ADD CONSTRAINT %s ", quote_identifier(fk->tmpname));
		at = strstr(fk->adddef, tmp);
		Assert(at != NULL);
		fk->adddef = psprintf("%.*sADD CONSTRAINT %s %s", (int) (at - fk->adddef), fk->adddef,
							  quote_identifier(fk->oldname), at + strlen(tmp));
	}
	foreach(lc, find_all_inheritors(plan->relid, NoLock, NULL))
	{
		plan->lockrels = list_append_unique_oid(plan->lockrels, lfirst_oid(lc));
		if (get_rel_relkind(lfirst_oid(lc)) == RELKIND_RELATION)
			plan->leaves = lappend_oid(plan->leaves, lfirst_oid(lc));
	}
}

/* The key columns of a copy, by name, for the parent's ADD CONSTRAINT. */
static char *
key_columns(List *params)
{
	StringInfoData buf;
	ListCell   *lc;

	initStringInfo(&buf);
	foreach(lc, params)
	{
		IndexElem  *elem = lfirst_node(IndexElem, lc);

		if (elem->name == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
					 errmsg("a key on an expression cannot be moved on a partitioned table")));
		appendStringInfo(&buf, "%s%s", buf.len ? ", " : "", quote_identifier(elem->name));
	}
	return buf.data;
}

/*
 * A primary key or unique constraint: each leaf's from its copy, then the
 * parent's, which attaches the leaves' (and makes the sub-levels') without
 * building an index.
 */
static void
swap_constraint(ContractPlan *plan, ContractIndex *ci)
{
	const char *kind = ci->contype == CONSTRAINT_PRIMARY ? "PRIMARY KEY" : "UNIQUE";
	const char *flags = psprintf("%s%s", ci->deferrable ? " DEFERRABLE" : "",
								 ci->deferred ? " INITIALLY DEFERRED" : "");
	StringInfoData sql;
	ListCell   *lc;

	initStringInfo(&sql);
	foreach(lc, ci->parts)
	{
		ContractIndex *part = lfirst(lc);

		Assert(part->leaf);
		appendStringInfo(&sql, "ALTER TABLE %s ADD CONSTRAINT %s %s USING INDEX %s%s;",
						 qualified(part->relid), quote_identifier(part->conname), kind,
						 quote_identifier(part->tmpname), flags);
	}
	appendStringInfo(&sql, "ALTER TABLE %s ADD CONSTRAINT %s %s%s (%s)",
					 plan->qname, quote_identifier(ci->conname), kind,
					 ci->stmt->nulls_not_distinct ? " NULLS NOT DISTINCT" : "",
					 key_columns(ci->stmt->indexParams));
	if (ci->stmt->indexIncludingParams != NIL)
		appendStringInfo(&sql, " INCLUDE (%s)", key_columns(ci->stmt->indexIncludingParams));
	appendStringInfo(&sql, "%s;", flags);
	mig_run_utility(sql.data);
}

/* CREATE INDEX ... ON ONLY: catalog only, the index invalid until attached. */
static void
create_on_only(IndexStmt *stmt)
{
	IndexStmt  *copy = copyObject(stmt);
	Oid			relid = RangeVarGetRelid(copy->relation, NoLock, false);

	copy->concurrent = false;
	copy->relation->inh = false;
	copy = transformIndexStmt(relid, copy, NULL);
	(void) DefineIndex(relid, copy, InvalidOid, InvalidOid, InvalidOid,
					   false, true, true, false, true);
	CommandCounterIncrement();
}

/*
 * A plain index: the parent's and each sub-level's copy ON ONLY, then every
 * copy attached to its parent level's, deepest first: the parent's copy is
 * valid once the last is attached.
 */
static void
swap_index(ContractPlan *plan, ContractIndex *ci)
{
	StringInfoData sql;
	ListCell   *lc;

	create_on_only(ci->stmt);
	foreach(lc, ci->parts)
	{
		ContractIndex *part = lfirst(lc);

		if (!part->leaf)
			create_on_only(part->stmt);
	}
	initStringInfo(&sql);
	foreach(lc, ci->parts)
	{
		ContractIndex *part = lfirst(lc);

		appendStringInfo(&sql, "ALTER INDEX %s ATTACH PARTITION %s;", part->attach_to,
						 quote_qualified_identifier(get_namespace_name(get_rel_namespace(part->relid)),
													part->tmpname));
	}

	/*
	 * As the table's owner, restricted: ATTACH PARTITION compares the two
	 * indexes' definitions, simplifying their expressions and predicates,
	 * which calls the owner's functions with constant arguments there
	 * (((id + my_fn(1)))) as the role that runs it -- mig_contract's caller
	 * otherwise.  (DefineIndex switches to the owner by itself.)
	 */
	mig_run_utility_as_owner(plan->relid, sql.data);
	if (!get_index_isvalid(get_relname_relid(ci->tmpname, get_rel_namespace(plan->relid))))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the copy of index \"%s\" is not valid once every partition is attached",
						ci->oldname),
				 errhint("A partition may have been attached while mig_contract ran: run it again.")));
}

/*
 * The partitioned part of the swap, once the old columns are gone and
 * before the new ones take their names: the keys and indexes of the parent
 * from the leaves' copies, and the foreign keys that reference it, NOT
 * VALID.
 */
void
mig_partition_swap(ContractPlan *plan)
{
	ListCell   *lc;

	if (get_rel_relkind(plan->relid) != RELKIND_PARTITIONED_TABLE)
		return;
	/* the swap holds every partition of the plan: were they all? */
	foreach(lc, find_all_inheritors(plan->relid, NoLock, NULL))
	{
		if (!list_member_oid(plan->lockrels, lfirst_oid(lc)))
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("partition \"%s\" was attached to table \"%s\" while mig_contract ran",
							get_rel_name(lfirst_oid(lc)), plan->relname),
					 errdetail("Its copies of the indexes of the old column were not built."),
					 errhint("Run mig_contract again.")));
	}
	foreach(lc, plan->indexes)
	{
		ContractIndex *ci = lfirst(lc);

		if (ci->contype)
			swap_constraint(plan, ci);
		else
			swap_index(plan, ci);
	}
	foreach(lc, plan->fkeys)
	{
		ContractFkey *fk = lfirst(lc);

		if (!fk->at_swap)
			continue;
		if (get_rel_relkind(fk->conrelid) != RELKIND_PARTITIONED_TABLE)
			mig_run_utility(fk->adddef);
		else
		{
			/* on each leaf, NOT VALID; the parent's attaches them after */
			const char *body = mig_partition_fkey_body(fk);
			ListCell   *lc2;

			foreach(lc2, mig_partition_leaves(fk->conrelid, NoLock))
				mig_run_utility(psprintf("ALTER TABLE %s%s", qualified(lfirst_oid(lc2)), body));
		}
	}
}

/*
 * What follows "ALTER TABLE <the referencing table>" in a foreign key
 * copy's ADD CONSTRAINT ... NOT VALID: run on a leaf of a partitioned
 * referencing table as it is, on the parent without its NOT VALID.
 */
const char *
mig_partition_fkey_body(ContractFkey *fk)
{
	const char *body = fk->adddef + strlen("ALTER TABLE ") + strlen(fk->conrel);

	Assert(strncmp(fk->adddef, "ALTER TABLE ", 12) == 0);
	Assert(strlen(body) > strlen(" NOT VALID") &&
		   strcmp(body + strlen(body) - strlen(" NOT VALID"), " NOT VALID") == 0);
	return body;
}

/* The copies of a plain index take the old names (the keys have theirs). */
void
mig_partition_rename_sql(ContractPlan *plan, ContractIndex *ci, StringInfo sql)
{
	ListCell   *lc;

	if (ci->contype)
		return;
	appendStringInfo(sql, "ALTER INDEX %s RENAME TO %s;",
					 quote_qualified_identifier(plan->nspname, ci->tmpname),
					 quote_identifier(ci->oldname));
	foreach(lc, ci->parts)
	{
		ContractIndex *part = lfirst(lc);

		appendStringInfo(sql, "ALTER INDEX %s RENAME TO %s;",
						 quote_qualified_identifier(get_namespace_name(get_rel_namespace(part->relid)),
													part->tmpname),
						 quote_identifier(part->oldname));
	}
}

/*
 * The partitions' copies of a foreign key declared on a partitioned table
 * (added on each leaf, then attached by the parent's, see contract_worker.c)
 * take the old key's name too, free once the old key and its clones are
 * dropped, so that a later migration's copy can take the copy's name again.
 */
void
mig_partition_fkey_rename_sql(ContractFkey *fk, StringInfo sql)
{
	ListCell   *lc;

	if (get_rel_relkind(fk->conrelid) != RELKIND_PARTITIONED_TABLE)
		return;
	foreach(lc, find_all_inheritors(fk->conrelid, NoLock, NULL))
	{
		Oid			part = lfirst_oid(lc);

		if (part == fk->conrelid ||
			!OidIsValid(get_relation_constraint_oid(part, fk->tmpname, true)))
			continue;
		appendStringInfo(sql, "ALTER TABLE %s RENAME CONSTRAINT %s TO %s;", qualified(part),
						 quote_identifier(fk->tmpname), quote_identifier(fk->oldname));
	}
}
