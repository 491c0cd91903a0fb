/*-------------------------------------------------------------------------
 *
 * contract_undo.c
 *	  What an unfinished mig_contract added, recorded by OID, and its removal.
 *
 * Before its swap, mig_contract adds objects that are enforced on every new
 * write: NOT VALID CHECK constraints and foreign keys (a NOT VALID
 * constraint is checked on new rows), and unique indexes on the new column;
 * and the copies of materialized views (and of the views they read) built
 * beside the old ones, which would otherwise be left behind.
 * A contract that stops before its swap (a check that fails, a lock it
 * cannot get, a cancel) must leave nothing enforced that was not there
 * before, and mig_abort must be able to remove everything however the
 * contract stopped, even when its worker died.  So each such object is
 * recorded in migrate_ext.contract_object by OID, in the transaction that
 * creates it, and removed by that OID, never by a name someone else may
 * have taken since.  Copies of plain indexes are not recorded: they enforce
 * nothing, a new mig_contract reuses them, and they go with the new column.
 *
 * The swap deletes those rows and, in the same transaction, records what is
 * left to finish after it: the foreign keys that reference a partitioned
 * table, added NOT VALID in the swap (each copy by OID on its table, and a
 * partitioned referencing table itself as a pg_class row whose objid is its
 * relid; contract_worker.c).  Rows of a contracted migration are never
 * undone (the copies are the only keys then): the next mig_contract
 * validates and attaches them and deletes the rows.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/index.h"
#include "catalog/pg_class.h"
#include "catalog/pg_constraint.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "contract.h"
#include "migrate_ext.h"

/* Remember an object contract just created (once), in the same transaction. */
void
mig_contract_record(int64 migration_id, Oid classid, Oid objid, Oid relid)
{
	Assert(OidIsValid(objid));
	mig_catalog_exec("INSERT INTO migrate_ext.contract_object (migration_id, classid, objid, relid) "
					 "SELECT $1, $2, $3, $4 WHERE NOT EXISTS (SELECT FROM migrate_ext.contract_object "
					 "WHERE classid OPERATOR(pg_catalog.=) $2 AND objid OPERATOR(pg_catalog.=) $3)",
					 4, (Oid[]) {INT8OID, OIDOID, OIDOID, OIDOID},
					 (Datum[]) {Int64GetDatum(migration_id), ObjectIdGetDatum(classid),
					 ObjectIdGetDatum(objid), ObjectIdGetDatum(relid)},
					 NULL, -1);
}

