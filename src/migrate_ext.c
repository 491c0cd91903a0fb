/*-------------------------------------------------------------------------
 *
 * migrate_ext.c
 *	  Module entry point: the GUCs and the hooks every backend needs.
 *
 * The library works when loaded on demand (the first call of one of its
 * functions or of the trigger loads it), but only in
 * shared_preload_libraries can it register the launcher that resumes
 * interrupted backfills after a restart.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "fmgr.h"
#include "miscadmin.h"
#include "utils/guc.h"

#include "migrate_ext.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

int			mig_writer = MIG_WRITER_AUTO;
int			mig_lock_timeout_ms = 50;
int			mig_lock_timeout_max_ms = 1000;
int			mig_lock_retries = 12;
double		mig_backfill_yield = 4.0;
int			mig_backfill_stripes = 10;
char	   *mig_test_pause = NULL;

static const struct config_enum_entry writer_options[] = {
	{"auto", MIG_WRITER_AUTO, false},
	{"old", MIG_WRITER_OLD, false},
	{"new", MIG_WRITER_NEW, false},
	{NULL, 0, false}
};

void
_PG_init(void)
{
	DefineCustomEnumVariable("migrate_ext.writer",
							 "Which side of a migrating column pair this session writes.",
							 "\"old\": the new column is always computed by the up expression; "
							 "\"new\": the old column is always computed by the down expression; "
							 "\"auto\": decided per row from what the statement wrote.",
							 &mig_writer,
							 MIG_WRITER_AUTO,
							 writer_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("migrate_ext.lock_timeout",
							"First lock_timeout of the ladder that migrate_ext's DDL takes its locks with.",
							"Each retry doubles it, up to migrate_ext.lock_timeout_max.",
							&mig_lock_timeout_ms,
							50, 1, 60000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("migrate_ext.lock_timeout_max",
							"Longest lock_timeout of the ladder: the most any other session waits behind migrate_ext.",
							NULL,
							&mig_lock_timeout_max_ms,
							1000, 1, 600000,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("migrate_ext.lock_retries",
							"How many times migrate_ext's DDL tries to take its lock before it gives up.",
							NULL,
							&mig_lock_retries,
							12, 1, 1000,
							PGC_USERSET,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("migrate_ext.backfill_stripes",
							"How many transactions a backfill writes each window of rows in.",
							"A window holds this many batches' worth of rows; each transaction "
							"writes every n-th of them, so that index pages do not split. "
							"1: each batch writes all its rows (README, \"Space\").",
							&mig_backfill_stripes,
							10, 1, 32,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomRealVariable("migrate_ext.backfill_yield",
							 "How much a backfill yields to the application's load.",
							 "After each batch the worker sleeps for the batch's duration times this "
							 "times the CPU time this database's sessions used since the last batch, in "
							 "sessions' worth (at most 10 batch durations). 0: never yield.",
							 &mig_backfill_yield,
							 4.0, 0.0, 100.0,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("migrate_ext.test_pause",
							   "For tests only: a step of mig_contract, or of a backfill going parallel, at which its worker waits.",
							   "The worker waits for advisory lock 7387 (pg_advisory_lock(7387)) at each "
							   "step of this name, so that a test can stop it exactly there. Empty: never.",
							   &mig_test_pause,
							   "",
							   PGC_SUSET,
							   GUC_NO_SHOW_ALL | GUC_NOT_IN_SAMPLE,
							   NULL, NULL, NULL);

	MarkGUCPrefixReserved("migrate_ext");

	mig_dualwrite_init();

	if (process_shared_preload_libraries_in_progress)
		mig_launcher_register();
}
