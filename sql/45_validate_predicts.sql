--
-- Validation predicts what contract would meet, each a named check with a
-- count and examples, so that contract never fails on a data reason after a
-- passed validation.
--
\set VERBOSITY terse
-- a default that does not fit the new type
CREATE TABLE p_def (id int PRIMARY KEY, code text NOT NULL DEFAULT '0'::text);
INSERT INTO p_def (id) SELECT g FROM generate_series(1, 5) g;
SELECT mig_expand('p_def', 'code', type => 'int') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE p_def SET code = code;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('p_def')
 WHERE check_name IN ('default_fits:code', 'not_null');
SELECT phase FROM migrate_ext.migration WHERE relid = 'p_def'::regclass;
SELECT mig_abort('p_def');

-- NOT NULL of the old column, NULLs in the new one; a unique index that
-- up() makes collide
CREATE TABLE p_users (id int PRIMARY KEY, email text NOT NULL UNIQUE);
INSERT INTO p_users VALUES (1, 'A@x'), (2, 'a@x'), (3, 'b@x'), (4, 'c@x');
SELECT mig_expand('p_users', 'email', up => 'nullif(lower(email), ''c@x'')') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE p_users SET email = email;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('p_users') WHERE NOT passed;
SELECT mig_abort('p_users');

-- foreign keys in and out, and one declared on a partitioned table (moved
-- by contract leaf by leaf: no blocker)
CREATE TABLE p_cat (code text PRIMARY KEY);
INSERT INTO p_cat VALUES ('a'), ('b');
CREATE TABLE p_item (id int PRIMARY KEY, cat text REFERENCES p_cat);
INSERT INTO p_item VALUES (1, 'a'), (2, 'b'), (3, NULL);
CREATE TABLE p_line (item_id int REFERENCES p_item, n int);
INSERT INTO p_line VALUES (1, 1), (2, 1), (3, 1);
CREATE TABLE p_part (item_id int REFERENCES p_item, n int) PARTITION BY RANGE (n);
CREATE TABLE p_part_1 PARTITION OF p_part FOR VALUES FROM (0) TO (100);
INSERT INTO p_part VALUES (2, 5);
-- the key shifted by up(): referencing rows lose their match
SELECT mig_expand('p_item', 'id', type => 'bigint', up => 'id + 1', down => 'id - 1') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE p_item SET id = id;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('p_item') WHERE check_name ~ 'fkey|blockers';
SELECT mig_abort('p_item');
-- the referencing column changed: upper() loses the match with p_cat
SELECT mig_expand('p_item', 'cat', up => 'upper(cat)') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE p_item SET cat = cat;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('p_item') WHERE check_name ~ 'fkey';
SELECT mig_abort('p_item');
DROP TABLE p_part, p_line, p_item, p_cat, p_users, p_def;

-- a foreign key declared on a partitioned table that references a
-- partitioned table being migrated: its copy needs the new key, made only in
-- the swap, where it is added NOT VALID on each leaf (no blocker)
CREATE TABLE p_pitem (id int, k int, PRIMARY KEY (id, k)) PARTITION BY LIST (k);
CREATE TABLE p_pitem_1 PARTITION OF p_pitem FOR VALUES IN (1);
INSERT INTO p_pitem VALUES (1, 1);
CREATE TABLE p_pref (item_id int, k int, n int, FOREIGN KEY (item_id, k) REFERENCES p_pitem)
	PARTITION BY RANGE (n);
CREATE TABLE p_pref_1 PARTITION OF p_pref FOR VALUES FROM (0) TO (100);
INSERT INTO p_pref VALUES (1, 1, 5);
SELECT mig_expand('p_pitem', 'id', type => 'bigint') > 0 AS expanded;
UPDATE p_pitem SET id = id;
SELECT check_name, passed, failing, detail FROM mig_validate('p_pitem') WHERE check_name = 'contract_blockers';
SELECT mig_abort('p_pitem');
DROP TABLE p_pref, p_pitem;

-- a check that cannot run (no privilege on the referenced table) fails and
-- says why (conservative: it blocks contract unless forced); mig_validate itself goes on
CREATE ROLE p_app;
CREATE SCHEMA p_app AUTHORIZATION p_app;
CREATE TABLE p_ref (code text PRIMARY KEY);
INSERT INTO p_ref VALUES ('a');
GRANT REFERENCES ON p_ref TO p_app;
SET ROLE p_app;
CREATE TABLE p_app.p_mine (id int PRIMARY KEY, code text REFERENCES public.p_ref);
INSERT INTO p_app.p_mine VALUES (1, 'a');
SELECT mig_expand('p_app.p_mine', 'code', up => 'code') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE p_app.p_mine SET code = code;
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('p_app.p_mine') WHERE NOT passed;
SELECT mig_abort('p_app.p_mine');
DROP TABLE p_app.p_mine;
RESET ROLE;
DROP TABLE p_ref;
DROP SCHEMA p_app;
DROP ROLE p_app;
