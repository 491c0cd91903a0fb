-- Every misuse is an ERROR with a proper SQLSTATE, and leaves nothing behind.
CREATE FUNCTION try(stmt text) RETURNS text LANGUAGE plpgsql AS $$
BEGIN
	EXECUTE stmt;
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	RETURN SQLSTATE || ': ' || SQLERRM;
END $$;
CREATE TABLE victim (id int PRIMARY KEY, email text, n int, doc json);
CREATE VIEW victim_view AS SELECT id, email FROM victim;
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER dummy_srv FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE victim_ft (id int) SERVER dummy_srv;
CREATE MATERIALIZED VIEW victim_mv AS SELECT 1 AS id;
-- what a failed call must not leave: a column, a trigger or a catalog row
CREATE FUNCTION leftovers() RETURNS text LANGUAGE sql AS $$
	SELECT format('columns=%s triggers=%s migrations=%s pairs=%s',
		(SELECT count(*) FROM pg_attribute WHERE attrelid = 'victim'::regclass AND attnum > 0 AND NOT attisdropped),
		(SELECT count(*) FROM pg_trigger WHERE tgrelid = 'victim'::regclass),
		(SELECT count(*) FROM migrate_ext.migration WHERE relid = 'victim'::regclass),
		(SELECT count(*) FROM migrate_ext.column_pair p JOIN migrate_ext.migration m ON m.id = p.migration_id
		  WHERE m.relid = 'victim'::regclass))
$$;
SELECT leftovers();

-- unknown table, column, type; wrong kinds of relation
SELECT try($$SELECT mig_expand('nosuch', 'email')$$);
SELECT try($$SELECT mig_expand('victim', 'nosuch')$$);
SELECT try($$SELECT mig_expand('victim', 'ctid')$$);
SELECT try($$SELECT mig_expand('victim', 'email', type => 'nosuchtype')$$);
SELECT try($$SELECT mig_expand('victim', 'email', type => 'int; drop table victim')$$);
SELECT try($$SELECT mig_expand('victim', 'email', type => 'anyelement')$$);
SELECT try($$SELECT mig_expand('victim_view', 'email')$$);
SELECT try($$SELECT mig_expand('victim_ft', 'id')$$);
SELECT try($$SELECT mig_expand('victim_mv', 'id')$$);
SELECT try($$SELECT mig_expand(NULL, 'email')$$);
-- an OID that names no table, for the functions that report
SELECT try($$SELECT * FROM mig_progress(0)$$);
SELECT try($$SELECT mig_wait(0)$$);
SELECT try($$SELECT mig_checklist(0)$$);
-- an extension's tables, migrate_ext's own catalog first (a superuser
-- could otherwise put the dual-write trigger on it): refused, untouched
SELECT try($$SELECT mig_expand('migrate_ext.job', 'state', up => 'upper(state)')$$);
SELECT try($$SELECT mig_expand('migrate_ext.migration', 'phase', type => 'varchar(20)')$$);
SELECT count(*) AS catalog_columns_added FROM pg_attribute
 WHERE attrelid IN ('migrate_ext.job'::regclass, 'migrate_ext.migration'::regclass) AND attname LIKE '_mig%';
SELECT count(*) AS catalog_triggers FROM pg_trigger
 WHERE tgrelid IN ('migrate_ext.job'::regclass, 'migrate_ext.migration'::regclass) AND NOT tgisinternal;
SELECT leftovers();

-- bad expressions: each caught at expand time, pointing into the text
SELECT try($$SELECT mig_expand('victim', 'email', up => 'lower(emial)')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'lower(')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'random()::text')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'clock_timestamp()::text')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'max(email)')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'row_number() over ()')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => '(SELECT email FROM victim LIMIT 1)')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'generate_series(1, 2)::text')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'email FROM pg_class')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'email, email')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'email AS x')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'lower(email)); DROP TABLE victim; SELECT (1')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => 'lower(email); DROP TABLE victim')$$);
SELECT try($$SELECT mig_expand('victim', 'email', up => '')$$);
SELECT try($$SELECT mig_expand('victim', 'email', type => 'int', up => 'email')$$);
SELECT try($$SELECT mig_expand('victim', 'email', type => 'int', up => 'now()')$$);
SELECT try($$SELECT mig_expand('victim', 'doc', type => 'point')$$);
-- down and check are cooked against the row with the new column, after it is added:
-- a bad one still leaves nothing behind
SELECT try($$SELECT mig_expand('victim', 'n', new_col => 'n2', type => 'bigint', up => 'n', down => 'n2 +')$$);
SELECT try($$SELECT mig_expand('victim', 'n', new_col => 'n2', type => 'bigint', up => 'n', down => 'random()')$$);
SELECT try($$SELECT mig_expand('victim', 'n', new_col => 'n2', type => 'bigint', check_expr => 'n2 + 1')$$);
SELECT try($$SELECT mig_expand('victim', 'n', new_col => 'n2', type => 'bigint', check_expr => 'nosuch > 0')$$);
SELECT leftovers();
\d victim

-- how an expression error reads in psql: position, hint and context
SELECT mig_expand('victim', 'email', up => 'lower(emial)');
SELECT mig_expand('victim', 'email', type => 'int', up => 'upper(email)');

-- the new column must not exist yet
SELECT try($$SELECT mig_expand('victim', 'email', new_col => 'n')$$);
SELECT leftovers();

-- one active migration per table: pairs can be added only before the backfill
SELECT mig_expand('victim', 'email', up => 'lower(email)') > 0 AS ok;
UPDATE migrate_ext.migration SET phase = 'backfilled' WHERE relid = 'victim'::regclass;
SELECT try($$SELECT mig_expand('victim', 'n', type => 'bigint')$$);
SELECT leftovers();
SELECT mig_abort('victim');

-- a caller who does not own the table
CREATE ROLE mig_intruder;
GRANT ALL ON victim TO mig_intruder;
GRANT USAGE ON SCHEMA public TO mig_intruder;
SET ROLE mig_intruder;
SELECT try($$SELECT mig_expand('victim', 'email')$$);
SELECT try($$SELECT mig_abort('victim')$$);
-- nor can anyone but the extension owner write the catalog (it holds trees the trigger runs)
SELECT try($$UPDATE migrate_ext.column_pair SET up_expr = 'x'$$);
SELECT try($$INSERT INTO migrate_ext.migration (relid, table_name) VALUES (1, 'x')$$);
-- nor read it (it holds key values and expressions): the views are for everyone
SELECT try($$SELECT count(*) FROM migrate_ext.migration$$);
SELECT count(*) >= 0 AS can_read FROM mig_history;
RESET ROLE;
-- (the aborted migration stays in the history)
SELECT leftovers();

-- the trigger function is for the trigger only
SELECT try($$SELECT migrate_ext.dualwrite()$$);
CREATE TABLE misuse (id int);
CREATE TRIGGER misuse AFTER INSERT ON misuse FOR EACH ROW EXECUTE FUNCTION migrate_ext.dualwrite('1');
SELECT try($$INSERT INTO misuse VALUES (1)$$);
DROP TABLE misuse;

DROP OWNED BY mig_intruder;
DROP ROLE mig_intruder;
