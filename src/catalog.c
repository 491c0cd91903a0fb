/*-------------------------------------------------------------------------
 *
 * catalog.c
 *	  Reading and writing migration state in the migrate_ext.* tables.
 *
 * The tables hold cooked expression trees that the dual-write trigger
 * executes, so nobody but the extension owner may write them: a forged tree
 * could call any function or crash the server.  Writes therefore go through
 * mig_catalog_exec(), which runs its statement as the extension owner (the
 * way ri_triggers.c runs its checks as the table owner), and users get
 * SELECT only.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/readfuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "migrate_ext.h"

/* The one mapping between MigPhase and the text stored in the catalog. */
static const char *const phase_names[] = {
	[MIG_PHASE_EXPANDED] = "expanded",
	[MIG_PHASE_BACKFILLING] = "backfilling",
	[MIG_PHASE_BACKFILLED] = "backfilled",
	[MIG_PHASE_VALIDATED] = "validated",
	[MIG_PHASE_CUTOVER] = "cutover",
	[MIG_PHASE_CONTRACTED] = "contracted",
	[MIG_PHASE_ABORTED] = "aborted"
};

StaticAssertDecl(lengthof(phase_names) == MIG_PHASE_ABORTED + 1,
				 "phase_names must name every MigPhase");

/* A phase's name, as stored in migrate_ext.migration.phase. */
const char *
mig_phase_name(MigPhase phase)
{
	Assert(phase >= MIG_PHASE_EXPANDED && phase <= MIG_PHASE_ABORTED);
	return phase_names[phase];
}

/* The phase a stored name stands for; the catalog holds no other names. */
MigPhase
mig_phase_parse(const char *name)
{
	for (int i = 0; i < lengthof(phase_names); i++)
		if (strcmp(name, phase_names[i]) == 0)
			return (MigPhase) i;
	elog(ERROR, "unknown migration phase \"%s\"", name);
	return MIG_PHASE_ABORTED;	/* keep compiler quiet */
}

/*
 * The role that owns the extension, and so its catalog tables: read from
 * pg_extension directly, as there is nothing SQL would add.
 */
static Oid
extension_owner(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			owner = InvalidOid;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber,
				F_NAMEEQ, CStringGetDatum("migrate_ext"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		owner = ((Form_pg_extension) GETSTRUCT(tup))->extowner;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	if (!OidIsValid(owner))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("extension \"migrate_ext\" is not installed in this database")));
	return owner;
}

/*
 * The one executor for every statement migrate_ext runs on its own catalog,
 * reads included: the statement runs as the extension owner (so the catalog
 * tables need no grant to anyone) with search_path pinned to pg_catalog,
 * so that no function or operator planted by a caller, through SET or
 * ALTER ROLE ... SET, can be reached from it.  Same arguments and result
 * as SPI_execute_with_args(); the caller is connected to SPI and reads the
 * result from SPI_tuptable.  Identity and search_path are restored on
 * error too: SECURITY_LOCAL_USERID_CHANGE and the GUC nest level are both
 * undone by (sub)transaction abort, and the flag forbids SET ROLE meanwhile.
 */
static int
catalog_query(const char *sql, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls, bool read_only, long tcount)
{
	Oid			save_userid;
	int			save_sec_context;
	int			save_nestlevel;
	int			ret;

	Assert(sql != NULL);
	GetUserIdAndSecContext(&save_userid, &save_sec_context);
	SetUserIdAndSecContext(extension_owner(),
						   save_sec_context | SECURITY_LOCAL_USERID_CHANGE);
	save_nestlevel = NewGUCNestLevel();
	(void) set_config_option("search_path", "pg_catalog, pg_temp",
							 PGC_USERSET, PGC_S_SESSION, GUC_ACTION_SAVE,
							 true, 0, false);
	ret = SPI_execute_with_args(sql, nargs, argtypes, values, nulls,
								read_only, tcount);
	AtEOXact_GUC(true, save_nestlevel);
	SetUserIdAndSecContext(save_userid, save_sec_context);
	return ret;
}

/*
 * Every statement but the reads of a migration and its pairs (which the
 * dual-write trigger needs, and which the catalog of every version serves
 * alike) first checks that the installed catalog is this library's
 * (mig_version_check).
 */
