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

-- the backfill: other triggers skipped unless asked for; a ctid walk notices
-- a table rewrite (backfill_walk.c)
-- (added without a default, then filled: a fast default would leave a
-- "missing value" that a fresh install does not have)
ALTER TABLE migrate_ext.job
	ADD COLUMN fire_triggers boolean,
	ADD COLUMN walk_relfilenode oid;
UPDATE migrate_ext.job SET fire_triggers = false;
ALTER TABLE migrate_ext.job
	ALTER COLUMN fire_triggers SET DEFAULT false,
	ALTER COLUMN fire_triggers SET NOT NULL;

-- 0.2 creates the dual-write trigger ENABLE ALWAYS (it fires under
-- session_replication_role = replica, in a logical-replication apply worker,
-- and in the backfill, which skips the other triggers that way); the
-- triggers of migrations begun under 0.1 are plain ENABLE: make them so too
DO $mig_always$
DECLARE
	t regclass;
BEGIN
	FOR t IN SELECT tg.tgrelid::pg_catalog.regclass
			   FROM pg_catalog.pg_trigger tg
			   JOIN migrate_ext.migration m ON m.relid OPERATOR(pg_catalog.=) tg.tgrelid
			  WHERE tg.tgname OPERATOR(pg_catalog.=) 'zz_migrate_ext_dualwrite'
				AND tg.tgenabled OPERATOR(pg_catalog.=) 'O'
				AND m.phase OPERATOR(pg_catalog.<>) ALL (ARRAY['contracted', 'aborted'])
	LOOP
		EXECUTE pg_catalog.format('ALTER TABLE %s ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite', t);
	END LOOP;
END
$mig_always$;

-- mig_expand's new_default and keep_old (ddl.c); keep_old added without a
-- default, then filled, as job.fire_triggers above
ALTER TABLE migrate_ext.column_pair
	ADD COLUMN new_default_src text,
	ADD COLUMN new_default_expr text,
	ADD COLUMN keep_old boolean;
UPDATE migrate_ext.column_pair SET keep_old = false;
ALTER TABLE migrate_ext.column_pair
	ALTER COLUMN keep_old SET DEFAULT false,
	ALTER COLUMN keep_old SET NOT NULL;

-- the per-leaf and parallel backfill (backfill_worker.c): job.parallel,
-- added without a default, then filled, as job.fire_triggers above; and the
-- slices of a job
ALTER TABLE migrate_ext.job ADD COLUMN parallel int;
UPDATE migrate_ext.job SET parallel = 1;
ALTER TABLE migrate_ext.job
	ALTER COLUMN parallel SET DEFAULT 1,
	ALTER COLUMN parallel SET NOT NULL;
-- the direct batch's striped window (backfill_apply.c): its bound and next
-- stripe, NULL between windows
ALTER TABLE migrate_ext.job ADD COLUMN stripe_end text[], ADD COLUMN stripe_next int;
-- how the backfill's last batch wrote its rows (backfill_apply.c)
ALTER TABLE migrate_ext.job ADD COLUMN write_path text;
CREATE TABLE migrate_ext.job_slice (
	job_id		bigint NOT NULL REFERENCES migrate_ext.job,
	slice_no	int NOT NULL,
	relid		oid NOT NULL,
	relname		text NOT NULL,
	state		text NOT NULL DEFAULT 'pending'
		CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'running', 'done',
			'detached']::pg_catalog.text[])),
	key_kind	text NOT NULL,
	key_cols	name[] NOT NULL,
	lower_key	text[],
	upper_key	text[],
	rows_total	bigint,
	rows_done	bigint NOT NULL DEFAULT 0,
	rows_seen	bigint NOT NULL DEFAULT 0,
	batches		bigint NOT NULL DEFAULT 0,
	worker_pid	int,
	worker_slot	int,
	rate_cap	bigint,
	rate_recent	float8,
	walk_relfilenode oid,
	updated_at	timestamptz NOT NULL DEFAULT pg_catalog.now(),
	stripe_end	text[],
	stripe_next int,
	write_path	text,
	stripe_count int,
	stripe_halves int,
	PRIMARY KEY (job_id, slice_no)
);
SELECT pg_catalog.pg_extension_config_dump('migrate_ext.job_slice', '');
-- the striped window's layout (backfill_apply.c): a window resumed after a
-- restart is cut as it was listed, whatever parallel became meanwhile
ALTER TABLE migrate_ext.job ADD COLUMN stripe_count int, ADD COLUMN stripe_halves int;
