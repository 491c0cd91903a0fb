/*-------------------------------------------------------------------------
 *
 * ddl.c
 *	  mig_expand and mig_abort: the DDL of a migration, under a
 *	  lock_timeout ladder.
 *
 * An ALTER TABLE that waits for its lock behind a long transaction makes
 * every later query on the table queue behind it: that is how a one-second
 * migration takes a site down.  So every strong lock here is taken with a
 * short lock_timeout in a subtransaction; on timeout the subtransaction is
 * rolled back (which lets the queue drain), we sleep, and try again with a
 * longer timeout, up to migrate_ext.lock_timeout_max (the most any other
 * session ever waits behind us), as pg_repack does.  Once the lock is held
 * the DDL itself is metadata-only and quick.
 *
 * The DDL is run through SPI with every identifier quoted and every type
 * printed from its OID: no user text is ever pasted into SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/sysattr.h"
#include "access/table.h"
#include "access/xact.h"
#include "common/pg_prng.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/partition.h"
#include "catalog/pg_inherits.h"
#include "catalog/pg_publication.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "commands/extension.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "optimizer/optimizer.h"
#include "parser/parse_type.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/partcache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_expand);
PG_FUNCTION_INFO_V1(mig_abort);

static AttrNumber
column_attnum(Relation rel, const char *colname, bool missing_ok)
{
	AttrNumber	attnum = get_attnum(RelationGetRelid(rel), colname);

	if (attnum == InvalidAttrNumber || attnum < 0)
	{
		if (missing_ok)
			return InvalidAttrNumber;
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" does not exist",
						colname, RelationGetRelationName(rel))));
	}
	return attnum;
}

/*
 * The shadow column of an in-place change: "_mig_new_<col>", shortened to
 * fit a name on a character boundary (a name cut inside a multibyte
 * character is not valid text: pg_dump would fail on it).
 */
static char *
shadow_name(const char *col)
{
	char	   *name = psprintf("_mig_new_%s", col);
	int			len = strlen(name);

	if (len >= NAMEDATALEN)
		name[pg_mbcliplen(name, len, NAMEDATALEN - 1)] = '\0';
	return name;
}

static char *
text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* What mig_expand was asked, and what it works out. */
typedef struct ExpandArgs
{
	Oid			relid;
	char	   *col;
	char	   *new_col;
	bool		in_place;
	char	   *type;
	char	   *up_src;
	char	   *down_src;
	char	   *check_src;
	char	   *new_default_src;
	Node	   *new_default;
	bool		not_null;
	bool		keep_old;
	AttrNumber	old_attnum;
	Oid			typid;
	int32		typmod;
} ExpandArgs;

/*
 * The tables migrate_ext refuses to migrate: temporary tables (no other
 * session, and so no worker, can see them), members of an inheritance
 * tree (ADD COLUMN recurses to the children, but the trigger, the backfill
 * and the validation would cover only this table), and the tables of an
 * extension -- migrate_ext's own catalog above all, whose every write the
 * dual-write trigger would then run inside: an extension's script owns
 * their shape (pg_dump recreates it from CREATE EXTENSION, not from the
 * table, so a contracted change would not survive a dump and restore).
 */
static void
expand_check_table(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			extoid = getExtensionOfObject(RelationRelationId, relid);

	if (OidIsValid(extoid))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot migrate table \"%s\": it belongs to extension \"%s\"",
						RelationGetRelationName(rel), get_extension_name(extoid)),
				 errdetail("An extension's script owns the shape of its tables: pg_dump recreates them from CREATE EXTENSION, and the extension's updates expect the columns it made."),
				 errhint("Change the extension's tables with the extension's own update scripts (ALTER EXTENSION ... UPDATE).")));

	if (rel->rd_rel->relpersistence == RELPERSISTENCE_TEMP)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot migrate temporary table \"%s\"", RelationGetRelationName(rel)),
				 errdetail("The backfill runs in a background worker, which cannot see another session's temporary tables."),
				 errhint("Use ALTER TABLE ... ALTER COLUMN ... TYPE on a temporary table.")));
	/* a partitioned table's children are its partitions: migrated with it */
	if (rel->rd_rel->relkind == RELKIND_PARTITIONED_TABLE)
		return;
	if (has_superclass(relid) || find_inheritance_children(relid, NoLock) != NIL)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot migrate table \"%s\": it is a member of an inheritance tree",
						RelationGetRelationName(rel)),
				 errdetail("ADD COLUMN would reach every child, but dual-write, backfill and validation would cover only this table, and contract would drop the other members' data."),
				 errhint("Detach the children (ALTER TABLE ... NO INHERIT), or change the column with ALTER TABLE.")));
}

