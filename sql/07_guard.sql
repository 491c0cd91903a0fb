--
-- What keeps a pair from diverging and the server from crashing, whatever
-- the table's owner does (issue 9), and the expand-time refusals.
--
CREATE TABLE g (id int PRIMARY KEY, v int, note text);
INSERT INTO g SELECT i, i, 'n' || i FROM generate_series(1, 5) i;
SELECT mig_expand('g', 'v', new_col => 'v2', type => 'bigint', up => 'v + length(note)') > 0 AS ok;
SELECT tgenabled FROM pg_trigger WHERE tgrelid = 'g'::regclass AND tgname = 'zz_migrate_ext_dualwrite';

-- 1. the columns it reads and writes cannot be retyped or dropped
ALTER TABLE g ALTER COLUMN v2 TYPE text;
ALTER TABLE g ALTER COLUMN v TYPE text;
ALTER TABLE g DROP COLUMN v;
ALTER TABLE g DROP COLUMN note;
ALTER TABLE g DROP COLUMN v2 CASCADE;
-- ...also without the event trigger (pg_depend), in PostgreSQL's own words
ALTER EVENT TRIGGER migrate_ext_guard_start DISABLE;
ALTER TABLE g ALTER COLUMN v2 TYPE text;
ALTER TABLE g DROP COLUMN note;
ALTER EVENT TRIGGER migrate_ext_guard_start ENABLE;
-- other DDL goes through
ALTER TABLE g ADD COLUMN extra int;
ALTER TABLE g RENAME COLUMN note TO remark;
ALTER TABLE g DROP COLUMN extra;
INSERT INTO g VALUES (6, 6, 'six');
UPDATE g SET v = v + 1 WHERE id = 1;
SELECT count(*) AS diverged FROM g WHERE id IN (1, 6) AND v2 IS DISTINCT FROM v + length(remark);

-- 2. a BEFORE trigger that would fire after the dual-write trigger
CREATE FUNCTION g_bump() RETURNS trigger LANGUAGE plpgsql AS
$$BEGIN NEW.v := NEW.v * 10; RETURN NEW; END$$;
CREATE TRIGGER "überprüfung" BEFORE INSERT OR UPDATE ON g FOR EACH ROW EXECUTE FUNCTION g_bump();
CREATE TRIGGER "~late" BEFORE UPDATE ON g FOR EACH ROW EXECUTE FUNCTION g_bump();
CREATE TRIGGER g_early BEFORE UPDATE ON g FOR EACH ROW EXECUTE FUNCTION g_bump();
ALTER TRIGGER g_early ON g RENAME TO "zz_później";
UPDATE g SET v = 7 WHERE id = 2;
SELECT id, v, v2 FROM g WHERE id = 2;
DROP TRIGGER g_early ON g;
-- AFTER triggers and BEFORE DELETE triggers may be named anything
CREATE TRIGGER "überwachung" AFTER UPDATE ON g FOR EACH ROW EXECUTE FUNCTION g_bump();
DROP TRIGGER "überwachung" ON g;

-- 3. it fires under session_replication_role = replica (ENABLE ALWAYS)
SET session_replication_role = replica;
UPDATE g SET v = 100 WHERE id = 3;
RESET session_replication_role;
SELECT id, v, v2 FROM g WHERE id = 3;

-- 4. DISABLE TRIGGER (one or ALL), ENABLE (not ALWAYS) are recorded
SELECT invalidated_at IS NULL AS clean FROM migrate_ext.migration WHERE relid = 'g'::regclass AND phase = 'expanded';
ALTER TABLE g DISABLE TRIGGER ALL;
SELECT invalidated_at IS NOT NULL AS invalidated, invalidated_why
  FROM migrate_ext.migration WHERE relid = 'g'::regclass AND phase = 'expanded';
ALTER TABLE g ENABLE TRIGGER ALL;
ALTER TABLE g ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
SELECT invalidated_why FROM migrate_ext.migration WHERE relid = 'g'::regclass AND phase = 'expanded';
-- rolled back with its ALTER
BEGIN;
ALTER TABLE g DISABLE TRIGGER zz_migrate_ext_dualwrite;
ROLLBACK;
SELECT mig_abort('g');

-- 5. expressions: immutable, no system or whole-row or generated columns
CREATE TABLE e (id int PRIMARY KEY, ts timestamp, s text, n int,
				gen int GENERATED ALWAYS AS (n * 2) STORED);
