/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  What keeps a migration's pair of columns safe from the table's other
 *	  DDL while its dual-write trigger exists.
 *
 * Four layers:
 *	 - pg_depend: mig_expand records the trigger as depending on every column
 *	   the migration reads or writes, as PostgreSQL records a generated
 *	   column's inputs, so DROP COLUMN and ALTER COLUMN TYPE of them fail
 *	   even where event triggers do not fire (single-user mode);
 *	 - the event trigger on ddl_command_start refuses those commands first,
 *	   with an error that names the migration and the way out (mig_abort);
 *	 - the event trigger on ddl_command_start also refuses DROP TRIGGER of
 *	   the dual-write trigger of an active migration, except from
 *	   migrate_ext's own contract; the one on sql_drop aborts the active
 *	   migration of a dropped table (no phantom is left behind);
 *	   mig_abort_id() aborts a phantom that a dump and restore left (the
 *	   catalog's rows name old OIDs);
 *	 - the event trigger on ddl_command_end refuses a BEFORE ROW trigger
 *	   that would fire after the dual-write trigger (CREATE TRIGGER, ALTER
 *	   TRIGGER ... RENAME), and records in the catalog (invalidated_at,
 *	   invalidated_why) any ALTER TABLE that leaves the dual-write trigger
 *	   other than ENABLE ALWAYS: writes may then bypass it, so cutover and
 *	   contract need a validation made after that.
 *
 * The dual-write trigger is recognised by its function
 * (migrate_ext.dualwrite) and its argument (the migration id), never by its
 * name alone (relation.c's mig_dualwrite_trigger, which expand and contract
 * use too, as they use its trigger-order rule and protected columns).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/extension.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "postmaster/bgworker.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"

#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_guard_ddl_start);
PG_FUNCTION_INFO_V1(mig_guard_ddl_end);
PG_FUNCTION_INFO_V1(mig_guard_sql_drop);
PG_FUNCTION_INFO_V1(mig_abort_id);

/*
 * ddl_command_start, ALTER TABLE ... ATTACH PARTITION to a table under
 * migration (the partitioned table or one of its sub-partitioned levels):
 * the table attached must have every new column already, as PostgreSQL
 * requires of a partition; say which and how, rather than PostgreSQL's
 * bare error.  A foreign table holds rows migrate_ext can neither fill nor
 * prove.  It gets a clone of the dual-write trigger when it is attached.
 */
static void
guard_attach_start(Oid relid, MigMigration *m, PartitionCmd *pc)
{
	Oid			part = RangeVarGetRelid(pc->name, NoLock, true);
	ListCell   *lc;

	if (!OidIsValid(part) || m->phase >= MIG_PHASE_CONTRACTED)
		return;
	if (get_rel_relkind(part) == RELKIND_FOREIGN_TABLE)
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot attach foreign table \"%s\" to table \"%s\" during migration " INT64_FORMAT,
						get_rel_name(part), get_rel_name(relid), m->id),
				 errdetail("migrate_ext can neither fill nor prove the rows of a foreign table partition."),
				 errhint("Attach it after the migration is contracted or aborted.")));
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		if (get_attnum(part, p->new_col) != InvalidAttrNumber)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot attach \"%s\" to table \"%s\" during migration " INT64_FORMAT ": it lacks new column \"%s\"",
						get_rel_name(part), get_rel_name(relid), m->id, p->new_col),
				 errdetail("PostgreSQL requires a partition to have every column of its partitioned table, and the migration added \"%s\" (%s).",
						   p->new_col, p->new_type),
				 errhint("Run ALTER TABLE %s ADD COLUMN %s %s first (nullable, no default: no rewrite), then attach it; its rows need the backfill, and mig_validate shows them until they have it.",
						 quote_identifier(get_rel_name(part)), quote_identifier(p->new_col),
						 p->new_type)));
	}
}

