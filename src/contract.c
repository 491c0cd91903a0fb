/*-------------------------------------------------------------------------
 *
 * contract.c
 *	  mig_cutover and mig_contract: the end of a migration.
 *
 * Both go through the finish gate (contract_gate.c): an exact validation
 * that passed and that nothing has invalidated since.  mig_cutover then
 * only flips which side of each pair the dual-write trigger treats as
 * authoritative.  mig_contract is the point of no return: it
 * drops the old column and puts the new one in its place, and it must do so
 * without ever queueing production traffic behind a lock, on tables where a
 * plain ALTER TABLE would take the site down.  So it never does anything
 * slow under a strong lock:
 *
 *	 1. everything the old column had is first rebuilt on the new one, each
 *		piece in its own short transaction: indexes with CREATE INDEX
 *		CONCURRENTLY, NOT NULL through a CHECK (col IS NOT NULL) NOT VALID
 *		that is then validated (under SHARE UPDATE EXCLUSIVE, which lets
 *		reads and writes through) so that SET NOT NULL needs no scan, the
 *		foreign keys in both directions NOT VALID and then validated;
 *	 2. then one short transaction under ACCESS EXCLUSIVE swaps the
 *		constraints over to the new indexes, moves the sequence, default and
 *		identity, drops the trigger and the old column and renames the new
 *		column into place.  That is metadata only: milliseconds.
 *
 * CREATE INDEX CONCURRENTLY must be a top-level statement and waits for
 * every transaction that holds an older snapshot, so none of this can run in
 * the caller's transaction.  mig_contract therefore refuses to run inside a
 * transaction block, checks what it can (and names the views that would
 * stop it) before changing anything, lets go of every lock and of its xmin
 * (horizon.c), and hands the steps to a background worker that runs as the
 * caller's role.  The worker reports through a shm_mq in a DSM segment,
 * exactly as a parallel worker does (pq_redirect_to_shm_mq): its NOTICEs and
 * its error are re-raised in the caller, who waits on its latch without a
 * snapshot, a lock or a catalog access, and can be cancelled; the worker
 * then stops at the next step boundary.
 *
 * This file holds the SQL-callable functions, and mig_contract's side of
 * the worker: its checks, starting the worker, and waiting for it while
 * relaying its messages.  What must be rebuilt on the new column is worked
 * out in contract_plan.c; the steps run in contract_worker.c.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/table.h"
#include "access/xact.h"
#include "fmgr.h"
#include "libpq/pqformat.h"
#include "libpq/pqmq.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "storage/dsm.h"
#include "storage/latch.h"
#include "storage/lmgr.h"
#include "storage/proc.h"
#include "storage/shm_mq.h"
#include "storage/spin.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"

#include "contract.h"
#include "migrate_ext.h"
#include "migrate_ext_worker.h"

PG_FUNCTION_INFO_V1(mig_cutover);
PG_FUNCTION_INFO_V1(mig_contract);

/* Room for the worker's messages; it blocks when the caller lags. */
#define CONTRACT_QUEUE_SIZE		16384

/*
 * mig_cutover(tbl)
 *
 * The new columns become authoritative: a write that touches neither side
 * of a pair now recomputes the old side from the new one (down) instead of
 * the other way round, so the old side keeps following the new one and
 * mig_abort still leaves the table as the old application expects.  The
 * trigger of every backend reloads its phase through the relcache
 * invalidation.
 */
Datum
mig_cutover(PG_FUNCTION_ARGS)
{
	Oid			relid = PG_GETARG_OID(0);
	Relation	rel;
	MigMigration *m;

	/* held until commit, so that mig_abort (ACCESS EXCLUSIVE) cannot cross */
	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, false);
	if (m->phase == MIG_PHASE_CUTOVER)
	{
		ereport(NOTICE,
				(errmsg("the migration of table \"%s\" is already cut over",
						RelationGetRelationName(rel))));
		table_close(rel, NoLock);
		PG_RETURN_VOID();
	}
	mig_finish_gate(rel, m, false, "cut over");

	mig_catalog_set_phase(m->id, m->phase, MIG_PHASE_CUTOVER, NULL);
	CacheInvalidateRelcache(rel);
	table_close(rel, NoLock);
	PG_RETURN_VOID();
}

