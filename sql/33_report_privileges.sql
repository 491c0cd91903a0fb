-- Who sees what: the catalog tables are the extension owner's; everyone
-- reads the views, which show a migration's key values, failing rows,
-- expressions and errors only to roles that may SELECT the table.
CREATE ROLE sec_owner;
CREATE ROLE sec_reader;
CREATE ROLE sec_other;
CREATE TABLE sec_t (id int PRIMARY KEY, email text);
ALTER TABLE sec_t OWNER TO sec_owner;
GRANT SELECT ON sec_t TO sec_reader;
GRANT USAGE ON SCHEMA public TO sec_owner, sec_reader, sec_other;
INSERT INTO sec_t SELECT g, 'Secret' || g || '@Example.COM' FROM generate_series(1, 20) g;

SET ROLE sec_owner;
SELECT mig_expand('sec_t', 'email', up => 'lower(email)',
                  check_expr => '_mig_new_email LIKE ''%@%''') > 0 AS expanded;
SELECT mig_backfill('sec_t') > 0 AS started;
SET client_min_messages = warning;	-- mig_wait's lines carry rates
SELECT mig_wait('sec_t');
RESET client_min_messages;
-- a validation that fails names keys
UPDATE sec_t SET email = 'nomail' || id WHERE id IN (4, 17);
SELECT check_name, passed, detail FROM mig_validate('sec_t') WHERE NOT passed;
RESET ROLE;
-- an error that quotes a row (as a failed batch's would)
UPDATE migrate_ext.job SET last_error = 'row id=17 email=nomail17 failed', last_sqlstate = '22023'
 WHERE migration_id = migrate_ext.migration_of('sec_t');

CREATE FUNCTION sec_leak(anyelement) RETURNS boolean LANGUAGE plpgsql COST 0.0000001 AS $$
BEGIN
	RAISE NOTICE 'leaked: %', $1;
	RETURN true;
END $$;

CREATE PROCEDURE sec_look() LANGUAGE plpgsql AS $$
DECLARE
	t text;
	r record;
BEGIN
	-- the catalog tables and the unmasked view: nobody but the extension owner
	FOREACH t IN ARRAY ARRAY['migration', 'column_pair', 'phase_log', 'job', 'job_slice', 'validation',
							 'progress'] LOOP
		BEGIN
			EXECUTE format('SELECT count(*) FROM migrate_ext.%I', t);
			RAISE NOTICE '%: readable', t;
		EXCEPTION WHEN insufficient_privilege THEN
			RAISE NOTICE '%: %', t, SQLERRM;
		END;
	END LOOP;
	SELECT s.phase, s.state, s.rows_done, s.last_error, s.last_sqlstate INTO r
	  FROM mig_status s WHERE s.table_name = 'sec_t';
	RAISE NOTICE 'mig_status: %', r;
	SELECT p.phase, p.last_error INTO r FROM mig_progress('sec_t') p;
	RAISE NOTICE 'mig_progress: %', r;
	SELECT h.phase, h.last_error, jsonb_array_length(h.phases) AS phases INTO r
	  FROM mig_history h WHERE h.table_name = 'sec_t';
	RAISE NOTICE 'mig_history: %', r;
	SELECT j.state, j.key_kind, j.key_cols, j.lower_key, j.upper_key, j.last_error INTO r
	  FROM migrate_ext.jobs j WHERE j.relid = 'sec_t'::regclass;
	RAISE NOTICE 'jobs: %', r;
	FOR r IN SELECT v.check_name, v.passed, v.failing, v.detail FROM migrate_ext.validations v
			  WHERE v.relid = 'sec_t'::regclass AND NOT v.passed ORDER BY v.ord LOOP
		RAISE NOTICE 'validations: %', r;
	END LOOP;
	SELECT c.old_col, c.new_col, c.new_type, c.up_src, c.check_src INTO r
	  FROM migrate_ext.column_pairs c WHERE c.relid = 'sec_t'::regclass;
	RAISE NOTICE 'column_pairs: %', r;
	BEGIN
		PERFORM mig_checklist('sec_t');
		RAISE NOTICE 'mig_checklist: readable';
	EXCEPTION WHEN insufficient_privilege THEN
		RAISE NOTICE 'mig_checklist: %', SQLERRM;
	END;
	-- a leaky function in WHERE sees only what the role may see
	PERFORM 1 FROM migrate_ext.jobs j WHERE j.relid = 'sec_t'::regclass AND sec_leak(j.upper_key);
	PERFORM 1 FROM mig_status s WHERE s.table_name = 'sec_t' AND sec_leak(s.last_error);
END $$;

CREATE FUNCTION try_checklist(t regclass) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	RETURN CASE WHEN length(mig_checklist(t)) > 0 THEN 'runbook shown' END;
EXCEPTION WHEN insufficient_privilege THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;

-- the owner and a reader of the table see everything through the views
SET ROLE sec_owner;
CALL sec_look();
RESET ROLE;
SET ROLE sec_reader;
CALL sec_look();
RESET ROLE;
-- a role that may not read the table: progress yes, rows and expressions no
SET ROLE sec_other;
CALL sec_look();
RESET ROLE;
-- row-level security: a reader whose policy hides rows sees the migration's
-- progress, but no key, error or runbook (they can quote hidden rows); the
-- owner, even under FORCE ROW LEVEL SECURITY, still sees everything
ALTER TABLE sec_t ENABLE ROW LEVEL SECURITY;
ALTER TABLE sec_t FORCE ROW LEVEL SECURITY;
CREATE POLICY sec_t_low ON sec_t FOR SELECT USING (id < 10);
SET ROLE sec_reader;
CALL sec_look();
SELECT try_checklist('sec_t');
RESET ROLE;
SET ROLE sec_owner;
CALL sec_look();
SELECT length(mig_checklist('sec_t')) > 0 AS owner_reads_runbook;
RESET ROLE;
ALTER TABLE sec_t NO FORCE ROW LEVEL SECURITY;
ALTER TABLE sec_t DISABLE ROW LEVEL SECURITY;
DROP POLICY sec_t_low ON sec_t;
-- the extension owner reads the tables themselves
SELECT lower_key, upper_key FROM migrate_ext.job WHERE migration_id = migrate_ext.migration_of('sec_t');
-- nothing granted to PUBLIC but USAGE on the schema and SELECT on the masked views
SELECT c.relname, c.relkind
  FROM pg_class c, aclexplode(c.relacl) a
 WHERE c.relnamespace = 'migrate_ext'::regnamespace AND a.grantee = 0
 ORDER BY 1;

SELECT mig_abort('sec_t');
DROP TABLE sec_t;
DROP PROCEDURE sec_look();
DROP FUNCTION sec_leak(anyelement);
DROP FUNCTION try_checklist(regclass);
REVOKE USAGE ON SCHEMA public FROM sec_owner, sec_reader, sec_other;
DROP ROLE sec_owner, sec_reader, sec_other;