/* ddl_command_start, ALTER TABLE: refuse DROP / ALTER TYPE of a protected column. */
static void
guard_alter_start(AlterTableStmt *stmt)
{
	Oid			relid;
	int64		migration_id;
	MigMigration *m;
	Bitmapset  *cols;
	ListCell   *lc;

	if (stmt->objtype != OBJECT_TABLE || stmt->relation == NULL)
		return;
	relid = RangeVarGetRelid(stmt->relation, NoLock, true);
	if (!OidIsValid(relid) ||
		!OidIsValid(mig_dualwrite_trigger(relid, &migration_id, NULL)))
		return;
	m = mig_catalog_by_id(migration_id);
	if (m == NULL)
		return;
	cols = mig_protected_columns(m->pairs);
	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
		AttrNumber	attnum;

		if (cmd->subtype == AT_AttachPartition)
			guard_attach_start(relid, m, (PartitionCmd *) cmd->def);
		if ((cmd->subtype != AT_DropColumn && cmd->subtype != AT_AlterColumnType) ||
			cmd->name == NULL)
			continue;
		/* a partition's columns by name: it may number them otherwise */
		attnum = get_attnum(m->relid, cmd->name);
		if (attnum <= 0 || !bms_is_member(attnum, cols))
			continue;
		ereport(ERROR,
				(errcode(cmd->subtype == AT_DropColumn ?
						 ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST : ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("cannot %s column \"%s\" of table \"%s\": migration " INT64_FORMAT " uses it",
						cmd->subtype == AT_DropColumn ? "drop" : "alter the type of",
						cmd->name, get_rel_name(relid), migration_id),
				 errdetail("The migration's dual-write trigger reads or writes this column; changing it would break every write to the table or make the pair diverge."),
				 errhint("Finish the migration with mig_contract(), or roll it back with mig_abort('%s'), first.",
						 get_rel_name(m->relid))));
	}
}

/*
 * Is this the background worker of a mig_contract?  Its swap drops the
 * dual-write trigger itself, in a statement of its own, before it records
 * the phase contracted.  (mig_abort drops it with performDeletion(), which
 * fires no event trigger.)
 */
static bool
in_contract_worker(void)
{
	return MyBgworkerEntry != NULL &&
		strcmp(MyBgworkerEntry->bgw_library_name, "migrate_ext") == 0 &&
		strcmp(MyBgworkerEntry->bgw_function_name, "mig_contract_worker_main") == 0;
}

/*
 * ddl_command_start, DROP TRIGGER: refuse to drop the dual-write trigger
 * of an active migration (recognised by its function and argument, the
 * trigger still being there).  Without it writes stop keeping the pair in
 * step, and nothing could bring the migration back but mig_abort.
 */
static void
guard_drop_trigger_start(DropStmt *stmt)
{
	ListCell   *lc;

	if (in_contract_worker())
		return;
	foreach(lc, stmt->objects)
	{
		List	   *names = lfirst_node(List, lc);
		RangeVar   *rv;
		Oid			relid;
		Oid			tgoid;
		int64		id;
		MigMigration *m;

		/* [schema.]table.trigger */
		if (list_length(names) < 2)
			continue;
		rv = makeRangeVarFromNameList(list_truncate(list_copy(names), list_length(names) - 1));
		relid = RangeVarGetRelid(rv, NoLock, true);
		if (!OidIsValid(relid))
			continue;
		tgoid = mig_dualwrite_trigger(relid, &id, NULL);
		if (!OidIsValid(tgoid) ||
			get_trigger_oid(relid, strVal(llast(names)), true) != tgoid)
			continue;
		m = mig_catalog_by_id(id);
		if (m == NULL || m->phase >= MIG_PHASE_CONTRACTED)
			continue;
		ereport(ERROR,
				(errcode(ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST),
				 errmsg("cannot drop the dual-write trigger of migration " INT64_FORMAT " on table \"%s\"",
						id, get_rel_name(relid)),
				 errdetail("Without it, writes to the table no longer keep the new column in step with the old one."),
				 errhint("Finish the migration with mig_contract(), or roll it back with mig_abort('%s'), which drops the trigger.",
						 get_rel_name(relid))));
	}
}

Datum
mig_guard_ddl_start(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "migrate_ext.guard_ddl_start() must be called as an event trigger");
	trigdata = (EventTriggerData *) fcinfo->context;
	if (IsA(trigdata->parsetree, AlterTableStmt))
		guard_alter_start((AlterTableStmt *) trigdata->parsetree);
	else if (IsA(trigdata->parsetree, DropStmt) &&
			 ((DropStmt *) trigdata->parsetree)->removeType == OBJECT_TRIGGER)
		guard_drop_trigger_start((DropStmt *) trigdata->parsetree);
	PG_RETURN_VOID();
}

/*
 * After ALTER TABLE: the dual-write trigger must still be ENABLE ALWAYS;
 * otherwise writes may bypass it from now on, which the catalog records.
 */
