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
#include "access/table.h"
#include "access/xact.h"
#include "common/pg_prng.h"
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

/*
 * Open the table a migration function was given, after checking that it is
 * an ordinary table the caller owns.
 */
Relation
mig_open_table(Oid relid, LOCKMODE lockmode)
{
	Relation	rel;
	char		relkind;

	relkind = get_rel_relkind(relid);
	if (relkind == '\0')
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid)));
	if (relkind != RELKIND_RELATION)
		ereport(ERROR,
				(errcode(ERRCODE_WRONG_OBJECT_TYPE),
				 errmsg("\"%s\" is not an ordinary table", get_rel_name(relid)),
				 errdetail("migrate_ext migrates columns of ordinary tables; this is a %s.",
						   relkind == RELKIND_VIEW ? "view" :
						   relkind == RELKIND_MATVIEW ? "materialized view" :
						   relkind == RELKIND_FOREIGN_TABLE ? "foreign table" :
						   relkind == RELKIND_PARTITIONED_TABLE ? "partitioned table" :
						   "relation of another kind")));
	if (!pg_class_ownercheck(relid, GetUserId()))
		aclcheck_error(ACLCHECK_NOT_OWNER, OBJECT_TABLE, get_rel_name(relid));

	rel = table_open(relid, lockmode);
	return rel;
}

/*
 * Try once to take the locks, in order, each with the given lock_timeout.
 * Returns -1 when all are held, or the index of the one that timed out (and
 * then none is held); rethrows anything else.  The subtransaction's locks
 * pass to the caller's transaction when it commits.
 */
static int
try_lock(int nrels, const Oid *relids, LOCKMODE lockmode, int timeout_ms)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	volatile int failed = -1;

	BeginInternalSubTransaction(NULL);
	PG_TRY();
	{
		char		buf[32];

		snprintf(buf, sizeof(buf), "%d", timeout_ms);
		set_config_option("lock_timeout", buf, PGC_USERSET, PGC_S_SESSION,
						  GUC_ACTION_LOCAL, true, 0, false);
		for (int i = 0; i < nrels; i++)
		{
			failed = i;
			LockRelationOid(relids[i], lockmode);
		}
		failed = -1;
		ReleaseCurrentSubTransaction();
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		if (edata->sqlerrcode != ERRCODE_LOCK_NOT_AVAILABLE)
		{
			FreeErrorData(edata);
			PG_RE_THROW();
		}
		FlushErrorState();
		FreeErrorData(edata);
		RollbackAndReleaseCurrentSubTransaction();
	}
	PG_END_TRY();

	MemoryContextSwitchTo(oldcxt);
	CurrentResourceOwner = oldowner;
	return failed;
}

/*
 * Take a strong lock on the table under the lock_timeout ladder, or fail
 * with an error that names the blockers.
 */
void
mig_lock_table(Oid relid, LOCKMODE lockmode, const char *why)
{
	mig_lock_tables(1, &relid, lockmode, why);
}

/*
 * The same for several tables at once (a table and the tables whose foreign
 * keys point at it): all or none.  A timeout on any of them releases those
 * already taken before the next try, so nobody queues behind a lock we hold
 * while we wait for another.
 */
void
mig_lock_tables(int nrels, const Oid *relids, LOCKMODE lockmode, const char *why)
{
	int			timeout = mig_lock_timeout_ms;
	int			failed = -1;

	for (int attempt = 1;; attempt++)
	{
		failed = try_lock(nrels, relids, lockmode, timeout);
		if (failed < 0)
			return;
		if (attempt >= mig_lock_retries)
			break;

		/* back off, with jitter, so the queued traffic drains */
		pgstat_report_wait_start(PG_WAIT_EXTENSION);
		pg_usleep(1000L * (timeout / 2 + pg_prng_uint32(&pg_global_prng_state) % (timeout + 1)));
		pgstat_report_wait_end();
		CHECK_FOR_INTERRUPTS();
		timeout = Min(timeout * 2, mig_lock_timeout_max_ms);
	}

	ereport(ERROR,
			(errcode(ERRCODE_LOCK_NOT_AVAILABLE),
			 errmsg("could not lock table \"%s\" to %s", get_rel_name(relids[failed]), why),
			 errdetail("Tried %d times with lock_timeout up to %d ms; another transaction holds a conflicting lock. Nothing was changed.",
					   mig_lock_retries, mig_lock_timeout_max_ms),
			 errhint("Find the blocker with SELECT pid, state, xact_start, query FROM pg_stat_activity WHERE pid = ANY (pg_blocking_pids(<pid>)), and retry when it ends.")));
}