/* -------------------------------------------------------------------------
 * The caller
 * -------------------------------------------------------------------------
 */

/* The caller stops waiting (done, or cancelled): the worker stops too. */
static void
contract_caller_detach(dsm_segment *seg, Datum arg)
{
	ContractShared *sh = (ContractShared *) DatumGetPointer(arg);

	SpinLockAcquire(&sh->mutex);
	sh->caller_gone = true;
	SpinLockRelease(&sh->mutex);
}

/* Does this transaction hold any lock on the relation? */
static bool
locked_by_me(Oid relid)
{
	LOCKTAG		tag;

	SET_LOCKTAG_RELATION(tag, MyDatabaseId, relid);
	for (LOCKMODE mode = 1; mode <= MaxLockMode; mode++)
		if (LockHeldByMe(&tag, mode))
			return true;
	return false;
}

/*
 * Re-raise the worker's NOTICEs here as they come, and its error once it has
 * detached, waiting on the latch between messages (cancellable).  The error
 * waits for the detach because the worker releases its locks on the way out,
 * before it detaches: a caller that runs mig_contract again right after the
 * error must not find the exiting worker still holding them.
 */
static void
relay_worker(shm_mq_handle *mqh, Oid relid)
{
	ErrorData	error;
	bool		failed = false;

	for (;;)
	{
		Size		nbytes;
		void	   *data;
		shm_mq_result res = shm_mq_receive(mqh, &nbytes, &data, true);

		if (res == SHM_MQ_SUCCESS)
		{
			StringInfoData msg;
			char		msgtype;
			ErrorData	edata;

			initStringInfo(&msg);
			appendBinaryStringInfo(&msg, data, nbytes);
			msgtype = pq_getmsgbyte(&msg);
			if (msgtype == 'E' || msgtype == 'N')
			{
				pq_parse_errornotice(&msg, &edata);
				/* the worker's FATAL (it was terminated) is our ERROR */
				edata.elevel = Min(edata.elevel, ERROR);
				if (edata.elevel < ERROR)
					ThrowErrorData(&edata);
				else if (!failed)
				{
					error = edata;
					failed = true;
				}
			}
			pfree(msg.data);
			continue;
		}
		if (res == SHM_MQ_DETACHED)
			break;
		(void) WaitLatch(MyLatch, WL_LATCH_SET | WL_EXIT_ON_PM_DEATH, -1L, PG_WAIT_EXTENSION);
		ResetLatch(MyLatch);
		CHECK_FOR_INTERRUPTS();
	}
	if (!failed)
		return;
	/* a statement's bare lock timeout: the ladder's error */
	if (error.sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE &&
		strncmp(error.message, "could not lock table", 20) != 0)
		mig_lock_error(relid, AccessExclusiveLock, "contract it",
					   psprintf("A statement of the contract gave up (%s)",
								error.message),
					   "The steps done so far are kept: run mig_contract again once it has ended.");
	ThrowErrorData(&error);
}

/*
 * mig_contract(tbl, force)
 *
 * Checks, then runs the steps in a background worker and waits for it,
 * relaying its NOTICEs and its error.  While it waits it holds no lock on
 * any table involved and no snapshot: the worker's CREATE INDEX
 * CONCURRENTLY waits for both.
 */
