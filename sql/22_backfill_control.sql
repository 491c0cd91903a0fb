--
-- Steering a running backfill: pause, resume, cancel, mig_set; a worker
-- that dies; the ground moving under it; a NOLOGIN owner.
--
CREATE PROCEDURE bf_until(cond text, timeout_s int DEFAULT 60)
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
CREATE FUNCTION bf_now(tbl regclass) RETURNS migrate_ext.jobs
LANGUAGE sql AS $$
	SELECT j.* FROM migrate_ext.jobs j WHERE j.relid = tbl ORDER BY j.id DESC LIMIT 1
$$;
CREATE FUNCTION bf_worker(tbl regclass) RETURNS boolean
LANGUAGE sql AS $$
	SELECT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted
				   AND classid = migrate_ext.lock_key('job') AND objid = (bf_now(tbl)).id AND objsubid = 2)
$$;
-- empty the new column again, bypassing the trigger (its DISABLE is
-- recorded, and said at a level kept quiet here)
CREATE PROCEDURE bf_clear_new()
LANGUAGE plpgsql SET client_min_messages = error AS $$
BEGIN
	ALTER TABLE bf_ctl DISABLE TRIGGER zz_migrate_ext_dualwrite;
	UPDATE bf_ctl SET _mig_new_email = NULL;
	ALTER TABLE bf_ctl ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
END $$;

CREATE TABLE bf_ctl (id int PRIMARY KEY, email text);
INSERT INTO bf_ctl SELECT g, 'Mail' || g || '@X.ORG' FROM generate_series(1, 3000) g;
SELECT mig_expand('bf_ctl', 'email', up => 'lower(email)') > 0 AS expanded;

-- pause holds: nothing moves, not even the active time
SELECT mig_backfill('bf_ctl', batch_size => 10, sleep_ms => 50) > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).rows_done >= 100$$);
SELECT mig_pause('bf_ctl');
SELECT mig_pause('bf_ctl');
SELECT pg_sleep(0.5);	-- the worker notices at its next batch
SELECT rows_done AS done_at_pause, lower_key AS key_at_pause, active_seconds AS active_at_pause
FROM bf_now('bf_ctl') \gset
SELECT pg_sleep(1);
SELECT state, rows_done = :done_at_pause AS held, lower_key = :'key_at_pause' AS same_key,
	   active_seconds = :active_at_pause AS clock_stopped, bf_worker('bf_ctl') AS worker_waits
FROM bf_now('bf_ctl');
SELECT count(*) = :done_at_pause AS only_done_rows_written FROM bf_ctl WHERE _mig_new_email IS NOT NULL;
-- settings change while paused, and apply when it goes on
SELECT mig_set('bf_ctl', 'sleep_ms', '0');
SELECT mig_set('bf_ctl', 'batch_size', 'auto');
SELECT mig_set('bf_ctl', 'target_batch_ms', '50');
SELECT mig_set('bf_ctl', 'max_replica_lag', NULL);
SELECT batch_size_fixed, sleep_ms, target_batch_ms, max_replica_lag FROM bf_now('bf_ctl');
SELECT mig_resume('bf_ctl');
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, rows_seen, batches < 300 AS adaptive FROM bf_now('bf_ctl');
SELECT count(*) AS wrong FROM bf_ctl WHERE _mig_new_email IS DISTINCT FROM lower(email);

-- max_rows_per_sec throttles, and says so
CALL bf_clear_new();
SELECT mig_backfill('bf_ctl', batch_size => 50, max_rows_per_sec => 100) > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).state = 'throttled'$$);
SELECT state, throttle_reason FROM bf_now('bf_ctl');
SELECT mig_set('bf_ctl', 'max_rows_per_sec', NULL);
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state, throttle_reason, rows_done FROM bf_now('bf_ctl');

-- cancel stops it; the trigger goes on; a new job finishes the rest
CALL bf_clear_new();
SELECT mig_backfill('bf_ctl', batch_size => 10, sleep_ms => 50) > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).rows_done >= 50$$);
SELECT mig_cancel('bf_ctl');
CALL bf_until($$NOT bf_worker('bf_ctl')$$);
SELECT rows_done AS done_at_cancel FROM bf_now('bf_ctl') \gset
SELECT state, finished_at IS NOT NULL AS finished FROM bf_now('bf_ctl');
SELECT count(*) = :done_at_cancel AS only_done_rows_written FROM bf_ctl WHERE _mig_new_email IS NOT NULL;
INSERT INTO bf_ctl VALUES (3001, 'New@X.ORG');
SELECT _mig_new_email FROM bf_ctl WHERE id = 3001;
SELECT mig_resume('bf_ctl');
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done = 3000 AS each_row_once FROM bf_now('bf_ctl');
SELECT count(*) AS wrong FROM bf_ctl WHERE _mig_new_email IS DISTINCT FROM lower(email);

