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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "catalog/pg_class.h"
#include "catalog/pg_inherits.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "contract.h"
#include "migrate_ext.h"

/*
 * Open the table of a migration step that reads a partitioned table as a
 * whole (validation): an ordinary table as mig_open_table does, a
 * partitioned one with the same owner check.  Its partitions are locked by
 * mig_partition_leaves.
 */
Relation
mig_partition_open(Oid relid, LOCKMODE lockmode)
{
	if (get_rel_relkind(relid) != RELKIND_PARTITIONED_TABLE)
		return mig_open_table(relid, lockmode);
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
	return table_open(relid, lockmode);
}

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
