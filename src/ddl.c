/*-------------------------------------------------------------------------
 *
 * ddl.c
 *	  mig_expand and mig_abort: the DDL of a migration, under a
 *	  lock_timeout ladder.
 *
 * An ALTER TABLE that waits for its lock behind a long transaction makes
 * every later query on the table queue behind it: that is how a one-second
 * migration takes a site down.  So every strong lock here is taken through
 * relation.c's lock_timeout ladder; once the lock is held the DDL itself is
 * metadata-only and quick.
 *
 * The DDL is run through mig_run_utility() with every identifier quoted and
 * every type printed from its OID: no user text is ever pasted into SQL.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/relation.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_collation.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "parser/parse_type.h"
#include "pgstat.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/ruleutils.h"
#include "utils/syscache.h"

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
 * The new column's current name (a DBA may have renamed it), or the
 * recorded one when it is gone.
 */
static const char *
new_column_name(Relation rel, MigPair *p)
{
	TupleDesc	desc = RelationGetDescr(rel);
	Form_pg_attribute att;

	if (p->new_attnum > desc->natts)
		return p->new_col;
	att = TupleDescAttr(desc, p->new_attnum - 1);
	return att->attisdropped ? p->new_col : pstrdup(NameStr(att->attname));
}

/*
 * The shadow column of an in-place change: "_mig_new_<col>", shortened to
 * fit a name.
 */
static char *
shadow_name(const char *col)
{
	char		buf[NAMEDATALEN];

	snprintf(buf, sizeof(buf), "_mig_new_%s", col);
	return pstrdup(buf);
}

