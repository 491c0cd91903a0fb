--
-- The gate before the point of no return: mig_cutover and mig_contract need
-- an exact validation that passed, no failed validation since (in any phase,
-- cut-over included), no invalidation since, and the dual-write trigger
-- enabled now.  Each refusal comes first and changes nothing.
--
\set VERBOSITY terse
CREATE TABLE gate (id int PRIMARY KEY, v int NOT NULL);
INSERT INTO gate SELECT g, g FROM generate_series(1, 20) g;
SELECT mig_expand('gate', 'v', type => 'bigint') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE gate SET v = v;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('gate');

-- the trigger disabled after validation: both refuse
ALTER TABLE gate DISABLE TRIGGER zz_migrate_ext_dualwrite;
\set VERBOSITY default
SELECT mig_cutover('gate');
SELECT mig_contract('gate');
\set VERBOSITY terse
ALTER TABLE gate ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;

-- an invalidation recorded after the validation (what the trigger's
-- disabling records): refused until a new validation passes
UPDATE migrate_ext.migration SET invalidated_at = clock_timestamp(),
       invalidated_why = 'the dual-write trigger was disabled'
 WHERE relid = 'gate'::regclass AND phase = 'validated';
SELECT mig_cutover('gate');
SELECT bool_and(passed) AS validated FROM mig_validate('gate');
SELECT mig_cutover('gate');
SELECT phase FROM migrate_ext.migration WHERE relid = 'gate'::regclass;

-- in phase cutover, a failed validation blocks contract (the phase stays)
ALTER TABLE gate DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE gate SET _mig_new_v = -1 WHERE id = 3;
ALTER TABLE gate ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
SELECT check_name, passed, failing FROM mig_validate('gate') WHERE NOT passed;
SELECT mig_contract('gate');
SELECT attname FROM pg_attribute
 WHERE attrelid = 'gate'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;

-- a failing sampled run counts too (analyzed: the sample is every row)
VACUUM ANALYZE gate;
SELECT bool_and(passed) AS sample_passed FROM mig_validate('gate', sample => 1000);
SELECT mig_contract('gate');

-- fixed and validated again: contract goes through
UPDATE gate SET _mig_new_v = 3 WHERE id = 3;
SELECT bool_and(passed) AS validated FROM mig_validate('gate');
SELECT mig_contract('gate');
SELECT id, v FROM gate WHERE id IN (1, 3, 20) ORDER BY id;
SELECT atttypid::regtype FROM pg_attribute WHERE attrelid = 'gate'::regclass AND attname = 'v';
DROP TABLE gate;
