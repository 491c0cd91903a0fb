--
-- mig_cutover: the new column becomes authoritative, the old one still
-- follows it, and mig_abort after cutover leaves the table as it was.
--
CREATE TABLE cut (id int PRIMARY KEY, price int NOT NULL DEFAULT 0);
INSERT INTO cut SELECT g, g * 10 FROM generate_series(1, 5) g;
SELECT mig_expand('cut', 'price', type => 'bigint') > 0 AS expanded;

-- refused before validation, saying what is missing
SELECT mig_cutover('cut');

-- fill the new column through the trigger
SET migrate_ext.writer = 'old';
UPDATE cut SET price = price;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('cut');

-- Before cutover, a write that touches neither side recomputes the new side
-- from the old one.  Make row 1 disagree behind the trigger's back to see it.
ALTER TABLE cut DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE cut SET _mig_new_price = -1 WHERE id = 1;
ALTER TABLE cut ENABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE cut SET id = id WHERE id = 1;
SELECT id, price, _mig_new_price FROM cut WHERE id = 1;

-- the disabled trigger invalidated the validation: cut over refuses until
-- a validation passes again
\set VERBOSITY terse
SELECT mig_cutover('cut');
\set VERBOSITY default
SELECT bool_and(passed) AS validated FROM mig_validate('cut');
SELECT mig_cutover('cut');
SELECT phase FROM migrate_ext.migration WHERE relid = 'cut'::regclass ORDER BY id DESC LIMIT 1;
-- a second call is a no-op
SELECT mig_cutover('cut');

-- After cutover the new side wins: the same write now recomputes the old
-- side from the new one (the trigger saw the phase change).
ALTER TABLE cut DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE cut SET _mig_new_price = 11 WHERE id = 1;
ALTER TABLE cut ENABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE cut SET id = id WHERE id = 1;
SELECT id, price, _mig_new_price FROM cut WHERE id = 1;

-- new-version writes keep the old column in sync
SET migrate_ext.writer = 'new';
INSERT INTO cut (id, _mig_new_price) VALUES (6, 66);
UPDATE cut SET _mig_new_price = 22 WHERE id = 2;
RESET migrate_ext.writer;
-- an old-version write still works too
INSERT INTO cut (id, price) VALUES (7, 77);
SELECT id, price, _mig_new_price FROM cut ORDER BY id;

-- abort after cutover: the table is exactly what the old application expects
SELECT mig_abort('cut');
\d cut
SELECT * FROM cut ORDER BY id;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'cut'::regclass;
SELECT phase FROM migrate_ext.migration WHERE relid = 'cut'::regclass ORDER BY id DESC LIMIT 1;

-- cutover needs an active migration
SELECT mig_cutover('cut');
DROP TABLE cut;
