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
#include "access/htup.h"
#include "access/tupdesc.h"
#include "datatype/timestamp.h"
#include "executor/tuptable.h"
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
extern int	mig_backfill_stripes;
extern char *mig_test_pause;

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
	char	   *new_default_src;	/* NULL: the old column's default */
	Node	   *new_default;	/* cooked for the new column, or NULL */
	bool		keep_old;		/* contract keeps old_col, ends dual-write */
} MigPair;

/*
 * A migration's phase, in lifecycle order (so "has it reached X" is a
 * comparison); aborted sorts last.  catalog.c holds the one mapping to the
 * text stored in migrate_ext.migration.phase.
 */
typedef enum MigPhase
{
	MIG_PHASE_EXPANDED,
	MIG_PHASE_BACKFILLING,
	MIG_PHASE_BACKFILLED,
	MIG_PHASE_VALIDATED,
	MIG_PHASE_CUTOVER,
	MIG_PHASE_CONTRACTED,
	MIG_PHASE_ABORTED
} MigPhase;

#define MIG_PHASE_COUNT			(MIG_PHASE_ABORTED + 1)

/* A migration and its pairs, as stored in migrate_ext.migration. */
typedef struct MigMigration
{
	int64		id;
	Oid			relid;
	char	   *table_name;
	MigPhase	phase;
	List	   *pairs;			/* of MigPair * in ord order */
} MigMigration;

/* Name of the dual-write trigger; "zz" so that it fires after the table's
 * other BEFORE triggers and sees the row they leave. */
#define MIG_TRIGGER_NAME		"zz_migrate_ext_dualwrite"

/* catalog.c */
extern MigMigration *mig_catalog_active(Oid relid, bool missing_ok);
extern MigMigration *mig_catalog_by_id(int64 id);
extern MigMigration *mig_catalog_latest(Oid relid);
extern int64 mig_catalog_insert_migration(Oid relid, const char *table_name);
extern void mig_catalog_insert_pair(int64 migration_id, const MigPair *pair);
extern const char *mig_phase_name(MigPhase phase);
extern MigPhase mig_phase_parse(const char *name);
extern bool mig_catalog_move_phase(int64 migration_id, MigPhase from,
								   MigPhase to, const char *detail);
extern void mig_catalog_set_phase(int64 migration_id, MigPhase from,
								  MigPhase to, const char *detail);
extern bool mig_catalog_has_job(int64 migration_id);
extern int	mig_catalog_query(const char *sql, int nargs, Oid *argtypes,
							  Datum *values, const char *nulls, bool read_only,
							  long tcount);
extern void mig_catalog_exec(const char *sql, int nargs, Oid *argtypes,
							 Datum *values, const char *nulls, int expected);
extern Oid	mig_extension_owner(void);
extern char *mig_extension_version(void);
extern bool mig_version_matches(void);
extern void mig_version_check(void);
extern int64 mig_catalog_exec_int8(const char *sql, int nargs, Oid *argtypes,
								   Datum *values, const char *nulls);

/* relation.c: user code runs as the table's owner, restricted */
typedef struct MigOwnerSave
{
	Oid			userid;
	int			sec_context;
	int			nestlevel;
	bool		active;
} MigOwnerSave;

extern Oid	mig_table_owner(Oid relid);
extern void mig_owner_switch(Oid relid, MigOwnerSave *save);
extern void mig_owner_restore(MigOwnerSave *save);

/* The rows a statement run by mig_owner_run() returned (fields as SPI's). */
typedef struct MigRows
{
	TupleDesc	tupdesc;
	HeapTuple  *vals;
	uint64		numvals;
	uint64		alloced;
} MigRows;

extern int	mig_owner_user_path(const char *user_path);
extern uint64 mig_owner_run(const char *sql, int nargs, Oid *argtypes,
							Datum *values, const char *nulls,
							const char *user_path, long tcount, MigRows *rows);
extern char *mig_user_search_path(void);

/* expr.c */
extern Node *mig_cook_expr(Relation rel, const char *src, const char *what,
						   Oid typid, int32 typmod, bool is_check);
extern Node *mig_default_cast(Relation rel, AttrNumber attnum,
							  Oid typid, int32 typmod);
extern Node *mig_cook_default(Relation rel, const char *src, Oid typid,
							  int32 typmod, const char *attname);
extern char *mig_deparse(Node *expr, Oid relid);
extern Node *mig_subst_column(Node *expr, AttrNumber attnum, Node *replacement);
struct ParseState;
extern void mig_check_expr(Relation rel, Node *expr, const char *what,
						   struct ParseState *pstate);

/* relation.c */
extern Relation mig_open_table(Oid relid, LOCKMODE lockmode);
extern bool mig_try_subxact(void (*fn) (void *arg), void *arg,
							MemoryContext msgcxt, char **msg);
