-- mig_validate: every check, caught corruption with its keys named, and
-- the phase moves it makes.
CREATE TABLE rep_val (id int PRIMARY KEY, email text);
INSERT INTO rep_val SELECT g, 'User' || g || '@Example.COM' FROM generate_series(1, 50) g;
INSERT INTO rep_val VALUES (51, NULL);
SELECT mig_expand('rep_val', 'email', up => 'lower(email)', not_null => true,
                  check_expr => '_mig_new_email LIKE ''%@%''') > 0 AS ok;
CREATE VIEW rep_val_phase AS
SELECT phase FROM migrate_ext.migration WHERE relid = 'rep_val'::regclass AND phase <> 'aborted';

-- nothing backfilled yet: every row fails, the first keys are named
SELECT * FROM mig_validate('rep_val');
SELECT * FROM rep_val_phase;

-- write every row through the trigger (what the backfill does): only the
-- NULL email is left, under not_null
UPDATE rep_val SET email = email;
SELECT * FROM mig_validate('rep_val');
SELECT * FROM rep_val_phase;

-- fix it up: all checks pass, the migration is validated
UPDATE rep_val SET email = 'nobody@example.com' WHERE id = 51;
SELECT * FROM mig_validate('rep_val');
SELECT * FROM rep_val_phase;
-- validating again keeps it validated
SELECT bool_and(passed) FROM mig_validate('rep_val');
SELECT * FROM rep_val_phase;

-- writes behind the trigger's back: a replica-role session corrupts a
-- handful of rows; the next validation names them and takes the
-- validation back
SET client_min_messages = error;	-- bypass the trigger: its DISABLE is recorded
ALTER TABLE rep_val DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_val SET email = 'Changed' || id || '@example.com' WHERE id IN (7, 13, 42);
UPDATE rep_val SET _mig_new_email = NULL WHERE id = 20;
ALTER TABLE rep_val ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
RESET client_min_messages;
SELECT * FROM mig_validate('rep_val');
SELECT * FROM rep_val_phase;

-- a row failing check_expr
UPDATE rep_val SET email = email WHERE id IN (7, 13, 20, 42);
UPDATE rep_val SET email = 'no-at-sign' WHERE id = 33;
SELECT * FROM mig_validate('rep_val') WHERE NOT passed;
UPDATE rep_val SET email = 'x@y' WHERE id = 33;

-- a disabled trigger fails its check, and what was written meanwhile is caught
ALTER TABLE rep_val DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_val SET email = 'Late@Example.com' WHERE id = 5;
SELECT * FROM mig_validate('rep_val') WHERE NOT passed;
ALTER TABLE rep_val ENABLE REPLICA TRIGGER zz_migrate_ext_dualwrite;
SELECT * FROM mig_validate('rep_val') WHERE check_name = 'trigger_enabled';
ALTER TABLE rep_val ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_val SET email = email WHERE id = 5;
SELECT * FROM mig_validate('rep_val') WHERE NOT passed;
SELECT * FROM rep_val_phase;
ALTER TABLE rep_val ENABLE TRIGGER zz_migrate_ext_dualwrite;

-- the trigger dropped by hand, behind the guard's back (event triggers do
-- not fire under session_replication_role = replica)
BEGIN;
SET LOCAL session_replication_role = replica;
DROP TRIGGER zz_migrate_ext_dualwrite ON rep_val;
RESET session_replication_role;
SELECT * FROM mig_validate('rep_val') WHERE NOT passed;
ROLLBACK;

-- results are kept for the checklist: the last run, one row per check
SELECT sample, rows_checked, ord, check_name, passed, failing, by_role = current_user AS by_me
  FROM migrate_ext.validation
 WHERE run = (SELECT max(run) FROM migrate_ext.validation)
 ORDER BY ord;

-- a sample: about n random rows, said in the detail; it never validates
CREATE TABLE rep_big (id int PRIMARY KEY, v int);
INSERT INTO rep_big SELECT g, g FROM generate_series(1, 20000) g;
SELECT mig_expand('rep_big', 'v', type => 'bigint') > 0 AS ok;
UPDATE rep_big SET v = v;
ANALYZE rep_big;
SELECT check_name, passed, failing, detail ~ '^random sample: \d+ rows checked$' AS says_sample
  FROM mig_validate('rep_big', sample => 200);
SELECT rows_checked BETWEEN 50 AND 800 AS about_200, sample
  FROM migrate_ext.validation WHERE run = (SELECT max(run) FROM migrate_ext.validation) AND ord = 1;
SELECT phase FROM mig_progress('rep_big');
-- a sample larger than the table reads every row, and finds every corruption
SET client_min_messages = error;	-- bypass the trigger: its DISABLE is recorded
ALTER TABLE rep_big DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_big SET _mig_new_v = -1 WHERE id IN (4, 19999);
ALTER TABLE rep_big ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
RESET client_min_messages;
SELECT * FROM mig_validate('rep_big', sample => 1000000) WHERE NOT passed;
SELECT phase FROM mig_progress('rep_big');
-- an exact run over many chunks: a corrupted row in the last block is found
SELECT pg_relation_size('rep_big') / current_setting('block_size')::int > 1 AS several_blocks;
SELECT * FROM mig_validate('rep_big') WHERE NOT passed;

