-- mig_abort: drops the trigger and the new column(s); the old column is untouched
CREATE TABLE shop (id int PRIMARY KEY, sku text, qty int);
INSERT INTO shop VALUES (1, 'AbC', 1), (2, 'dEf', 2);
CREATE TABLE shop_before AS SELECT * FROM shop;
SELECT mig_expand('shop', 'sku', up => 'lower(sku)') AS mid \gset
SELECT mig_expand('shop', 'qty', new_col => 'quantity', type => 'bigint') = :mid AS same;
UPDATE shop SET sku = sku, qty = qty;
SELECT * FROM shop ORDER BY id;
SELECT mig_abort('shop');
\d shop
-- the old columns are exactly as they were
SELECT count(*) AS differing FROM shop s FULL JOIN shop_before b USING (id)
 WHERE (s.sku, s.qty) IS DISTINCT FROM (b.sku, b.qty);
SELECT phase FROM migrate_ext.migration WHERE id = :mid;
SELECT phase FROM migrate_ext.phase_log WHERE migration_id = :mid ORDER BY at;
-- idempotent
SELECT mig_abort('shop');
-- writes work without the trigger
INSERT INTO shop VALUES (3, 'GhI', 3);
-- a new migration may start on the table; the old one stays in the history
SELECT mig_expand('shop', 'sku', up => 'lower(sku)') > :mid AS new_migration;
SELECT count(*) AS migrations, count(*) FILTER (WHERE phase = 'aborted') AS aborted
  FROM migrate_ext.migration WHERE relid = 'shop'::regclass;
-- the new column cannot be dropped by hand while the migration is active
ALTER TABLE shop DROP COLUMN _mig_new_sku;
-- abort drops what expand created, by attribute number, not by name: a
-- column renamed goes, a user's column that took the name stays
ALTER TABLE shop RENAME COLUMN _mig_new_sku TO sku_renamed;
ALTER TABLE shop ADD COLUMN _mig_new_sku text DEFAULT 'mine';
INSERT INTO shop VALUES (4, 'JkL', 4);
SELECT mig_abort('shop');
SELECT id, sku, _mig_new_sku FROM shop ORDER BY id;
ALTER TABLE shop DROP COLUMN _mig_new_sku;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'shop'::regclass;
-- a table that never had a migration
CREATE TABLE untouched (id int);
SELECT mig_abort('untouched');
