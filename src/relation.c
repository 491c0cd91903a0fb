/*-------------------------------------------------------------------------
 *
 * relation.c
 *	  What migrate_ext does to a user table as the table's owner.
 *
 * Everything that can run code a table's owner wrote -- its triggers,
 * up/down/check expressions, domain checks, defaults, policies -- runs
 * through mig_owner_switch(), whoever asked for the migration step: a
 * superuser, a member of the owning role, or a background worker that
 * logged in as either.  The switch is the one VACUUM, CREATE INDEX and
 * REFRESH MATERIALIZED VIEW make (see ri_triggers.c and matview.c): the
 * table's owner as current user, inside a security-restricted operation,
 * so that the code cannot SET ROLE or RESET ROLE back to whoever started
 * the step, and with row security not forced on the owner, so that FORCE
 * ROW LEVEL SECURITY cannot hide rows from a backfill, a validation or a
 * contract (they must see every row to be right).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_class.h"
#include "miscadmin.h"
#include "utils/guc.h"
#include "utils/syscache.h"

#include "migrate_ext.h"

/* The role that owns a relation; errors when it is gone. */
Oid
mig_table_owner(Oid relid)
{
	HeapTuple	tup;
	Oid			owner;

	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tup))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_TABLE),
				 errmsg("relation with OID %u does not exist", relid),
				 errdetail("It was dropped while migrate_ext worked on it.")));
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Become the owner of relid for user code, until mig_owner_restore(save).
 * Settings the code changes (SET LOCAL, a function's SET clause) are undone
 * at the restore through their own GUC nest level.  On error the aborting
 * (sub)transaction restores identity and settings alike, as it does for
 * VACUUM; a caller that catches errors must roll back a subtransaction.
 */
void
mig_owner_switch(Oid relid, MigOwnerSave *save)
{
	Oid			owner = mig_table_owner(relid);

	Assert(save != NULL);
	GetUserIdAndSecContext(&save->userid, &save->sec_context);
	SetUserIdAndSecContext(owner,
						   save->sec_context |
						   SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION |
						   SECURITY_NOFORCE_RLS);
	save->nestlevel = NewGUCNestLevel();
	save->active = true;
}

/* Undo mig_owner_switch(). */
void
mig_owner_restore(MigOwnerSave *save)
{
	Assert(save->active);
	Assert(InSecurityRestrictedOperation());
	AtEOXact_GUC(true, save->nestlevel);
	SetUserIdAndSecContext(save->userid, save->sec_context);
	save->active = false;
}