/* Is the column (of this level, by its name) in this level's partition key? */
static bool
partition_key_column(Oid relid, const char *col)
{
	Relation	rel = table_open(relid, NoLock);
	AttrNumber	attnum = get_attnum(relid, col);
	bool		key = false;

	if (attnum != InvalidAttrNumber)
	{
		PartitionKey pk = RelationGetPartitionKey(rel);
		Bitmapset  *exprcols = NULL;

		for (int i = 0; i < pk->partnatts; i++)
			key |= pk->partattrs[i] == attnum;
		pull_varattnos((Node *) pk->partexprs, 1, &exprcols);
		key |= bms_is_member(attnum - FirstLowInvalidHeapAttributeNumber, exprcols);
	}
	table_close(rel, NoLock);
	return key;
}

/*
 * What a partitioned table and its partitions allow, checked up front: a
 * partition on its own is not the unit (its columns are its parent's); a
 * partition-key column, at any level, can never change in place (rows are
 * routed by it); a leaf that is a foreign table holds rows migrate_ext can
 * neither fill nor prove (mig_partition_leaves refuses it).
 */
static void
expand_check_partitioning(Oid relid, const char *col)
{
	char		relkind = get_rel_relkind(relid);
	ListCell   *lc;

	if ((relkind == RELKIND_RELATION || relkind == RELKIND_PARTITIONED_TABLE) &&
		get_rel_relispartition(relid))
	{
		Oid			root = llast_oid(get_partition_ancestors(relid));

		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot migrate partition \"%s\" on its own", get_rel_name(relid)),
				 errdetail("It is a partition of \"%s\"; a partition's columns are its partitioned table's, so the partitioned table is the unit of a migration.",
						   get_rel_name(get_partition_parent(relid, true))),
				 errhint("Call mig_expand on partitioned table \"%s\": it adds the new column and the dual-write trigger to every partition.",
						 get_rel_name(root))));
	}
	if (relkind != RELKIND_PARTITIONED_TABLE)
		return;
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));

	foreach(lc, find_all_inheritors(relid, AccessShareLock, NULL))
	{
		Oid			level = lfirst_oid(lc);

		if (get_rel_relkind(level) != RELKIND_PARTITIONED_TABLE ||
			!partition_key_column(level, col))
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot change partition-key column \"%s\" of partitioned table \"%s\" in place",
						col, get_rel_name(relid)),
				 errdetail("Rows are routed to partitions by this column%s; a new column in its place would need every row moved and every partition bound restated.",
						   level == relid ? "" :
						   psprintf(" (the key of sub-partitioned \"%s\")", get_rel_name(level))),
				 errhint("Rewrite the data into a new table partitioned by the new column (CREATE TABLE ... PARTITION BY, copy, then swap the names), or use ALTER TABLE ... ALTER COLUMN ... TYPE in a maintenance window.")));
	}
	(void) mig_partition_leaves(relid, AccessShareLock);
}

/* Say which publications will send the new column to their subscribers. */
static void
expand_publications_notice(Relation rel)
{
	Oid			relid = RelationGetRelid(rel);
	List	   *pubs;
	ListCell   *lc;
	StringInfoData names;

	pubs = list_concat_unique_oid(GetRelationPublications(relid),
								  GetSchemaPublications(RelationGetNamespace(rel)));
	pubs = list_concat_unique_oid(pubs, GetAllTablesPublications());
	if (pubs == NIL)
		return;
	initStringInfo(&names);
	foreach(lc, pubs)
		appendStringInfo(&names, "%s%s", foreach_current_index(lc) > 0 ? ", " : "",
						 quote_identifier(get_publication_name(lfirst_oid(lc), false)));
	ereport(NOTICE,
			(errmsg("table \"%s\" is published by %s",
					RelationGetRelationName(rel), names.data),
			 errdetail("Those publications will send the new column; a subscriber whose table lacks it stops applying changes (\"missing replicated column\")."),
			 errhint("Add the column on every subscriber first (or run the same migration there); see \"Logical replication\" in the README.")));
}

