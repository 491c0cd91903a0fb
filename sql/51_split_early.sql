--
-- A split accepts new-version writes from expand on: a sibling new column
-- that the backfill has not reached yet is computed from up(old) before the
-- old column's down is applied.  Both orders of the split, both sides written.
--
CREATE TABLE se_people (id int PRIMARY KEY, name text);
INSERT INTO se_people VALUES (1, 'Ada Lovelace'), (2, 'Alan Turing'), (3, 'Grace Hopper'),
							 (4, 'Edsger Dijkstra'), (5, 'Prince');

-- first_name first, down given with last_name
SELECT mig_expand('se_people', 'name', new_col => 'first_name',
				  up => 'split_part(name, '' '', 1)') > 0 AS expanded;
SELECT mig_expand('se_people', 'name', new_col => 'last_name',
				  up => 'nullif(split_part(name, '' '', 2), '''')',
				  down => 'first_name || coalesce('' '' || last_name, '''')') > 0 AS expanded;
-- no backfill yet: every new column is NULL
SELECT count(*) AS filled FROM se_people WHERE first_name IS NOT NULL OR last_name IS NOT NULL;

-- a new-version client writes one new column of a row not backfilled
UPDATE se_people SET first_name = 'Augusta' WHERE id = 1;
UPDATE se_people SET last_name = 'King' WHERE id = 2;
-- and under writer = 'new' too
SET migrate_ext.writer = 'new';
UPDATE se_people SET first_name = 'Amazing' WHERE id = 3;
RESET migrate_ext.writer;
SELECT * FROM se_people ORDER BY id;

-- a value the round trip cannot carry is still refused as such
UPDATE se_people SET first_name = 'Prince Rogers' WHERE id = 5;
-- a NULL last_name is a value here: down carries it
INSERT INTO se_people (id, name) VALUES (6, NULL);
UPDATE se_people SET first_name = 'Cher' WHERE id = 6;
SELECT * FROM se_people WHERE id >= 5 ORDER BY id;
SELECT mig_abort('se_people');

-- the other order: last_name first, down given with first_name
CREATE TABLE se_rev (id int PRIMARY KEY, name text);
INSERT INTO se_rev VALUES (1, 'Ada Lovelace'), (2, 'Alan Turing');
SELECT mig_expand('se_rev', 'name', new_col => 'last_name',
				  up => 'split_part(name, '' '', 2)') > 0 AS expanded;
SELECT mig_expand('se_rev', 'name', new_col => 'first_name',
				  up => 'split_part(name, '' '', 1)',
				  down => 'first_name || '' '' || last_name') > 0 AS expanded;
UPDATE se_rev SET first_name = 'Augusta' WHERE id = 1;
UPDATE se_rev SET last_name = 'King' WHERE id = 2;
SELECT * FROM se_rev ORDER BY id;
SELECT count(*) AS diverged FROM se_rev
 WHERE first_name IS DISTINCT FROM split_part(name, ' ', 1)
    OR last_name IS DISTINCT FROM split_part(name, ' ', 2);

-- with a strict down, a sibling that is NULL with nothing to fill it from
-- (the old column is NULL) is named, not the value
INSERT INTO se_rev (id, name) VALUES (3, NULL);
UPDATE se_rev SET first_name = 'Cher' WHERE id = 3;
UPDATE se_rev SET first_name = 'Cher', last_name = 'Sarkisian' WHERE id = 3;
SELECT * FROM se_rev WHERE id = 3;
