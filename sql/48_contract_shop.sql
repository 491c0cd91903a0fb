--
-- The finish on a realistic schema (test/fixtures/shop.sql): shop.customer.id
-- int -> bigint, with foreign keys in (orders) and a self reference, nested
-- and diamond views, a security_barrier view with a check option, a
-- materialized view, column grants and comments.  Validation finds nothing
-- contract cannot carry (the materialized view is rebuilt on the new
-- column: 53_contract_matviews), contract carries it all, and the catalog
-- and the rows are as they were but for the intended type.
--
\set ECHO none
\i test/fixtures/shop.sql
\set ECHO all
\set VERBOSITY terse

-- the catalog of schema shop, minus the intended change, as text
CREATE FUNCTION shop_catalog() RETURNS TABLE (what text, def text) LANGUAGE sql AS $$
	SELECT 'view ' || c.relname, pg_get_viewdef(c.oid) || ' ' || coalesce(c.reloptions::text, '')
		   || ' ' || c.relowner::regrole || ' ' || coalesce(c.relacl::text, '')
		   || ' ' || coalesce(obj_description(c.oid, 'pg_class'), '')
	  FROM pg_class c WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('v', 'm')
	UNION ALL
	SELECT 'column ' || c.relname || '.' || a.attname,
		   replace(format_type(a.atttypid, a.atttypmod), 'bigint', 'integer')
		   || ' ' || a.attnotnull || ' ' || coalesce(a.attacl::text, '')
		   || ' ' || coalesce(col_description(c.oid, a.attnum), '')
	  FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid
	 WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('r', 'v', 'm')
	   AND a.attnum > 0 AND NOT a.attisdropped
	UNION ALL
	SELECT 'constraint ' || conrelid::regclass || '.' || conname, pg_get_constraintdef(oid)
	  FROM pg_constraint WHERE connamespace = 'shop'::regnamespace AND contype <> 't'
	UNION ALL
	SELECT 'index ' || indexrelid::regclass, pg_get_indexdef(indexrelid)
	  FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid
	 WHERE c.relnamespace = 'shop'::regnamespace AND c.relkind IN ('r', 'm')
	UNION ALL
	SELECT 'trigger ' || tgrelid::regclass || '.' || tgname, pg_get_triggerdef(oid)
	  FROM pg_trigger WHERE tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 'shop'::regnamespace)
	   AND NOT tgisinternal
$$;
CREATE FUNCTION shop_rows() RETURNS TABLE (what text, n bigint, digest text) LANGUAGE sql AS $$
	SELECT 'customer', count(*), md5(string_agg(c::text, ',' ORDER BY c.id))
	  FROM (SELECT id, email, name, status, region_id, referred_by, loyalty_points
			  FROM shop.customer) c
	UNION ALL SELECT 'orders', count(*), md5(string_agg(o::text, ',' ORDER BY o.id)) FROM shop.orders o
	UNION ALL SELECT 'customer_overview', count(*), md5(string_agg(v::text, ',' ORDER BY v.id))
	  FROM shop.customer_overview v
	UNION ALL SELECT 'active_customer', count(*), md5(string_agg(v::text, ',' ORDER BY v.id))
	  FROM shop.active_customer v
$$;
CREATE TEMP TABLE cat_before AS SELECT * FROM shop_catalog();
CREATE TEMP TABLE rows_before AS SELECT * FROM shop_rows();

SELECT mig_expand('shop.customer', 'id', type => 'bigint') > 0 AS expanded;
SELECT mig_backfill('shop.customer') > 0 AS started;
SET client_min_messages = warning;	-- mig_wait's progress lines carry rates
SELECT mig_wait('shop.customer') AS backfill;
RESET client_min_messages;
SELECT check_name, passed, failing, detail FROM mig_validate('shop.customer')
 WHERE NOT passed OR check_name ~ '^(fkey|unique|contract)';
SELECT mig_cutover('shop.customer');
SELECT mig_contract('shop.customer');
SELECT format_type(atttypid, atttypmod) AS customer_totals_id FROM pg_attribute
 WHERE attrelid = 'shop.customer_totals'::regclass AND attname = 'customer_id';
SELECT count(*) FROM shop.customer_totals;

-- the catalog as it was (but for int -> bigint), the rows as they were
-- (what the backfill's own triggers do is not the finish's concern here)
SELECT * FROM shop_catalog() EXCEPT SELECT * FROM cat_before ORDER BY 1;
SELECT * FROM cat_before EXCEPT SELECT * FROM shop_catalog() ORDER BY 1;
SELECT r.what, r.n, r.digest = b.digest AS same FROM shop_rows() r JOIN rows_before b USING (what)
 ORDER BY 1;
SELECT format_type(atttypid, atttypmod) FROM pg_attribute
 WHERE attrelid = 'shop.customer'::regclass AND attname = 'id';
-- the roles read what they read before
SET ROLE shop_reader;
SELECT count(*), max(id) FROM shop.customer_overview;
SELECT count(*) FROM (SELECT id, email, name FROM shop.customer) c;
RESET ROLE;
SET ROLE shop_clerk;
SELECT count(*), max(id) FROM shop.active_customer;
RESET ROLE;
-- the foreign keys hold on the new column
INSERT INTO shop.orders (id, customer_id, placed_at) VALUES (999999, 4000, now());
INSERT INTO shop.orders (id, customer_id, placed_at) VALUES (999999, 3000, '2025-01-01');
DELETE FROM shop.customer WHERE id = 3000;
SELECT count(*) AS orders_of_3000 FROM shop.orders WHERE customer_id = 3000;
DROP FUNCTION shop_catalog(), shop_rows();
DROP SCHEMA shop CASCADE;
