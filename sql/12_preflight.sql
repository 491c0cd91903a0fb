-- mig_preflight: the dirty rows of a realistic schema, found before
-- mig_expand, with counts and example keys; nothing changed; no lock
-- beyond ACCESS SHARE; user code as the table's owner in a
-- security-restricted operation; bad input refused as mig_expand refuses it.
\set ECHO none
\i test/fixtures/shop.sql
\set ECHO all

-- the state a dry run must leave exactly as it found it: every row of the
-- migrated and the audit table (ctid and xmin too: no row was rewritten),
-- and the catalog of schema shop as pg_dump -s would read it
CREATE FUNCTION shop_state() RETURNS text LANGUAGE sql AS $$
	SELECT md5(string_agg(x, E'\n' ORDER BY x)) FROM (
		SELECT format('customer %s %s %s', ctid, xmin, c) FROM shop.customer c
		UNION ALL SELECT format('audit %s', a) FROM shop.audit a
		UNION ALL SELECT format('class %s %s %s %s %s', c.relname, c.relkind, c.relnatts,
								c.relacl, obj_description(c.oid))
		  FROM pg_class c WHERE c.relnamespace = 'shop'::regnamespace
		UNION ALL SELECT format('attribute %s %s %s %s %s %s %s', a.attrelid::regclass, a.attnum,
								a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
								a.attacl, col_description(a.attrelid, a.attnum))
		  FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
		 WHERE c.relnamespace = 'shop'::regnamespace AND a.attnum > 0
		UNION ALL SELECT format('constraint %s %s', conname, pg_get_constraintdef(oid))
		  FROM pg_constraint WHERE connamespace = 'shop'::regnamespace
		UNION ALL SELECT format('index %s', pg_get_indexdef(indexrelid))
		  FROM pg_index WHERE indrelid::regclass::text LIKE 'shop.%'
		UNION ALL SELECT format('trigger %s %s', tgname, pg_get_triggerdef(oid))
		  FROM pg_trigger WHERE tgrelid::regclass::text LIKE 'shop.%'
		UNION ALL SELECT format('view %s %s', c.relname, pg_get_viewdef(c.oid))
		  FROM pg_class c WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('v', 'm')
	) s(x)
$$;
-- loyalty_points (text) to integer with the default cast: '' and 'n/a'
-- cannot be converted; each failing row named with its error
SELECT * FROM mig_preflight('shop.customer', 'loyalty_points', 'integer');

-- the fix an application would choose: '' becomes NULL, which not_null
-- then counts, with the rows that were NULL already; negative balances
-- fail check_expr, which names the new column as an in-place expand does
SELECT * FROM mig_preflight('shop.customer', 'loyalty_points', 'integer',
							up => $$nullif(loyalty_points, '')::int$$, not_null => true,
							check_expr => '_mig_new_loyalty_points >= 0');

-- an expression that handles every dirty value passes everything
SELECT * FROM mig_preflight('shop.customer', 'loyalty_points', 'integer',
							up => $$CASE WHEN loyalty_points ~ '^-?[0-9]+$' THEN greatest(loyalty_points::int, 0) ELSE 0 END$$,
							not_null => true, check_expr => '_mig_new_loyalty_points >= 0');

-- emails folded to lower case collide in the unique constraint on email:
-- every row of each colliding group counts, the first groups are named;
-- email is NOT NULL, so the new column will be, and not_null is checked
SELECT * FROM mig_preflight('shop.customer', 'email', up => 'lower(email)');
-- a partial unique index over an expression of the column, the type kept
CREATE UNIQUE INDEX customer_dormant_email ON shop.customer (btrim(email)) WHERE status = 'dormant';
UPDATE shop.customer SET status = 'dormant', email = 'Customer16@Example.com' WHERE id = 1;
UPDATE shop.customer SET status = 'dormant' WHERE id = 16;
SELECT check_name, passed, failing, detail FROM mig_preflight('shop.customer', 'email', up => 'lower(email)')
 WHERE check_name LIKE 'unique:%';
-- varchar(22) by assignment: too long is an error, as in the trigger;
-- the expression index cannot be checked for a new type, and says so
SELECT * FROM mig_preflight('shop.customer', 'email', 'varchar(22)', up => 'lower(email)');
DROP INDEX shop.customer_dormant_email;

-- the int -> bigint key change of the fixture is clean
SELECT * FROM mig_preflight('shop.customer', 'id', 'bigint');
-- a domain: its CHECK runs on the new value
SELECT * FROM mig_preflight('shop.customer', 'name', 'shop.phone');

-- a table without a primary key names rows by ctid, also when its only
-- unique key may be NULL; NULL keys collide only under NULLS NOT DISTINCT
CREATE TABLE shop.import (code text UNIQUE, batch int, label text);
CREATE UNIQUE INDEX import_batch_code ON shop.import (batch, code) NULLS NOT DISTINCT;
INSERT INTO shop.import VALUES ('1', 1, 'one'), ('x', 1, 'ex'), ('3', 1, 'three'),
	(NULL, 2, 'none'), ('n/a', 2, 'n/a');
