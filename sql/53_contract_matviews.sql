--
-- Materialized views come along: mig_contract builds a copy of each one on
-- the new column beside it before the swap (populated, as its owner, with
-- its indexes, grants, comments, storage parameters and tablespace), and the
-- swap drops the old one and gives the copy its name; views on it are
-- created again.  A copy is as fresh as the moment it was built.
--
\set VERBOSITY terse
CREATE ROLE mv_owner;
CREATE ROLE mv_reader;
CREATE TABLE mv_sales (id int PRIMARY KEY, region text NOT NULL, amount int NOT NULL);
INSERT INTO mv_sales SELECT g, CASE WHEN g % 3 = 0 THEN 'eu' ELSE 'us' END, g * 10
  FROM generate_series(1, 30) g;
GRANT SELECT ON mv_sales TO mv_owner;
-- its copy is built by its owner, who must be able to create it
GRANT CREATE ON SCHEMA public TO mv_owner;
-- a materialized view on the migrated column, owned by another role, with a
-- unique index, a plain index, grants, comments and storage parameters
CREATE MATERIALIZED VIEW mv_by_id WITH (fillfactor = 70) AS
  SELECT id, region, amount FROM mv_sales WHERE amount > 20;
ALTER MATERIALIZED VIEW mv_by_id OWNER TO mv_owner;
CREATE UNIQUE INDEX mv_by_id_id ON mv_by_id (id);
CREATE INDEX mv_by_id_region ON mv_by_id (region) WHERE region = 'eu';
GRANT SELECT ON mv_by_id TO mv_reader;
GRANT SELECT (id) ON mv_by_id TO PUBLIC;
COMMENT ON MATERIALIZED VIEW mv_by_id IS 'sales above 20';
COMMENT ON COLUMN mv_by_id.id IS 'the sale';
COMMENT ON INDEX mv_by_id_id IS 'one row a sale';
-- a view on it, a materialized view on that materialized view
CREATE VIEW mv_eu AS SELECT id, amount FROM mv_by_id WHERE region = 'eu';
GRANT SELECT ON mv_eu TO mv_reader;
CREATE MATERIALIZED VIEW mv_total AS SELECT count(*) AS n, max(id) AS top FROM mv_by_id;
-- a plain view on the column, and a materialized view on that view
CREATE VIEW mv_plain AS SELECT id, region FROM mv_sales;
CREATE MATERIALIZED VIEW mv_on_plain AS SELECT region, max(id) AS top FROM mv_plain GROUP BY region;
CREATE UNIQUE INDEX mv_on_plain_region ON mv_on_plain (region);

CREATE FUNCTION mv_state()
RETURNS TABLE (rel text, kind "char", owner text, relacl text, reloptions text[], comment text,
			   cols text, indexes text)
LANGUAGE sql STABLE AS $$
SELECT c.relname::text, c.relkind, c.relowner::regrole::text, c.relacl::text, c.reloptions,
	   obj_description(c.oid, 'pg_class'),
	   (SELECT string_agg(a.attname || ':' || format_type(a.atttypid, a.atttypmod)
						  || coalesce(':' || a.attacl::text, '')
						  || coalesce(':' || col_description(c.oid, a.attnum), ''), ', ' ORDER BY a.attnum)
		  FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0),
	   (SELECT string_agg(pg_get_indexdef(i.indexrelid)
						  || coalesce(' ' || obj_description(i.indexrelid, 'pg_class'), ''), '; ' ORDER BY 1)
		  FROM pg_index i WHERE i.indrelid = c.oid)
  FROM pg_class c WHERE c.relname LIKE 'mv\_%' AND c.relkind IN ('m', 'v')
$$;
CREATE TEMP TABLE mv_before AS SELECT * FROM mv_state();
CREATE TEMP TABLE mv_oids AS SELECT oid, relname FROM pg_class WHERE relname LIKE 'mv\_%' AND relkind IN ('m', 'v');

