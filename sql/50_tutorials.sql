-- The README's tutorials, one per typical job, each run through the whole
-- lifecycle: expand, backfill, wait, validate, cut over, contract.
-- mig_wait's progress lines carry rates and times: keep them out of the output.
SET client_min_messages = warning;

-- 1. Widen a key: orders.id int -> bigint, referenced by items.order_id
CREATE TABLE t_orders (id serial PRIMARY KEY, placed_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE t_items (id serial PRIMARY KEY, order_id int NOT NULL REFERENCES t_orders, sku text);
INSERT INTO t_orders SELECT FROM generate_series(1, 500);
INSERT INTO t_items (order_id, sku) SELECT 1 + g % 500, 'sku' || g FROM generate_series(1, 1000) g;
SELECT mig_expand('t_orders', 'id', type => 'bigint') > 0 AS expanded;
SELECT mig_backfill('t_orders') > 0 AS started;
SELECT mig_wait('t_orders');
SELECT bool_and(passed) AS validated FROM mig_validate('t_orders');
SELECT mig_cutover('t_orders');
SELECT mig_contract('t_orders');
SELECT format_type(atttypid, atttypmod) AS id_type, pg_get_expr(adbin, adrelid) AS id_default
  FROM pg_attribute LEFT JOIN pg_attrdef ON adrelid = attrelid AND adnum = attnum
 WHERE attrelid = 't_orders'::regclass AND attname = 'id';
SELECT conname, contype, convalidated, pg_get_constraintdef(oid) FROM pg_constraint
 WHERE conrelid IN ('t_orders'::regclass, 't_items'::regclass) ORDER BY conname;
INSERT INTO t_orders DEFAULT VALUES RETURNING id;
INSERT INTO t_items (order_id, sku) VALUES (999999, 'orphan');

-- 2. Transform in place: users.email -> lower(email)
CREATE TABLE t_users (id bigint PRIMARY KEY, email text NOT NULL, name text);
INSERT INTO t_users SELECT g, 'User' || g || '@Example.COM', 'First' || g || ' Last' || g
  FROM generate_series(1, 300) g;
CREATE INDEX t_users_email_idx ON t_users (email);
SELECT mig_expand('t_users', 'email', up => 'lower(email)') > 0 AS expanded;
SELECT mig_backfill('t_users') > 0 AS started;
SELECT mig_wait('t_users');
SELECT bool_and(passed) AS validated FROM mig_validate('t_users');
SELECT mig_cutover('t_users');
SELECT mig_contract('t_users');
SELECT id, email FROM t_users ORDER BY id LIMIT 2;
SELECT indexrelid::regclass AS index, pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 't_users'::regclass ORDER BY 1;
SELECT attnotnull FROM pg_attribute WHERE attrelid = 't_users'::regclass AND attname = 'email';

-- 3. payload text -> jsonb, in place
CREATE TABLE t_events (id int PRIMARY KEY, payload text);
INSERT INTO t_events SELECT g, format('{"n": %s, "tags": ["a", "b"]}', g) FROM generate_series(1, 200) g;
SELECT mig_expand('t_events', 'payload', type => 'jsonb') > 0 AS expanded;
SELECT mig_backfill('t_events') > 0 AS started;
SELECT mig_wait('t_events');
SELECT bool_and(passed) AS validated FROM mig_validate('t_events');
SELECT mig_cutover('t_events');
SELECT mig_contract('t_events');
SELECT pg_typeof(payload), payload->'n' AS n FROM t_events WHERE id = 7;

-- 4. Rename with both names live: users.name -> full_name
SELECT mig_expand('t_users', 'name', new_col => 'full_name') > 0 AS expanded;
SELECT mig_backfill('t_users') > 0 AS started;
SELECT mig_wait('t_users');
-- during the rollout, old and new application versions write each their name
INSERT INTO t_users (id, email, name) VALUES (1001, 'old@app', 'Old App');
INSERT INTO t_users (id, email, full_name) VALUES (1002, 'new@app', 'New App');
SELECT id, name, full_name FROM t_users WHERE id > 1000 ORDER BY id;
SELECT bool_and(passed) AS validated FROM mig_validate('t_users');
SELECT mig_cutover('t_users');
SELECT mig_contract('t_users');
SELECT attname FROM pg_attribute WHERE attrelid = 't_users'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;

-- 5. Split: full_name -> first_name, last_name
SELECT mig_expand('t_users', 'full_name', new_col => 'first_name',
                  up => 'split_part(full_name, '' '', 1)') > 0 AS expanded;
SELECT mig_expand('t_users', 'full_name', new_col => 'last_name',
                  up => 'split_part(full_name, '' '', 2)',
                  down => 'first_name || '' '' || last_name') > 0 AS expanded;
SELECT mig_backfill('t_users') > 0 AS started;
SELECT mig_wait('t_users');
SELECT bool_and(passed) AS validated FROM mig_validate('t_users');
SELECT mig_cutover('t_users');
SELECT mig_contract('t_users');
SELECT id, first_name, last_name FROM t_users WHERE id IN (1, 1002) ORDER BY id;

-- 6. Tighten: a new NOT NULL column with a CHECK, and a fix-up for old rows
CREATE TABLE t_products (id int PRIMARY KEY, price numeric);
INSERT INTO t_products SELECT g, CASE WHEN g % 10 = 0 THEN NULL ELSE g * 1.5 END FROM generate_series(1, 100) g;
SELECT mig_expand('t_products', 'price', new_col => 'price_cents', type => 'bigint',
                  up => 'coalesce(round(price * 100), 0)', not_null => true,
                  check_expr => 'price_cents >= 0') > 0 AS expanded;
SELECT mig_backfill('t_products') > 0 AS started;
SELECT mig_wait('t_products');
SELECT check_name, passed, failing FROM mig_validate('t_products');
SELECT mig_cutover('t_products');
SELECT mig_contract('t_products');
SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint WHERE conrelid = 't_products'::regclass ORDER BY 1;
SELECT attnotnull FROM pg_attribute WHERE attrelid = 't_products'::regclass AND attname = 'price_cents';
INSERT INTO t_products (id, price_cents) VALUES (1000, -5);

SELECT table_name, phase FROM mig_history WHERE table_name LIKE 't\_%' ORDER BY migration_id;
