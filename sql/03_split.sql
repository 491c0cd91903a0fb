-- Split: name -> first_name, last_name (two pairs on one old column)
CREATE TABLE members (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO members VALUES (1, 'Ada Lovelace');
SELECT mig_expand('members', 'name', new_col => 'first_name',
                  up => 'split_part(name, '' '', 1)') AS mid \gset
-- the second call, before any backfill, adds a pair to the same migration;
-- its down is the old column's: it is the first to see both new columns
SELECT mig_expand('members', 'name', new_col => 'last_name',
                  up => 'split_part(name, '' '', 2)',
                  down => 'first_name || '' '' || last_name') = :mid AS same_migration;
SELECT ord, old_col, new_col, down_src FROM migrate_ext.column_pair WHERE migration_id = :mid ORDER BY ord;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'members'::regclass;

-- old-version client
INSERT INTO members (id, name) VALUES (2, 'Alan Turing');
UPDATE members SET name = 'Ada King' WHERE id = 1;
-- new-version client writes both new columns
INSERT INTO members (id, first_name, last_name) VALUES (3, 'Grace', 'Hopper');
-- ... or one of them: the old column is recomputed, the other new one kept
UPDATE members SET first_name = 'Alonzo' WHERE id = 2;
UPDATE members SET last_name = 'Hopper-Murray' WHERE id = 3;
SELECT * FROM members ORDER BY id;
SELECT count(*) AS diverged FROM members
 WHERE first_name IS DISTINCT FROM split_part(name, ' ', 1)
    OR last_name IS DISTINCT FROM split_part(name, ' ', 2);

-- a new column value that down/up cannot carry (a space in a first name) is refused
UPDATE members SET first_name = 'Mary Ann' WHERE id = 1;
SELECT * FROM members WHERE id = 1;