/* Read and check the arguments; everything that needs no strong lock. */
static void
expand_args(FunctionCallInfo fcinfo, Relation rel, ExpandArgs *a)
{
	Form_pg_attribute oldatt;

	a->col = pstrdup(NameStr(*PG_GETARG_NAME(1)));
	a->in_place = PG_ARGISNULL(2);
	a->new_col = a->in_place ? shadow_name(a->col) : pstrdup(NameStr(*PG_GETARG_NAME(2)));
	a->type = text_arg(fcinfo, 3);
	a->up_src = text_arg(fcinfo, 4);
	a->down_src = text_arg(fcinfo, 5);
	a->not_null = PG_ARGISNULL(6) ? false : PG_GETARG_BOOL(6);
	a->check_src = text_arg(fcinfo, 7);
	/* the SQL declaration of a 0.1 catalog has 8 arguments */
	a->new_default_src = PG_NARGS() > 8 ? text_arg(fcinfo, 8) : NULL;
	a->keep_old = PG_NARGS() > 9 && !PG_ARGISNULL(9) && PG_GETARG_BOOL(9);

	if (a->keep_old && a->in_place)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keep_old needs a new_col"),
				 errdetail("With keep_old, contract keeps column \"%s\", so the new column needs a name of its own.",
						   a->col)));
	expand_check_table(rel);
	a->old_attnum = column_attnum(rel, a->col, false);
	oldatt = TupleDescAttr(RelationGetDescr(rel), a->old_attnum - 1);
	if (oldatt->attgenerated)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("column \"%s\" is a generated column", a->col)));

	if (a->type)
		parseTypeString(a->type, &a->typid, &a->typmod, false);
	else
	{
		a->typid = oldatt->atttypid;
		a->typmod = oldatt->atttypmod;
	}
	if (get_typtype(a->typid) == TYPTYPE_PSEUDO)
		ereport(ERROR,
				(errcode(ERRCODE_DATATYPE_MISMATCH),
				 errmsg("column cannot be of pseudo-type %s", format_type_be(a->typid))));
	a->new_default = a->new_default_src == NULL ? NULL :
		mig_cook_default(rel, a->new_default_src, a->typid, a->typmod,
						 a->in_place ? a->col : a->new_col);
}

/*
 * The pairs of one migration all keep their old columns or all drop them:
 * contract is one swap, and a split whose old column both stays and goes
 * means nothing.
 */
static void
expand_check_keep_old(Relation rel, MigMigration *m, ExpandArgs *a)
{
	MigPair    *first;

	if (m == NULL || m->pairs == NIL)
		return;
	first = linitial(m->pairs);
	if (first->keep_old != a->keep_old)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("keep_old must be the same for every column pair of a migration"),
				 errdetail("The migration of table \"%s\" was expanded with keep_old => %s.",
						   RelationGetRelationName(rel), first->keep_old ? "true" : "false"),
				 errhint("Contract or abort it first, or call mig_expand with keep_old => %s.",
						 first->keep_old ? "true" : "false")));
}

/*
 * The table's active migration, if new pairs can still be added to it;
 * refuse otherwise.
 */
static MigMigration *
expand_active(Relation rel)
{
	MigMigration *m = mig_catalog_active(RelationGetRelid(rel), true);

	if (m != NULL && (m->phase != MIG_PHASE_EXPANDED ||
					  mig_catalog_has_job(m->id)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" already has an active migration in phase %s",
						RelationGetRelationName(rel), mig_phase_name(m->phase)),
				 errdetail("Column pairs can be added to a migration only before its backfill starts."),
				 errhint("Finish it with mig_contract() or roll it back with mig_abort() first.")));
	if (m == NULL)
	{
		MigMigration *last = mig_catalog_latest(RelationGetRelid(rel));

		/* swapped, but the foreign keys on its new column not yet finished */
		if (last != NULL && last->phase == MIG_PHASE_CONTRACTED &&
			mig_contract_recorded_list(last->id) != NIL)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the last migration of table \"%s\" is contracted but not finished",
							RelationGetRelationName(rel)),
					 errdetail("The foreign keys moved to its new column are not all validated and attached yet."),
					 errhint("Run mig_contract('%s') to finish them, then expand again.",
							 RelationGetRelationName(rel))));
	}
	return m;
}

