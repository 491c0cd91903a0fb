--
-- A contract that stops before its swap leaves nothing enforced that was not
-- there before, and mig_abort then removes everything migrate_ext created,
-- by the OIDs and attnums it recorded, never by name.
--
\set VERBOSITY terse
CREATE TABLE u_acct (id int PRIMARY KEY, code text UNIQUE);
CREATE TABLE u_ord (id int PRIMARY KEY, acct_id int REFERENCES u_acct, qty int);
INSERT INTO u_acct SELECT g, 'c' || g FROM generate_series(1, 10) g;
INSERT INTO u_ord SELECT g, 1 + g % 10, g FROM generate_series(1, 30) g;
-- the constraints and indexes of both tables, now
CREATE FUNCTION u_state()
RETURNS TABLE (tbl regclass, conname name, contype "char", convalidated boolean)
LANGUAGE sql STABLE AS $$
SELECT conrelid::regclass AS tbl, conname, contype, convalidated FROM pg_constraint
 WHERE conrelid IN ('u_acct'::regclass, 'u_ord'::regclass)
UNION ALL
SELECT indrelid::regclass, indexrelid::regclass::name, 'i', indisvalid FROM pg_index
 WHERE indrelid IN ('u_acct'::regclass, 'u_ord'::regclass)
$$;
CREATE TEMP TABLE u_before AS SELECT * FROM u_state();

-- id 1 fails the check asked for at expand: contract (forced past the
-- validation that would have said so) stops when it validates the CHECK,
-- after it added the copies of the key and of the foreign key
SELECT mig_expand('u_acct', 'id', type => 'bigint', check_expr => 'id > 1') > 0 AS expanded;
SET migrate_ext.writer = 'old';
UPDATE u_acct SET id = id;
RESET migrate_ext.writer;
\set VERBOSITY default
SELECT mig_contract('u_acct', force => true);
\set VERBOSITY terse

-- nothing enforced is left: the constraints and indexes are those of before
SELECT * FROM u_state() EXCEPT SELECT * FROM u_before;
SELECT count(*) AS recorded FROM migrate_ext.contract_object;
-- writes the old schema allows still go through
INSERT INTO u_ord VALUES (100, 1, 1);
INSERT INTO u_acct VALUES (0, 'c0');
INSERT INTO u_acct VALUES (11, 'c11');

-- A contract whose worker died would have left its NOT VALID copies: as if
-- so, one recorded foreign key copy, and a constraint of the user's that
-- merely has a name like it (not recorded: abort must keep it).
ALTER TABLE u_acct ADD CONSTRAINT _mig_u_acct_pkey UNIQUE (_mig_new_id);
ALTER TABLE u_ord ADD CONSTRAINT _mig_u_ord_acct_id_fkey
  FOREIGN KEY (acct_id) REFERENCES u_acct (_mig_new_id) NOT VALID;
INSERT INTO migrate_ext.contract_object (migration_id, classid, objid, relid)
SELECT m.id, 'pg_constraint'::regclass, c.oid, c.conrelid
  FROM migrate_ext.migration m, pg_constraint c
 WHERE m.relid = 'u_acct'::regclass AND m.phase NOT IN ('aborted', 'contracted')
   AND c.conname IN ('_mig_u_acct_pkey', '_mig_u_ord_acct_id_fkey');
ALTER TABLE u_ord ADD CONSTRAINT _mig_user_check CHECK (qty > 0) NOT VALID;

-- abort drops the recorded copies (foreign key first) and the new column,
-- and keeps the user's constraint
SELECT mig_abort('u_acct');
SELECT phase FROM migrate_ext.migration WHERE relid = 'u_acct'::regclass;
SELECT attname FROM pg_attribute
 WHERE attrelid = 'u_acct'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum;
SELECT * FROM u_state() EXCEPT SELECT * FROM u_before;
SELECT count(*) AS recorded FROM migrate_ext.contract_object;
SELECT count(*) AS acct_rows, sum(id) AS id_sum FROM u_acct;
SELECT count(*) AS ord_rows, sum(acct_id) AS acct_sum FROM u_ord;
ALTER TABLE u_ord DROP CONSTRAINT _mig_user_check;

DROP TABLE u_ord, u_acct;