SELECT * FROM mig_preflight('shop.import', 'code', 'int');
SELECT * FROM mig_preflight('shop.import', 'code', 'int', up => $$nullif(nullif(code, 'n/a'), 'x')::int$$);
DROP TABLE shop.import;

-- a table of several chunks: failing rows in each, and new keys that
-- collide across chunks (rows n and n + 50000 are far apart)
CREATE TABLE pre_big (id int PRIMARY KEY, v text UNIQUE);
INSERT INTO pre_big SELECT g, CASE WHEN g % 20000 = 0 THEN 'bad' || g ELSE g::text END
  FROM generate_series(1, 100000) g;
SELECT pg_relation_size('pre_big') / current_setting('block_size')::int > 2 * 256 AS three_chunks;
SELECT * FROM mig_preflight('pre_big', 'v', 'int', up => $$v::int % 50000$$);
DROP TABLE pre_big;

-- nothing changed: rows (and their versions: nothing was rewritten),
-- audit trail, catalog; no migration recorded
UPDATE shop.customer SET status = 'active', email = 'customer1@example.com' WHERE id = 1;
UPDATE shop.customer SET status = 'active' WHERE id = 16;
TRUNCATE shop.audit;
CREATE TEMP TABLE before AS
SELECT shop_state() AS state, (SELECT count(*) FROM migrate_ext.migration) AS migrations;
SELECT count(*) FROM mig_preflight('shop.customer', 'loyalty_points', 'integer',
								   up => $$nullif(loyalty_points, '')::int$$, not_null => true,
								   check_expr => '_mig_new_loyalty_points >= 0');
SELECT count(*) FROM mig_preflight('shop.customer', 'email', up => 'lower(email)');
SELECT b.state = shop_state() AS same_state,
	   b.migrations = (SELECT count(*) FROM migrate_ext.migration) AS no_migration,
	   (SELECT count(*) FROM shop.audit) AS audit_rows
  FROM before b;

-- the only lock it takes on the table, its indexes and the tables around is
-- ACCESS SHARE
BEGIN;
SELECT count(*) FROM mig_preflight('shop.customer', 'email', up => 'lower(email)');
SELECT DISTINCT mode FROM pg_locks
 WHERE pid = pg_backend_pid() AND locktype = 'relation'
   AND relation IN (SELECT oid FROM pg_class WHERE relnamespace = 'shop'::regnamespace);
COMMIT;