int
mig_catalog_query(const char *sql, int nargs, Oid *argtypes, Datum *values,
				  const char *nulls, bool read_only, long tcount)
{
	mig_version_check();
	return catalog_query(sql, nargs, argtypes, values, nulls, read_only, tcount);
}

/*
 * mig_catalog_query() in an SPI connection of its own, left open for the
 * caller to read the result and SPI_finish().
 */
static int
exec_as_owner(const char *sql, int nargs, Oid *argtypes, Datum *values,
			  const char *nulls)
{
	int			ret;

	SPI_connect();
	ret = mig_catalog_query(sql, nargs, argtypes, values, nulls, false, 0);
	if (ret < 0)
		elog(ERROR, "migrate_ext catalog statement failed: %s", SPI_result_code_string(ret));
	return ret;
}

/*
 * Run one catalog-writing statement as the extension owner; expected >= 0
 * is the number of rows it must touch.
 */
void
mig_catalog_exec(const char *sql, int nargs, Oid *argtypes, Datum *values,
				 const char *nulls, int expected)
{
	exec_as_owner(sql, nargs, argtypes, values, nulls);
	if (expected >= 0 && SPI_processed != (uint64) expected)
		elog(ERROR, "migrate_ext catalog statement touched " UINT64_FORMAT " rows, not %d",
			 SPI_processed, expected);
	SPI_finish();
}

/*
 * Like mig_catalog_exec(), for a statement that returns one bigint (an
 * INSERT ... RETURNING id): returns the value.
 */
int64
mig_catalog_exec_int8(const char *sql, int nargs, Oid *argtypes, Datum *values,
					  const char *nulls)
{
	bool		isnull;
	int64		result;

	exec_as_owner(sql, nargs, argtypes, values, nulls);
	if (SPI_processed != 1 || SPI_tuptable == NULL)
		elog(ERROR, "migrate_ext catalog statement did not return one row");
	result = DatumGetInt64(SPI_getbinval(SPI_tuptable->vals[0], SPI_tuptable->tupdesc,
										 1, &isnull));
	if (isnull)
		elog(ERROR, "migrate_ext catalog statement returned NULL");
	SPI_finish();
	return result;
}

static char *
get_text(HeapTuple tup, TupleDesc desc, const char *colname)
{
	int			fno = SPI_fnumber(desc, colname);
	char	   *val;

	val = SPI_getvalue(tup, desc, fno);
	return val ? pstrdup(val) : NULL;
}

static Node *
get_tree(HeapTuple tup, TupleDesc desc, const char *colname)
{
	char	   *s = get_text(tup, desc, colname);

	return s ? (Node *) stringToNode(s) : NULL;
}

/*
 * Load the migrations a query returns (columns id, relid, table_name,
 * phase), each with its pairs; the result lives in the caller's context.
 */
