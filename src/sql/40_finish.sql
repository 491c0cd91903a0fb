
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
