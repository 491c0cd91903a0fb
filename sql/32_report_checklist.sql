-- mig_checklist and mig_wait.  Timestamps and ids vary: masked.
CREATE FUNCTION pg_temp.masked(t text) RETURNS text LANGUAGE sql AS $$
SELECT replace(regexp_replace(regexp_replace(t,
         '\d{4}-\d\d-\d\d \d\d:\d\d:\d\d[+-]\d\d(:\d\d)?', 'TIME', 'g'),
         '(Migration|job|run) \d+', '\1 N', 'g'), 'by ' || current_user, 'by USER')
$$;
CREATE TABLE rep_ck (id int PRIMARY KEY, email text);
INSERT INTO rep_ck SELECT g, 'U' || g || '@X.org' FROM generate_series(1, 20) g;
SELECT mig_expand('rep_ck', 'email', up => 'lower(email)', not_null => true) > 0 AS ok;

-- just expanded
SELECT pg_temp.masked(mig_checklist('rep_ck'));

-- a backfill job running, with live figures and its last error
INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid, rows_total,
                             rows_done, rows_seen, batch_size, batches, retries, active_seconds,
                             rate_recent, last_error, last_sqlstate)
SELECT id, 'running', (SELECT oid FROM pg_database WHERE datname = current_database()), 10, 10,
       20, 8, 10, 5, 2, 1, 2, 4, 'canceling statement due to lock timeout', '55P03'
  FROM migrate_ext.migration WHERE relid = 'rep_ck'::regclass;
UPDATE migrate_ext.migration SET phase = 'backfilling' WHERE relid = 'rep_ck'::regclass;
SELECT pg_advisory_lock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int) IS NOT NULL AS locked;
SELECT pg_temp.masked(mig_checklist('rep_ck'));

-- mig_wait: a line now and one when the timeout passes; the job goes on
SELECT mig_wait('rep_ck', timeout => '0.3 s');
UPDATE migrate_ext.job SET state = 'throttled', throttle_reason = 'rate cap 100 rows/s'
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT mig_wait('rep_ck', '0.1 s');
-- the worker gone without a word: interrupted (after a short grace)
SELECT pg_advisory_unlock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int);
SELECT mig_wait('rep_ck');

-- done: the rows are backfilled, the checklist ticks the backfill
UPDATE rep_ck SET email = email;
UPDATE migrate_ext.job SET state = 'done', rows_seen = 20, rows_done = 20, last_error = NULL,
       last_sqlstate = NULL, throttle_reason = NULL, finished_at = now()
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
UPDATE migrate_ext.migration SET phase = 'backfilled' WHERE relid = 'rep_ck'::regclass;
SELECT mig_wait('rep_ck');
-- a failed validation shows in the checklist
UPDATE rep_ck SET email = NULL WHERE id = 3;
SELECT check_name, passed FROM mig_validate('rep_ck') WHERE NOT passed;
SELECT substring(pg_temp.masked(mig_checklist('rep_ck')) FROM '## 3\. Validate.*## 4');
-- validated
UPDATE rep_ck SET email = 'u3@x.org' WHERE id = 3;
SELECT bool_and(passed) FROM mig_validate('rep_ck');
SELECT pg_temp.masked(mig_checklist('rep_ck'));

-- aborted: nothing left to do
SELECT mig_abort('rep_ck');
SELECT (regexp_match(pg_temp.masked(mig_checklist('rep_ck')), '^(.*?)## 1'))[1];
SELECT regexp_matches(pg_temp.masked(mig_checklist('rep_ck')), '- \[[x ]\] [^\n]*', 'g');

-- the other end states of mig_wait
CREATE TABLE rep_w (id int PRIMARY KEY, v int);
SELECT mig_expand('rep_w', 'v', type => 'bigint') > 0 AS ok;
SELECT mig_wait('rep_w');
INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid, rows_total, rows_seen,
                             batch_size, last_error, last_sqlstate)
SELECT id, 'failed', 0, 10, 10, 1000, 300, 100, 'out of memory', '53200'
  FROM migrate_ext.migration WHERE relid = 'rep_w'::regclass;
SELECT mig_wait('rep_w');
UPDATE migrate_ext.job SET state = 'cancelled' WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT mig_wait('rep_w');
-- bad input
BEGIN ISOLATION LEVEL REPEATABLE READ;
SELECT mig_wait('rep_w');
ROLLBACK;
SELECT mig_wait('rep_w', '-1 s');
SELECT mig_wait(NULL);
SELECT mig_wait('rep_nosuch');
CREATE TABLE rep_nomig (id int);
SELECT mig_wait('rep_nomig');
SELECT mig_checklist('rep_nomig');
\set VERBOSITY sqlstate
SELECT mig_checklist('rep_nomig');
SELECT mig_wait('rep_nomig');
CREATE TABLE rep_nojob (id int PRIMARY KEY, v int);
SELECT mig_expand('rep_nojob', 'v', type => 'bigint') > 0 AS ok;
SELECT mig_wait('rep_nojob');
BEGIN ISOLATION LEVEL SERIALIZABLE;
SELECT mig_wait('rep_w');
ROLLBACK;
\set VERBOSITY default