static List *
load_migrations(const char *sql, Datum arg, Oid argtype)
{
	MemoryContext callercxt = CurrentMemoryContext;
	MemoryContext spicxt;
	List	   *result = NIL;
	ListCell   *lc;
	uint64		nmig;

	SPI_connect();
	if (catalog_query(sql, 1, &argtype, &arg, NULL, true, 0) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.migration");

	nmig = SPI_processed;
	spicxt = MemoryContextSwitchTo(callercxt);
	for (uint64 i = 0; i < nmig; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		MigMigration *m = palloc0(sizeof(MigMigration));
		bool		isnull;

		m->id = DatumGetInt64(SPI_getbinval(tup, desc, 1, &isnull));
		m->relid = DatumGetObjectId(SPI_getbinval(tup, desc, 2, &isnull));
		m->table_name = get_text(tup, desc, "table_name");
		m->phase = mig_phase_parse(get_text(tup, desc, "phase"));
		result = lappend(result, m);
	}
	MemoryContextSwitchTo(spicxt);

	foreach(lc, result)
	{
		MigMigration *m = lfirst(lc);
		Oid			int8type = INT8OID;
		Datum		id = Int64GetDatum(m->id);

		if (catalog_query("SELECT * FROM migrate_ext.column_pair "
							  "WHERE migration_id OPERATOR(pg_catalog.=) $1 ORDER BY ord",
							  1, &int8type, &id, NULL, true, 0) != SPI_OK_SELECT)
			elog(ERROR, "could not read migrate_ext.column_pair");

		spicxt = MemoryContextSwitchTo(callercxt);
		for (uint64 j = 0; j < SPI_processed; j++)
		{
			HeapTuple	pt = SPI_tuptable->vals[j];
			TupleDesc	pd = SPI_tuptable->tupdesc;
			MigPair    *p = palloc0(sizeof(MigPair));

			p->ord = atoi(SPI_getvalue(pt, pd, SPI_fnumber(pd, "ord")));
			p->old_col = get_text(pt, pd, "old_col");
			p->old_attnum = atoi(SPI_getvalue(pt, pd, SPI_fnumber(pd, "old_attnum")));
			p->new_col = get_text(pt, pd, "new_col");
			p->new_attnum = atoi(SPI_getvalue(pt, pd, SPI_fnumber(pd, "new_attnum")));
			p->in_place = strcmp(SPI_getvalue(pt, pd, SPI_fnumber(pd, "in_place")), "t") == 0;
			p->new_type = get_text(pt, pd, "new_type");
			p->up_src = get_text(pt, pd, "up_src");
			p->up = get_tree(pt, pd, "up_expr");
			p->down_src = get_text(pt, pd, "down_src");
			p->down = get_tree(pt, pd, "down_expr");
			p->not_null = strcmp(SPI_getvalue(pt, pd, SPI_fnumber(pd, "not_null")), "t") == 0;
			p->check_src = get_text(pt, pd, "check_src");
			p->check = get_tree(pt, pd, "check_expr");
			p->new_default_src = get_text(pt, pd, "new_default_src");
			p->new_default = get_tree(pt, pd, "new_default_expr");
			/* NULL under a 0.1 catalog (library updated, extension not yet) */
			p->keep_old = get_text(pt, pd, "keep_old") != NULL &&
				strcmp(get_text(pt, pd, "keep_old"), "t") == 0;
			m->pairs = lappend(m->pairs, p);
		}
		MemoryContextSwitchTo(spicxt);
	}
	SPI_finish();
	return result;
}

/*
 * The table's active migration (any phase before contracted or aborted),
 * or NULL when missing_ok.
 */
MigMigration *
mig_catalog_active(Oid relid, bool missing_ok)
{
	List	   *l;

	l = load_migrations("SELECT id, relid, table_name, phase FROM migrate_ext.migration "
						"WHERE relid OPERATOR(pg_catalog.=) $1 AND phase NOT IN ('contracted', 'aborted')",
						ObjectIdGetDatum(relid), OIDOID);
	if (l != NIL)
		return linitial(l);
	if (!missing_ok)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("table \"%s\" has no active migration",
						get_rel_name(relid) ? get_rel_name(relid) : "?"),
				 errhint("Start one with mig_expand().")));
	return NULL;
}

/* The table's most recent migration in any phase, or NULL. */
MigMigration *
mig_catalog_latest(Oid relid)
{
	List	   *l;

	l = load_migrations("SELECT id, relid, table_name, phase FROM migrate_ext.migration "
						"WHERE relid OPERATOR(pg_catalog.=) $1 ORDER BY id DESC LIMIT 1",
						ObjectIdGetDatum(relid), OIDOID);
	return l != NIL ? linitial(l) : NULL;
}

/* A migration by id, or NULL when there is none. */
MigMigration *
mig_catalog_by_id(int64 id)
{
	List	   *l;

	l = load_migrations("SELECT id, relid, table_name, phase FROM migrate_ext.migration "
						"WHERE id OPERATOR(pg_catalog.=) $1",
						Int64GetDatum(id), INT8OID);
	return l != NIL ? linitial(l) : NULL;
}

/* Record a new migration in phase expanded; returns its id. */
int64
mig_catalog_insert_migration(Oid relid, const char *table_name)
{
	Oid			types[2] = {OIDOID, TEXTOID};
	Datum		values[2];
	int64		id;

	values[0] = ObjectIdGetDatum(relid);
	values[1] = CStringGetTextDatum(table_name);
	id = mig_catalog_exec_int8("INSERT INTO migrate_ext.migration (relid, table_name, created_by) "
							   "VALUES ($1, $2, session_user) RETURNING id",
							   2, types, values, NULL);

	/* current_user would be the extension owner in there: name the caller */
	mig_catalog_exec("INSERT INTO migrate_ext.phase_log (migration_id, phase, by_role) "
					 "VALUES ($1, 'expanded', $2)",
					 2, (Oid[]) {INT8OID, TEXTOID},
					 (Datum[]) {Int64GetDatum(id),
					 CStringGetTextDatum(GetUserNameFromId(GetUserId(), false))}, NULL, 1);
	return id;
}

