/*-------------------------------------------------------------------------
 *
 * migrate_ext_worker.h
 *	  Starting background workers as the role that asked for them
 *	  (worker.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef MIGRATE_EXT_WORKER_H
#define MIGRATE_EXT_WORKER_H

#include "postgres.h"

#include "postmaster/bgworker.h"

/* What a worker needs to know; travels in bgw_extra. */
typedef struct MigWorkerArgs
{
	Oid			dboid;
	Oid			login_oid;		/* connects as this role */
	Oid			role_oid;		/* then runs as this one */
	int64		arg;			/* the worker's own argument, e.g. a job id */
} MigWorkerArgs;

extern pid_t mig_worker_start(const char *entry, const char *name,
							  const MigWorkerArgs *args);
extern pid_t mig_worker_start_handle(const char *entry, const char *name,
									 const MigWorkerArgs *args,
									 BackgroundWorkerHandle **handlep);
extern void mig_worker_args_for_caller(MigWorkerArgs *args, int64 arg);
extern void mig_worker_connect(MigWorkerArgs *args);
extern void mig_worker_apply_role_settings(Oid roleid);

#endif							/* MIGRATE_EXT_WORKER_H */