static void
guard_enabled(Relation rel, int64 migration_id, char tgenabled)
{
	const char *how;
	char	   *why;

	if (tgenabled == TRIGGER_FIRES_ALWAYS)
		return;
	how = tgenabled == TRIGGER_DISABLED ? "DISABLE" :
		tgenabled == TRIGGER_FIRES_ON_REPLICA ? "ENABLE REPLICA" : "ENABLE";
	why = psprintf("the dual-write trigger was set to %s by ALTER TABLE", how);
	mig_catalog_exec("UPDATE migrate_ext.migration SET invalidated_at = pg_catalog.now(), "
					 "invalidated_why = $2 WHERE id OPERATOR(pg_catalog.=) $1",
					 2, (Oid[]) {INT8OID, TEXTOID},
					 (Datum[]) {Int64GetDatum(migration_id), CStringGetTextDatum(why)},
					 NULL, -1);
	ereport(WARNING,
			(errcode(ERRCODE_WARNING),
			 errmsg("writes to table \"%s\" may now bypass the dual-write trigger of migration " INT64_FORMAT,
					RelationGetRelationName(rel), migration_id),
			 errdetail("ALTER TABLE set the trigger to %s. The migration is recorded as invalidated: cutover and contract need a validation that passes after the trigger is enabled again.",
					   how),
			 errhint("Run ALTER TABLE %s ENABLE ALWAYS TRIGGER %s, then mig_backfill() and mig_validate() again.",
					 quote_identifier(RelationGetRelationName(rel)),
					 quote_identifier(MIG_TRIGGER_NAME))));
}

/* A line in the migration's history (mig_history.phases), in its phase. */
static void
guard_note(MigMigration *m, const char *detail)
{
	mig_catalog_exec("INSERT INTO migrate_ext.phase_log (migration_id, phase, detail) "
					 "VALUES ($1, $2, $3)",
					 3, (Oid[]) {INT8OID, TEXTOID, TEXTOID},
					 (Datum[]) {Int64GetDatum(m->id),
						 CStringGetTextDatum(mig_phase_name(m->phase)),
						 CStringGetTextDatum(detail)},
					 NULL, 1);
}

/*
 * The statement that drops the migration's new columns from a partition
 * detached during it (mig_abort does not reach it any more); NULL when it
 * has none of them.
 */
static char *
guard_detached_drop(MigMigration *m, const RangeVar *name)
{
	Oid			relid = RangeVarGetRelid(name, NoLock, true);
	StringInfoData sql;
	ListCell   *lc;
	int			n = 0;

	if (!OidIsValid(relid))
		return NULL;
	initStringInfo(&sql);
	appendStringInfo(&sql, "ALTER TABLE %s", mig_qualified_name(relid));
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);

		if (p->new_col == NULL || get_attnum(relid, p->new_col) == InvalidAttrNumber)
			continue;
		appendStringInfo(&sql, "%s DROP COLUMN %s", n++ > 0 ? "," : "",
						 quote_identifier(p->new_col));
	}
	return n > 0 ? sql.data : NULL;
}

/*
 * After ATTACH or DETACH PARTITION on a table under migration.  A partition
 * attached got the dual-write trigger's clone, but its rows were written
 * without it: they need the backfill, and a validation made before does not
 * cover them (recorded as invalidated).  A partition detached lost the
 * clone and keeps the new column, which nothing keeps in step any more.
 * Both are said and written in the migration's history.
 */