static char *
text_arg(FunctionCallInfo fcinfo, int n)
{
	return PG_ARGISNULL(n) ? NULL : text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/*
 * mig_expand(tbl, col, new_col, type, up, down, not_null, check_expr)
 *
 * Adds the new column (nullable, no default: metadata-only) and, for the
 * first pair, the dual-write trigger.  A second call before the backfill
 * adds another pair to the same migration.  Everything happens in the
 * caller's transaction, so an error anywhere leaves nothing behind.
 */
Datum
mig_expand(PG_FUNCTION_ARGS)
{
	Oid			relid;
	Relation	rel;
	char	   *col;
	char	   *new_col;
	char	   *type;
	char	   *up_src;
	char	   *down_src;
	char	   *check_src;
	bool		not_null;
	AttrNumber	old_attnum;
	Form_pg_attribute oldatt;
	Oid			typid;
	int32		typmod;
	MigMigration *m;
	MigPair		pair;
	Node	   *up;
	int64		migration_id;
	StringInfoData sql;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl and col must not be NULL")));
	relid = PG_GETARG_OID(0);
	col = pstrdup(NameStr(*PG_GETARG_NAME(1)));
	new_col = PG_ARGISNULL(2) ? NULL : pstrdup(NameStr(*PG_GETARG_NAME(2)));
	type = text_arg(fcinfo, 3);
	up_src = text_arg(fcinfo, 4);
	down_src = text_arg(fcinfo, 5);
	not_null = PG_ARGISNULL(6) ? false : PG_GETARG_BOOL(6);
	check_src = text_arg(fcinfo, 7);

	/* Everything that can be checked without a strong lock, first. */
	rel = mig_open_table(relid, AccessShareLock);
	old_attnum = column_attnum(rel, col, false);
	oldatt = TupleDescAttr(RelationGetDescr(rel), old_attnum - 1);
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

	m = mig_catalog_active(relid, true);
	if (m != NULL && (m->phase != MIG_PHASE_EXPANDED ||
					  mig_catalog_has_job(m->id)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" already has an active migration in phase %s",
						RelationGetRelationName(rel), mig_phase_name(m->phase)),
				 errdetail("Column pairs can be added to a migration only before its backfill starts."),
				 errhint("Finish it with mig_contract() or roll it back with mig_abort() first.")));

	if (new_col == NULL)
		new_col = shadow_name(col);
	if (column_attnum(rel, new_col, true) != InvalidAttrNumber)
		ereport(ERROR,
				(errcode(ERRCODE_DUPLICATE_COLUMN),
				 errmsg("column \"%s\" of relation \"%s\" already exists",
						new_col, RelationGetRelationName(rel)),
				 errhint("Choose another new_col.")));

	/* up references only existing columns, so it is checked before the lock */
	up = up_src ? mig_cook_expr(rel, up_src, "up", typid, typmod, false)
		: mig_default_cast(rel, old_attnum, typid, typmod);

	/* Now the short strong lock, and the DDL. */
	mig_lock_table(relid, AccessExclusiveLock, "add the new column");

	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s ADD COLUMN %s %s",
					 mig_qualified_name(RelationGetRelid(rel)), quote_identifier(new_col),
					 format_type_with_typemod(typid, typmod));
	if (typid == oldatt->atttypid && OidIsValid(oldatt->attcollation) &&
		oldatt->attcollation != DEFAULT_COLLATION_OID)
		appendStringInfo(&sql, " COLLATE %s",
						 generate_collation_name(oldatt->attcollation));

	/* ALTER TABLE refuses a table this backend has open; the lock stays */
	oldatt = NULL;
	table_close(rel, NoLock);
	mig_run_utility(sql.data);
	CommandCounterIncrement();
	rel = table_open(relid, NoLock);
	oldatt = TupleDescAttr(RelationGetDescr(rel), old_attnum - 1);

	memset(&pair, 0, sizeof(pair));
	pair.old_col = col;
	pair.old_attnum = old_attnum;
	pair.new_col = new_col;
	pair.new_attnum = column_attnum(rel, new_col, false);
	pair.in_place = PG_ARGISNULL(2);
	pair.new_type = format_type_with_typemod(typid, typmod);
	pair.up_src = up_src;
	pair.up = up;
	pair.down_src = down_src;
	if (down_src)
		pair.down = mig_cook_expr(rel, down_src, "down", oldatt->atttypid,
								  oldatt->atttypmod, false);
	else if (up_src == NULL)
		pair.down = mig_default_cast(rel, pair.new_attnum, oldatt->atttypid,
									 oldatt->atttypmod);
	pair.not_null = not_null;
	pair.check_src = check_src;
	if (check_src)
		pair.check = mig_cook_expr(rel, check_src, "check", BOOLOID, -1, true);

	if (m == NULL)
	{
		const char *qname = mig_qualified_name(RelationGetRelid(rel));

		migration_id = mig_catalog_insert_migration(relid, qname);
		pair.ord = 1;
		mig_catalog_insert_pair(migration_id, &pair);

		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "CREATE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW "
						 "EXECUTE FUNCTION migrate_ext.dualwrite('" INT64_FORMAT "')",
						 quote_identifier(MIG_TRIGGER_NAME), qname, migration_id);
		table_close(rel, NoLock);
		mig_run_utility(sql.data);
	}
	else
	{
		migration_id = m->id;
		pair.ord = list_length(m->pairs) + 1;
		mig_catalog_insert_pair(migration_id, &pair);
		/* make the trigger of every backend reload the pairs */
		CacheInvalidateRelcache(rel);
		table_close(rel, NoLock);
	}

	PG_RETURN_INT64(migration_id);
}

/*
 * mig_abort(tbl)
 *
 * Stops the backfill, drops the trigger and the new column(s); the old
 * column was never touched.  Allowed in any phase before contract, and a
 * no-op (with a notice) on a migration already aborted.
 */
Datum
mig_abort(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	MigMigration *m;
	ListCell   *lc;
	StringInfoData sql;

	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, true);
	if (m == NULL)
	{
		MigMigration *last = mig_catalog_latest(relid);

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

	mig_lock_table(relid, AccessExclusiveLock, "drop the new column");

	/* one statement, so the table is rewritten in the catalog only once */
	initStringInfo(&sql);
	appendStringInfo(&sql, "DROP TRIGGER IF EXISTS %s ON %s; ALTER TABLE %s",
					 quote_identifier(MIG_TRIGGER_NAME), mig_qualified_name(RelationGetRelid(rel)),
					 mig_qualified_name(RelationGetRelid(rel)));
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		/* IF EXISTS: the column may have been dropped by hand already */
		appendStringInfo(&sql, "%s DROP COLUMN IF EXISTS %s",
						 foreach_current_index(lc) > 0 ? "," : "",
						 quote_identifier(new_column_name(rel, p)));
	}
	table_close(rel, NoLock);
	mig_run_utility(sql.data);

	mig_catalog_set_phase(m->id, m->phase, MIG_PHASE_ABORTED, NULL);
	PG_RETURN_VOID();
}
