
/*
 * Cut over and contract (contract.c): the end of a migration.
 */
CREATE FUNCTION mig_cutover(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_cutover' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_cutover IS
	'the new column becomes authoritative; the old one is still kept in sync';

/* not STRICT: a NULL force must not silently skip the whole call */
CREATE FUNCTION mig_contract(tbl regclass, force boolean DEFAULT false) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_contract' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_contract IS
	'rebuilds what the old column had on the new one, then drops the old column (no way back)';

/*
 * What a mig_contract in progress added that is enforced before its swap:
 * the NOT VALID CHECK and foreign-key copies, the unique index copies.
 * Recorded by OID in the transaction that creates each, so that a failed or
 * cancelled contract, and mig_abort, drop exactly these and nothing that
 * merely has their name.  The swap, which makes them the real ones, deletes
 * the rows.  Not dumped: OIDs mean nothing after a restore.
 */
CREATE TABLE migrate_ext.contract_object (
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	classid		oid NOT NULL,	/* pg_constraint or pg_class (an index) */
	objid		oid NOT NULL,
	relid		oid NOT NULL,	/* its table: an OID reused by another object is not ours */
	added_at	timestamptz NOT NULL DEFAULT pg_catalog.now()
);
CREATE INDEX contract_object_migration ON migrate_ext.contract_object (migration_id);