static void
guard_partitions_end(Relation rel, int64 migration_id, AlterTableStmt *stmt)
{
	MigMigration *m = NULL;
	ListCell   *lc;

	foreach(lc, stmt->cmds)
	{
		AlterTableCmd *cmd = lfirst_node(AlterTableCmd, lc);
		PartitionCmd *pc = (PartitionCmd *) cmd->def;
		char	   *why;

		if (cmd->subtype != AT_AttachPartition && cmd->subtype != AT_DetachPartition)
			continue;
		if (m == NULL)
			m = mig_catalog_by_id(migration_id);
		if (m == NULL || m->phase >= MIG_PHASE_CONTRACTED)
			return;
		if (cmd->subtype == AT_AttachPartition)
		{
			why = psprintf("partition %s attached to %s: its rows need the backfill",
						   pc->name->relname, RelationGetRelationName(rel));
			mig_catalog_exec("UPDATE migrate_ext.migration SET invalidated_at = pg_catalog.now(), "
							 "invalidated_why = $2 WHERE id OPERATOR(pg_catalog.=) $1",
							 2, (Oid[]) {INT8OID, TEXTOID},
							 (Datum[]) {Int64GetDatum(m->id), CStringGetTextDatum(why)},
							 NULL, -1);
			ereport(NOTICE,
					(errmsg("partition \"%s\" attached during migration " INT64_FORMAT " of table %s",
							pc->name->relname, m->id, m->table_name),
					 errdetail("It got the dual-write trigger, but its rows were written without it: their new column needs the backfill, and mig_validate shows them until then. Cutover and contract need a validation made after this."),
					 errhint("Fill its rows (mig_backfill, or UPDATE ... SET old = old), then run mig_validate.")));
		}
		else
		{
			char	   *drop = guard_detached_drop(m, pc->name);

			why = psprintf("partition %s detached from %s: it keeps the new column, without the dual-write trigger%s%s",
						   pc->name->relname, RelationGetRelationName(rel),
						   drop ? "; mig_abort does not reach it, drop them with: " : "",
						   drop ? drop : "");
			ereport(NOTICE,
					(errmsg("partition \"%s\" detached during migration " INT64_FORMAT " of table %s",
							pc->name->relname, m->id, m->table_name),
					 errdetail("It lost the dual-write trigger and keeps the new columns, which nothing keeps in step with the old ones any more; the migration no longer covers its rows, and mig_abort does not reach it."),
					 drop ? errhint("Drop the new columns from it (%s), or attach it again before the migration is contracted.", drop)
					 : errhint("Attach it again before the migration is contracted if it should be migrated.")));
		}
		guard_note(m, why);
	}
}

Datum
mig_guard_ddl_end(PG_FUNCTION_ARGS)
{
	EventTriggerData *trigdata;
	Node	   *tree;
	RangeVar   *rv = NULL;
	Oid			relid;
	Oid			tgoid;
	int64		migration_id;
	char		tgenabled;
	Relation	rel;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "migrate_ext.guard_ddl_end() must be called as an event trigger");
	trigdata = (EventTriggerData *) fcinfo->context;
	tree = trigdata->parsetree;
	if (IsA(tree, AlterTableStmt) && ((AlterTableStmt *) tree)->objtype == OBJECT_TABLE)
		rv = ((AlterTableStmt *) tree)->relation;
	else if (IsA(tree, CreateTrigStmt))
		rv = ((CreateTrigStmt *) tree)->relation;
	else if (IsA(tree, RenameStmt) && ((RenameStmt *) tree)->renameType == OBJECT_TRIGGER)
		rv = ((RenameStmt *) tree)->relation;
	if (rv == NULL)
		PG_RETURN_VOID();
	relid = RangeVarGetRelid(rv, NoLock, true);
	if (!OidIsValid(relid))
		PG_RETURN_VOID();
	tgoid = mig_dualwrite_trigger(relid, &migration_id, &tgenabled);
	if (!OidIsValid(tgoid))
		PG_RETURN_VOID();

	/* the command holds a lock at least this strong already */
	rel = table_open(relid, AccessShareLock);
	if (IsA(tree, AlterTableStmt))
	{
		guard_enabled(rel, migration_id, tgenabled);
		guard_partitions_end(rel, migration_id, (AlterTableStmt *) tree);
	}
	else
	{
		for (int i = 0; rel->trigdesc && i < rel->trigdesc->numtriggers; i++)
			if (rel->trigdesc->triggers[i].tgoid == tgoid)
				mig_check_trigger_order(rel, rel->trigdesc->triggers[i].tgname);
	}
	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}

/* A dropped table: its active migration is aborted, its backfill cancelled. */
static void
guard_table_dropped(Oid relid)
{
	MigMigration *m = mig_catalog_active(relid, true);

	if (m == NULL)
		return;
	mig_job_cancel_for_migration(m->id);
	mig_catalog_set_phase(m->id, m->phase, MIG_PHASE_ABORTED,
						  "the table was dropped");
	ereport(NOTICE,
			(errmsg("migration " INT64_FORMAT " of table %s is aborted: the table was dropped",
					m->id, m->table_name)));
}

/*
 * sql_drop: a dropped table takes its active migration with it (aborted,
 * so that no phantom is left that nobody can abort).
 */
