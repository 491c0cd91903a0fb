--
-- new_default and keep_old: the default the new column gets at contract,
-- and a new column computed from others that keeps its sources.
--
SET client_min_messages = warning;

-- keep_old: line_total = qty * unit_price, the sources stay
CREATE TABLE ko_lines (id int PRIMARY KEY, qty int NOT NULL DEFAULT 1,
					   unit_price numeric(10,2) NOT NULL CHECK (unit_price >= 0));
CREATE INDEX ko_lines_qty ON ko_lines (qty);
CREATE VIEW ko_cheap AS SELECT id, qty FROM ko_lines WHERE unit_price < 5;
INSERT INTO ko_lines SELECT g, g % 7 + 1, g % 10 FROM generate_series(1, 200) g;

-- refused: keep_old without a name of its own, or with a default that does
-- not fit the new type, or a default that reads a column
SELECT mig_expand('ko_lines', 'qty', type => 'numeric', up => 'qty * unit_price', keep_old => true);
SELECT mig_expand('ko_lines', 'qty', 'line_total', 'numeric(12,2)', up => 'qty * unit_price',
				  new_default => '''abc''', keep_old => true);
SELECT mig_expand('ko_lines', 'qty', 'line_total', 'numeric(12,2)', up => 'qty * unit_price',
				  new_default => 'qty', keep_old => true);

SELECT mig_expand('ko_lines', 'qty', 'line_total', 'numeric(12,2)', up => 'qty * unit_price',
				  not_null => true, check_expr => 'line_total >= 0',
				  new_default => '0', keep_old => true) > 0 AS expanded;
SELECT old_col, new_col, keep_old, new_default_src FROM migrate_ext.column_pair
 WHERE migration_id = (SELECT max(id) FROM migrate_ext.migration);
-- a second pair must agree on keep_old
SELECT mig_expand('ko_lines', 'unit_price', 'price_cents', 'bigint', up => '(unit_price * 100)::bigint');

SELECT mig_backfill('ko_lines') > 0 AS started;
SELECT mig_wait('ko_lines');
-- writes of the old version compute the new column
INSERT INTO ko_lines (id, qty, unit_price) VALUES (201, 3, 2.50);
UPDATE ko_lines SET qty = 10 WHERE id = 1;
SELECT id, qty, unit_price, line_total FROM ko_lines WHERE id IN (1, 201) ORDER BY id;
SELECT check_name, passed FROM mig_validate('ko_lines') WHERE check_name LIKE 'default_fits%' OR NOT passed;
SELECT mig_cutover('ko_lines');
-- the runbook says what contract will do
SELECT mig_checklist('ko_lines') ~ 'contract\*\* \(step 5\) ends dual-write and keeps the old column' AS says_keep;
SELECT mig_contract('ko_lines');
SELECT mig_checklist('ko_lines') ~ 'Contracted: dual-write ended, the old column kept' AS says_kept;

-- the sources stay with their default, CHECK, index and view; the new
-- column got NOT NULL, its CHECK and new_default; no trigger is left
SELECT attname, format_type(atttypid, atttypmod), attnotnull, pg_get_expr(adbin, adrelid) AS def
  FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
 WHERE attrelid = 'ko_lines'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid = 'ko_lines'::regclass ORDER BY conname;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'ko_lines'::regclass;
SELECT indexrelid::regclass FROM pg_index WHERE indrelid = 'ko_lines'::regclass ORDER BY 1;
SELECT count(*) AS cheap FROM ko_cheap;
SELECT phase FROM migrate_ext.migration WHERE relid = 'ko_lines'::regclass;
-- after contract the column is the application's own: no longer computed
INSERT INTO ko_lines (id, qty, unit_price) VALUES (202, 2, 3);
SELECT id, line_total FROM ko_lines WHERE id = 202;
SELECT count(*) AS wrong FROM ko_lines WHERE id <= 201 AND line_total <> qty * unit_price;

-- new_default on an in-place change: the old default does not fit (text),
-- new_default replaces it; validation says it fits
CREATE TABLE nd_tags (id int PRIMARY KEY, code text DEFAULT 'none');
INSERT INTO nd_tags SELECT g, g::text FROM generate_series(1, 50) g;
SELECT mig_expand('nd_tags', 'code', type => 'int', up => 'code::int',
				  new_default => '-1') > 0 AS expanded;
SELECT mig_backfill('nd_tags') > 0 AS started;
SELECT mig_wait('nd_tags');
SELECT check_name, passed, detail FROM mig_validate('nd_tags') WHERE check_name LIKE 'default_fits%';
SELECT mig_cutover('nd_tags');
SELECT mig_contract('nd_tags');
SELECT format_type(atttypid, atttypmod), pg_get_expr(adbin, adrelid) AS def
  FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
 WHERE attrelid = 'nd_tags'::regclass AND attname = 'code';
INSERT INTO nd_tags (id) VALUES (51) RETURNING code;
SELECT count(*) AS triggers FROM pg_trigger WHERE tgrelid = 'nd_tags'::regclass;
