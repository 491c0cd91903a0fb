/*-------------------------------------------------------------------------
 *
 * migrate_ext.h
 *	  Declarations shared by the files of migrate_ext.
 *
 * Data flows one way: the SQL-callable functions (ddl.c, backfill.c,
 * validate.c, report.c) use expr.c and catalog.c; nothing below calls back
 * up.  Migration state lives in the catalog tables of schema migrate_ext.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MIGRATE_EXT_H
#define MIGRATE_EXT_H

#include "postgres.h"

#include "access/attnum.h"
#include "nodes/pg_list.h"
#include "storage/lockdefs.h"
#include "utils/relcache.h"

/* Which side of each column pair a client writes: migrate_ext.writer. */
typedef enum MigWriter
{
	MIG_WRITER_AUTO,
	MIG_WRITER_OLD,
	MIG_WRITER_NEW
} MigWriter;

/* GUCs, migrate_ext.c */
extern int	mig_writer;
extern int	mig_lock_timeout_ms;
extern int	mig_lock_timeout_max_ms;
extern int	mig_lock_retries;
extern double mig_backfill_yield;

/*
 * Set by the backfill for its own writes: the trigger then always computes
 * the new side from the old one and never propagates anything down.
 */
extern bool mig_backfill_writes;

/* One old -> new column pair, as stored in migrate_ext.column_pair. */
typedef struct MigPair
{
	int			ord;
	char	   *old_col;
	AttrNumber	old_attnum;
	char	   *new_col;
	AttrNumber	new_attnum;
	bool		in_place;
	char	   *new_type;		/* format_type() text, for messages */
	char	   *up_src;			/* NULL: the default cast */
	Node	   *up;				/* cooked, never NULL */
	char	   *down_src;
	Node	   *down;			/* NULL: no reverse sync */
	bool		not_null;
	char	   *check_src;
	Node	   *check;
} MigPair;

/* A migration and its pairs, as stored in migrate_ext.migration. */
typedef struct MigMigration
{
	int64		id;
	Oid			relid;
	char	   *table_name;
	char	   *phase;
	List	   *pairs;			/* of MigPair * in ord order */
} MigMigration;

/* Phases, in order. */
#define MIG_PHASE_EXPANDED		"expanded"
#define MIG_PHASE_BACKFILLING	"backfilling"
#define MIG_PHASE_BACKFILLED	"backfilled"
#define MIG_PHASE_VALIDATED		"validated"
#define MIG_PHASE_CUTOVER		"cutover"
#define MIG_PHASE_CONTRACTED	"contracted"
#define MIG_PHASE_ABORTED		"aborted"

/* Name of the dual-write trigger; "zz" so that it fires after the table's
 * other BEFORE triggers and sees the row they leave. */
#define MIG_TRIGGER_NAME		"zz_migrate_ext_dualwrite"
#define MIG_SCHEMA				"migrate_ext"

/* catalog.c */
extern MigMigration *mig_catalog_active(Oid relid, bool missing_ok);
extern MigMigration *mig_catalog_by_id(int64 id);
extern MigMigration *mig_catalog_latest(Oid relid);
extern int64 mig_catalog_insert_migration(Oid relid, const char *table_name);
extern void mig_catalog_insert_pair(int64 migration_id, const MigPair *pair);
extern void mig_catalog_set_phase(int64 migration_id, const char *phase,
								  const char *detail);
extern bool mig_catalog_has_job(int64 migration_id);
extern void mig_catalog_exec(const char *sql, int nargs, Oid *argtypes,
							 Datum *values, const char *nulls, int expected);
extern int	mig_phase_rank(const char *phase);
extern int64 mig_catalog_exec_int8(const char *sql, int nargs, Oid *argtypes,
								   Datum *values, const char *nulls);

/* expr.c */
extern Node *mig_cook_expr(Relation rel, const char *src, const char *what,
						   Oid typid, int32 typmod, bool is_check);
extern Node *mig_default_cast(Relation rel, AttrNumber attnum,
							  Oid typid, int32 typmod);
extern char *mig_deparse(Node *expr, Oid relid);

/* ddl.c */
extern Relation mig_open_table(Oid relid, LOCKMODE lockmode);
extern void mig_lock_table(Oid relid, LOCKMODE lockmode, const char *why);
extern void mig_lock_tables(int nrels, const Oid *relids, LOCKMODE lockmode,
							const char *why);

/* contract_undo.c: drop what an unfinished mig_contract added */
extern int	mig_contract_undo(int64 migration_id);

/* horizon.c */
extern bool mig_release_xmin(void);

/* dualwrite.c */
extern void mig_dualwrite_init(void);

/*
 * backfill.c, backfill_worker.c and launcher.c: the backfill worker and the
 * launcher that resumes interrupted jobs.  A job's worker holds the
 * session-level advisory lock (MIG_JOB_LOCK_KEY, job id) for its whole life:
 * a job in state running, throttled or paused whose lock nobody holds is
 * interrupted.
 */
#define MIG_JOB_LOCK_KEY		1835624306	/* 'migr' */
extern void mig_backfill_resume_interrupted(void);
extern void mig_launcher_register(void);

#endif							/* MIGRATE_EXT_H */
