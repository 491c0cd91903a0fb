-- mig_status, mig_progress, mig_history: every column, driven by job rows
-- inserted by hand (the backfill worker writes them for real).  A job looks
-- alive while someone holds the advisory lock (migrate_ext.lock_key('job'), job id): here,
-- this session.
SET client_min_messages = notice;
CREATE TABLE rep_st (id int PRIMARY KEY, email text);
INSERT INTO rep_st SELECT g, 'U' || g || '@X.org' FROM generate_series(1, 10) g;
SELECT mig_expand('rep_st', 'email', up => 'lower(email)') > 0 AS expanded;

-- before any backfill: the job columns are NULL
SELECT table_name, columns, phase, state, throttle_reason, rows_done, rows_total,
       percent, bar, rate_recent, rate_avg, eta, batch_size, batches, retries,
       last_error, last_sqlstate, started_at, job_id, rows_seen, rows_total_exact,
       updated_at IS NOT NULL AS has_updated_at
  FROM mig_status WHERE table_name = 'rep_st';

-- a job: 1234 of ~5000 rows covered in 10 s of running time
INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid,
                             rows_total, rows_done, rows_seen, batch_size, batches,
                             active_seconds, rate_recent)
SELECT m.id, 'running', d.oid, 10, 10, 5000, 1200, 1234, 8000, 3, 10, 100
  FROM migrate_ext.migration m, pg_database d
 WHERE m.relid = 'rep_st'::regclass AND d.datname = current_database();
CREATE VIEW rep_v AS
SELECT state, throttle_reason, rows_done, rows_seen, rows_total, rows_total_exact,
       percent, translate(bar, '█░', '#.') AS bar, rate_recent, rate_avg, eta,
       batch_size, batches, retries, last_error, last_sqlstate
  FROM mig_status WHERE table_name = 'rep_st';
-- nobody holds the worker's lock: interrupted, and so no rate or ETA
SELECT * FROM rep_v;
-- the worker's lock held: running
SELECT pg_advisory_lock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int) IS NOT NULL AS locked;
SELECT * FROM rep_v;
-- the bar renders in the database encoding, 20 cells
SELECT bar, length(bar) FROM mig_status WHERE table_name = 'rep_st';
-- no recent rate: the ETA uses the average over running time
UPDATE migrate_ext.job SET rate_recent = NULL WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rate_recent, rate_avg, eta FROM rep_v;
-- not enough to say: no batch yet, or less than a second of work
UPDATE migrate_ext.job SET batches = 0 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rate_avg, eta FROM rep_v;
UPDATE migrate_ext.job SET batches = 3, active_seconds = 0.5 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rate_avg, eta FROM rep_v;
UPDATE migrate_ext.job SET active_seconds = 0 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rate_avg, eta FROM rep_v;
-- the estimate was low: rows_total follows the rows covered, percent stays below 100
UPDATE migrate_ext.job SET active_seconds = 60, rows_seen = 6000, rows_done = 5900
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rows_seen, rows_total, rows_total_exact, percent, bar, eta FROM rep_v;
-- an exact total
UPDATE migrate_ext.job SET rows_total = 8000, rows_total_exact = true, rate_recent = 250
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rows_total, rows_total_exact, percent, bar, rate_recent, rate_avg, eta FROM rep_v;
-- throttled, with its reason
UPDATE migrate_ext.job SET state = 'throttled', throttle_reason = 'replica lag 12 s > 10 s'
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT state, throttle_reason, rate_recent, eta FROM rep_v;
-- paused: no rate now and no ETA (it will not finish while paused)
UPDATE migrate_ext.job SET state = 'paused', throttle_reason = NULL
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT state, rate_recent, rate_avg, eta FROM rep_v;
-- no estimate at all, or an empty table
UPDATE migrate_ext.job SET state = 'running', rows_total = NULL, rows_total_exact = false, rows_seen = 0
 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rows_total, percent, bar, eta FROM rep_v;
UPDATE migrate_ext.job SET rows_total = 0 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT rows_total, percent, bar, eta FROM rep_v;
-- done: the total is the rows covered, exactly, and 100%
UPDATE migrate_ext.job SET state = 'done', rows_total = 5000, rows_seen = 7342, rows_done = 7000,
       finished_at = now() WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT state, rows_done, rows_total, rows_total_exact, percent, bar, rate_recent, rate_avg, eta FROM rep_v;
