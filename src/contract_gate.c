/*-------------------------------------------------------------------------
 *
 * contract_gate.c
 *	  The gate before mig_cutover and mig_contract: a clean validation that
 *	  nothing has invalidated since.
 *
 * Contract drops the old column; after it nothing can be rolled back.  So
 * both cut-over and contract (and contract once more inside its swap
 * transaction, under the lock that stops every write) require, unless
 * forced:
 *
 *	 - an exact mig_validate run whose checks all passed;
 *	 - no failed run (exact or sampled, in any phase, cut-over included)
 *	   after it: a failing row is proof either way;
 *	 - no invalidation after it (migrate_ext.migration.invalidated_at, set
 *	   when the dual-write trigger was disabled or writes may have bypassed
 *	   it while the migration was active);
 *	 - the dual-write trigger present and enabled now.  It is created
 *	   ENABLE ALWAYS; 'O' (enabled for ordinary sessions) is accepted as
 *	   enabled too, for tables expanded before that.
 *
 * This is the phase rule and the rule of "Spirit": the point of no return
 * needs a clean pass that nothing has invalidated.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/rel.h"
#include "utils/timestamp.h"

#include "contract.h"
#include "migrate_ext.h"

/* What the gate reads in one statement. */
typedef struct GateState
{
	bool		has_pass;
	TimestampTz pass_at;		/* the latest exact run that passed */
	bool		has_fail;
	TimestampTz fail_at;		/* the latest run with a failed check */
	bool		invalidated;
	TimestampTz invalidated_at;
	char	   *invalidated_why;
	char		tgenabled;		/* '\0': no trigger */
} GateState;

static TimestampTz
get_ts(HeapTuple tup, TupleDesc desc, int col, bool *isnull)
{
	Datum		d = SPI_getbinval(tup, desc, col, isnull);

	return *isnull ? 0 : DatumGetTimestampTz(d);
}

/*
 * Read validations, invalidation and trigger state: catalog.c's executor
 * (the extension owner, search_path pinned).
 */
static void
gate_read(Oid relid, int64 migration_id, GateState *gs)
{
	MemoryContext cxt = CurrentMemoryContext;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	char	   *s;

	SPI_connect();
	if (mig_catalog_query(
							  "SELECT (SELECT max(p.at) FROM (SELECT max(v.at) AS at FROM migrate_ext.validation v "
							  "         WHERE v.migration_id = $1 AND v.sample IS NULL "
							  "         GROUP BY v.run HAVING bool_and(v.passed)) p), "
							  "       (SELECT max(v.at) FROM migrate_ext.validation v "
							  "         WHERE v.migration_id = $1 AND NOT v.passed), "
							  "       m.invalidated_at, m.invalidated_why "
							  "  FROM migrate_ext.migration m WHERE m.id = $1",
							  1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(migration_id)},
							  NULL, true, 1) != SPI_OK_SELECT || SPI_processed != 1)
		elog(ERROR, "could not read the validation state of migration " INT64_FORMAT,
			 migration_id);
	tup = SPI_tuptable->vals[0];
	desc = SPI_tuptable->tupdesc;
	gs->pass_at = get_ts(tup, desc, 1, &isnull);
	gs->has_pass = !isnull;
	gs->fail_at = get_ts(tup, desc, 2, &isnull);
	gs->has_fail = !isnull;
	gs->invalidated_at = get_ts(tup, desc, 3, &isnull);
	gs->invalidated = !isnull;
	s = SPI_getvalue(tup, desc, 4);
	gs->invalidated_why = s ? MemoryContextStrdup(cxt, s) : NULL;
	SPI_finish();
	gs->tgenabled = mig_trigger_tgenabled(relid);
}

/* Refuse unless the phase has reached validated: say what is missing. */
static void
gate_phase(const char *relname, MigMigration *m, const char *what)
{
	if (m->phase >= MIG_PHASE_VALIDATED)
		return;
	if (m->phase == MIG_PHASE_EXPANDED)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": its migration is not validated", what, relname),
				 errdetail("The migration is in phase expanded: the existing rows have not been backfilled."),
				 errhint("Run mig_backfill('%s'), then mig_validate('%s').", relname, relname)));
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("cannot %s table \"%s\": its migration is not validated", what, relname),
			 errdetail("The migration is in phase %s: no validation has passed yet.",
					   mig_phase_name(m->phase)),
			 errhint("Run mig_validate('%s') and fix what it reports.", relname)));
}

/*
 * The gate: refuse to cut over or contract ("what") unless validated and
 * nothing has invalidated it since, or forced.  Runs in the caller's
 * transaction; contract's swap runs it again under its lock.
 */
void
mig_finish_gate(Relation rel, MigMigration *m, bool force, const char *what)
{
	const char *relname = RelationGetRelationName(rel);
	GateState	gs;

	if (force)
		return;
	gate_phase(relname, m, what);
	memset(&gs, 0, sizeof(gs));
	gate_read(RelationGetRelid(rel), m->id, &gs);

	if (!mig_trigger_fires(gs.tgenabled))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": its dual-write trigger is %s", what, relname,
						gs.tgenabled == '\0' ? "missing" : "disabled"),
				 errdetail("Writes are not copied to the new column, so what was validated no longer holds."),
				 errhint("Enable it (ALTER TABLE ... ENABLE ALWAYS TRIGGER %s), run mig_backfill('%s') again for the rows written meanwhile, then mig_validate('%s'); or roll back with mig_abort('%s').",
						 MIG_TRIGGER_NAME, relname, relname, relname)));
	if (!gs.has_pass)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": no exact validation has passed", what, relname),
				 errdetail("A migration needs a run of mig_validate over every row whose checks all passed."),
				 errhint("Run mig_validate('%s') and fix what it reports.", relname)));
	if (gs.has_fail && gs.fail_at >= gs.pass_at)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": its latest validation failed", what, relname),
				 errdetail("A validation at %s failed after the last one that passed (at %s).",
						   pstrdup(timestamptz_to_str(gs.fail_at)),
						   pstrdup(timestamptz_to_str(gs.pass_at))),
				 errhint("Fix what mig_validate('%s') reports, then run it again until it passes.",
						 relname)));
	if (gs.invalidated && gs.invalidated_at >= gs.pass_at)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("cannot %s table \"%s\": its validation was invalidated", what, relname),
				 errdetail("At %s, after the last validation that passed: %s.",
						   timestamptz_to_str(gs.invalidated_at),
						   gs.invalidated_why ? gs.invalidated_why : "writes may have bypassed the dual-write trigger"),
				 errhint("Run mig_backfill('%s') again for the rows written meanwhile, then mig_validate('%s').",
						 relname, relname)));
}
