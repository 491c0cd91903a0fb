/*-------------------------------------------------------------------------
 *
 * horizon.c
 *	  Letting vacuum and concurrent index builds get past a long-running
 *	  migrate_ext function call.
 *
 * mig_validate() scans a whole table and mig_contract() waits for index
 * builds; both are SQL functions, so they run inside the caller's statement,
 * whose snapshot is registered until the statement ends.  Its xmin would
 * hold back vacuum for the whole scan, and CREATE INDEX CONCURRENTLY (which
 * waits for every transaction with an older snapshot) would wait for the
 * very call that is waiting for it.
 *
 * In READ COMMITTED each statement we run through SPI takes a fresh
 * snapshot, and the caller's statement snapshot is never used to read a
 * table again once such a function has started (a SELECT of a migrate_ext
 * function reads nothing else).  So such a function may stop advertising
 * the old xmin: GetSnapshotData() then advertises the xmin of the next
 * snapshot taken, and SnapshotResetXmin() only ever moves it forward.  In
 * REPEATABLE READ or SERIALIZABLE the transaction snapshot is reused and
 * must stay protected, so nothing is released there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/transam.h"
#include "access/xact.h"
#include "storage/proc.h"
#include "utils/snapmgr.h"

#include "migrate_ext.h"

/*
 * Stop holding back the xmin horizon with snapshots this backend will not
 * read with again.  Returns false (and does nothing) where the transaction
 * snapshot must stay protected.  Call it only between statements that take
 * their own snapshots, never while a scan with an older snapshot is open.
 */
bool
mig_release_xmin(void)
{
	if (IsolationUsesXactSnapshot())
		return false;
	InvalidateCatalogSnapshot();
	MyProc->xmin = InvalidTransactionId;
	return true;
}
