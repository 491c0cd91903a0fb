--
-- Rows where up (or down, or check_expr) raises an error are a failing check
-- of mig_validate, with a count and example keys, not an ERROR of
-- mig_validate: the rest of the table is checked as usual.
--
CREATE TABLE dirty (id int PRIMARY KEY, qty text);
INSERT INTO dirty SELECT g, g::text FROM generate_series(1, 3000) g;
UPDATE dirty SET qty = 'n/a' WHERE id IN (7, 1500);
UPDATE dirty SET qty = '' WHERE id = 2999;
SELECT mig_expand('dirty', 'qty', new_col => 'qty_n', type => 'int', up => 'qty::int',
				  check_expr => 'qty_n < 2900') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE dirty SET qty = qty WHERE qty ~ '^[0-9]+$';
RESET migrate_ext.writer;
SELECT check_name, passed, failing, detail FROM mig_validate('dirty');
-- not validated; nothing changed
SELECT phase FROM migrate_ext.migration WHERE relid = 'dirty'::regclass;
SELECT count(*) AS rows, count(qty_n) AS filled FROM dirty;
-- a sampled run goes through the errors too
SELECT check_name, passed FROM mig_validate('dirty', sample => 100000) WHERE check_name = 'evaluates';
-- fixed: the check passes
UPDATE dirty SET qty = '0' WHERE id IN (7, 1500, 2999);
DELETE FROM dirty WHERE id >= 2900;
SELECT check_name, passed, failing FROM mig_validate('dirty');
SELECT mig_abort('dirty');
DROP TABLE dirty;
