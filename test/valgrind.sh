#!/usr/bin/env bash
# test/valgrind.sh (make valgrind): a single-user backend with migrate_ext
# preloaded, run under valgrind through expand, every dual-write direction,
# a split, round-trip and expression errors, a preflight's fallbacks and
# sorts, the guard's refusals (DDL on
# protected columns, non-immutable or forbidden expressions, trigger order,
# inheritance), a retype behind the guard's back, a role without EXECUTE,
# and abort. Fails on any error
# valgrind reports, except PostgreSQL's own known false positive (the WAL
# writer's padding bytes, suppressed as in src/tools/valgrind.supp).
# Part of make test (the valgrind suite, about a minute), with
# test/valgrind_workers.sh for the background workers. Build and install first.
set -uo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
mig_pg_env
mig_ensure_user || exit 1
command -v valgrind >/dev/null || mig_die "valgrind is not installed (apt-get install valgrind)"

dir=$(mktemp -d /tmp/migrate_ext_valgrind.XXXXXX)
chmod 755 "$dir"
mig_is_root && chown "$MIG_TEST_USER:" "$dir"
cat >"$dir/valgrind.supp" <<'SUPP'
{
	padding_XLogWrite
	Memcheck:Param
	pwrite64(buf)
	...
	fun:XLogFlush
}
SUPP
# statements end with a blank line (postgres --single -j)
cat >"$dir/script.sql" <<'SQL'
CREATE EXTENSION migrate_ext;

CREATE TABLE people (id int PRIMARY KEY, name text, note text);

INSERT INTO people SELECT g, 'n' || g, NULL FROM generate_series(1, 200) g;

SELECT mig_expand('people', 'name', new_col => 'full_name');

UPDATE people SET name = name;

INSERT INTO people (id, full_name) VALUES (1001, 'Cid');

UPDATE people SET full_name = 'Bob New' WHERE id = 2;

UPDATE people SET note = 'x' WHERE id < 50;

INSERT INTO people (id, name, full_name) VALUES (1002, 'a', 'b');

INSERT INTO people (id, name) VALUES (3, 'up') ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name;

CREATE TABLE members (id int PRIMARY KEY, name text NOT NULL);

INSERT INTO members VALUES (1, 'Ada Lovelace');

SELECT mig_expand('members', 'name', new_col => 'first_name', up => 'split_part(name, '' '', 1)');

SELECT mig_expand('members', 'name', new_col => 'last_name', up => 'split_part(name, '' '', 2)', down => 'first_name || '' '' || last_name');

INSERT INTO members (id, first_name, last_name) VALUES (3, 'Grace', 'Hopper');

UPDATE members SET first_name = 'Mary Ann' WHERE id = 3;

CREATE TABLE docs (id int PRIMARY KEY, payload text);

SELECT mig_expand('docs', 'payload', type => 'jsonb');

INSERT INTO docs SELECT g, '{"a": ' || g || '}' FROM generate_series(1, 100) g;

INSERT INTO docs VALUES (1000, 'not json');

SELECT mig_expand('people', 'note', up => 'lower(nte)');

SELECT * FROM mig_validate('docs');

CREATE TABLE dirty (id int PRIMARY KEY, v text UNIQUE);

INSERT INTO dirty SELECT g, CASE WHEN g % 7 = 0 THEN 'x' || g WHEN g % 11 = 0 THEN NULL ELSE g::text END FROM generate_series(1, 300) g;

SELECT * FROM mig_preflight('dirty', 'v', 'int', not_null => true, check_expr => '_mig_new_v < 250');

SELECT * FROM mig_preflight('dirty', 'v', 'int', up => 'length(v)');

ALTER TABLE people ALTER COLUMN full_name TYPE int USING 0;

ALTER TABLE people DROP COLUMN name;

ALTER TABLE people DISABLE TRIGGER ALL;

ALTER TABLE people ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;

CREATE TABLE refused (id int PRIMARY KEY, ts timestamp, s text, g int GENERATED ALWAYS AS (id * 2) STORED);

SELECT mig_expand('refused', 'ts', type => 'timestamptz');

SELECT mig_expand('refused', 's', up => 's || now()::text');

SELECT mig_expand('refused', 's', up => 'tableoid::text');

SELECT mig_expand('refused', 's', up => 'refused::text');

SELECT mig_expand('refused', 's', up => 'g::text');

CREATE TRIGGER "~late" BEFORE UPDATE ON refused FOR EACH ROW EXECUTE FUNCTION suppress_redundant_updates_trigger();

SELECT mig_expand('refused', 's', up => 'upper(s)');

DROP TRIGGER "~late" ON refused;

CREATE TABLE kid () INHERITS (refused);

SELECT mig_expand('refused', 's', up => 'upper(s)');

DROP TABLE kid;

SELECT mig_expand('refused', 'ts', type => 'timestamptz', up => 'ts AT TIME ZONE ''UTC''');

INSERT INTO refused (id, ts, s) VALUES (1, '2024-01-01', 'a');

DELETE FROM pg_depend WHERE classid = 'pg_trigger'::regclass AND objid IN (SELECT oid FROM pg_trigger WHERE tgrelid = 'refused'::regclass);

ALTER TABLE refused ALTER COLUMN _mig_new_ts TYPE text;

INSERT INTO refused (id, ts, s) VALUES (2, '2024-01-01', 'b');

SELECT mig_abort('refused');

CREATE FUNCTION secret(int) RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT $1';

REVOKE EXECUTE ON FUNCTION secret(int) FROM PUBLIC;

CREATE TABLE priv (id int PRIMARY KEY, v int);

SELECT mig_expand('priv', 'v', new_col => 'v2', up => 'secret(v)');

INSERT INTO priv VALUES (1, 1);

CREATE ROLE writer;

GRANT INSERT ON priv TO writer;

SET ROLE writer;

INSERT INTO priv VALUES (2, 2);

RESET ROLE;

SELECT mig_abort('priv');

SELECT mig_abort('people');

SELECT mig_abort('members');
SQL
chmod 644 "$dir/script.sql" "$dir/valgrind.supp"

mig_as_user "initdb -D '$dir/data' -A trust >'$dir/initdb.log' 2>&1" || mig_die "initdb failed: $dir/initdb.log"
mig_log "valgrind: postgres --single through the dual-write paths (about a minute)"
mig_as_user "valgrind --quiet --error-exitcode=3 --suppressions='$dir/valgrind.supp' \
	--log-file='$dir/valgrind.log' postgres --single -j -D '$dir/data' \
	-c shared_preload_libraries=migrate_ext postgres <'$dir/script.sql' >'$dir/out.log' 2>&1"
rc=$?
if [ "$rc" -ne 0 ] || [ -s "$dir/valgrind.log" ]; then
	cat "$dir/valgrind.log"
	echo "valgrind: 0 passed, 1 failed (exit $rc; files in $dir)"
	exit 1
fi
grep -c "ERROR" "$dir/out.log" | xargs -I{} echo "valgrind: clean; {} expected ERRORs raised by the script"
rm -rf "$dir"
echo "1 passed, 0 failed"
