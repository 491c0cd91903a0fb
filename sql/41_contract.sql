--
-- mig_contract: everything the old column had is rebuilt on the new one,
-- then a short swap drops the old column.
--
-- The canonical case: a serial primary key referenced by another table,
-- widened to bigint.
CREATE TABLE k_orders (id serial PRIMARY KEY, note text);
CREATE TABLE k_items (id serial PRIMARY KEY,
					order_id int REFERENCES k_orders ON DELETE CASCADE,
					qty int);
CREATE INDEX k_orders_mod_idx ON k_orders ((id % 10)) WHERE id > 0;
INSERT INTO k_orders (note) SELECT 'o' || g FROM generate_series(1, 200) g;
INSERT INTO k_items (order_id, qty) SELECT g % 200 + 1, g FROM generate_series(1, 600) g;
SELECT count(*) AS orders_before, sum(id) AS id_sum_before FROM k_orders \gset
SELECT mig_expand('k_orders', 'id', type => 'bigint') > 0 AS expanded;

-- refused inside a transaction block
BEGIN;
SELECT mig_contract('k_orders');
ROLLBACK;

-- refused before the backfill, and before validation, saying what is missing
SELECT mig_contract('k_orders');
-- stands in for mig_backfill until it lands
UPDATE migrate_ext.migration SET phase = 'backfilled'
 WHERE relid = 'k_orders'::regclass AND phase NOT IN ('contracted', 'aborted');
SELECT mig_contract('k_orders');

-- fill the new column through the trigger
SET migrate_ext.writer = 'old';
UPDATE k_orders SET id = id;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('k_orders');
SELECT mig_cutover('k_orders');

-- a rule on the old column stops contract before anything changed (plain
-- and materialized views come along: 47_contract_views, 53_contract_matviews)
CREATE TABLE k_log (id int);
CREATE RULE k_log_touch AS ON INSERT TO k_log DO ALSO
  UPDATE k_orders SET note = note WHERE id = NEW.id;
CREATE VIEW order_notes AS SELECT note FROM k_orders;
SELECT mig_contract('k_orders');
SELECT count(*) AS copies_built FROM pg_class WHERE relname LIKE '\_mig\_%' AND relkind = 'i';
DROP TABLE k_log;

-- writes after cutover, through the default
INSERT INTO k_orders (note) VALUES ('after cutover');

SELECT mig_contract('k_orders');

-- the final state: id bigint, the primary key, its index, the default and
-- the sequence (owned, widened), the foreign key valid
SELECT attname, format_type(atttypid, atttypmod) AS type, attnotnull
  FROM pg_attribute WHERE attrelid = 'k_orders'::regclass AND attnum > 0 AND NOT attisdropped
 ORDER BY attname;
SELECT conrelid::regclass, conname, contype, convalidated, pg_get_constraintdef(oid)
  FROM pg_constraint WHERE conrelid IN ('k_orders'::regclass, 'k_items'::regclass)
 ORDER BY 1, 2;
SELECT indexrelid::regclass, indisprimary, indisunique, indisvalid, pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid = 'k_orders'::regclass ORDER BY 1;
SELECT format_type(atttypid, atttypmod) AS expression_index_type
  FROM pg_attribute WHERE attrelid = 'k_orders_mod_idx'::regclass;
SELECT pg_get_expr(adbin, adrelid) AS id_default
  FROM pg_attrdef WHERE adrelid = 'k_orders'::regclass;
SELECT pg_get_serial_sequence('k_orders', 'id') AS owned_sequence,
	   (SELECT seqtypid::regtype FROM pg_sequence WHERE seqrelid = 'k_orders_id_seq'::regclass) AS sequence_type;
SELECT count(*) AS leftovers FROM pg_class
 WHERE relname LIKE '\_mig\_%' AND relnamespace = 'public'::regnamespace;
SELECT count(*) AS triggers_left FROM pg_trigger WHERE tgrelid = 'k_orders'::regclass AND NOT tgisinternal;
SELECT phase FROM migrate_ext.migration WHERE relid = 'k_orders'::regclass ORDER BY id DESC LIMIT 1;
SELECT count(*) = :orders_before + 1 AS rows_kept, sum(id) > :id_sum_before AS ids_kept FROM k_orders;

-- the sequence still feeds it, the key is enforced, the foreign key too
INSERT INTO k_orders (note) VALUES ('after contract') RETURNING id;
INSERT INTO k_orders (id, note) VALUES (1, 'duplicate');
INSERT INTO k_items (order_id, qty) VALUES (999999, 1);
INSERT INTO k_items (order_id, qty) VALUES (202, 1);
DELETE FROM k_orders WHERE id = 1;
SELECT count(*) AS k_items_of_order_1 FROM k_items WHERE order_id = 1;
SELECT setval('k_orders_id_seq', 3000000000);
INSERT INTO k_orders (note) VALUES ('past int4') RETURNING id;