SELECT mig_expand('e', 'ts', type => 'timestamptz');
SELECT mig_expand('e', 'ts', up => 'ts::timestamptz::timestamp');
SELECT mig_expand('e', 's', type => 'date');
SELECT mig_expand('e', 'n', up => 'n + extract(epoch from now())::int');
SELECT mig_expand('e', 's', up => 's || current_user');
SELECT mig_expand('e', 's', up => 'current_setting(''TimeZone'')');
SELECT mig_expand('e', 's', up => 'e::text');
SELECT mig_expand('e', 's', up => 'tableoid::text');
SELECT mig_expand('e', 's', up => 'ctid::text');
SELECT mig_expand('e', 'n', up => 'gen + 1');
-- the recipe of the hint works
SELECT mig_expand('e', 'ts', type => 'timestamptz', up => 'ts AT TIME ZONE ''UTC''',
				  down => '_mig_new_ts AT TIME ZONE ''UTC''') > 0 AS ok;
INSERT INTO e (id, ts, s, n) VALUES (1, '2024-01-01 12:00', 'x', 1);
SET TimeZone = 'Asia/Tokyo';
INSERT INTO e (id, ts, s, n) VALUES (2, '2024-01-01 12:00', 'x', 1);
RESET TimeZone;
SELECT id, _mig_new_ts = '2024-01-01 12:00+00' AS same_instant FROM e ORDER BY id;
SELECT mig_abort('e');
-- a cast of text to an enum depends only on the enum: allowed
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
SELECT mig_expand('e', 's', new_col => 'm', type => 'mood') > 0 AS ok;
INSERT INTO e (id, s, n) VALUES (3, 'ok', 1);
SELECT id, s, m FROM e WHERE id = 3;
SELECT mig_abort('e');

-- 6. EXECUTE is checked for the role that writes, also with a cached trigger
CREATE FUNCTION g_secret(int) RETURNS bigint IMMUTABLE LANGUAGE sql AS 'SELECT $1::bigint * 2';
REVOKE EXECUTE ON FUNCTION g_secret(int) FROM PUBLIC;
CREATE TABLE gp (id int PRIMARY KEY, v int);
SELECT mig_expand('gp', 'v', new_col => 'v2', type => 'bigint', up => 'g_secret(v)') > 0 AS ok;
CREATE ROLE g_writer;
GRANT INSERT, UPDATE, SELECT ON gp TO g_writer;
INSERT INTO gp VALUES (1, 1);				-- the owner: builds the cache
SET ROLE g_writer;
INSERT INTO gp VALUES (2, 2);				-- refused for the writer
RESET ROLE;
INSERT INTO gp VALUES (3, 3);				-- the owner still writes
GRANT EXECUTE ON FUNCTION g_secret(int) TO g_writer;
SET ROLE g_writer;
INSERT INTO gp VALUES (4, 4);
RESET ROLE;
SELECT * FROM gp ORDER BY id;
SELECT mig_abort('gp');
DROP TABLE gp;
DROP FUNCTION g_secret(int);
DROP ROLE g_writer;

-- 7. split: down given on the first call, naming a column not there yet
CREATE TABLE persons (id int PRIMARY KEY, name text);
SELECT mig_expand('persons', 'name', new_col => 'first', type => 'text',
				  up => 'split_part(name, '' '', 1)',
				  down => 'first || '' '' || last');
SELECT mig_expand('persons', 'name', new_col => 'first', type => 'text',
				  up => 'split_part(name, '' '', 1)') > 0 AS ok;
SELECT mig_expand('persons', 'name', new_col => 'last', type => 'text',
				  up => 'split_part(name, '' '', 2)',
				  down => 'first || '' '' || last') > 0 AS ok;
INSERT INTO persons (id, first, last) VALUES (1, 'Ada', 'Lovelace');
SELECT * FROM persons;
SELECT mig_abort('persons');

-- 8. tables refused at expand
CREATE TEMP TABLE tmp (id int, v int);
SELECT mig_expand('tmp', 'v');
CREATE TABLE parent (id int, v int);
CREATE TABLE child () INHERITS (parent);
SELECT mig_expand('parent', 'v');
SELECT mig_expand('child', 'v');
DROP TABLE child, parent;

-- 9. the shadow name is clipped on a character boundary
CREATE TABLE wide (id int PRIMARY KEY, "ääääääääääääääääääääääääääää" int);
SELECT mig_expand('wide', 'ääääääääääääääääääääääääääää', type => 'bigint') > 0 AS ok;
SELECT attname, octet_length(attname::text) AS bytes FROM pg_attribute
 WHERE attrelid = 'wide'::regclass AND attname::text LIKE '\_mig%';
SELECT mig_abort('wide');

-- 10. a published table: expand names the publications
CREATE TABLE pubt (id int PRIMARY KEY, v int);
CREATE PUBLICATION pub_one FOR TABLE pubt;
SELECT mig_expand('pubt', 'v', type => 'bigint') > 0 AS ok;
SELECT mig_abort('pubt');
DROP PUBLICATION pub_one;