struct SysScanDescData;
extern struct SysScanDescData *mig_column_dependents_scan(Oid relid, AttrNumber attnum,
														   Relation *deprel);
extern const char *mig_qualified_name(Oid relid);
extern void mig_run_utility(const char *sql);
extern void mig_run_utility_as_owner(Oid relid, const char *sql);
extern void mig_sleep_ms(long ms);
extern char mig_trigger_tgenabled(Oid relid);
extern bool mig_trigger_fires(char tgenabled);
extern const char *mig_choose_key(Relation rel, List **cols);
extern Oid	mig_operator_namespace(Oid opno);
extern void mig_lock_table(Oid relid, LOCKMODE lockmode, const char *why);
extern void mig_lock_tables(int nrels, const Oid *relids, LOCKMODE lockmode,
							const char *why);
extern List *mig_lock_tree(Oid relid, LOCKMODE lockmode, const char *why);
extern void mig_lock_error(Oid relid, LOCKMODE lockmode, const char *why,
						   const char *tried, const char *outcome) pg_attribute_noreturn();
extern Oid	mig_dualwrite_trigger(Oid relid, int64 *migration_id, char *tgenabled);
extern Oid	mig_dualwrite_trigger_of(int64 migration_id, Oid *relid);
extern struct Bitmapset *mig_protected_columns(List *pairs);
extern void mig_check_trigger_order(Relation rel, const char *dwname);

/* job.c: backfill job rows, their states, the job locks */
typedef enum JobState
{
	JOB_RUNNING,
	JOB_THROTTLED,
	JOB_PAUSED,
	JOB_INTERRUPTED,
	JOB_DONE,
	JOB_FAILED,
	JOB_CANCELLED
} JobState;

typedef enum MigJobLock
{
	MIG_JOB_LOCK_LIVENESS,		/* held by the job's worker for its life */
	MIG_JOB_LOCK_GATE,			/* held by its starter until commit */
	MIG_JOB_LOCK_VACUUM			/* per heap (relid): one backfill VACUUM at a time */
} MigJobLock;

typedef enum MigJobSetting
{
	MIG_JOB_BATCH_SIZE_AUTO,
	MIG_JOB_BATCH_SIZE,
	MIG_JOB_TARGET_BATCH_MS,
	MIG_JOB_SLEEP_MS,
	MIG_JOB_MAX_REPLICA_LAG,
	MIG_JOB_MAX_ROWS_PER_SEC,
	MIG_JOB_FIRE_TRIGGERS,
	MIG_JOB_PARALLEL			/* workers of the job */
} MigJobSetting;

/* A new job's settings, as mig_backfill was given them. */
typedef struct MigJobSettings
{
	int32		batch_size;
	bool		batch_size_fixed;
	int32		target_batch_ms;
	int32		sleep_ms;
	Interval   *max_replica_lag;	/* NULL: none */
	int64		max_rows_per_sec;	/* 0: none */
	bool		fire_triggers;	/* the table's other triggers fire too */
	int32		parallel;		/* workers */
} MigJobSettings;

/* What one committed batch adds to its job row. */
typedef struct MigJobBatch
{
	Datum		lower_key;		/* text[]: the checkpoint */
	int64		written;
	int64		seen;
	int32		next_batch_size;
	double		rate;
	double		active_seconds;
	JobState	state;			/* running or throttled */
	const char *throttle_reason;
	int64		retries;
	const char *error;			/* of a retried attempt, or NULL */
	const char *sqlstate;
	int32		vacuums;
	Datum		stripe_end;		/* text[]: a striped window's bound; 0: none */
	int32		stripe_next;	/* its next stripe */
	int32		stripe_count;	/* its stripes, all halves */
	int32		stripe_halves;	/* its halves */
	const char *write_path;		/* how the batch wrote its rows, or NULL */
} MigJobBatch;

struct MigWorkerArgs;
struct LOCKTAG;

extern const char *mig_job_state_name(JobState state);
extern JobState mig_job_state_parse(const char *name);
extern bool mig_job_has_column(const char *name);
extern bool mig_job_state_live(JobState state);
extern bool mig_job_state_ended(JobState state);
extern int32 mig_job_liveness_key(void);
extern void mig_job_locktag(struct LOCKTAG *tag, MigJobLock which, int64 id);
extern void mig_job_vacuum_lock(Oid relid);
extern void mig_job_vacuum_unlock(Oid relid);
extern bool mig_job_alive(int64 job_id);
extern bool mig_job_claim_last_vacuum(int64 job_id);
extern void mig_job_hold_gate(int64 job_id);
extern void mig_job_start_worker(struct MigWorkerArgs *args);
extern int64 mig_job_insert(int64 migration_id, const struct MigWorkerArgs *args,
							const MigJobSettings *settings);
