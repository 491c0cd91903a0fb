/*-------------------------------------------------------------------------
 *
 * guard.c
 *	  What keeps a migration's pair of columns safe from the table's other
 *	  DDL while its dual-write trigger exists.
 *
 * Three layers:
 *	 - pg_depend: mig_expand records the trigger as depending on every column
 *	   the migration reads or writes, as PostgreSQL records a generated
 *	   column's inputs, so DROP COLUMN and ALTER COLUMN TYPE of them fail
 *	   even where event triggers do not fire (single-user mode);
 *	 - the event trigger on ddl_command_start refuses those commands first,
 *	   with an error that names the migration and the way out (mig_abort);
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
#include "catalog/indexing.h"
#include "catalog/namespace.h"
#include "catalog/pg_trigger.h"
#include "catalog/pg_type.h"
#include "commands/event_trigger.h"
#include "commands/trigger.h"
#include "fmgr.h"
#include "nodes/makefuncs.h"
#include "nodes/parsenodes.h"
#include "optimizer/optimizer.h"
#include "parser/parse_func.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "migrate_ext.h"

PG_FUNCTION_INFO_V1(mig_guard_ddl_start);
PG_FUNCTION_INFO_V1(mig_guard_ddl_end);

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

		if ((cmd->subtype != AT_DropColumn && cmd->subtype != AT_AlterColumnType) ||
			cmd->name == NULL)
			continue;
		attnum = get_attnum(relid, cmd->name);
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
		guard_enabled(rel, migration_id, tgenabled);
	else
	{
		for (int i = 0; rel->trigdesc && i < rel->trigdesc->numtriggers; i++)
			if (rel->trigdesc->triggers[i].tgoid == tgoid)
				mig_check_trigger_order(rel, rel->trigdesc->triggers[i].tgname);
	}
	table_close(rel, AccessShareLock);
	PG_RETURN_VOID();
}
