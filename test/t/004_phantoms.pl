# No phantom migrations, and the dual-write trigger stays while its
# migration is active (issues 9 and 10):
#  - DROP TRIGGER of the dual-write trigger is refused (other triggers are
#    not); mig_abort and mig_contract still drop it themselves;
#  - DROP TABLE aborts the table's active migration and cancels its job;
#  - after a dump and restore, the catalog's rows name old OIDs: mig_abort
#    cannot reach such a migration, mig_abort_id can, and refuses a live one.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('phantoms');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'migrate_ext'
max_worker_processes = 16
});
$node->start;

$node->safe_psql('postgres', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE t (id int PRIMARY KEY, v int);
INSERT INTO t SELECT g, g FROM generate_series(1, 1000) g;
CREATE FUNCTION noop() RETURNS trigger LANGUAGE plpgsql AS $$BEGIN RETURN NEW; END$$;
CREATE TRIGGER a_noop BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION noop();
SELECT mig_expand('t', 'v', type => 'bigint');
});

# 1. DROP TRIGGER of the dual-write trigger: refused
my ($rc, $out, $err) = $node->psql('postgres',
	'DROP TRIGGER zz_migrate_ext_dualwrite ON t', extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($err, qr/2BP01: cannot drop the dual-write trigger of migration \d+ on table "t"/,
	'DROP TRIGGER of the dual-write trigger is refused (2BP01)');
like($err, qr/mig_abort\('t'\)/, 'and the hint names mig_abort');
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'"),
	'1', 'the trigger is still there');
$node->safe_psql('postgres', 'INSERT INTO t VALUES (1001, 1001)');
is($node->safe_psql('postgres', 'SELECT _mig_new_v FROM t WHERE id = 1001'), '1001',
	'and still dual-writes');
$node->safe_psql('postgres', 'DROP TRIGGER a_noop ON t');
pass('another trigger of the table can be dropped');

# mig_abort drops it itself
$node->safe_psql('postgres', "SELECT mig_abort('t')");
is($node->safe_psql('postgres', "SELECT count(*) FROM pg_trigger WHERE tgname = 'zz_migrate_ext_dualwrite'"),
	'0', 'mig_abort drops the trigger');

# mig_contract drops it itself (from its worker)
$node->safe_psql('postgres', q{
SELECT mig_expand('t', 'v', type => 'bigint');
SET migrate_ext.writer = 'old';
UPDATE t SET v = v;
RESET migrate_ext.writer;
SELECT bool_and(passed) FROM mig_validate('t');
SELECT mig_cutover('t');
});
$node->safe_psql('postgres', "SELECT mig_contract('t')");
is($node->safe_psql('postgres',
		"SELECT phase FROM migrate_ext.migration ORDER BY id DESC LIMIT 1"),
	'contracted', 'mig_contract drops the trigger and finishes');

# 2. DROP TABLE: the active migration goes with it
$node->safe_psql('postgres', q{
CREATE TABLE d (id int PRIMARY KEY, v int);
INSERT INTO d SELECT g, g FROM generate_series(1, 1000) g;
SELECT mig_expand('d', 'v', type => 'bigint');
SELECT mig_backfill('d', batch_size => 1, sleep_ms => 1000) > 0;
});
my $did = $node->safe_psql('postgres',
	"SELECT id FROM migrate_ext.migration WHERE table_name LIKE '%d' ORDER BY id DESC LIMIT 1");
($rc, $out, $err) = $node->psql('postgres', 'DROP TABLE d');
is($rc, 0, 'DROP TABLE of a migrating table works');
like($err, qr/migration $did of table .* is aborted: the table was dropped/, 'and says the migration is aborted');
is($node->safe_psql('postgres', "SELECT phase FROM migrate_ext.migration WHERE id = $did"),
	'aborted', 'the migration is aborted');
is($node->safe_psql('postgres',
		"SELECT string_agg(state, ',') FROM migrate_ext.job WHERE migration_id = $did"),
	'cancelled', 'its backfill job is cancelled');
is($node->safe_psql('postgres',
		"SELECT detail FROM migrate_ext.phase_log WHERE migration_id = $did AND phase = 'aborted'"),
	'the table was dropped', 'the phase log says why');

# 3. dump and restore
$node->safe_psql('postgres', q{
CREATE DATABASE src;
});
$node->safe_psql('src', q{
CREATE EXTENSION migrate_ext;
CREATE TABLE pad (id int);
DROP TABLE pad;
CREATE TABLE r (id int PRIMARY KEY, v int);
INSERT INTO r SELECT g, g FROM generate_series(1, 500) g;
SELECT mig_expand('r', 'v', type => 'bigint');
});
my $rid = $node->safe_psql('src', "SELECT id FROM migrate_ext.migration");
my $dump = $node->basedir . '/src.dump';
$node->command_ok([ 'pg_dump', '-Fc', '-f', $dump, '-d', $node->connstr('src') ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE dst');
$node->command_ok([ 'pg_restore', '-d', $node->connstr('dst'), $dump ], 'pg_restore');
is($node->safe_psql('dst',
		"SELECT count(*) FROM migrate_ext.migration m WHERE m.relid = 'r'::regclass"),
	'0', 'after the restore the catalog names another OID than the table');
($rc, $out, $err) = $node->psql('dst', "SELECT mig_abort('r')");
isnt($rc, 0, 'mig_abort by the table cannot reach the phantom');
like($err, qr/HINT:  Abort that migration with mig_abort_id\($rid\)/, 'but its hint names mig_abort_id');
($rc, $out, $err) = $node->psql('src', "SELECT mig_abort_id($rid)");
like($err, qr/is not a phantom/, 'mig_abort_id refuses a migration whose table is there');
($rc, $out, $err) = $node->psql('dst', "SELECT mig_abort_id($rid)");
is($rc, 0, 'mig_abort_id aborts the phantom') or diag($err);
like($err, qr/dropped the dual-write trigger of migration $rid from table public\.r/,
	'and drops the trigger the restored table carries');
is($node->safe_psql('dst', "SELECT phase FROM migrate_ext.migration WHERE id = $rid"),
	'aborted', 'the phantom is aborted');
is($node->safe_psql('dst', "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'r'::regclass"),
	'0', 'the restored table has no dual-write trigger left');
$node->safe_psql('dst', 'INSERT INTO r VALUES (501, 501)');
is($node->safe_psql('dst', 'SELECT count(*) FROM r'), '501', 'the restored table takes writes');
is($node->safe_psql('src', "SELECT phase FROM migrate_ext.migration WHERE id = $rid"),
	'expanded', 'the original database is untouched');

# the guard does not stand in the way of dropping the extension itself
$node->safe_psql('dst', 'DROP EXTENSION migrate_ext CASCADE');
pass('DROP EXTENSION migrate_ext CASCADE works');
$node->safe_psql('src', 'DROP EXTENSION migrate_ext CASCADE');
is($node->safe_psql('src', "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'r'::regclass"),
	'0', 'and with an active migration: its trigger goes with it');

$node->stop;
done_testing();