-- failed, with the error; the lock no longer matters once the job ended
SELECT pg_advisory_unlock(migrate_ext.lock_key('job'), (SELECT max(id) FROM migrate_ext.job)::int);
UPDATE migrate_ext.job SET state = 'failed', rows_seen = 100, last_error = 'deadlock detected',
       last_sqlstate = '40P01', retries = 4 WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT state, percent, batch_size, batches, retries, last_error, last_sqlstate, eta FROM rep_v;
-- interrupted as recorded by the launcher
UPDATE migrate_ext.job SET state = 'interrupted' WHERE id = (SELECT max(id) FROM migrate_ext.job);
SELECT state, percent, eta FROM rep_v;
-- the latest job of the migration is the one shown
INSERT INTO migrate_ext.job (migration_id, state, dboid, role_oid, login_oid, rows_total, rows_seen,
                             rows_done, batch_size)
SELECT migration_id, 'cancelled', 0, 10, 10, 5000, 2500, 2500, 500 FROM mig_status WHERE table_name = 'rep_st';
SELECT state, rows_done, percent, batch_size, job_id = (SELECT max(id) FROM migrate_ext.job) AS latest FROM mig_status
 WHERE table_name = 'rep_st';
-- started_at, updated_at are the job's (updated_at: the later of job and migration)
SELECT s.started_at = j.started_at AS started, s.updated_at >= j.updated_at AS updated
  FROM mig_status s JOIN migrate_ext.job j ON j.id = s.job_id WHERE s.table_name = 'rep_st';

-- mig_progress: the same row for one table, also once the migration ended
SELECT table_name, phase, state, percent FROM mig_progress('rep_st');

-- several pairs: the columns joined
CREATE TABLE rep_split (id int PRIMARY KEY, name text);
SELECT mig_expand('rep_split', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)') > 0 AS ok;
SELECT mig_expand('rep_split', 'name', new_col => 'last_name', up => 'split_part(name, '' '', 2)') > 0 AS ok;
SELECT replace(columns, migrate_ext.arrow(), '->') AS columns FROM mig_status WHERE table_name = 'rep_split';
SELECT columns FROM mig_progress('rep_split');

-- mig_history: every migration, with who moved it to each phase and when
CREATE ROLE rep_alice;
CREATE TABLE rep_hist (id int PRIMARY KEY, v int);
INSERT INTO rep_hist VALUES (1, 1), (2, 2);
ALTER TABLE rep_hist OWNER TO rep_alice;
SET ROLE rep_alice;
SELECT mig_expand('rep_hist', 'v', type => 'bigint') > 0 AS ok;
UPDATE rep_hist SET v = v;
SELECT passed FROM mig_validate('rep_hist');
SELECT mig_abort('rep_hist');
-- reading status needs no privilege on the table
SELECT table_name, phase FROM mig_progress('rep_hist');
RESET ROLE;
SELECT count(*) FROM mig_status WHERE table_name = 'rep_hist';
SELECT table_name, phase, state, created_by = session_user AS by_session_user, created_at IS NOT NULL AS has_created_at,
       jsonb_array_length(phases) AS n
  FROM mig_history WHERE table_name = 'rep_hist';
SELECT e->>'phase' AS phase, e->>'by' AS by, e->>'detail' AS detail, (e->>'at')::timestamptz <= now() AS at_ok
  FROM mig_history, jsonb_array_elements(phases) e WHERE table_name = 'rep_hist';
-- a new migration of the same table: history keeps both, status shows the new one
SELECT mig_expand('rep_hist', 'v', type => 'numeric') > 0 AS ok;
SELECT phase FROM mig_history WHERE table_name = 'rep_hist' ORDER BY migration_id;
SELECT phase FROM mig_status WHERE table_name = 'rep_hist';
SELECT phase FROM mig_progress('rep_hist');

-- bad input
SELECT * FROM mig_progress('rep_nosuch');
CREATE TABLE rep_plain (id int);
SELECT * FROM mig_progress('rep_plain');
SELECT * FROM mig_progress(NULL);