-- a worker that dies leaves the job interrupted; mig_resume goes on from
-- the checkpoint (rows_done counts each row once)
CALL bf_clear_new();
SELECT mig_backfill('bf_ctl', batch_size => 10, sleep_ms => 50) > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).rows_done >= 50$$);
SELECT pg_terminate_backend(worker_pid) FROM bf_now('bf_ctl');
CALL bf_until($$NOT bf_worker('bf_ctl')$$);
SELECT state FROM bf_now('bf_ctl');
SELECT mig_backfill('bf_ctl');
SELECT mig_set('bf_ctl', 'sleep_ms', '0');
SELECT mig_set('bf_ctl', 'batch_size', '1000');
SELECT mig_resume('bf_ctl');
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, rows_seen FROM bf_now('bf_ctl');
SELECT count(*) AS wrong FROM bf_ctl WHERE _mig_new_email IS DISTINCT FROM lower(email);

-- the trigger disabled under a running job: it fails, and says what to do
CALL bf_clear_new();
SELECT mig_backfill('bf_ctl', batch_size => 10, sleep_ms => 50) > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).rows_done >= 20$$);
ALTER TABLE bf_ctl DISABLE TRIGGER zz_migrate_ext_dualwrite;
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state, last_sqlstate, last_error FROM bf_now('bf_ctl');
ALTER TABLE bf_ctl ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
SELECT mig_backfill('bf_ctl') > 0 AS started;
CALL bf_until($$(bf_now('bf_ctl')).state NOT IN ('running', 'throttled')$$);
SELECT state FROM bf_now('bf_ctl');
SELECT count(*) AS wrong FROM bf_ctl WHERE _mig_new_email IS DISTINCT FROM lower(email);

-- a failing up expression: retried, then failed with the error
CREATE TABLE bf_bad (id int PRIMARY KEY, v text);
INSERT INTO bf_bad SELECT g, g::text FROM generate_series(1, 100) g;
UPDATE bf_bad SET v = 'x' WHERE id = 60;
SELECT mig_expand('bf_bad', 'v', type => 'int') > 0 AS expanded;
SELECT mig_backfill('bf_bad', batch_size => 25) > 0 AS started;
CALL bf_until($$(bf_now('bf_bad')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, lower_key, retries, last_sqlstate, last_error FROM bf_now('bf_bad');

-- the migration aborted under a running job: cancelled
SELECT mig_backfill('bf_ctl', batch_size => 1, sleep_ms => 100) > 0 AS started;
SELECT mig_abort('bf_ctl');
SELECT state FROM bf_now('bf_ctl');
CALL bf_until($$NOT bf_worker('bf_ctl')$$);

-- a NOLOGIN owner reached by SET ROLE: the worker runs as that role
CREATE ROLE bf_app NOLOGIN;
CREATE TABLE bf_owned (id int PRIMARY KEY, amount int);
ALTER TABLE bf_owned OWNER TO bf_app;
INSERT INTO bf_owned SELECT g, g FROM generate_series(1, 500) g;
SET ROLE bf_app;
SELECT mig_expand('bf_owned', 'amount', type => 'numeric(12,2)') > 0 AS expanded;
SELECT mig_backfill('bf_owned', batch_size => 100) > 0 AS started;
CALL bf_until($$(bf_now('bf_owned')).state NOT IN ('running', 'throttled')$$);
SELECT state, rows_done, role_oid::regrole AS runs_as, login_oid::regrole = session_user::regrole AS logs_in_as_session_user
FROM bf_now('bf_owned');
SELECT e->>'phase' AS phase, e->>'by' AS by_role
FROM mig_history, jsonb_array_elements(phases) e WHERE table_name = 'bf_owned';
RESET ROLE;
SELECT count(*) AS wrong FROM bf_owned WHERE _mig_new_amount IS DISTINCT FROM amount::numeric(12,2);
DROP TABLE bf_owned;
DROP ROLE bf_app;