/*
 * Once the strong lock is held: a mig_expand that committed while we
 * queued for it shows now (READ COMMITTED reads the catalog afresh).
 */
static void
expand_recheck(Relation rel, MigMigration *before, const char *new_col)
{
	MigMigration *now;

	/* a fresh snapshot: in READ COMMITTED, one that sees what committed */
	PushActiveSnapshot(GetTransactionSnapshot());
	now = mig_catalog_active(RelationGetRelid(rel), true);
	PopActiveSnapshot();

	if ((before == NULL) != (now == NULL) ||
		(now != NULL && list_length(now->pairs) != list_length(before->pairs)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("another mig_expand of table \"%s\" committed while this one waited for its lock",
						RelationGetRelationName(rel)),
				 errhint("Look at mig_status and call mig_expand again if a column pair is still missing.")));
	if (column_attnum(rel, new_col, true) != InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" already exists",
						new_col, RelationGetRelationName(rel)),
				 errhint("Choose another new_col.")));
}

/* The ALTER TABLE that adds the new column: nullable, no default, so metadata only. */
static char *
expand_add_column_sql(Relation rel, ExpandArgs *a)
{
	Form_pg_attribute oldatt = TupleDescAttr(RelationGetDescr(rel), a->old_attnum - 1);
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ADD COLUMN %s %s",
					 mig_qualified_name(RelationGetRelid(rel)), quote_identifier(a->new_col),
					 format_type_with_typemod(a->typid, a->typmod));
	if (a->typid == oldatt->atttypid && OidIsValid(oldatt->attcollation) &&
		oldatt->attcollation != DEFAULT_COLLATION_OID)
		appendStringInfo(&sql, " COLLATE %s",
						 generate_collation_name(oldatt->attcollation));
	return sql.data;
}

/*
 * Cook down.  In a split, down usually reads every new column, and the
 * later ones do not exist before the last mig_expand call: say so.
 */
static Node *
cook_down(Relation rel, const char *src, Form_pg_attribute oldatt)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	Node	   *volatile result = NULL;

	PG_TRY();
	{
		result = mig_cook_expr(rel, src, "down", oldatt->atttypid,
							   oldatt->atttypmod, false);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNDEFINED_COLUMN)
			PG_RE_THROW();
		FlushErrorState();
		edata->hint = pstrdup("In a split (several mig_expand calls on one column), give down on the last call, once every new column it reads exists.");
		ReThrowError(edata);
	}
	PG_END_TRY();
	return result;
}

/* Fill the pair from the arguments, with every expression cooked. */
static void
expand_pair(Relation rel, ExpandArgs *a, Node *up, MigPair *pair)
{
	Form_pg_attribute oldatt = TupleDescAttr(RelationGetDescr(rel), a->old_attnum - 1);

	memset(pair, 0, sizeof(*pair));
	pair->old_col = a->col;
	pair->old_attnum = a->old_attnum;
	pair->new_col = a->new_col;
	pair->new_attnum = column_attnum(rel, a->new_col, false);
	pair->in_place = a->in_place;
	pair->new_type = format_type_with_typemod(a->typid, a->typmod);
	pair->up_src = a->up_src;
	pair->up = up;
	pair->down_src = a->down_src;
	if (a->down_src)
		pair->down = cook_down(rel, a->down_src, oldatt);
	else if (a->up_src == NULL)
		pair->down = mig_default_cast(rel, pair->new_attnum, oldatt->atttypid,
									  oldatt->atttypmod);
	pair->not_null = a->not_null;
	pair->check_src = a->check_src;
	pair->new_default_src = a->new_default_src;
	pair->new_default = a->new_default;
	pair->keep_old = a->keep_old;
	if (a->check_src)
		pair->check = mig_cook_expr(rel, a->check_src, "check", BOOLOID, -1, true);
}