static Datum
text_or_null(const char *s, char *nullflag)
{
	*nullflag = s ? ' ' : 'n';
	return s ? CStringGetTextDatum(s) : (Datum) 0;
}

static Datum
tree_or_null(Node *n, char *nullflag)
{
	*nullflag = n ? ' ' : 'n';
	return n ? CStringGetTextDatum(nodeToString(n)) : (Datum) 0;
}

void
mig_catalog_insert_pair(int64 migration_id, const MigPair *p)
{
	Oid			types[18] = {INT8OID, INT4OID, NAMEOID, INT2OID, NAMEOID, INT2OID,
		BOOLOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID, TEXTOID, TEXTOID,
	TEXTOID, TEXTOID, BOOLOID};
	Datum		v[18];
	char		n[19];

	memset(n, ' ', sizeof(n));
	n[18] = '\0';
	v[0] = Int64GetDatum(migration_id);
	v[1] = Int32GetDatum(p->ord);
	v[2] = CStringGetDatum(p->old_col);
	v[3] = Int16GetDatum(p->old_attnum);
	v[4] = CStringGetDatum(p->new_col);
	v[5] = Int16GetDatum(p->new_attnum);
	v[6] = BoolGetDatum(p->in_place);
	v[7] = CStringGetTextDatum(p->new_type);
	v[8] = text_or_null(p->up_src, &n[8]);
	v[9] = tree_or_null(p->up, &n[9]);
	v[10] = text_or_null(p->down_src, &n[10]);
	v[11] = tree_or_null(p->down, &n[11]);
	v[12] = BoolGetDatum(p->not_null);
	v[13] = text_or_null(p->check_src, &n[13]);
	v[14] = tree_or_null(p->check, &n[14]);
	v[15] = text_or_null(p->new_default_src, &n[15]);
	v[16] = tree_or_null(p->new_default, &n[16]);
	v[17] = BoolGetDatum(p->keep_old);

	/* name parameters want a NameData, not a C string */
	v[2] = DirectFunctionCall1(namein, v[2]);
	v[4] = DirectFunctionCall1(namein, v[4]);

	/* a pair without them also fits a 0.1 catalog (extension not updated yet) */
	if (p->new_default_src == NULL && !p->keep_old)
		mig_catalog_exec("INSERT INTO migrate_ext.column_pair (migration_id, ord, old_col, "
						 "old_attnum, new_col, new_attnum, in_place, new_type, up_src, up_expr, "
						 "down_src, down_expr, not_null, check_src, check_expr) "
						 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)",
						 15, types, v, n, 1);
	else
		mig_catalog_exec("INSERT INTO migrate_ext.column_pair (migration_id, ord, old_col, "
						 "old_attnum, new_col, new_attnum, in_place, new_type, up_src, up_expr, "
						 "down_src, down_expr, not_null, check_src, check_expr, new_default_src, "
						 "new_default_expr, keep_old) "
						 "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, "
						 "$16, $17, $18)",
						 18, types, v, n, 1);
}

/*
 * The only writer of phases: move a migration from phase "from" to phase
 * "to", compare-and-set, and log who did it and why in phase_log, in one
 * statement.  Returns false, changing nothing, when the migration is not in
 * "from" (someone moved it first).
 */
