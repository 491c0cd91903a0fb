-- mig_expand's type changes (red's review): default casts that would lose
-- data, and the catalog-only change run as the owner.  In a file of its
-- own, last: migration ids in the other files' output stay as they are.
-- The default up applies the new type's length as ALTER TABLE ... TYPE
-- would (by assignment): a value too long for varchar(3) is an error, never
-- silently cut (an explicit cast would cut it, and contract would then drop
-- the only full copy).  mig_preflight names the row; an up that says what
-- to do with it (left()) is the way.
CREATE TABLE codes (id int PRIMARY KEY, code text, n int);
INSERT INTO codes VALUES (1, 'hello', 12345), (2, 'ab', 1);
SELECT check_name, passed, failing, detail FROM mig_preflight('codes', 'code', type => 'varchar(3)');
SELECT check_name, passed, failing FROM mig_preflight('codes', 'n', type => 'varchar(3)');
SELECT mig_expand('codes', 'code', type => 'varchar(3)') > 0 AS ok;
INSERT INTO codes (id, code) VALUES (3, 'toolong');
INSERT INTO codes (id, code) VALUES (3, 'abc');
SELECT id, code, _mig_new_code FROM codes WHERE id = 3;
SELECT mig_abort('codes');
SELECT mig_expand('codes', 'code', type => 'varchar(3)', up => 'left(code, 3)') > 0 AS ok;
UPDATE codes SET code = code;
SELECT id, code, _mig_new_code FROM codes ORDER BY id;
SELECT mig_abort('codes');
-- the default down alike: a new-version write too long for the old column
-- is refused, not cut into it
CREATE TABLE labels (id int PRIMARY KEY, label varchar(5));
SELECT mig_expand('labels', 'label', new_col => 'title', type => 'text') > 0 AS ok;
INSERT INTO labels (id, title) VALUES (1, 'far too long');
INSERT INTO labels (id, title) VALUES (1, 'short');
SELECT * FROM labels;

-- A type change PostgreSQL makes in the catalog alone (varchar(10) ->
-- varchar(40)) runs ALTER TABLE ... TYPE, which simplifies the expressions
-- of the column's indexes to see whether it can keep them, calling an
-- owner's function with constant arguments there: it runs as the owner,
-- restricted, not as the superuser who called mig_expand.
CREATE ROLE rt_owner;
GRANT CREATE ON SCHEMA public TO rt_owner;
SET ROLE rt_owner;
CREATE TABLE rt_log (msg text);
CREATE FUNCTION rt_grab() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
	INSERT INTO public.rt_log VALUES ('ran as ' || current_user);
	BEGIN
		ALTER ROLE rt_owner SUPERUSER;
		INSERT INTO public.rt_log VALUES ('ALTER ROLE worked');
	EXCEPTION WHEN OTHERS THEN NULL;
	END;
	RETURN true;
END $$;
CREATE FUNCTION rt_suffix(int) RETURNS text LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
	PERFORM public.rt_grab();
	RETURN $1::text;
END $$;
CREATE TABLE rt (id int PRIMARY KEY, code varchar(10));
CREATE INDEX rt_code ON rt ((code || rt_suffix(1)));
INSERT INTO rt VALUES (1, 'a');
TRUNCATE rt_log;
RESET ROLE;
\c
SELECT mig_expand('rt', 'code', type => 'varchar(40)') > 0 AS expanded;
SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = 'rt'::regclass AND attname = 'code';
SELECT DISTINCT msg FROM rt_log ORDER BY 1;
SELECT rolsuper FROM pg_roles WHERE rolname = 'rt_owner';
DROP TABLE rt, rt_log;
DROP FUNCTION rt_suffix(int), rt_grab();
REVOKE CREATE ON SCHEMA public FROM rt_owner;
DROP ROLE rt_owner;