/*
 * Record the migration (when it is new) and the pair in the catalog; the
 * one-active-migration index and the pair's primary key turn a race with a
 * concurrent mig_expand (REPEATABLE READ does not see its rows) into 55000.
 */
static int64
expand_insert(Relation rel, const char *qname, MigMigration *m, MigPair *pair)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	volatile int64 id = m ? m->id : 0;

	PG_TRY();
	{
		if (m == NULL)
			id = mig_catalog_insert_migration(RelationGetRelid(rel), qname);
		pair->ord = m ? list_length(m->pairs) + 1 : 1;
		mig_catalog_insert_pair(id, pair);
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_UNIQUE_VIOLATION)
			PG_RE_THROW();
		FlushErrorState();
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("another mig_expand of table \"%s\" committed while this one ran",
						RelationGetRelationName(rel)),
				 errhint("Look at mig_status; abort one of them with mig_abort() if it was not meant.")));
	}
	PG_END_TRY();
	return id;
}

/*
 * Protect what the pair reads and writes as PostgreSQL protects a
 * generated column's inputs: the trigger depends on those columns, so DROP
 * COLUMN and ALTER COLUMN TYPE of them are refused while it exists (see
 * guard.c for the friendlier error the event trigger gives first).
 */
static void
expand_record_dependencies(Relation rel, MigPair *pair)
{
	Oid			relid = RelationGetRelid(rel);
	Oid			tgoid = mig_dualwrite_trigger(relid, NULL, NULL);
	ObjectAddress trigger;
	Bitmapset  *cols = mig_protected_columns(list_make1(pair));
	int			attnum = -1;

	Assert(OidIsValid(tgoid));
	ObjectAddressSet(trigger, TriggerRelationId, tgoid);
	while ((attnum = bms_next_member(cols, attnum)) >= 0)
	{
		ObjectAddress col;

		ObjectAddressSubSet(col, RelationRelationId, relid, attnum);
		recordDependencyOn(&trigger, &col, DEPENDENCY_NORMAL);
	}
}

/*
 * The dual-write trigger of a new migration: ENABLE ALWAYS, so that it fires
 * under session_replication_role = replica and in a logical-replication
 * apply worker too.
 */
static void
expand_create_trigger(const char *qname, int64 migration_id)
{
	StringInfoData sql;

	initStringInfo(&sql);
	appendStringInfo(&sql,
					 "CREATE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW "
					 "EXECUTE FUNCTION migrate_ext.dualwrite('" INT64_FORMAT "'); "
					 "ALTER TABLE %s ENABLE ALWAYS TRIGGER %s",
					 quote_identifier(MIG_TRIGGER_NAME), qname, migration_id,
					 qname, quote_identifier(MIG_TRIGGER_NAME));
	mig_run_utility(sql.data);
	CommandCounterIncrement();
}

/*
 * The trigger-order rule on the table and, for a partitioned table, on
 * every partition, each of which gets a clone of the dual-write trigger and
 * may have BEFORE triggers of its own.  The caller holds a lock on all.
 */
static void
expand_check_trigger_order(Relation rel)
{
	ListCell   *lc;

	mig_check_trigger_order(rel, MIG_TRIGGER_NAME);
	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		return;
	foreach(lc, find_all_inheritors(RelationGetRelid(rel), NoLock, NULL))
	{
		Relation	part;

		if (lfirst_oid(lc) == RelationGetRelid(rel))
			continue;
		part = table_open(lfirst_oid(lc), NoLock);
		mig_check_trigger_order(part, MIG_TRIGGER_NAME);
		table_close(part, NoLock);
	}
}

/*
 * Does ALTER COLUMN ... TYPE rewrite any of the table's leaves (each by its
 * own attnum and CHECKs: a leaf attached from a table of its own may number
 * the column differently and carry constraints of its own)?
 */
