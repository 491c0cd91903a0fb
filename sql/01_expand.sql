-- mig_expand: the new column, the trigger, the catalog rows
CREATE TABLE users (id serial PRIMARY KEY, email text NOT NULL, name text);
INSERT INTO users (email, name) VALUES ('Foo@Example.COM', 'Foo Bar'), ('bar@y.org', 'Bar Baz');

SELECT mig_expand('users', 'email', up => 'lower(email)') AS migration_id \gset
SELECT :migration_id > 0 AS has_id;

-- nullable, no default: metadata-only; existing rows are the backfill's job
SELECT attname, format_type(atttypid, atttypmod), attnotnull, atthasdef
  FROM pg_attribute WHERE attrelid = 'users'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attnum;
SELECT tgname, tgenabled, pg_get_triggerdef(oid) FROM pg_trigger WHERE tgrelid = 'users'::regclass;
SELECT * FROM users ORDER BY id;

SELECT table_name, phase, created_by = current_user AS by_me FROM migrate_ext.migration WHERE id = :migration_id;
SELECT ord, old_col, new_col, in_place, new_type, up_src, down_src IS NULL AS no_down,
       down_expr IS NULL AS no_reverse_sync, not_null, check_src
  FROM migrate_ext.column_pair WHERE migration_id = :migration_id;
SELECT phase, by_role = current_user AS by_me FROM migrate_ext.phase_log WHERE migration_id = :migration_id;

-- new rows are dual-written from the first statement on
INSERT INTO users (email) VALUES ('NEW@Z.com');
UPDATE users SET email = 'Changed@X.org' WHERE id = 1;
SELECT id, email, _mig_new_email FROM users ORDER BY id;

-- a named new column, with type and both expressions
CREATE TABLE prices (id int PRIMARY KEY, cents int);
INSERT INTO prices VALUES (1, 1999);
SELECT mig_expand('prices', 'cents', new_col => 'amount', type => 'numeric(12,2)',
                  up => 'cents / 100.0', down => '(amount * 100)::int') > 0 AS ok;
SELECT ord, old_col, new_col, in_place, new_type, up_src, down_src FROM migrate_ext.column_pair
 WHERE migration_id = (SELECT id FROM migrate_ext.migration WHERE relid = 'prices'::regclass);
INSERT INTO prices (id, cents) VALUES (2, 250);
INSERT INTO prices (id, amount) VALUES (3, 7.5);
SELECT * FROM prices ORDER BY id;

-- the default up is a cast to the new type, and the default down casts back
CREATE TABLE orders (id serial PRIMARY KEY, note text);
SELECT mig_expand('orders', 'id', type => 'bigint') > 0 AS ok;
SELECT up_src, up_expr IS NOT NULL AS has_tree, down_src, down_expr IS NOT NULL AS has_down FROM migrate_ext.column_pair
 WHERE migration_id = (SELECT id FROM migrate_ext.migration WHERE relid = 'orders'::regclass);
INSERT INTO orders (note) VALUES ('a'), ('b');
SELECT id, _mig_new_id, pg_typeof(_mig_new_id) FROM orders ORDER BY id;

-- quoted identifiers everywhere: no SQL is built by pasting names
CREATE SCHEMA "My Schema";
CREATE TABLE "My Schema"."Weird Table" ("E-mail" text, "select" int);
INSERT INTO "My Schema"."Weird Table" VALUES ('A@B', 1);
SELECT mig_expand('"My Schema"."Weird Table"', 'E-mail', new_col => 'e mail; drop table users',
                  up => 'lower("E-mail")') > 0 AS ok;
UPDATE "My Schema"."Weird Table" SET "E-mail" = 'X@Y';
SELECT * FROM "My Schema"."Weird Table";
SELECT table_name FROM migrate_ext.migration WHERE relid = '"My Schema"."Weird Table"'::regclass;
SELECT count(*) AS users_still_there FROM users;

-- the stored tree, not the text, is what runs: a later search_path changes nothing
CREATE SCHEMA s1;
CREATE SCHEMA s2;
CREATE FUNCTION s1.norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1)';
CREATE FUNCTION s2.norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT upper($1)';
CREATE TABLE contacts (id int PRIMARY KEY, email text);
SET search_path = s1, public;
SELECT mig_expand('contacts', 'email', new_col => 'email_norm', up => 'norm(email)') > 0 AS ok;
SET search_path = s2, public;
INSERT INTO contacts VALUES (1, 'MiXeD@Case');
SELECT * FROM contacts;
RESET search_path;

-- ...but a change to the function itself is picked up by every backend's cache
INSERT INTO contacts VALUES (2, 'Before@Replace');
CREATE OR REPLACE FUNCTION s1.norm(text) RETURNS text LANGUAGE sql IMMUTABLE AS 'SELECT lower($1) || ''!''';
INSERT INTO contacts VALUES (3, 'After@Replace');
SELECT * FROM contacts ORDER BY id;
