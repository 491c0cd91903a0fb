--
-- No rewrite where PostgreSQL needs none: a type change that ALTER COLUMN
-- TYPE makes in the catalog alone is made so, under the lock ladder, with
-- its views recreated, and recorded as a migration expanded -> contracted.
--
CREATE ROLE nr_reader;
CREATE TABLE nr_items (id int PRIMARY KEY, sku varchar(10) NOT NULL DEFAULT 'none',
					   price numeric(6,2), note varchar(20) COLLATE "C",
					   born timestamp);
CREATE INDEX nr_items_sku ON nr_items (sku);
INSERT INTO nr_items SELECT g, 'S' || g, g / 10.0, 'n' || g, '2024-01-01' FROM generate_series(1, 100) g;
CREATE VIEW nr_skus AS SELECT id, sku, upper(sku) AS usku FROM nr_items;
CREATE VIEW nr_skus2 WITH (security_barrier) AS SELECT id, sku FROM nr_skus WHERE id < 50;
GRANT SELECT ON nr_skus2 TO nr_reader;
GRANT SELECT (sku) ON nr_items TO nr_reader;
COMMENT ON COLUMN nr_items.sku IS 'stock keeping unit';
SELECT pg_relation_filenode('nr_items') AS node_before,
	   pg_relation_filenode('nr_items_sku') AS idx_before \gset

-- varchar(10) -> varchar(40): catalog only
SELECT mig_expand('nr_items', 'sku', type => 'varchar(40)') > 0 AS done;
SELECT pg_relation_filenode('nr_items') = :node_before AS same_table,
	   pg_relation_filenode('nr_items_sku') = :idx_before AS same_index;
SELECT format_type(atttypid, atttypmod), attnotnull, col_description(attrelid, attnum),
	   pg_get_expr(adbin, adrelid) AS def, attacl
  FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
 WHERE attrelid = 'nr_items'::regclass AND attname = 'sku';
SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'nr_skus2'::regclass AND attnum > 0 ORDER BY attnum;
SELECT relacl, reloptions FROM pg_class WHERE oid = 'nr_skus2'::regclass;
SELECT count(*) FROM nr_skus2;
SELECT count(*) AS columns FROM pg_attribute WHERE attrelid = 'nr_items'::regclass AND attname LIKE '\_mig%';
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'nr_items'::regclass;
SELECT table_name, phase, phases->0->>'phase' AS first, phases->1->>'phase' AS second,
	   phases->1->>'detail' AS detail
  FROM mig_history WHERE table_name = 'nr_items';

-- varchar -> text, keeping the column's collation; numeric(6,2) -> numeric(9,2)
SELECT mig_expand('nr_items', 'note', type => 'text') > 0 AS done;
SELECT mig_expand('nr_items', 'price', type => 'numeric(9,2)') > 0 AS done;
SELECT attname, format_type(atttypid, atttypmod), collname FROM pg_attribute
  LEFT JOIN pg_collation c ON c.oid = attcollation
 WHERE attrelid = 'nr_items'::regclass AND attname IN ('note', 'price') ORDER BY attname;
SELECT pg_relation_filenode('nr_items') = :node_before AS same_table;

-- not catalog-only: a narrowing, a scale change, a real conversion, or an
-- up given all go the usual way (a new column and dual-write)
SELECT mig_expand('nr_items', 'sku', type => 'varchar(5)') > 0 AS expanded;
SELECT count(*) AS shadow FROM pg_attribute WHERE attrelid = 'nr_items'::regclass AND attname = '_mig_new_sku';
SELECT mig_abort('nr_items');
SELECT mig_expand('nr_items', 'price', type => 'numeric(9,3)') > 0 AS expanded;
SELECT mig_abort('nr_items');
-- a CHECK on the column: ALTER TYPE would verify it by a scan under its lock
ALTER TABLE nr_items ADD CONSTRAINT nr_sku_len CHECK (length(sku) > 0);
SELECT mig_expand('nr_items', 'sku', type => 'varchar(50)') > 0 AS expanded;
SELECT count(*) AS shadow FROM pg_attribute WHERE attrelid = 'nr_items'::regclass AND attname = '_mig_new_sku';
SELECT mig_abort('nr_items');
ALTER TABLE nr_items DROP CONSTRAINT nr_sku_len;
SELECT mig_expand('nr_items', 'id', type => 'bigint') > 0 AS expanded;
SELECT mig_abort('nr_items');
SELECT mig_expand('nr_items', 'note', type => 'text', up => 'lower(note)') > 0 AS expanded;
SELECT mig_abort('nr_items');
-- timestamp -> timestamptz: catalog-only only when TimeZone is UTC.  A
-- PL/pgSQL trigger reading NEW.born, compiled in this session for the old
-- type, is compiled again (else: "type of parameter ... does not match")
CREATE TABLE nr_log (id int, born text);
CREATE FUNCTION nr_log_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	INSERT INTO nr_log VALUES (NEW.id, NEW.born::text);
	RETURN NULL;
END $$;
CREATE TRIGGER nr_items_log AFTER UPDATE ON nr_items FOR EACH ROW EXECUTE FUNCTION nr_log_row();
UPDATE nr_items SET id = id WHERE id = 1;
SET TimeZone = 'UTC';
SELECT mig_expand('nr_items', 'born', type => 'timestamptz') > 0 AS done;
UPDATE nr_items SET id = id WHERE id = 1;
SELECT * FROM nr_log ORDER BY born;
RESET TimeZone;
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'nr_items'::regclass AND attname = 'born';
SELECT pg_relation_filenode('nr_items') = :node_before AS same_table;

-- a materialized view on the column stops it, naming the view; nothing changed
CREATE MATERIALIZED VIEW nr_mat AS SELECT sku FROM nr_items;
SELECT mig_expand('nr_items', 'sku', type => 'varchar(60)');
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'nr_items'::regclass AND attname = 'sku';
DROP MATERIALIZED VIEW nr_mat;
-- and so does one on a view of the column
CREATE MATERIALIZED VIEW nr_mat AS SELECT * FROM nr_skus;
SELECT mig_expand('nr_items', 'sku', type => 'varchar(60)');
DROP MATERIALIZED VIEW nr_mat;
DROP VIEW nr_skus2, nr_skus;
DROP TABLE nr_items, nr_log;
DROP FUNCTION nr_log_row();
DROP ROLE nr_reader;