Datum
mig_guard_sql_drop(PG_FUNCTION_ARGS)
{
	MemoryContext callercxt = CurrentMemoryContext;
	List	   *tables = NIL;
	ListCell   *lc;
	bool		pushed = false;

	if (!CALLED_AS_EVENT_TRIGGER(fcinfo))
		elog(ERROR, "migrate_ext.guard_sql_drop() must be called as an event trigger");

	/* DROP EXTENSION or DROP SCHEMA took the catalog with it: nothing to do */
	if (!OidIsValid(get_extension_oid("migrate_ext", true)) ||
		!OidIsValid(get_relname_relid("migration", get_namespace_oid("migrate_ext", true))))
		PG_RETURN_VOID();

	/* DROP INDEX CONCURRENTLY ends in a transaction of its own, snapshotless */
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	SPI_connect();
	if (SPI_execute("SELECT d.objid FROM pg_catalog.pg_event_trigger_dropped_objects() d "
					"WHERE d.object_type OPERATOR(pg_catalog.=) 'table' "
					"AND d.objsubid OPERATOR(pg_catalog.=) 0", true, 0) != SPI_OK_SELECT)
		elog(ERROR, "migrate_ext: could not read the dropped objects");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		bool		isnull;
		Oid			objid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i],
														   SPI_tuptable->tupdesc, 1,
														   &isnull));
		MemoryContext old = MemoryContextSwitchTo(callercxt);

		tables = lappend_oid(tables, objid);
		MemoryContextSwitchTo(old);
	}
	SPI_finish();

	foreach(lc, tables)
		guard_table_dropped(lfirst_oid(lc));
	if (pushed)
		PopActiveSnapshot();
	PG_RETURN_VOID();
}

/*
 * mig_abort_id(migration_id)
 *
 * Abort a phantom: an active migration whose table is gone, or is not the
 * one the catalog names any more (a database restored from a dump: the
 * catalog's rows come back with the old OIDs).  Its dual-write trigger, if
 * a table still carries one, is dropped (found by its function and
 * argument); the new columns are left for their owner to look at and drop.
 * A migration whose table is fine is aborted with mig_abort(tbl).
 */
Datum
mig_abort_id(PG_FUNCTION_ARGS)
{
	int64		id = PG_GETARG_INT64(0);
	MigMigration *m = mig_catalog_by_id(id);
	int64		tg_id;
	Oid			relid;
	Oid			tgoid;

	if (m == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("migration " INT64_FORMAT " does not exist", id)));
	if (m->phase == MIG_PHASE_CONTRACTED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("migration " INT64_FORMAT " was contracted and cannot be aborted", id)));
	if (m->phase == MIG_PHASE_ABORTED)
	{
		ereport(NOTICE, (errmsg("migration " INT64_FORMAT " is already aborted", id)));
		PG_RETURN_VOID();
	}
	if (OidIsValid(mig_dualwrite_trigger(m->relid, &tg_id, NULL)) && tg_id == id)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("migration " INT64_FORMAT " is not a phantom: its table %s is there",
						id, mig_qualified_name(m->relid)),
				 errhint("Abort it with mig_abort('%s'), which also drops its new columns.",
						 mig_qualified_name(m->relid))));

	tgoid = mig_dualwrite_trigger_of(id, &relid);
	if (OidIsValid(tgoid))
	{
		ObjectAddress trigger;

		/* the table's owner may; the ladder, as for any strong lock */
		if (!pg_class_ownercheck(relid, GetUserId()))
			aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));
		mig_lock_table(relid, AccessExclusiveLock, "drop the dual-write trigger of a phantom migration");
		ObjectAddressSet(trigger, TriggerRelationId, tgoid);
		performDeletion(&trigger, DROP_RESTRICT, 0);
		ereport(NOTICE,
				(errmsg("dropped the dual-write trigger of migration " INT64_FORMAT " from table %s",
						id, mig_qualified_name(relid)),
				 errdetail("Its new columns are left as they are: check them and drop them by hand.")));
	}
	else if (!superuser() &&
			 !has_privs_of_role(GetUserId(), mig_extension_owner()))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to abort migration " INT64_FORMAT, id),
				 errdetail("Its table is gone; only a superuser or the owner of extension migrate_ext may abort it.")));

	mig_job_cancel_for_migration(id);
	mig_catalog_set_phase(id, m->phase, MIG_PHASE_ABORTED,
						  psprintf("a phantom: table %s (OID %u) is gone or is another table",
								   m->table_name, m->relid));
	PG_RETURN_VOID();
}
