
/*
 * Expand and abort (ddl.c), and the dual-write trigger (dualwrite.c).
 */
CREATE FUNCTION migrate_ext.dualwrite() RETURNS trigger
	AS 'MODULE_PATHNAME', 'mig_dualwrite' LANGUAGE C;

CREATE FUNCTION mig_expand(tbl regclass, col name, new_col name DEFAULT NULL,
						   type text DEFAULT NULL, up text DEFAULT NULL,
						   down text DEFAULT NULL, not_null boolean DEFAULT false,
						   check_expr text DEFAULT NULL,
						   new_default text DEFAULT NULL,
						   keep_old boolean DEFAULT false)
	RETURNS bigint AS 'MODULE_PATHNAME', 'mig_expand' LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.mig_expand IS
	'adds the new column and the dual-write trigger; returns the migration id';

CREATE FUNCTION mig_abort(tbl regclass) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_abort' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_abort IS
	'stops the backfill, drops the trigger and the new column(s); the old column is untouched';

CREATE FUNCTION mig_abort_id(migration_id bigint) RETURNS void
	AS 'MODULE_PATHNAME', 'mig_abort_id' LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION @extschema@.mig_abort_id IS
	'aborts a phantom migration whose table is gone or was restored under another OID';
