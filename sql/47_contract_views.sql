--
-- Dependent views come along: mig_contract recreates every view that
-- depends on the old column (nested, a diamond, another schema) inside its
-- swap, with owners, grants, options, comments, defaults and INSTEAD OF
-- triggers; what cannot be carried is named by validation first.
--
\set VERBOSITY terse
CREATE ROLE v_owner;
CREATE ROLE v_reader;
CREATE SCHEMA rpt;
GRANT USAGE, CREATE ON SCHEMA rpt TO v_owner;
GRANT USAGE ON SCHEMA rpt TO v_reader;
CREATE TABLE v_acct (id int PRIMARY KEY, name text NOT NULL, region text);
INSERT INTO v_acct SELECT g, 'Name ' || g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END
  FROM generate_series(1, 40) g;
GRANT SELECT ON v_acct TO v_owner;
-- a security_barrier view with check_option, an INSTEAD OF trigger, a default
CREATE VIEW v_eu WITH (security_barrier = true, check_option = cascaded) AS
  SELECT id, name, region FROM v_acct WHERE region = 'eu';
COMMENT ON VIEW v_eu IS 'accounts in the EU';
COMMENT ON COLUMN v_eu.name IS 'display name';
ALTER VIEW v_eu ALTER COLUMN region SET DEFAULT 'eu';
GRANT SELECT ON v_eu TO v_reader;
GRANT SELECT (id, name) ON v_eu TO v_owner WITH GRANT OPTION;
CREATE FUNCTION v_note_ins() RETURNS trigger LANGUAGE plpgsql AS
  $$BEGIN RAISE NOTICE 'instead of insert of %', NEW.uname; RETURN NEW; END$$;
CREATE VIEW v_names AS SELECT id, upper(name) AS uname FROM v_acct;
GRANT SELECT ON v_names TO v_owner;
CREATE TRIGGER v_names_ins INSTEAD OF INSERT ON v_names
  FOR EACH ROW EXECUTE FUNCTION v_note_ins();
-- nested, in another schema, owned by another role; a diamond
CREATE VIEW rpt.eu_names AS SELECT e.id, e.name, n.uname
  FROM v_eu e JOIN v_names n USING (id);
ALTER VIEW rpt.eu_names OWNER TO v_owner;
CREATE VIEW rpt.top AS SELECT count(*) AS n, max(name) AS last FROM rpt.eu_names;
ALTER VIEW rpt.top OWNER TO v_owner;
GRANT SELECT ON rpt.top TO v_reader;

-- each view as a row: owner, privileges, options, comment, columns, triggers
CREATE FUNCTION v_state()
RETURNS TABLE (view text, owner text, relacl text, reloptions text[], comment text,
			   cols text, triggers text)
LANGUAGE sql STABLE AS $$
SELECT c.oid::regclass::text AS view, c.relowner::regrole::text AS owner, c.relacl::text,
	   c.reloptions, obj_description(c.oid, 'pg_class') AS comment,
	   (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod)
						  || coalesce(':' || a.attacl::text, '')
						  || coalesce(':' || col_description(c.oid, a.attnum), ''), ', ' ORDER BY a.attnum)
		  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0) AS cols,
	   (SELECT string_agg(pg_get_triggerdef(t.oid), '; ') FROM pg_trigger t WHERE t.tgrelid = c.oid) AS triggers
  FROM pg_class c WHERE c.relname IN ('v_eu', 'v_names', 'eu_names', 'top')
$$;
CREATE TEMP TABLE v_before AS SELECT * FROM v_state();
CREATE TEMP TABLE v_oids AS SELECT oid, relname FROM pg_class
 WHERE relname IN ('v_eu', 'v_names', 'eu_names', 'top');
CREATE TEMP TABLE v_rows AS SELECT * FROM rpt.eu_names;

-- a rename: name -> full_name; the views keep their column names
SELECT mig_expand('v_acct', 'name', new_col => 'full_name') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE v_acct SET name = name;
RESET migrate_ext.writer;
SELECT check_name, passed, failing FROM mig_validate('v_acct') WHERE check_name = 'contract_blockers';
SELECT mig_contract('v_acct');
SELECT attname FROM pg_attribute WHERE attrelid = 'v_acct'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;

-- a rename changes no view's shape: every view of the chain and the diamond
-- keeps its OID (the views reading the column re-pointed by CREATE OR REPLACE)
SELECT o.relname, c.oid IS NOT NULL AS same_oid
  FROM v_oids o LEFT JOIN pg_class c ON c.oid = o.oid AND c.relname = o.relname ORDER BY 1;
-- every view as it was, but for its definition reading full_name
SELECT * FROM v_state() EXCEPT SELECT * FROM v_before;
SELECT count(*) AS views FROM v_before;
SELECT pg_get_viewdef('v_eu'::regclass);
SELECT (SELECT count(*) FROM rpt.eu_names) AS rows_now,
	   (SELECT count(*) FROM (SELECT * FROM rpt.eu_names EXCEPT SELECT * FROM v_rows) d) AS changed;