bool
mig_catalog_move_phase(int64 migration_id, MigPhase from, MigPhase to,
					   const char *detail)
{
	Oid			types[5] = {INT8OID, TEXTOID, TEXTOID, TEXTOID, TEXTOID};
	Datum		v[5];
	char		n[6] = "     ";
	int64		moved;

	Assert(from != to);
	v[0] = Int64GetDatum(migration_id);
	v[1] = CStringGetTextDatum(mig_phase_name(from));
	v[2] = CStringGetTextDatum(mig_phase_name(to));
	/* current_user would be the extension owner in there: name the caller */
	v[3] = CStringGetTextDatum(GetUserNameFromId(GetUserId(), false));
	v[4] = text_or_null(detail, &n[4]);
	moved = mig_catalog_exec_int8("WITH u AS (UPDATE migrate_ext.migration "
								  "SET phase = $3, updated_at = pg_catalog.now() "
								  "WHERE id OPERATOR(pg_catalog.=) $1 "
								  "AND phase OPERATOR(pg_catalog.=) $2 RETURNING id), "
								  "l AS (INSERT INTO migrate_ext.phase_log "
								  "(migration_id, phase, by_role, detail) "
								  "SELECT id, $3, $4, $5 FROM u RETURNING 1) "
								  "SELECT pg_catalog.count(*) FROM l",
								  5, types, v, n);
	Assert(moved == 0 || moved == 1);
	return moved == 1;
}

/*
 * mig_catalog_move_phase() for a caller that has the migration locked or
 * has just checked its phase: losing the race is an error.
 */
void
mig_catalog_set_phase(int64 migration_id, MigPhase from, MigPhase to,
					  const char *detail)
{
	if (!mig_catalog_move_phase(migration_id, from, to, detail))
		ereport(ERROR,
				(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
				 errmsg("migration " INT64_FORMAT " is no longer in phase %s",
						migration_id, mig_phase_name(from)),
				 errdetail("Another session changed its phase meanwhile; nothing was changed."),
				 errhint("Look at mig_status, then try again.")));
}

/* Has a backfill job ever been started for this migration? */
bool
mig_catalog_has_job(int64 migration_id)
{
	Oid			type = INT8OID;
	Datum		v = Int64GetDatum(migration_id);
	bool		found;

	SPI_connect();
	if (mig_catalog_query("SELECT 1 FROM migrate_ext.job "
						  "WHERE migration_id OPERATOR(pg_catalog.=) $1",
						  1, &type, &v, NULL, true, 1) != SPI_OK_SELECT)
		elog(ERROR, "could not read migrate_ext.job");
	found = SPI_processed > 0;
	SPI_finish();
	return found;
}

/* The owner of extension migrate_ext, for the SQL face's permission checks. */
Oid
mig_extension_owner(void)
{
	return extension_owner();
}

/*
 * The version of extension migrate_ext installed in this database
 * (pg_extension.extversion), or NULL when it is not installed.
 */
char *
mig_extension_version(void)
{
	Relation	rel;
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	char	   *version = NULL;

	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyInit(&key, Anum_pg_extension_extname, BTEqualStrategyNumber, F_NAMEEQ,
				CStringGetDatum("migrate_ext"));
	scan = systable_beginscan(rel, ExtensionNameIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		bool		isnull;
		Datum		d = heap_getattr(tup, Anum_pg_extension_extversion,
									 RelationGetDescr(rel), &isnull);

		if (!isnull)
			version = TextDatumGetCString(d);
	}
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return version;
}

#ifndef MIGRATE_EXT_VERSION
#error "MIGRATE_EXT_VERSION must be defined (the Makefile passes it)"
#endif

/* set once the installed catalog was found to be this library's */
static bool version_matched = false;

/*
 * Is the extension installed in this database at this library's version?
 * False while a new library runs against the old catalog: after the
 * package upgrade and the restart, before ALTER EXTENSION migrate_ext
 * UPDATE.  A match is remembered for the backend's life (versions only
 * move forward); a mismatch is looked at again each time.
 */
bool
mig_version_matches(void)
{
	char	   *installed;

	if (version_matched)
		return true;
	installed = mig_extension_version();
	if (installed != NULL && strcmp(installed, MIGRATE_EXT_VERSION) == 0)
		version_matched = true;
	return version_matched;
}

/*
 * Refuse (55000) to work on a catalog of another version than this
 * library's, with the way out.  Not installed: nothing to say here.
 */
void
mig_version_check(void)
{
	char	   *installed;

	if (mig_version_matches())
		return;
	installed = mig_extension_version();
	if (installed == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the migrate_ext library is version %s, but the extension in this database is version %s",
					MIGRATE_EXT_VERSION, installed),
			 errdetail("The library was upgraded and the extension's catalog not yet; until it is, only the dual-write trigger keeps working."),
			 errhint("Run ALTER EXTENSION migrate_ext UPDATE in this database.")));
}
