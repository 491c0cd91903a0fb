/*-------------------------------------------------------------------------
 *
 * backfill.h
 *	  What the three files of the backfill share, private to them:
 *	  backfill.c, the SQL-callable controls (mig_backfill, mig_pause,
 *	  mig_resume, mig_cancel, mig_set) and the restart of interrupted jobs;
 *	  backfill_walk.c, the key the walk follows and the SQL of one batch;
 *	  backfill_worker.c, the background worker that runs the batches.  The
 *	  rest of migrate_ext sees only what migrate_ext.h declares.
 *
 *-------------------------------------------------------------------------
 */
#ifndef MIGRATE_EXT_BACKFILL_H
#define MIGRATE_EXT_BACKFILL_H

#include "postgres.h"

#include "nodes/pg_list.h"
#include "storage/lock.h"
#include "utils/relcache.h"

#include "migrate_ext.h"

#define BF_VACUUM_FRACTION		0.05	/* VACUUM after this share of the rows */
#define BF_VACUUM_MIN_ROWS		10000
#define BF_PARALLEL_VACUUM_SPREAD 4	/* a parallel job: at most 4x as many rows */

/* What a batch reads from the job row, valid for one transaction. */
typedef struct BfJob
{
	JobState	state;
	int64		migration_id;
	char	   *key_kind;		/* NULL: the walk has not started */
	List	   *key_cols;		/* of char * */
	List	   *lower_key;		/* of char *; NIL: from the start */
	List	   *upper_key;		/* of char *; NIL: nothing to walk */
	bool		fire_triggers;	/* the table's other triggers fire too */
	Oid			walk_relfilenode;	/* the table's file the walk started on */
	bool		walk_known;		/* the catalog records it (0.2 on) */
	Oid			relid;			/* what the batch walks: the table, or a leaf */
	int			slice_no;		/* -1: the job walks one key, no slices */
	bool		detached;		/* the slice's leaf left the table */
	List	   *stripe_end;		/* of char *: a striped window's bound; NIL: none */
	int			stripe_next;	/* the window's next stripe */
	int			stripe_count;	/* the window's stripes and halves, as listed; */
	int			stripe_halves;	/* 0: not recorded */
	bool		striped;		/* this batch may stripe (backfill_apply.c) */
	int			halves;			/* a window's halves (backfill_apply.c) */
	const char *write_path;		/* set by the batch: how it wrote (job.write_path) */
} BfJob;

/* backfill_walk.c: the walk, and the batches' SQL */
extern Datum bf_text_array(List *l);
extern bool bf_lists_equal(List *a, List *b);
extern bool bf_is_ctid(BfJob *job);
extern void bf_walk_bounds(Relation rel, BfJob *job, int64 *total, bool *exact);
extern int	bf_plan_leaves(Relation parent, int64 job_id, List *known, int *next_no,
						   int64 *total, bool *exact);
extern int	bf_plan_ranges(Relation rel, int64 job_id, int n, int64 *total, bool *exact);
extern int	bf_plan_remainder(Relation rel, BfJob *job, int64 job_id, int first_no, int n,
							  int64 rows_left);
extern MigMigration *bf_leaf_migration(MigMigration *m, Relation parent, Relation leaf);
extern void bf_start_walk(Relation rel, MigMigration *m, BfJob *job,
						  int64 job_id, double *rows_per_block,
						  int64 *vacuum_every);
extern char *bf_ground_moved(Relation rel, MigMigration *m, BfJob *job,
							 const char **hint);
extern List *bf_key_batch(Relation rel, MigMigration *m, BfJob *job, int size,
						  int64 *seen, int64 *written);
extern List *bf_ctid_batch(Relation rel, MigMigration *m, BfJob *job, int size,
						   double *rows_per_block, int64 *seen,
						   int64 *written);
extern List *bf_key_rows(Relation rel, MigMigration *m, BfJob *job, int size,
						 int64 *seen, MigRows *rows);
extern List *bf_ctid_rows(Relation rel, MigMigration *m, BfJob *job, int size,
						  double *rows_per_block, int64 *seen, MigRows *rows);
extern bool bf_walk_complete(BfJob *job);
extern bool bf_rewritten(Relation rel, BfJob *job);
extern char *bf_failing_row(Relation rel, MigMigration *m, BfJob *job, int limit);

/* backfill_apply.c: one batch, written directly or by the walk's UPDATE */
extern List *bf_apply_batch(Relation rel, MigMigration *m, BfJob *job, int size,
							double *rows_per_block, int64 *seen, int64 *written);
extern void bf_stripe_settle(int max_ms);

#endif							/* MIGRATE_EXT_BACKFILL_H */