-- a rename of id (the type stays): the plain view keeps its OID, and so does
-- the materialized view on it; the materialized views on the column are rebuilt
SELECT mig_expand('mv_sales', 'id', new_col => 'sale_id') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE mv_sales SET id = id;
RESET migrate_ext.writer;
SELECT check_name, passed, failing FROM mig_validate('mv_sales') WHERE check_name = 'contract_blockers';
SELECT mig_contract('mv_sales');
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE '\_mig\_%';
-- everything as it was; mv_plain and mv_on_plain kept their OIDs
SELECT * FROM mv_state() EXCEPT SELECT * FROM mv_before;
SELECT o.relname, c.oid IS NOT NULL AS same_oid
  FROM mv_oids o LEFT JOIN pg_class c ON c.oid = o.oid AND c.relname = o.relname ORDER BY 1;
-- the contents are those of a fresh REFRESH
CREATE TEMP TABLE mv_rows AS SELECT * FROM mv_by_id;
REFRESH MATERIALIZED VIEW CONCURRENTLY mv_by_id;
SELECT (SELECT count(*) FROM mv_rows) AS rows_now,
	   (SELECT count(*) FROM (SELECT * FROM mv_by_id EXCEPT SELECT * FROM mv_rows) d) AS changed;
SELECT * FROM mv_total;
SET ROLE mv_reader;
SELECT count(*) FROM mv_by_id;
SELECT count(*) FROM mv_eu;
RESET ROLE;
SELECT pg_get_viewdef('mv_by_id'::regclass);

-- int -> bigint of amount: the materialized views change only by the
-- intended type; a materialized view on a view whose type changes reads a
-- copy of that view built beside it, which the swap renames into place
SELECT mig_expand('mv_sales', 'amount', type => 'bigint') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE mv_sales SET amount = amount;
RESET migrate_ext.writer;
CREATE VIEW mv_amounts AS SELECT sale_id, amount FROM mv_sales;
COMMENT ON VIEW mv_amounts IS 'amounts';
GRANT SELECT ON mv_amounts TO mv_reader;
CREATE FUNCTION mv_noop() RETURNS trigger LANGUAGE plpgsql AS 'BEGIN RETURN NEW; END';
CREATE TRIGGER mv_amounts_ins INSTEAD OF INSERT ON mv_amounts FOR EACH ROW EXECUTE FUNCTION mv_noop();
CREATE MATERIALIZED VIEW mv_on_amounts AS SELECT sale_id, amount FROM mv_amounts WHERE amount > 100;
SELECT check_name, passed, failing FROM mig_validate('mv_sales') WHERE check_name = 'contract_blockers';
SELECT mig_contract('mv_sales');
SELECT rel, kind, relacl, comment, cols, indexes FROM mv_state()
 WHERE rel IN ('mv_by_id', 'mv_eu', 'mv_total', 'mv_amounts', 'mv_on_amounts') ORDER BY 1;
SELECT count(*), sum(amount) FROM mv_on_amounts;
SELECT tgname FROM pg_trigger WHERE tgrelid = 'mv_amounts'::regclass;
SELECT pg_get_viewdef('mv_on_amounts'::regclass);
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE '\_mig\_%';

-- a contract that fails after a copy is built drops it: the name of the
-- second copy is taken
SELECT mig_expand('mv_sales', 'region', up => 'upper(region)') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE mv_sales SET region = region;
RESET migrate_ext.writer;
SELECT bool_and(passed) AS validated FROM mig_validate('mv_sales');
CREATE TABLE "_mig_mv_total" ();
SELECT mig_contract('mv_sales');
SELECT relname FROM pg_class WHERE relname LIKE '\_mig\_%' ORDER BY 1;
DROP TABLE "_mig_mv_total";
SELECT mig_contract('mv_sales');
SELECT region, count(*) FROM mv_by_id GROUP BY 1 ORDER BY 1;
SELECT * FROM mv_on_plain ORDER BY 1;
SELECT count(*) AS leftovers FROM pg_class WHERE relname LIKE '\_mig\_%';
DROP TABLE mv_sales CASCADE;
DROP FUNCTION mv_state(), mv_noop();
REVOKE CREATE ON SCHEMA public FROM mv_owner;
DROP ROLE mv_owner, mv_reader;
