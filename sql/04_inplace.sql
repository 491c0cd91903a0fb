-- In-place changes: a shadow column that takes the old column's name at contract
-- int -> bigint, defaults: up = id::bigint, down = shadow::integer
CREATE TABLE accounts (id serial PRIMARY KEY, balance int NOT NULL DEFAULT 0);
INSERT INTO accounts (balance) VALUES (10), (20);
SELECT mig_expand('accounts', 'id', type => 'bigint') > 0 AS ok;
SELECT mig_expand('accounts', 'balance', type => 'bigint') > 0 AS second_pair_ok;
SELECT new_col, in_place, new_type, up_src, down_src FROM migrate_ext.column_pair
 WHERE migration_id = (SELECT id FROM migrate_ext.migration WHERE relid = 'accounts'::regclass)
 ORDER BY ord;
INSERT INTO accounts (balance) VALUES (30);
UPDATE accounts SET balance = balance + 1;
SELECT id, _mig_new_id, balance, _mig_new_balance FROM accounts ORDER BY id;
-- a bigint-side write that fits goes down; one that does not fit is an error, not a wrap
SET migrate_ext.writer = 'new';
UPDATE accounts SET _mig_new_balance = 1000 WHERE id = 1;
UPDATE accounts SET _mig_new_balance = 3000000000 WHERE id = 2;
RESET migrate_ext.writer;
SELECT id, balance, _mig_new_balance FROM accounts ORDER BY id;

-- text -> jsonb in place
CREATE TABLE docs (id int PRIMARY KEY, payload text);
INSERT INTO docs VALUES (1, '{"a": 1}');
SELECT mig_expand('docs', 'payload', type => 'jsonb') > 0 AS ok;
INSERT INTO docs VALUES (2, '{"b": [1, 2]}');
UPDATE docs SET payload = payload WHERE id = 1;
SELECT id, payload, _mig_new_payload, pg_typeof(_mig_new_payload) FROM docs ORDER BY id;
-- an old-version write the new type cannot hold is refused, not stored half-migrated
INSERT INTO docs VALUES (3, 'not json');
-- a new-side write goes down as the canonical text
SET migrate_ext.writer = 'new';
UPDATE docs SET _mig_new_payload = '{"c":   true}' WHERE id = 2;
RESET migrate_ext.writer;
SELECT id, payload, _mig_new_payload FROM docs ORDER BY id;

-- collations come along for a same-type change
CREATE TABLE tags (id int PRIMARY KEY, tag text COLLATE "C");
SELECT mig_expand('tags', 'tag', up => 'upper(tag)') > 0 AS ok;
SELECT attname, collname FROM pg_attribute a JOIN pg_collation c ON c.oid = a.attcollation
 WHERE attrelid = 'tags'::regclass AND attnum > 0 ORDER BY attnum;
