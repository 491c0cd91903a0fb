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
 * name alone.
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

/* OID of migrate_ext.dualwrite(), or InvalidOid */
static Oid
dualwrite_func(void)
{
	List	   *name = list_make2(makeString("migrate_ext"), makeString("dualwrite"));

	return LookupFuncName(name, 0, NULL, true);
}

/*
 * The dual-write trigger of the table, if it has one: its migration id in
 * *migration_id.  Read from pg_trigger, so that it needs no lock on the
 * table beyond what the caller holds.
 */
Oid
mig_dualwrite_trigger(Oid relid, int64 *migration_id, char *tgenabled)
{
	Oid			funcid = dualwrite_func();
	Oid			result = InvalidOid;
	Relation	tgrel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(funcid))
		return InvalidOid;
	tgrel = table_open(TriggerRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_trigger_tgrelid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(relid));
	scan = systable_beginscan(tgrel, TriggerRelidNameIndexId, true, NULL, 1, &key);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Form_pg_trigger tg = (Form_pg_trigger) GETSTRUCT(tup);
		bool		isnull;
		Datum		args;
		bytea	   *ba;

		if (tg->tgfoid != funcid || tg->tgnargs != 1)
			continue;
		args = heap_getattr(tup, Anum_pg_trigger_tgargs, RelationGetDescr(tgrel), &isnull);
		if (isnull)
			continue;
		ba = DatumGetByteaPP(args);
		result = tg->oid;
		if (migration_id)
			*migration_id = pg_strtoint64(pnstrdup(VARDATA_ANY(ba), VARSIZE_ANY_EXHDR(ba)));
		if (tgenabled)
			*tgenabled = tg->tgenabled;
		break;
	}
	systable_endscan(scan);
	table_close(tgrel, AccessShareLock);
	return result;
}

/*
 * Every column a migration reads or writes: the old and new column of each
 * pair and the columns its expressions read.
 */
Bitmapset *
mig_protected_columns(List *pairs)
{
	Bitmapset  *cols = NULL;
	ListCell   *lc;

	foreach(lc, pairs)
	{
		MigPair    *p = lfirst(lc);
		List	   *vars;
		ListCell   *lv;

		cols = bms_add_member(cols, p->old_attnum);
		cols = bms_add_member(cols, p->new_attnum);
		vars = pull_var_clause(p->up, 0);
		if (p->down)
			vars = list_concat(vars, pull_var_clause(p->down, 0));
		if (p->check)
			vars = list_concat(vars, pull_var_clause(p->check, 0));
		foreach(lv, vars)
		{
			Var		   *var = lfirst_node(Var, lv);

			if (var->varattno > 0)
				cols = bms_add_member(cols, var->varattno);
		}
	}
	return cols;
}

/*
 * Refuse a BEFORE ROW trigger for INSERT or UPDATE that PostgreSQL would
 * fire after the dual-write trigger (triggers fire in byte order of their
 * names): it could change the old column after its value was copied.
 */
void
mig_check_trigger_order(Relation rel, const char *dwname)
{
	TriggerDesc *trigdesc = rel->trigdesc;

	for (int i = 0; trigdesc && i < trigdesc->numtriggers; i++)
	{
		Trigger    *t = &trigdesc->triggers[i];

		if (!TRIGGER_FOR_ROW(t->tgtype) || !TRIGGER_FOR_BEFORE(t->tgtype) ||
			!(TRIGGER_FOR_INSERT(t->tgtype) || TRIGGER_FOR_UPDATE(t->tgtype)))
			continue;
		if (strcmp(t->tgname, dwname) > 0)
			ereport(ERROR,
					(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
					 errmsg("trigger \"%s\" on table \"%s\" would fire after the dual-write trigger \"%s\"",
							t->tgname, RelationGetRelationName(rel), dwname),
					 errdetail("PostgreSQL fires BEFORE ROW triggers in the byte order of their names; a trigger that fires after \"%s\" could change the old column after its new value was computed, and the pair would diverge.",
							   dwname),
					 errhint("Rename the trigger so that its name sorts before \"%s\" (names of ASCII letters, digits and underscores below \"zz\" do).",
							 dwname)));
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
