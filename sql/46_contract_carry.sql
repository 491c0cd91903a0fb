--
-- Everything the old column had comes along at contract: column privileges
-- (with grant option), statistics target, options, storage, compression,
-- comment, and the CHECK constraints that use it (re-stated on the new
-- column, validated, keeping their names).
--
\set VERBOSITY terse
CREATE ROLE carry_reader;
CREATE ROLE carry_admin;
CREATE TABLE carry (id int PRIMARY KEY,
					qty int NOT NULL CONSTRAINT qty_positive CHECK (qty > 0),
					cap int,
					note text,
					CONSTRAINT qty_below_cap CHECK (cap IS NULL OR qty <= cap));
INSERT INTO carry SELECT g, g, g * 2, 'n' || g FROM generate_series(1, 50) g;
GRANT SELECT (id, qty) ON carry TO carry_reader;
GRANT SELECT (qty), UPDATE (qty) ON carry TO carry_admin WITH GRANT OPTION;
ALTER TABLE carry ALTER COLUMN qty SET STATISTICS 321;
ALTER TABLE carry ALTER COLUMN qty SET (n_distinct = -0.5);
COMMENT ON COLUMN carry.qty IS 'how many';
ALTER TABLE carry ALTER COLUMN note SET STORAGE EXTERNAL;
ALTER TABLE carry ALTER COLUMN note SET COMPRESSION pglz;
CREATE TEMP VIEW carry_props AS
SELECT a.attname, format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull,
	   a.attstattarget,
	   ARRAY(SELECT o FROM unnest(a.attoptions) o WHERE o NOT LIKE 'pg\_%') AS options, a.attstorage, a.attcompression,
	   a.attacl, col_description(a.attrelid, a.attnum) AS comment
  FROM pg_attribute a
 WHERE a.attrelid = 'carry'::regclass AND a.attnum > 0 AND NOT a.attisdropped
 ORDER BY a.attname;
CREATE TEMP TABLE carry_before AS SELECT * FROM carry_props;
CREATE TEMP TABLE carry_cons AS
SELECT conname, pg_get_constraintdef(oid) AS def, convalidated FROM pg_constraint
 WHERE conrelid = 'carry'::regclass;

-- int -> bigint in place, and a text -> text change of note
SELECT mig_expand('carry', 'qty', type => 'bigint') > 0 AS expanded;
SELECT mig_expand('carry', 'note', up => 'upper(note)') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE carry SET qty = qty;
RESET migrate_ext.writer;
SELECT check_name, passed, failing FROM mig_validate('carry') WHERE check_name ~ '^check:';
SELECT mig_contract('carry');

-- the properties: the same as before, but for the new types
SELECT * FROM carry_props EXCEPT SELECT * FROM carry_before;
SELECT * FROM carry_before EXCEPT SELECT * FROM carry_props;
-- the CHECKs: the same names and definitions, validated
SELECT conname, pg_get_constraintdef(oid) AS def, convalidated FROM pg_constraint
 WHERE conrelid = 'carry'::regclass
EXCEPT SELECT * FROM carry_cons;
SELECT count(*) = 3 AS same_constraints FROM pg_constraint c JOIN carry_cons b USING (conname)
 WHERE c.conrelid = 'carry'::regclass;
-- enforced: qty > 0, qty <= cap
INSERT INTO carry (id, qty, cap, note) VALUES (100, 0, NULL, 'x');
INSERT INTO carry (id, qty, cap, note) VALUES (101, 5, 4, 'x');
INSERT INTO carry (id, qty, cap, note) VALUES (102, 5, 5, 'x');
-- the readers still read
SET ROLE carry_reader;
SELECT count(*), sum(qty) FROM carry;
RESET ROLE;
SET ROLE carry_admin;
GRANT SELECT (qty) ON carry TO carry_reader;
RESET ROLE;
SELECT count(*), sum(qty), count(*) FILTER (WHERE note = upper(note)) AS upper_notes FROM carry;
DROP VIEW carry_props;
DROP TABLE carry;
DROP ROLE carry_reader, carry_admin;
