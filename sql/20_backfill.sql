--
-- mig_backfill: a whole backfill, a rerun, and every bad input.
--
-- Jobs run in background workers: the tests wait for them by polling the
-- job row, each poll in its own transaction.
CREATE PROCEDURE bf_wait_for(cond text, timeout_s int DEFAULT 60)
LANGUAGE plpgsql AS $$
DECLARE
	ok boolean;
BEGIN
	FOR i IN 1 .. timeout_s * 20 LOOP
		EXECUTE 'SELECT ' || cond INTO ok;
		IF ok THEN
			RETURN;
		END IF;
		COMMIT;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RAISE EXCEPTION 'timed out after % s waiting for %', timeout_s, cond;
END $$;
-- the table's latest job
CREATE FUNCTION bf_job(tbl regclass) RETURNS migrate_ext.job
LANGUAGE sql AS $$
	SELECT j.* FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id
	WHERE m.relid = tbl ORDER BY j.id DESC LIMIT 1
$$;
-- does a worker hold the job's lock?
CREATE FUNCTION bf_alive(tbl regclass) RETURNS boolean
LANGUAGE sql AS $$
	SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted
				   AND classid = migrate_ext.lock_key('job') AND objid = (bf_job(tbl)).id AND objsubid = 2)
$$;

CREATE TABLE bf_users (id int PRIMARY KEY, email text NOT NULL);
INSERT INTO bf_users SELECT g, 'User' || g || '@Example.COM' FROM generate_series(1, 5000) g;
SELECT mig_expand('bf_users', 'email', up => 'lower(email)') > 0 AS expanded;
SELECT mig_backfill('bf_users', batch_size => 700) > 0 AS started;
CALL bf_wait_for($$(bf_job('bf_users')).state NOT IN ('running', 'throttled')$$);
SELECT state, throttle_reason, rows_done, rows_seen, rows_total, rows_total_exact, batches,
	   batch_size, key_kind, key_cols, lower_key, upper_key, retries, last_error,
	   active_seconds > 0 AS active, finished_at >= started_at AS finished,
	   role_oid = (SELECT oid FROM pg_roles WHERE rolname = current_user) AS as_caller
FROM bf_job('bf_users');
SELECT count(*) AS wrong FROM bf_users WHERE _mig_new_email IS DISTINCT FROM lower(email);
SELECT phase FROM migrate_ext.migration WHERE relid = 'bf_users'::regclass;
SELECT l.phase, l.by_role = current_user AS by_caller
FROM migrate_ext.phase_log l JOIN migrate_ext.migration m ON m.id = l.migration_id
WHERE m.relid = 'bf_users'::regclass ORDER BY l.at;
-- the worker is gone, and with it its lock
CALL bf_wait_for($$NOT bf_alive('bf_users')$$);

