/*
 * The catalog from 0.1 to 0.2: hand-written, and only ALTERs of what holds
 * data (tables, sequences, indexes, types; see src/upgrade/sqlface.pl).
 * Functions and views need nothing here: the update re-creates them from
 * src/sql.  Whoever changes a catalog statement in src/sql adds its ALTER
 * here; test/t/080_upgrade.pl fails, showing the pg_dump difference,
 * until an updated 0.1 database and a fresh 0.2 one have the same catalog.
 *
 * Add new columns at the END of their CREATE TABLE in src/sql, since
 * ALTER TABLE ... ADD COLUMN appends: pg_dump shows column order.
 */

-- writes that may have bypassed the dual-write trigger (guard.c)
ALTER TABLE migrate_ext.migration
	ADD COLUMN invalidated_at timestamptz,
	ADD COLUMN invalidated_why text;

-- the catalog is read through the masked views only (see README "Security")
REVOKE SELECT ON ALL TABLES IN SCHEMA migrate_ext FROM PUBLIC;

-- what an unfinished mig_contract added, by OID (contract_undo.c); after the
-- REVOKE, which would give it an explicit ACL a fresh install does not have
CREATE TABLE migrate_ext.contract_object (
	migration_id bigint NOT NULL REFERENCES migrate_ext.migration,
	classid		oid NOT NULL,
	objid		oid NOT NULL,
	relid		oid NOT NULL,
	added_at	timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contract_object_migration ON migrate_ext.contract_object (migration_id);

-- mig_expand's new_default and keep_old (ddl.c)
ALTER TABLE migrate_ext.column_pair
	ADD COLUMN new_default_src text,
	ADD COLUMN new_default_expr text,
	ADD COLUMN keep_old boolean NOT NULL DEFAULT false;