Datum
mig_contract(PG_FUNCTION_ARGS)
{
	Oid			relid;
	bool		force;
	Relation	rel;
	MigMigration *m;
	ContractPlan *plan;
	ListCell   *lc;
	dsm_segment *seg;
	ContractShared *sh;
	shm_mq	   *mq;
	shm_mq_handle *mqh;
	MigWorkerArgs args;
	BackgroundWorkerHandle *handle;
	bool		done;
	bool		finish = false;
	char	   *relname;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("tbl must not be NULL")));
	relid = PG_GETARG_OID(0);
	force = PG_ARGISNULL(1) ? false : PG_GETARG_BOOL(1);

	if (IsTransactionBlock())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("mig_contract cannot run inside a transaction block"),
				 errdetail("It builds indexes concurrently and commits each step on its own."),
				 errhint("Run it as a statement of its own, outside BEGIN ... COMMIT.")));
	if (IsolationUsesXactSnapshot())
		ereport(ERROR,
				(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
				 errmsg("mig_contract must run at isolation level READ COMMITTED"),
				 errdetail("Its concurrent index builds wait for every older snapshot, and this transaction's would be one of them."),
				 errhint("SET default_transaction_isolation = 'read committed' first.")));

	rel = mig_open_table(relid, AccessShareLock);
	m = mig_catalog_active(relid, true);
	if (m == NULL)
	{
		MigMigration *last = mig_catalog_latest(relid);

		/* swapped, but what is left after the swap is not finished */
		if (last != NULL && last->phase == MIG_PHASE_CONTRACTED &&
			mig_contract_recorded_list(last->id) != NIL)
		{
			m = last;
			finish = true;
		}
		else if (last != NULL && last->phase == MIG_PHASE_CONTRACTED)
		{
			ereport(NOTICE,
					(errmsg("the migration of table \"%s\" is already contracted",
							RelationGetRelationName(rel))));
			table_close(rel, AccessShareLock);
			PG_RETURN_VOID();
		}
		else
			ereport(ERROR,
					(errcode(ERRCODE_UNDEFINED_OBJECT),
					 errmsg("table \"%s\" has no active migration", RelationGetRelationName(rel)),
					 errhint("Start one with mig_expand().")));
	}
	if (finish)
		plan = NULL;
	else
		plan = mig_contract_plan(rel, m, force);
	relname = pstrdup(RelationGetRelationName(rel));
	table_close(rel, AccessShareLock);

	foreach(lc, plan ? plan->lockrels : NIL)
		if (locked_by_me(lfirst_oid(lc)))
			ereport(ERROR,
					(errcode(ERRCODE_ACTIVE_SQL_TRANSACTION),
					 errmsg("mig_contract cannot run in a transaction that has used table \"%s\"",
							get_rel_name(lfirst_oid(lc))),
					 errdetail("Its steps would wait for this transaction's lock, and it for them."),
					 errhint("Run it as a statement of its own.")));

	/*
	 * From here on, no catalog access until the worker is gone: a snapshot
	 * would make its index builds wait for this transaction.
	 */
	(void) mig_release_xmin();

	seg = dsm_create(MAXALIGN(sizeof(ContractShared)) + CONTRACT_QUEUE_SIZE, 0);
	sh = dsm_segment_address(seg);
	memset(sh, 0, sizeof(ContractShared));
	SpinLockInit(&sh->mutex);
	sh->relid = relid;
	sh->migration_id = m->id;
	sh->force = force;
	sh->finish = finish;
	sh->lock_timeout_ms = mig_lock_timeout_ms;
	sh->lock_timeout_max_ms = mig_lock_timeout_max_ms;
	sh->lock_retries = mig_lock_retries;
	mq = shm_mq_create((char *) sh + MAXALIGN(sizeof(ContractShared)), CONTRACT_QUEUE_SIZE);
	shm_mq_set_receiver(mq, MyProc);
	on_dsm_detach(seg, contract_caller_detach, PointerGetDatum(sh));

	mig_worker_args_for_caller(&args, (int64) dsm_segment_handle(seg));
	mig_worker_start_handle("mig_contract_worker_main",
							psprintf("migrate_ext contract of %s", relname),
							&args, &handle);
	mqh = shm_mq_attach(mq, seg, handle);

	relay_worker(mqh, relid);

	SpinLockAcquire(&sh->mutex);
	done = sh->done;
	SpinLockRelease(&sh->mutex);
	dsm_detach(seg);
	if (!done)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the background worker of mig_contract on table \"%s\" exited before finishing",
						relname),
				 errhint("See the server log, then run mig_contract again: it picks up where it stopped.")));
	PG_RETURN_VOID();
}