CREATE FUNCTION sqlstate_of(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE;
END $$;

-- security: user code runs as the table's owner, in a security-restricted
-- operation, whoever calls
CREATE ROLE pre_owner;
CREATE ROLE pre_other;
GRANT pre_other TO pre_owner;
CREATE TABLE pre_t (id int PRIMARY KEY, v text);
INSERT INTO pre_t VALUES (1, '10'), (2, 'x');
ALTER TABLE pre_t OWNER TO pre_owner;
-- an up that reports who runs it
CREATE FUNCTION pre_who(v text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	IF v = 'x' THEN
		RAISE EXCEPTION 'run by %, session %', current_user, session_user;
	END IF;
	RETURN v::int;
END $$;
-- an up that tries to become another role the owner is a member of
CREATE FUNCTION pre_escape(v text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	PERFORM set_config('role', 'pre_other', true);
	RETURN length(v);
END $$;
SELECT check_name, passed, failing, replace(detail, session_user, 'SESSION') AS detail
  FROM mig_preflight('pre_t', 'v', 'int', up => 'pre_who(v)');
SELECT * FROM mig_preflight('pre_t', 'v', 'int', up => 'pre_escape(v)');
SELECT current_user = session_user AS caller_restored;
-- the same function outside preflight, as the owner: SET ROLE works there,
-- so only the restricted operation refused it
SET ROLE pre_owner;
SELECT pre_escape('abc');
SELECT current_user;
RESET ROLE;
-- the owner itself may run it; a role that does not own the table may not
SET ROLE pre_owner;
SELECT check_name, passed, failing FROM mig_preflight('pre_t', 'v', 'int', up => $$nullif(v, 'x')::int$$);
SET ROLE pre_other;
SELECT * FROM mig_preflight('pre_t', 'v', 'int');
RESET ROLE;

-- objects planted in the caller's search_path, ahead of pg_catalog: the
-- statements preflight generates never reach them
CREATE SCHEMA evil;
CREATE FUNCTION evil.trap() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
	RAISE EXCEPTION 'a planted object was called';
END $$;
CREATE FUNCTION evil.tid_ge(tid, tid) RETURNS boolean LANGUAGE sql AS 'SELECT evil.trap()';
CREATE OPERATOR evil.>= (LEFTARG = tid, RIGHTARG = tid, FUNCTION = evil.tid_ge);
CREATE OPERATOR evil.< (LEFTARG = tid, RIGHTARG = tid, FUNCTION = evil.tid_ge);
CREATE FUNCTION evil.text(int) RETURNS text LANGUAGE sql AS 'SELECT evil.trap()::text';
CREATE FUNCTION evil.count() RETURNS bigint LANGUAGE sql AS 'SELECT evil.trap()::int::bigint';
CREATE FUNCTION evil.lower(text) RETURNS text LANGUAGE sql AS 'SELECT evil.trap()::text';
CREATE FUNCTION evil."int4"(text) RETURNS int LANGUAGE sql AS 'SELECT evil.trap()::int';
SET search_path = evil, pg_catalog, public;
SELECT * FROM mig_preflight('shop.customer', 'email', up => 'pg_catalog.lower(email)')
 WHERE NOT passed;
SELECT check_name, failing FROM mig_preflight('shop.customer', 'loyalty_points', 'integer');
-- the user's own expression is cooked in the caller's search_path, as
-- mig_expand cooks it: there "lower" is evil.lower, which both refuse
SELECT * FROM mig_preflight('shop.customer', 'email', up => 'lower(email)') WHERE NOT passed;
SELECT sqlstate_of($$SELECT mig_expand('shop.customer', 'email', up => 'lower(email)')$$) AS expand;
RESET search_path;

-- bad input: the same SQLSTATE as mig_expand for each
CREATE TABLE pre_bad (id int PRIMARY KEY, email text, n int, g int GENERATED ALWAYS AS (n + 1) STORED);
CREATE VIEW pre_bad_view AS SELECT id, email FROM pre_bad;
SELECT args, sqlstate_of(format('SELECT mig_expand(%s)', args)) AS expand,
	   sqlstate_of(format('SELECT * FROM mig_preflight(%s)', args)) AS preflight
  FROM (VALUES
	($$'pre_bad', 'nosuch'$$),
	($$'pre_bad', 'ctid'$$),
	($$NULL, 'email'$$),
	($$'pre_bad', NULL$$),
	($$'pre_bad_view', 'email'$$),
	($$'pre_bad', 'g'$$),
	($$'pre_bad', 'email', type => 'nosuchtype'$$),
	($$'pre_bad', 'email', type => 'anyelement'$$),
	($$'pre_bad', 'email', type => 'int; drop table pre_bad'$$),
	($$'pre_bad', 'email', up => 'lower(emial)'$$),
	($$'pre_bad', 'email', up => 'lower('$$),
	($$'pre_bad', 'email', up => 'random()::text'$$),
	($$'pre_bad', 'email', up => 'max(email)'$$),
	($$'pre_bad', 'email', up => '(SELECT email FROM pre_bad LIMIT 1)'$$),
	($$'pre_bad', 'email', up => 'lower(email); DROP TABLE pre_bad'$$),
	($$'pre_bad', 'email', type => 'int', up => 'email'$$),
	($$'pre_bad', 'n', type => 'point'$$),
	($$'pre_bad', 'n', check_expr => '_mig_new_n + 1'$$),
	($$'pre_bad', 'n', check_expr => 'nosuch > 0'$$),
	($$'pre_bad', 'n', check_expr => 'random() > 0.5'$$)
  ) v(args);
-- how an error reads: position and context, as from mig_expand
SELECT * FROM mig_preflight('pre_bad', 'email', up => 'lower(emial)');
SELECT * FROM mig_preflight('pre_bad', 'n', check_expr => '_mig_new_n + 1');
-- an error about the server rather than a row (here the stack depth) ends
-- the preflight, and a caller's exception block catches it cleanly
CREATE FUNCTION pre_deep(v text) RETURNS int LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	RETURN public.pre_deep(v);
END $$;
INSERT INTO pre_bad (id, email) VALUES (1, 'a');
SELECT sqlstate_of($$SELECT * FROM mig_preflight('pre_bad', 'email', 'int', up => 'pre_deep(email)')$$);
SELECT check_name, passed, failing FROM mig_preflight('pre_bad', 'email', 'int', up => 'length(email)');
DROP FUNCTION pre_deep(text);
-- the column name expand would add already exists
ALTER TABLE pre_bad ADD COLUMN _mig_new_email text;
SELECT sqlstate_of($$SELECT mig_expand('pre_bad', 'email')$$) AS expand,
	   sqlstate_of($$SELECT * FROM mig_preflight('pre_bad', 'email')$$) AS preflight;
-- a caller who does not own the table
SET ROLE pre_other;
SELECT sqlstate_of($$SELECT mig_expand('pre_bad', 'email')$$) AS expand,
	   sqlstate_of($$SELECT * FROM mig_preflight('pre_bad', 'email')$$) AS preflight;
RESET ROLE;
SELECT count(*) AS migrations_left FROM migrate_ext.migration WHERE relid = 'pre_bad'::regclass;

DROP TABLE pre_t, pre_bad CASCADE;
DROP FUNCTION pre_who(text), pre_escape(text);
DROP SCHEMA evil CASCADE;
DROP ROLE pre_owner, pre_other;