-- nothing left to do, and no way back
SELECT mig_contract('k_orders');
SELECT mig_abort('k_orders');
DROP VIEW order_notes;
DROP TABLE k_items, k_orders;

--
-- A rename: the indexes come along (multi-column, expression, partial,
-- unique), under their names.
--
CREATE TABLE k_people (id int PRIMARY KEY, name text, city text);
CREATE INDEX k_people_name_idx ON k_people (name);
CREATE INDEX k_people_city_name_idx ON k_people (city, name DESC) INCLUDE (id);
CREATE INDEX k_people_lower_idx ON k_people (lower(name));
CREATE INDEX k_people_partial_idx ON k_people (city) WHERE name IS NOT NULL;
ALTER TABLE k_people ADD CONSTRAINT k_people_name_key UNIQUE (name);
COMMENT ON COLUMN k_people.name IS 'what k_people are called';
INSERT INTO k_people SELECT g, 'n' || g, 'c' || g % 3 FROM generate_series(1, 50) g;
SELECT mig_expand('k_people', 'name', new_col => 'full_name') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE k_people SET name = name;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('k_people');
SELECT mig_contract('k_people');
SELECT attname FROM pg_attribute
 WHERE attrelid = 'k_people'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT indexrelid::regclass, indisvalid, pg_get_indexdef(indexrelid)
  FROM pg_index WHERE indrelid = 'k_people'::regclass ORDER BY 1;
SELECT conname, contype, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = 'k_people'::regclass ORDER BY 1;
SELECT col_description('k_people'::regclass, attnum) AS comment
  FROM pg_attribute WHERE attrelid = 'k_people'::regclass AND attname = 'full_name';
INSERT INTO k_people VALUES (100, 'n1', 'c1');
DROP TABLE k_people;

--
-- NOT NULL and CHECK asked for at expand are added at contract, without a
-- scan under a strong lock; force skips the validation.
--
CREATE TABLE tight (id int PRIMARY KEY, v int);
INSERT INTO tight VALUES (1, 5), (2, NULL), (3, 7);
SELECT mig_expand('tight', 'v', new_col => 'w', up => 'coalesce(v, 0)',
				  not_null => true, check_expr => 'w >= 0') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE tight SET v = v;
RESET migrate_ext.writer;
SELECT mig_contract('tight', force => true);
\d tight
SELECT conname, convalidated FROM pg_constraint WHERE conrelid = 'tight'::regclass ORDER BY 1;
INSERT INTO tight VALUES (4, NULL);
INSERT INTO tight VALUES (5, -1);
SELECT * FROM tight ORDER BY id;
SELECT detail FROM migrate_ext.phase_log
 WHERE migration_id = (SELECT max(id) FROM migrate_ext.migration WHERE relid = 'tight'::regclass)
   AND phase = 'contracted';
DROP TABLE tight;

--
-- An identity column: the identity and its position come along.  And a
-- contract that fails half way (forced before the backfill: the new column
-- is still NULL) leaves the old column untouched and is picked up by the
-- next call.
--
CREATE TABLE ident (id int GENERATED ALWAYS AS IDENTITY (START WITH 10 INCREMENT BY 5) PRIMARY KEY, x text);
INSERT INTO ident (x) SELECT 'x' || g FROM generate_series(1, 3) g;
SELECT mig_expand('ident', 'id', type => 'bigint') > 0 AS expanded;
SELECT mig_contract('ident', force => true);
SELECT id, x FROM ident ORDER BY id;
SELECT attname, attidentity FROM pg_attribute
 WHERE attrelid = 'ident'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SET migrate_ext.writer = 'old';
UPDATE ident SET x = x;
RESET migrate_ext.writer;
SELECT mig_contract('ident', force => true);
\d ident
INSERT INTO ident (x) VALUES ('next') RETURNING id;
DROP TABLE ident;

--
-- A copy of a unique index that cannot be built (up() makes duplicates):
-- the failed concurrent build leaves no INVALID index behind.
--
CREATE TABLE dup (id int PRIMARY KEY, name text UNIQUE);
INSERT INTO dup VALUES (1, 'A'), (2, 'a');
SELECT mig_expand('dup', 'name', up => 'lower(name)') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE dup SET name = name;
RESET migrate_ext.writer;
SELECT mig_contract('dup', force => true);
SELECT count(*) AS invalid_left FROM pg_index WHERE indrelid = 'dup'::regclass AND NOT indisvalid;
SELECT attname FROM pg_attribute
 WHERE attrelid = 'dup'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT mig_abort('dup');
DROP TABLE dup;