-- with down: old must match down(new) up to what up can tell apart.  text
-- to jsonb: '{"a":1}' and its down '{"a": 1}' are the same value
CREATE TABLE rep_json (id int PRIMARY KEY, payload text);
INSERT INTO rep_json VALUES (1, '{"a":1}'), (2, '[1,2]'), (3, '{"b":  "x"}');
SELECT mig_expand('rep_json', 'payload', type => 'jsonb') > 0 AS ok;
UPDATE rep_json SET payload = payload;
SELECT * FROM mig_validate('rep_json');
-- a down that does not invert up fails it
CREATE TABLE rep_down (id int PRIMARY KEY, v int);
INSERT INTO rep_down SELECT g, g FROM generate_series(1, 5) g;
SELECT mig_expand('rep_down', 'v', new_col => 'w', up => 'v * 2', down => 'w + 1') > 0 AS ok;
UPDATE rep_down SET v = v WHERE id <= 3;
SELECT * FROM mig_validate('rep_down');

-- a type without equality (json) is compared by its text; no primary key:
-- the example rows are named by a unique key
CREATE TABLE rep_nokey (code text NOT NULL UNIQUE, doc text);
INSERT INTO rep_nokey VALUES ('a', '{"x": 1}'), ('b', '{"x": 2}');
SELECT mig_expand('rep_nokey', 'doc', type => 'json') > 0 AS ok;
UPDATE rep_nokey SET doc = doc;
SET client_min_messages = error;	-- bypass the trigger: its DISABLE is recorded
ALTER TABLE rep_nokey DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_nokey SET _mig_new_doc = '{"x": 3}' WHERE code = 'b';
ALTER TABLE rep_nokey ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
RESET client_min_messages;
SELECT * FROM mig_validate('rep_nokey') WHERE check_name = 'new_equals_up';
-- no key at all: by ctid
CREATE TABLE rep_heap (v int);
INSERT INTO rep_heap VALUES (1), (2), (3);
SELECT mig_expand('rep_heap', 'v', type => 'bigint') > 0 AS ok;
SELECT * FROM mig_validate('rep_heap') WHERE check_name = 'backfilled';

-- several pairs: one set of checks per pair, named after its new column
CREATE TABLE rep_split2 (id int PRIMARY KEY, name text);
INSERT INTO rep_split2 VALUES (1, 'Ada Lovelace'), (2, 'Alan Turing');
SELECT mig_expand('rep_split2', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)') > 0 AS ok;
SELECT mig_expand('rep_split2', 'name', new_col => 'last_name', up => 'split_part(name, '' '', 2)',
                  not_null => true) > 0 AS ok;
UPDATE rep_split2 SET name = name WHERE id = 1;
SELECT * FROM mig_validate('rep_split2');

-- a backfill job still running fails 'backfilled' even when the rows look done
INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid)
SELECT id, 'running', (SELECT oid FROM pg_database WHERE datname = current_database()), 10, 10
  FROM migrate_ext.migration WHERE relid = 'rep_json'::regclass;
SELECT pg_advisory_lock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int) IS NOT NULL AS locked;
SELECT check_name, passed, failing, regexp_replace(detail, 'job \d+', 'job N') AS detail
  FROM mig_validate('rep_json') WHERE check_name = 'backfilled';
SELECT phase FROM mig_progress('rep_json');
-- once the worker is gone (interrupted), the rows decide
SELECT pg_advisory_unlock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int);
SELECT check_name, passed FROM mig_validate('rep_json') WHERE check_name = 'backfilled';
SELECT phase FROM mig_progress('rep_json');

-- a cut-over migration is never moved back by a failed validation
UPDATE migrate_ext.migration SET phase = 'cutover' WHERE relid = 'rep_json'::regclass;
SET client_min_messages = error;	-- bypass the trigger: its DISABLE is recorded
ALTER TABLE rep_json DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE rep_json SET _mig_new_payload = '{}' WHERE id = 2;
ALTER TABLE rep_json ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
RESET client_min_messages;
SELECT check_name, passed, failing FROM mig_validate('rep_json') WHERE NOT passed;
SELECT phase FROM mig_progress('rep_json');

-- bad input
SELECT * FROM mig_validate('rep_nosuch');
CREATE TABLE rep_none (id int);
SELECT * FROM mig_validate('rep_none');
SELECT * FROM mig_validate('rep_val', sample => 0);
SELECT * FROM mig_validate(NULL);
CREATE ROLE rep_bob;
SET ROLE rep_bob;
SELECT * FROM mig_validate('rep_val');
RESET ROLE;
SELECT mig_abort('rep_val');
SELECT * FROM mig_validate('rep_val');
CREATE VIEW rep_view AS SELECT 1 AS x;
SELECT * FROM mig_validate('rep_view');
-- the SQLSTATEs
\set VERBOSITY sqlstate
SET ROLE rep_bob;
SELECT * FROM mig_validate('rep_big');
RESET ROLE;
SELECT * FROM mig_validate('rep_none');
SELECT * FROM mig_validate('rep_big', sample => -1);
SELECT * FROM mig_validate('rep_view');
\set VERBOSITY default