/* Is this object recorded for the migration (one of contract's own)? */
bool
mig_contract_recorded(int64 migration_id, Oid classid, Oid objid)
{
	bool		found;

	SPI_connect();
	if (mig_catalog_query("SELECT FROM migrate_ext.contract_object "
						  "WHERE migration_id OPERATOR(pg_catalog.=) $1 "
						  "AND classid OPERATOR(pg_catalog.=) $2 AND objid OPERATOR(pg_catalog.=) $3",
						  3, (Oid[]) {INT8OID, OIDOID, OIDOID},
						  (Datum[]) {Int64GetDatum(migration_id), ObjectIdGetDatum(classid),
						  ObjectIdGetDatum(objid)},
						  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.contract_object");
	found = SPI_processed > 0;
	SPI_finish();
	return found;
}

typedef ContractObject UndoObject;

/* Every object recorded for the migration, in the current memory context. */
List *
mig_contract_recorded_list(int64 migration_id)
{
	MemoryContext cxt = CurrentMemoryContext;
	List	   *result = NIL;

	SPI_connect();
	if (mig_catalog_query("SELECT classid, objid, relid FROM migrate_ext.contract_object "
							  "WHERE migration_id OPERATOR(pg_catalog.=) $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
							  NULL, false, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.contract_object");
	for (uint64 i = 0; i < SPI_processed; i++)
	{
		UndoObject *o = MemoryContextAlloc(cxt, sizeof(UndoObject));
		MemoryContext spicxt;
		bool		isnull;

		o->classid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 1, &isnull));
		o->objid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 2, &isnull));
		o->relid = DatumGetObjectId(SPI_getbinval(SPI_tuptable->vals[i], SPI_tuptable->tupdesc, 3, &isnull));
		spicxt = MemoryContextSwitchTo(cxt);
		result = lappend(result, o);
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();
	return result;
}

static char *
qualified_rel(Oid relid)
{
	return quote_qualified_identifier(get_namespace_name(get_rel_namespace(relid)),
									  get_rel_name(relid));
}

/*
 * The DROP of one recorded object if it is still ours (same OID on the same
 * table), with the tables it needs locked added to *rels; NULL if gone.
 */
static char *
undo_statement(UndoObject *o, List **rels, int *order)
{
	char	   *sql = NULL;

	*order = 2;

	if (o->classid == ConstraintRelationId)
	{
		HeapTuple	tup = SearchSysCache1(CONSTROID, ObjectIdGetDatum(o->objid));

		if (HeapTupleIsValid(tup))
		{
			Form_pg_constraint con = (Form_pg_constraint) GETSTRUCT(tup);

			/* a partition's copy attached to its parent's goes with it */
			if (con->conrelid == o->relid && !OidIsValid(con->conparentid))
			{
				*order = con->contype == CONSTRAINT_FOREIGN ? 0 : 1;
				*rels = list_append_unique_oid(*rels, con->conrelid);
				if (OidIsValid(con->confrelid))
					*rels = list_append_unique_oid(*rels, con->confrelid);
				sql = psprintf("ALTER TABLE %s DROP CONSTRAINT %s;", qualified_rel(con->conrelid),
							   quote_identifier(NameStr(con->conname)));
			}
			ReleaseSysCache(tup);
		}
	}
	else if (o->classid == RelationRelationId && o->objid == o->relid &&
			 (get_rel_relkind(o->objid) == RELKIND_MATVIEW ||
			  get_rel_relkind(o->objid) == RELKIND_VIEW))
	{
		/* a (materialized) view's copy, built beside it; copies above go too */
		*order = 3;
		*rels = list_append_unique_oid(*rels, o->relid);
		sql = psprintf("DROP %sVIEW IF EXISTS %s CASCADE;",
					   get_rel_relkind(o->objid) == RELKIND_MATVIEW ? "MATERIALIZED " : "",
					   qualified_rel(o->objid));
	}
	else if (o->classid == RelationRelationId &&
			 get_rel_relkind(o->objid) == RELKIND_INDEX &&
			 IndexGetRelation(o->objid, true) == o->relid)
	{
		*rels = list_append_unique_oid(*rels, o->relid);
		sql = psprintf("DROP INDEX %s;", qualified_rel(o->objid));
	}
	return sql;
}

/*
 * Drop every object an unfinished mig_contract of this migration recorded
 * that still exists, foreign keys before the keys and indexes they use, under a
 * short ACCESS EXCLUSIVE lock on each table involved taken through the lock
 * ladder; then forget them.  Returns how many were dropped.  Runs as the
 * caller, who owns those tables (contract required it to add them).
 */
int
mig_contract_undo(int64 migration_id)
{
	MigMigration *m = mig_catalog_by_id(migration_id);
	List	   *objs;
	List	   *rels = NIL;
	StringInfoData sql[4];		/* foreign keys, other constraints, indexes,
								 * materialized views' copies */
	ListCell   *lc;
	int			order;
	int			n = 0;

	/* after the swap what is recorded is to be finished, not undone */
	if (m == NULL || m->phase == MIG_PHASE_CONTRACTED)
		return 0;
	objs = mig_contract_recorded_list(migration_id);
	if (objs == NIL)
		return 0;
	/* the tables first, locked; then what is there under the lock */
	foreach(lc, objs)
		(void) undo_statement(lfirst(lc), &rels, &order);
	if (rels != NIL)
	{
		Oid		   *arr = palloc(sizeof(Oid) * list_length(rels));

		foreach(lc, rels)
			arr[foreach_current_index(lc)] = lfirst_oid(lc);
		mig_lock_tables(list_length(rels), arr, AccessExclusiveLock,
						"drop what an unfinished mig_contract added");
	}

	for (int i = 0; i < 4; i++)
		initStringInfo(&sql[i]);
	foreach(lc, objs)
	{
		List	   *more = NIL;
		char	   *stmt = undo_statement(lfirst(lc), &more, &order);

		if (stmt == NULL)
			continue;
		if (list_difference_oid(more, rels) != NIL)
			continue;			/* a table we did not lock: it is not ours */
		appendStringInfoString(&sql[order], stmt);
		n++;
	}
	appendStringInfoString(&sql[0], sql[1].data);
	appendStringInfoString(&sql[0], sql[2].data);
	appendStringInfoString(&sql[0], sql[3].data);
	if (sql[0].len > 0)
	{
		SPI_connect();
		if (SPI_execute(sql[0].data, false, 0) < 0)
			elog(ERROR, "migrate_ext: could not run \"%s\"", sql[0].data);
		SPI_finish();
	}
	mig_catalog_exec("DELETE FROM migrate_ext.contract_object "
					 "WHERE migration_id OPERATOR(pg_catalog.=) $1",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
					 NULL, -1);
	return n;
}