-- a rerun rewrites nothing that is right, and leaves the phase alone
UPDATE bf_users SET email = 'Changed@Example.COM' WHERE id = 42;
SELECT mig_backfill('bf_users') > 0 AS started;
CALL bf_wait_for($$(bf_job('bf_users')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, rows_seen FROM bf_job('bf_users');
SELECT _mig_new_email FROM bf_users WHERE id = 42;
SELECT phase FROM migrate_ext.migration WHERE relid = 'bf_users'::regclass;
SELECT count(*) AS jobs FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id
WHERE m.relid = 'bf_users'::regclass;

-- an empty table is done at once
CREATE TABLE bf_empty (id int PRIMARY KEY, v int);
SELECT mig_expand('bf_empty', 'v', type => 'bigint') > 0 AS expanded;
SELECT mig_backfill('bf_empty') > 0 AS started;
CALL bf_wait_for($$(bf_job('bf_empty')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, rows_total, batches, upper_key FROM bf_job('bf_empty');

--
-- Bad input: each an error that changes nothing.
--
SELECT mig_backfill(NULL);
SELECT mig_backfill('bf_users', target_batch_ms => NULL);
CREATE TABLE bf_plain (id int PRIMARY KEY, v text);
SELECT mig_backfill('bf_plain');
CREATE VIEW bf_view AS SELECT * FROM bf_users;
SELECT mig_backfill('bf_view');
SELECT mig_backfill('bf_users', batch_size => 0);
SELECT mig_backfill('bf_users', target_batch_ms => 0);
SELECT mig_backfill('bf_users', sleep_ms => -1);
SELECT mig_backfill('bf_users', max_replica_lag => '-1 s');
SELECT mig_backfill('bf_users', max_rows_per_sec => 0);
-- not the owner
CREATE ROLE bf_stranger;
GRANT SELECT ON bf_users TO bf_stranger;
SET ROLE bf_stranger;
SELECT mig_backfill('bf_users');
SELECT mig_pause('bf_users');
SELECT mig_set('bf_users', 'sleep_ms', '1');
RESET ROLE;
-- no unfinished job to steer
SELECT mig_pause('bf_users');
SELECT mig_cancel('bf_users');
SELECT mig_resume('bf_users');
SELECT mig_set('bf_users', 'sleep_ms', '10');
SELECT mig_pause('bf_plain');
-- a second job while one runs
SELECT mig_backfill('bf_users', batch_size => 1, sleep_ms => 1000) > 0 AS started;
SELECT mig_backfill('bf_users');
-- settings: unknown names and bad values
SELECT mig_set('bf_users', 'batch_sise', '10');
SELECT mig_set('bf_users', NULL, '10');
SELECT mig_set('bf_users', 'batch_size', 'ten');
SELECT mig_set('bf_users', 'batch_size', '0');
SELECT mig_set('bf_users', 'sleep_ms', '-5');
SELECT mig_set('bf_users', 'sleep_ms', NULL);
SELECT mig_set('bf_users', 'target_batch_ms', '0');
SELECT mig_set('bf_users', 'max_replica_lag', '-3 s');
SELECT mig_set('bf_users', 'max_replica_lag', 'soon');
SELECT mig_set('bf_users', 'max_rows_per_sec', '0');
SELECT mig_set('bf_users', 'fire_triggers', 'maybe');
SELECT mig_set('bf_users', 'fire_triggers', NULL);
-- bounds: every refusal is 22023, near 2^63 too
CREATE FUNCTION bf_sqlstate(q text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE q;
	RETURN 'ok';
EXCEPTION WHEN others THEN
	RETURN SQLSTATE;
END $$;
SELECT q, bf_sqlstate(q) FROM (VALUES
	($$SELECT mig_set('bf_users', 'max_rows_per_sec', '9223372036854775807')$$),
	($$SELECT mig_set('bf_users', 'max_rows_per_sec', '9223372036854775808')$$),
	($$SELECT mig_set('bf_users', 'max_rows_per_sec', '-1')$$),
	($$SELECT mig_set('bf_users', 'batch_size', '2147483648')$$),
	($$SELECT mig_set('bf_users', 'batch_size', '-2147483648')$$),
	($$SELECT mig_set('bf_users', 'sleep_ms', '1e3')$$),
	($$SELECT mig_set('bf_users', 'target_batch_ms', '')$$),
	($$SELECT mig_backfill('bf_plain', max_rows_per_sec => 9223372036854775807)$$),
	($$SELECT mig_backfill('bf_plain', batch_size => -1)$$),
	($$SELECT mig_backfill('bf_plain', sleep_ms => 2147483647)$$),
	($$SELECT mig_backfill('bf_plain', parallel => 0)$$),
	($$SELECT mig_set('bf_users', 'parallel', '-1')$$)) v(q);
-- parallel: 1 to 64 workers (a job that walks one key goes parallel: 025_backfill_goes_parallel)
SELECT mig_backfill('bf_users', parallel => 65);
SELECT mig_set('bf_users', 'parallel', '65');
SET client_min_messages = warning;	-- the NOTICE depends on whether the job has started its walk
SELECT mig_set('bf_users', 'Parallel', '4');
SELECT parallel FROM migrate_ext.jobs WHERE relid = 'bf_users'::regclass ORDER BY id DESC LIMIT 1;
SELECT mig_set('bf_users', 'parallel', '1');
RESET client_min_messages;
-- names are case-insensitive
SELECT mig_set('bf_users', 'Max_Rows_Per_Sec', '1000000000000');
SELECT mig_set('bf_users', 'SLEEP_MS', '20');
SELECT mig_set('bf_users', 'Fire_Triggers', 'on');
SELECT batch_size, batch_size_fixed, sleep_ms, target_batch_ms, max_replica_lag, max_rows_per_sec,
	   fire_triggers
FROM bf_job('bf_users');
SELECT mig_cancel('bf_users');
SELECT state, finished_at IS NOT NULL AS finished FROM bf_job('bf_users');
CALL bf_wait_for($$NOT bf_alive('bf_users')$$);
-- past the backfill
UPDATE migrate_ext.migration SET phase = 'cutover' WHERE relid = 'bf_users'::regclass;
SELECT mig_backfill('bf_users');
UPDATE migrate_ext.migration SET phase = 'backfilled' WHERE relid = 'bf_users'::regclass;
DROP VIEW bf_view;
REVOKE ALL ON bf_users FROM bf_stranger;
DROP ROLE bf_stranger;