static bool
expand_tree_needs_rewrite(Relation rel, ExpandArgs *a)
{
	ListCell   *lc;

	if (rel->rd_rel->relkind != RELKIND_PARTITIONED_TABLE)
		return mig_retype_needs_rewrite(rel, a->old_attnum, a->typid, a->typmod);
	foreach(lc, find_all_inheritors(RelationGetRelid(rel), NoLock, NULL))
	{
		Relation	part = table_open(lfirst_oid(lc), NoLock);
		bool		rewrite;

		rewrite = mig_retype_needs_rewrite(part, get_attnum(RelationGetRelid(part), a->col),
										   a->typid, a->typmod);
		table_close(part, NoLock);
		if (rewrite)
			return true;
	}
	return false;
}

/*
 * Can the change be made by PostgreSQL in the catalog alone?  Only an
 * in-place type change with the default up and nothing else asked for (no
 * down, constraint or keep_old, no other pair), whose ALTER COLUMN ... TYPE
 * would not rewrite the table by PostgreSQL's own rules.
 */
static bool
expand_no_rewrite(Relation rel, ExpandArgs *a, MigMigration *m)
{
	Form_pg_attribute oldatt = TupleDescAttr(RelationGetDescr(rel), a->old_attnum - 1);

	if (!a->in_place || a->up_src || a->down_src || a->not_null || a->check_src ||
		a->keep_old || m != NULL || a->type == NULL ||
		(a->typid == oldatt->atttypid && a->typmod == oldatt->atttypmod))
		return false;
	return !expand_tree_needs_rewrite(rel, a);
}

/*
 * The change made in the catalog, recorded as a migration that went from
 * expanded straight to contracted (mig_history shows it, with why).
 */
static int64
expand_retype(Relation rel, ExpandArgs *a)
{
	Form_pg_attribute oldatt = TupleDescAttr(RelationGetDescr(rel), a->old_attnum - 1);
	const char *qname = mig_qualified_name(a->relid);
	char	   *from;
	char	   *detail;
	MigPair		pair;
	int64		id;

	from = format_type_with_typemod(oldatt->atttypid, oldatt->atttypmod);
	detail = mig_retype_run(rel, a->old_attnum, a->typid, a->typmod, a->new_default);
	ereport(NOTICE,
			(errmsg("column \"%s\" changed from %s to %s without a rewrite",
					a->col, from, format_type_with_typemod(a->typid, a->typmod)),
			 errdetail("PostgreSQL changes this type in the catalog alone: no new column and no backfill, one ALTER TABLE under the lock ladder, its views recreated."),
			 errhint("The migration is contracted already: mig_history shows it.")));
	rel = table_open(a->relid, NoLock);

	memset(&pair, 0, sizeof(pair));
	pair.old_col = pair.new_col = a->col;
	pair.old_attnum = pair.new_attnum = a->old_attnum;
	pair.in_place = true;
	pair.new_type = format_type_with_typemod(a->typid, a->typmod);
	pair.up = mig_default_cast(rel, a->old_attnum, a->typid, a->typmod);
	pair.new_default_src = a->new_default_src;
	pair.new_default = a->new_default;
	id = expand_insert(rel, qname, NULL, &pair);
	table_close(rel, NoLock);
	if (!mig_catalog_move_phase(id, MIG_PHASE_EXPANDED, MIG_PHASE_CONTRACTED, detail))
		elog(ERROR, "migration " INT64_FORMAT " moved while it was recorded", id);
	return id;
}

/*
 * mig_expand(tbl, col, new_col, type, up, down, not_null, check_expr,
 *			  new_default, keep_old)
 *
 * Adds the new column (nullable, no default: metadata-only) and, for the
 * first pair, the dual-write trigger.  A second call before the backfill
 * adds another pair to the same migration.  Everything happens in the
 * caller's transaction, so an error anywhere leaves nothing behind.
 */