extern void mig_job_set_state(int64 job_id, JobState state, bool finished);
extern void mig_job_restart(int64 job_id, const struct MigWorkerArgs *args);
extern void mig_job_set_setting(int64 job_id, MigJobSetting which, Datum value,
								bool isnull);
extern void mig_job_start_walk(int64 job_id, const char *key_kind, Datum key_cols,
							   Datum upper_key, bool upper_null, int64 rows_total,
							   bool exact, Oid relfilenode);
extern void mig_job_claim(int64 job_id, int pid);
extern void mig_job_mark_interrupted(int64 job_id);
extern void mig_job_end(int64 job_id, JobState state, const char *error,
						const char *sqlstate, int64 retries);
extern void mig_job_cancel_for_migration(int64 migration_id);
extern void mig_job_add_active(int64 job_id, double seconds);
extern void mig_job_throttle_for_lag(int64 job_id, double active_seconds);
extern void mig_job_checkpoint(int64 job_id, const MigJobBatch *batch);
extern void mig_job_done(int64 job_id, double active_seconds, int64 retries,
						 int vacuums);

/*
 * Parallel workers of one job: a worker's argument is the job id with its
 * slot in the bits from MIG_JOB_SLOT_SHIFT on.
 */
#define MIG_JOB_MAX_WORKERS		64
#define MIG_JOB_SLOT_SHIFT		48
#define MIG_JOB_ID_MASK			((INT64CONST(1) << MIG_JOB_SLOT_SHIFT) - 1)

/* A slice of a job (migrate_ext.job_slice), as it is planned. */
typedef struct MigSlice
{
	int64		job_id;
	int			slice_no;
	Oid			relid;
	const char *relname;
	const char *key_kind;
	Datum		key_cols;		/* text[] */
	Datum		lower_key;		/* text[], or 0 for NULL */
	Datum		upper_key;		/* text[], or 0 for NULL */
	int64		rows_total;		/* -1: unknown */
	Oid			relfilenode;
} MigSlice;

extern bool mig_job_take_slot(int64 job_id, int slot);
extern int	mig_job_workers(int64 job_id, bool *taken);
extern int	mig_job_start_workers(struct MigWorkerArgs *args, int n, bool only_free);
extern int	mig_job_start_other_workers(struct MigWorkerArgs *args, int n, int own_slot);
extern void mig_job_lock_slices(int64 job_id);
extern void mig_job_set_sliced(int64 job_id, int64 rows_total, bool exact);
extern void mig_job_convert_sliced(int64 job_id, Oid relid, const char *relname);
extern void mig_job_add_total(int64 job_id, int64 rows, bool exact);
extern void mig_slice_insert(const MigSlice *s);
extern int	mig_slice_claim(int64 job_id, int pid, int slot);
extern void mig_slice_set_state(int64 job_id, int slice_no, const char *state);
extern void mig_slice_release_all(int64 job_id);
extern void mig_slice_restart_walk(int64 job_id, int slice_no, Datum upper_key,
								   Oid relfilenode);
extern void mig_slice_checkpoint(int64 job_id, int slice_no, const MigJobBatch *b,
								 int64 rate_cap);
extern void mig_job_sum_slices(int64 job_id, const MigJobBatch *b);


/* contract_undo.c: drop what an unfinished mig_contract added */
extern int	mig_contract_undo(int64 migration_id);

/* contract_retype.c: a type change made in the catalog alone */
extern bool mig_retype_needs_rewrite(Relation rel, AttrNumber attnum, Oid typid,
									 int32 typmod);
extern char *mig_retype_run(Relation rel, AttrNumber attnum, Oid typid,
							int32 typmod, Node *new_default);
extern void mig_retouch_trigger_functions(Oid relid);

/* horizon.c */
extern bool mig_release_xmin(void);
extern int	mig_busy_sessions_count(void);
extern double mig_busy_sessions_cpu(void);

/* dualwrite.c */
extern void mig_dualwrite_init(void);

/*
 * The backfill worker of migration_id: that migration's trigger, fired by
 * the worker's own batch UPDATE (and nothing else), always computes the new
 * side from the old one, never propagates anything down, and skips rows
 * already right.
 */
extern void mig_dualwrite_backfill_scope(int64 migration_id);

/*
 * The backfill's new version of the row in slot (every pair up), or NULL
 * when its new columns are right already: what the trigger computes for the
 * backfill's UPDATE, for the direct batch that writes without one.
 */
extern HeapTuple mig_dualwrite_backfill_row(int64 migration_id, Relation rel,
											TupleTableSlot *slot, void **cache);

extern void mig_launcher_register(void);

#endif							/* MIGRATE_EXT_H */