/* Run one DDL statement through SPI, as the caller. */
static void
run_ddl(const char *sql)
{
	SPI_connect();
	if (SPI_execute(sql, false, 0) < 0)
		elog(ERROR, "migrate_ext: could not run \"%s\"", sql);
	SPI_finish();
}

static const char *
qualified_name(Relation rel)
{
	return quote_qualified_identifier(get_namespace_name(RelationGetNamespace(rel)),
									  RelationGetRelationName(rel));
}

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
	if (m != NULL && (strcmp(m->phase, MIG_PHASE_EXPANDED) != 0 ||
					  mig_catalog_has_job(m->id)))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table \"%s\" already has an active migration in phase %s",
						RelationGetRelationName(rel), m->phase),
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
					 qualified_name(rel), quote_identifier(new_col),
					 format_type_with_typemod(typid, typmod));
	if (typid == oldatt->atttypid && OidIsValid(oldatt->attcollation) &&
		oldatt->attcollation != DEFAULT_COLLATION_OID)
		appendStringInfo(&sql, " COLLATE %s",
						 generate_collation_name(oldatt->attcollation));

	/* ALTER TABLE refuses a table this backend has open; the lock stays */
	oldatt = NULL;
	table_close(rel, NoLock);
	run_ddl(sql.data);
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
		const char *qname = qualified_name(rel);

		migration_id = mig_catalog_insert_migration(relid, qname);
		pair.ord = 1;
		mig_catalog_insert_pair(migration_id, &pair);

		resetStringInfo(&sql);
		appendStringInfo(&sql,
						 "CREATE TRIGGER %s BEFORE INSERT OR UPDATE ON %s FOR EACH ROW "
						 "EXECUTE FUNCTION migrate_ext.dualwrite('" INT64_FORMAT "')",
						 quote_identifier(MIG_TRIGGER_NAME), qname, migration_id);
		table_close(rel, NoLock);
		run_ddl(sql.data);
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
	int			ndrop = 0;

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
		if (strcmp(last->phase, MIG_PHASE_CONTRACTED) == 0)
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
	mig_catalog_exec("UPDATE migrate_ext.job SET state = 'cancelled', "
					 "throttle_reason = NULL, updated_at = now(), finished_at = now() "
					 "WHERE migration_id = $1 "
					 "AND state IN ('running', 'throttled', 'paused', 'interrupted')",
					 1, (Oid[]) {INT8OID}, (Datum[]) {Int64GetDatum(m->id)}, NULL, -1);

	mig_lock_table(relid, AccessExclusiveLock, "drop the new column");

	/*
	 * One statement, so the table is rewritten in the catalog only once.
	 * The new columns by their recorded attnums: a column dropped by hand
	 * is skipped, never one that took its name since.
	 */
	initStringInfo(&sql);
	appendStringInfo(&sql, "DROP TRIGGER IF EXISTS %s ON %s;",
					 quote_identifier(MIG_TRIGGER_NAME), qualified_name(rel));
	foreach(lc, m->pairs)
	{
		MigPair    *p = lfirst(lc);
		TupleDesc	desc = RelationGetDescr(rel);

		if (p->new_attnum > desc->natts ||
			TupleDescAttr(desc, p->new_attnum - 1)->attisdropped)
			continue;
		appendStringInfo(&sql, "%s DROP COLUMN %s",
						 ndrop++ > 0 ? "," : psprintf(" ALTER TABLE %s", qualified_name(rel)),
						 quote_identifier(NameStr(TupleDescAttr(desc, p->new_attnum - 1)->attname)));
	}
	table_close(rel, NoLock);
	/* first what an unfinished mig_contract added, by the OIDs it recorded */
	(void) mig_contract_undo(m->id);
	run_ddl(sql.data);

	mig_catalog_set_phase(m->id, MIG_PHASE_ABORTED, NULL);
	PG_RETURN_VOID();
}