Datum
mig_expand(PG_FUNCTION_ARGS)
{
	ExpandArgs	a;
	Relation	rel;
	MigMigration *m;
	MigPair		pair;
	Node	   *up;
	int64		migration_id;
	const char *qname;
	char	   *add_sql;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl and col must not be NULL")));
	a.relid = PG_GETARG_OID(0);

	/* Everything that can be checked without a strong lock, first. */
	expand_check_partitioning(a.relid, NameStr(*PG_GETARG_NAME(1)));
	rel = mig_open_table(a.relid, AccessShareLock);
	expand_args(fcinfo, rel, &a);
	m = expand_active(rel);
	expand_check_keep_old(rel, m, &a);
	if (m == NULL)
		expand_check_trigger_order(rel);
	if (column_attnum(rel, a.new_col, true) != InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" already exists",
						a.new_col, RelationGetRelationName(rel)),
				 errhint("Choose another new_col.")));
	if (expand_no_rewrite(rel, &a, m))
		PG_RETURN_INT64(expand_retype(rel, &a));

	/* up references only existing columns, so it is checked before the lock */
	up = a.up_src ? mig_cook_expr(rel, a.up_src, "up", a.typid, a.typmod, false)
		: mig_default_cast(rel, a.old_attnum, a.typid, a.typmod);

	/*
	 * Now the short strong lock (on a partitioned table: on the parent and
	 * every partition at once), and the DDL.
	 */
	(void) mig_lock_tree(a.relid, AccessExclusiveLock, "add the new column");
	expand_recheck(rel, m, a.new_col);
	if (m == NULL)
		expand_check_trigger_order(rel);
	qname = mig_qualified_name(RelationGetRelid(rel));
	add_sql = expand_add_column_sql(rel, &a);

	/* ALTER TABLE refuses a table this backend has open; the lock stays */
	table_close(rel, NoLock);
	mig_run_utility(add_sql);
	CommandCounterIncrement();
	rel = table_open(a.relid, NoLock);
	expand_pair(rel, &a, up, &pair);

	migration_id = expand_insert(rel, qname, m, &pair);
	if (m == NULL)
	{
		table_close(rel, NoLock);
		expand_create_trigger(qname, migration_id);
		rel = table_open(a.relid, NoLock);
		expand_publications_notice(rel);
	}
	else
	{
		/* make the trigger of every backend reload the pairs */
		CacheInvalidateRelcache(rel);
	}
	expand_record_dependencies(rel, &pair);
	table_close(rel, NoLock);

	PG_RETURN_INT64(migration_id);
}

/*
 * mig_abort(tbl)
 *
 * Stops the backfill, drops the trigger and the new column(s); the old
 * column was never touched.  Allowed in any phase before contract, and a
 * no-op (with a notice) on a migration already aborted.
 *
 * What it drops is identified by what expand recorded: the trigger by its
 * function and migration id, each new column by its attribute number (a
 * column the user dropped and created again under the same name is not
 * ours and is left alone).
 */
/*
 * Partitions detached during the migration that still have its new columns:
 * the abort does not reach them.  Named, with the statement the guard wrote
 * in the history when each was detached (guard_partitions_end).
 */
