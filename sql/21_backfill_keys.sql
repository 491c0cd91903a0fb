--
-- The walks: composite primary key, unique key, ctid ranges; key values
-- that must survive their text form; a type without equality.
--
CREATE PROCEDURE bf_wait_done(tbl regclass, timeout_s int DEFAULT 60)
LANGUAGE plpgsql AS $$
DECLARE
	st text;
BEGIN
	FOR i IN 1 .. timeout_s * 20 LOOP
		SELECT j.state INTO st FROM migrate_ext.job j
		JOIN migrate_ext.migration m ON m.id = j.migration_id
		WHERE m.relid = tbl ORDER BY j.id DESC LIMIT 1;
		IF st NOT IN ('running', 'throttled') THEN
			RETURN;
		END IF;
		COMMIT;
		PERFORM pg_sleep(0.05);
	END LOOP;
	RAISE EXCEPTION 'backfill of % still % after % s', tbl, st, timeout_s;
END $$;
CREATE FUNCTION bf_last(tbl regclass) RETURNS migrate_ext.job
LANGUAGE sql AS $$
	SELECT j.* FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id
	WHERE m.relid = tbl ORDER BY j.id DESC LIMIT 1
$$;

-- composite primary key of text and timestamptz, in a collation of its own
CREATE TABLE bf_events (
	region text COLLATE "C",
	at timestamptz,
	n int,
	payload text,
	PRIMARY KEY (region, at)
);
INSERT INTO bf_events
SELECT r, timestamptz '2024-03-31 00:30:00+01' + g * interval '7 minutes 0.25 seconds', g, 'p' || g
FROM unnest(ARRAY['eu', 'EU', 'us-east', 'Zürich']) r, generate_series(1, 600) g;
SELECT mig_expand('bf_events', 'n', type => 'bigint') > 0 AS expanded;
-- the walk's text form must not depend on the session's settings
SET DateStyle = 'SQL, DMY';
SET TimeZone = 'America/New_York';
SELECT mig_backfill('bf_events', batch_size => 170) > 0 AS started;
CALL bf_wait_done('bf_events');
SELECT state, key_kind, key_cols, rows_done, rows_seen, batches, lower_key = upper_key AS reached
FROM bf_last('bf_events');
SELECT count(*) AS wrong FROM bf_events WHERE _mig_new_n IS DISTINCT FROM n::bigint;
RESET DateStyle;
RESET TimeZone;

-- no primary key: the unique NOT NULL key (not the nullable one, not the
-- one on an expression)
CREATE TABLE bf_codes (code text NOT NULL, alt int, v text);
CREATE UNIQUE INDEX ON bf_codes (alt);
CREATE UNIQUE INDEX ON bf_codes (lower(code));
CREATE UNIQUE INDEX bf_codes_code ON bf_codes (code);
INSERT INTO bf_codes SELECT 'c' || g, g, 'V' || g FROM generate_series(1, 2500) g;
SELECT mig_expand('bf_codes', 'v', new_col => 'v_lower', up => 'lower(v)') > 0 AS expanded;
SELECT mig_backfill('bf_codes', batch_size => 300) > 0 AS started;
CALL bf_wait_done('bf_codes');
SELECT state, key_kind, key_cols, rows_done, rows_seen, batches FROM bf_last('bf_codes');
SELECT count(*) AS wrong FROM bf_codes WHERE v_lower IS DISTINCT FROM lower(v);

-- no key at all: ctid ranges, up to the blocks the table had at the start
CREATE TABLE bf_heap (a int, b text);
INSERT INTO bf_heap SELECT g % 100, 'B' || g FROM generate_series(1, 4000) g;
SELECT mig_expand('bf_heap', 'b', up => 'lower(b)') > 0 AS expanded;
SELECT pg_relation_size('bf_heap') / 8192 AS blocks_at_start \gset
SELECT mig_backfill('bf_heap', batch_size => 400) > 0 AS started;
CALL bf_wait_done('bf_heap');
SELECT state, key_kind, key_cols, rows_done, rows_seen >= 4000 AS covered,
	   lower_key = upper_key AS reached,
	   upper_key = ARRAY[format('(%s,0)', :blocks_at_start)] AS upper_is_size
FROM bf_last('bf_heap');
SELECT count(*) AS wrong FROM bf_heap WHERE _mig_new_b IS DISTINCT FROM lower(b);
-- a rerun finds every row right
SELECT mig_backfill('bf_heap', batch_size => 400) > 0 AS started;
CALL bf_wait_done('bf_heap');
SELECT state, rows_done FROM bf_last('bf_heap');

-- a new type without an equality operator (json) is compared as text, so a
-- rerun writes nothing
CREATE TABLE bf_docs (id bigint PRIMARY KEY, body text);
INSERT INTO bf_docs SELECT g, format('{"n": %s, "tag": "t%s"}', g, g % 7) FROM generate_series(1, 1000) g;
SELECT mig_expand('bf_docs', 'body', type => 'json', up => 'body::json') > 0 AS expanded;
SELECT mig_backfill('bf_docs') > 0 AS started;
CALL bf_wait_done('bf_docs');
SELECT state, key_kind, rows_done FROM bf_last('bf_docs');
SELECT count(*) AS wrong FROM bf_docs WHERE _mig_new_body::text IS DISTINCT FROM body;
SELECT mig_backfill('bf_docs') > 0 AS started;
CALL bf_wait_done('bf_docs');
SELECT state, rows_done, rows_seen FROM bf_last('bf_docs');

-- two pairs (a split) are written in one pass
CREATE TABLE bf_names (id int PRIMARY KEY, name text);
INSERT INTO bf_names SELECT g, 'First' || g || ' Last' || g FROM generate_series(1, 1200) g;
SELECT mig_expand('bf_names', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)') > 0 AS expanded;
SELECT mig_expand('bf_names', 'name', new_col => 'last_name', up => 'split_part(name, '' '', 2)') > 0 AS expanded;
SELECT mig_backfill('bf_names', batch_size => 500) > 0 AS started;
CALL bf_wait_done('bf_names');
SELECT state, rows_done, batches FROM bf_last('bf_names');
SELECT count(*) AS wrong FROM bf_names
WHERE first_name IS DISTINCT FROM split_part(name, ' ', 1)
   OR last_name IS DISTINCT FROM split_part(name, ' ', 2);