-- the readers read, check_option holds, the default and the trigger work
SET ROLE v_reader;
SELECT n, last FROM rpt.top;
SELECT count(*) FROM v_eu;
RESET ROLE;
INSERT INTO v_eu (id, name, region) VALUES (100, 'x', 'us');
INSERT INTO v_eu (id, name) VALUES (101, 'Eve') RETURNING region;
INSERT INTO v_names (id, uname) VALUES (102, 'Zed');
SELECT id, full_name, region FROM v_acct WHERE id >= 100 ORDER BY id;

-- a type change exposed through views: the intended change, and nothing else
CREATE TABLE v_qty (id int PRIMARY KEY, qty int NOT NULL);
INSERT INTO v_qty SELECT g, g * 10 FROM generate_series(1, 10) g;
CREATE VIEW v_qty_x AS SELECT id, qty, qty * 2 AS dbl, qty::text AS txt FROM v_qty;
CREATE VIEW v_qty_sum AS SELECT sum(qty) AS total, max(dbl) AS top FROM v_qty_x;
SELECT mig_expand('v_qty', 'qty', type => 'bigint') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE v_qty SET qty = qty;
RESET migrate_ext.writer;
-- sum(bigint) is numeric, not bigint: a change beyond the intended one,
-- named by validation (v_qty_sum reads v_qty_x: predicted on its stand-in)
SELECT check_name, passed, failing, detail FROM mig_validate('v_qty') WHERE NOT passed;
-- and contract refuses before building anything
\set VERBOSITY default
SELECT mig_contract('v_qty');
SELECT mig_contract('v_qty', force => true);
\set VERBOSITY terse
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE '\_mig\_%';
SELECT attname FROM pg_attribute WHERE attrelid = 'v_qty'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT attrelid::regclass, attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid IN ('v_qty_x'::regclass, 'v_qty_sum'::regclass) AND attnum > 0 ORDER BY 1, attnum;
SELECT * FROM v_qty_sum;
-- with max() the only change is the intended one
DROP VIEW v_qty_sum;
CREATE VIEW v_qty_sum AS SELECT max(qty) AS total, max(dbl) AS top FROM v_qty_x;
SELECT bool_and(passed) AS validated FROM mig_validate('v_qty');
CREATE TEMP TABLE v_qty_oids AS SELECT oid, relname FROM pg_class
 WHERE relname IN ('v_qty_x', 'v_qty_sum');
SELECT mig_contract('v_qty');
-- their type changed: dropped and created again, with new OIDs
SELECT o.relname, c.oid IS NOT NULL AS same_oid
  FROM v_qty_oids o LEFT JOIN pg_class c ON c.oid = o.oid AND c.relname = o.relname ORDER BY 1;
SELECT attrelid::regclass, attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid IN ('v_qty_x'::regclass, 'v_qty_sum'::regclass) AND attnum > 0 ORDER BY 1, attnum;
SELECT * FROM v_qty_sum;
DROP TABLE v_qty CASCADE;

-- a view joining on the column by name (USING) cannot be re-pointed by
-- CREATE OR REPLACE: even in a rename it is created again
CREATE TABLE v_ua (id int PRIMARY KEY, x text);
CREATE TABLE v_ub (id int, y text);
INSERT INTO v_ua SELECT g, 'x' || g FROM generate_series(1, 5) g;
INSERT INTO v_ub SELECT g, 'y' || g FROM generate_series(1, 5) g;
CREATE VIEW v_uv AS SELECT * FROM v_ua JOIN v_ub USING (id);
SELECT mig_expand('v_ua', 'id', new_col => 'ident') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE v_ua SET id = id;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('v_ua');
SELECT mig_contract('v_ua');
SELECT * FROM v_uv ORDER BY 1 LIMIT 2;
DROP TABLE v_ua, v_ub CASCADE;

-- what cannot be carried is named by validation, before anything is built
CREATE MATERIALIZED VIEW v_mat AS SELECT id, full_name FROM v_acct;
CREATE FUNCTION v_rows_of() RETURNS SETOF v_names LANGUAGE sql AS 'SELECT * FROM v_names';
SELECT mig_expand('v_acct', 'full_name', up => 'lower(full_name)') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE v_acct SET full_name = full_name;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('v_acct') WHERE check_name = 'contract_blockers';
SELECT mig_contract('v_acct');
SELECT mig_abort('v_acct');
DROP FUNCTION v_rows_of();
DROP MATERIALIZED VIEW v_mat;
DROP SCHEMA rpt CASCADE;
DROP TABLE v_acct CASCADE;
DROP FUNCTION v_note_ins();
DROP ROLE v_owner, v_reader;