static void
abort_detached_notice(MigMigration *m)
{
	Datum	   *names = palloc0(sizeof(Datum) * Max(list_length(m->pairs), 1));
	int			n = 0;
	ListCell   *lc;
	char	   *stmts;

	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		if (p->new_col != NULL)
			names[n++] = CStringGetTextDatum(p->new_col);
	}
	if (n == 0)
		return;
	SPI_connect();
	if (mig_catalog_query("SELECT pg_catalog.string_agg(DISTINCT d.stmt, '; ') FROM "
						  "(SELECT pg_catalog.substring(l.detail, 'drop them with: (ALTER TABLE .*)$') AS stmt, "
						  "pg_catalog.to_regclass(pg_catalog.substring(l.detail, 'drop them with: ALTER TABLE (.*?) DROP COLUMN ')) AS rel "
						  "FROM migrate_ext.phase_log l WHERE l.migration_id OPERATOR(pg_catalog.=) $1) d "
						  "WHERE d.rel IS NOT NULL "
						  "AND NOT EXISTS (SELECT FROM pg_catalog.pg_partition_tree($2) t "
						  "WHERE t.relid OPERATOR(pg_catalog.=) d.rel) "
						  "AND EXISTS (SELECT FROM pg_catalog.pg_attribute a WHERE a.attrelid OPERATOR(pg_catalog.=) d.rel "
						  "AND NOT a.attisdropped AND a.attname::pg_catalog.text OPERATOR(pg_catalog.=) ANY ($3))",
						  3, (Oid[]) {INT8OID, REGCLASSOID, TEXTARRAYOID},
						  (Datum[]) {Int64GetDatum(m->id), ObjectIdGetDatum(m->relid),
							  PointerGetDatum(construct_array(names, n, TEXTOID, -1, false, TYPALIGN_INT))},
						  NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.phase_log");
	stmts = SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
	if (stmts != NULL)
		ereport(NOTICE,
				(errmsg("partitions detached from table %s during migration " INT64_FORMAT " keep its new columns",
						m->table_name, m->id),
				 errdetail("The abort does not reach a table that is no longer a partition."),
				 errhint("Drop them by hand: %s.", stmts)));
	SPI_finish();
}

Datum
mig_abort(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	MigMigration *m;
	ListCell   *lc;
	StringInfoData sql;
	Oid			tgoid;
	int64		tg_migration;
	int			ndrop = 0;

	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, true);
	if (m == NULL)
	{
		MigMigration *last = mig_catalog_latest(relid);

		int64		phantom;

		/* a restored table carries the trigger of a migration it is not in */
		if (last == NULL && OidIsValid(mig_dualwrite_trigger(relid, &phantom, NULL)))
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s\" has no migration to abort",
							RelationGetRelationName(rel)),
					 errdetail("It carries the dual-write trigger of migration " INT64_FORMAT ", which the catalog records for another table: a database restored from a dump keeps the old OIDs in the catalog.",
							   phantom),
					 errhint("Abort that migration with mig_abort_id(" INT64_FORMAT ").", phantom)));
		if (last == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s\" has no migration to abort",
							RelationGetRelationName(rel))));
		if (last->phase == MIG_PHASE_CONTRACTED)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("the migration of table \"%s\" was contracted and cannot be aborted",
							RelationGetRelationName(rel)),
					 errdetail("Contract dropped the old column: it is the point of no return.")));
		ereport(NOTICE,
				(errmsg("the migration of table \"%s\" is already aborted",
						RelationGetRelationName(rel))));
		table_close(rel, AccessShareLock);
		PG_RETURN_VOID();
	}

	/* the worker stops at its next batch when it sees the job cancelled */
	mig_job_cancel_for_migration(m->id);

	/* a partitioned table's trigger clones and columns go with the parent's */
	(void) mig_lock_tree(relid, AccessExclusiveLock, "drop the new column");

	/*
	 * One statement, so the table is rewritten in the catalog only once.
	 * The new columns by their recorded attnums: a column dropped by hand
	 * is skipped, never one that took its name since.
	 */
	initStringInfo(&sql);
	tgoid = mig_dualwrite_trigger(relid, &tg_migration, NULL);
	if (OidIsValid(tgoid) && tg_migration == m->id)
	{
		ObjectAddress trigger;

		ObjectAddressSet(trigger, TriggerRelationId, tgoid);
		performDeletion(&trigger, DROP_RESTRICT, 0);
		CommandCounterIncrement();
	}
	appendStringInfo(&sql, "ALTER TABLE %s", mig_qualified_name(RelationGetRelid(rel)));
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		TupleDesc	desc = RelationGetDescr(rel);
		Form_pg_attribute att;

		/* the column may have been dropped by hand already */
		if (p->new_attnum > desc->natts)
			continue;
		att = TupleDescAttr(desc, p->new_attnum - 1);
		if (att->attisdropped)
			continue;
		appendStringInfo(&sql, "%s DROP COLUMN %s", ndrop++ > 0 ? "," : "",
						 quote_identifier(NameStr(att->attname)));
	}
	table_close(rel, NoLock);
	/* first what an unfinished mig_contract added, by the OIDs it recorded */
	(void) mig_contract_undo(m->id);
	if (ndrop > 0)
		mig_run_utility(sql.data);
	abort_detached_notice(m);

	mig_catalog_set_phase(m->id, m->phase, MIG_PHASE_ABORTED, NULL);
	PG_RETURN_VOID();
}
