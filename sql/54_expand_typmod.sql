-- Default casts that would lose data (issue: red's review).  In a file of
-- its own, last: migration ids in the other files' output stay as they are.
-- The default up applies the new type's length as ALTER TABLE ... TYPE
-- would (by assignment): a value too long for varchar(3) is an error, never
-- silently cut (an explicit cast would cut it, and contract would then drop
-- the only full copy).  mig_preflight names the row; an up that says what
-- to do with it (left()) is the way.
CREATE TABLE codes (id int PRIMARY KEY, code text, n int);
INSERT INTO codes VALUES (1, 'hello', 12345), (2, 'ab', 1);
SELECT check_name, passed, failing, detail FROM mig_preflight('codes', 'code', type => 'varchar(3)');
SELECT check_name, passed, failing FROM mig_preflight('codes', 'n', type => 'varchar(3)');
SELECT mig_expand('codes', 'code', type => 'varchar(3)') > 0 AS ok;
INSERT INTO codes (id, code) VALUES (3, 'toolong');
INSERT INTO codes (id, code) VALUES (3, 'abc');
SELECT id, code, _mig_new_code FROM codes WHERE id = 3;
SELECT mig_abort('codes');
SELECT mig_expand('codes', 'code', type => 'varchar(3)', up => 'left(code, 3)') > 0 AS ok;
UPDATE codes SET code = code;
SELECT id, code, _mig_new_code FROM codes ORDER BY id;
SELECT mig_abort('codes');
-- the default down alike: a new-version write too long for the old column
-- is refused, not cut into it
CREATE TABLE labels (id int PRIMARY KEY, label varchar(5));
SELECT mig_expand('labels', 'label', new_col => 'title', type => 'text') > 0 AS ok;
INSERT INTO labels (id, title) VALUES (1, 'far too long');
INSERT INTO labels (id, title) VALUES (1, 'short');
SELECT * FROM labels;
