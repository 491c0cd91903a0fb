# ALTER EXTENSION migrate_ext UPDATE, the way a DBA does it: the last
# release (built here from the commit src/upgrade/RELEASES names, exported
# from git by test/run.sh into test/releases/) runs migrations in every
# phase, one backfill running and one paused; the server stops; the new
# build's files replace the old ones (as a package upgrade does); the server
# starts with the new library, which resumes the interrupted backfill;
# ALTER EXTENSION ... UPDATE; every migration is finished by the new code,
# the history intact. Then an updated database and a fresh install of the
# new version must have the same catalog (pg_dump).
#
# Both builds are installed into a private, relocated copy of the server
# (PostgreSQL finds lib/ and share/ relative to its binaries), so the test
# needs no write access to the system's pkglibdir.
use strict;
use warnings;
use File::Basename qw(dirname);
use File::Copy qw(copy);
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $src = $ENV{TESTDIR} or die "TESTDIR is not set (run through make installcheck)";
my $pg_config = $ENV{PG_CONFIG} || 'pg_config';

sub slurp_file_of { my $f = shift; open my $fh, '<', $f or die "$f: $!"; local $/; return <$fh>; }

my ($new_v) = slurp_file_of("$src/migrate_ext.control") =~ /^default_version\s*=\s*'([^']+)'/m
  or die "no default_version in migrate_ext.control";
my @releases = grep { /^\d/ } split /\n/, slurp_file_of("$src/src/upgrade/RELEASES");
my ($old_v, $old_commit) = split /\s+/, $releases[-1];
isnt($old_v, $new_v, "the current version $new_v is not the release $old_v");
ok(-f "$src/migrate_ext--$old_v--$new_v.sql", "migrate_ext--$old_v--$new_v.sql is built");

my $tar = "$src/test/releases/migrate_ext-$old_v.tar";
-f $tar
  or die "$tar is missing: test/run.sh exports it with `git archive $old_commit`; "
  . "run the suite from a git clone that has that commit (not a shallow one)";

# --- the release, built as it was -------------------------------------------
my $tmp = PostgreSQL::Test::Utils::tempdir('upgrade');
my %clean_env = %ENV;
delete @clean_env{qw(MAKEFLAGS MAKELEVEL MFLAGS MAKEOVERRIDES)};
sub run_clean
{
	local %ENV = %clean_env;
	return PostgreSQL::Test::Utils::run_log(\@_);
}
run_clean('tar', '-xf', $tar, '-C', $tmp) or die "cannot unpack $tar";
my $old_src = "$tmp/migrate_ext-$old_v";
run_clean('make', '-C', $old_src, '-j2', "PG_CONFIG=$pg_config")
  or die "the $old_v release does not build (see the log)";

# --- a private copy of the server ------------------------------------------------
my %dir;
for my $k (qw(bindir pkglibdir sharedir))
{
	chomp($dir{$k} = `$pg_config --$k`);
	die "$pg_config --$k failed" if $? || !$dir{$k};
}
my $inst = "$tmp/inst";
for my $k (qw(bindir pkglibdir sharedir))
{
	make_path("$inst$dir{$k}");
	run_clean('sh', '-c',
		"tar -C '$dir{$k}' --exclude=./bitcode -cf - . | tar -C '$inst$dir{$k}' -xf -")
	  or die "cannot copy $dir{$k}";
}
my $lib = "$inst$dir{pkglibdir}";
my $ext = "$inst$dir{sharedir}/extension";

# Replace the installed extension files by those of a build, as a package
# upgrade does: the old ones go, the new ones come.
sub install_build
{
	my $from = shift;
	unlink glob("$ext/migrate_ext*"), "$lib/migrate_ext.so";
	copy("$from/migrate_ext.so", "$lib/migrate_ext.so") or die "copy .so: $!";
	copy("$from/migrate_ext.control", $ext) or die "copy control: $!";
	for my $f (glob("$from/migrate_ext--*.sql"))
	{
		copy($f, $ext) or die "copy $f: $!";
	}
}

install_build($old_src);
my $node = PostgreSQL::Test::Cluster->new('upgrade', install_path => dirname("$inst$dir{bindir}"));
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'migrate_ext'
max_worker_processes = 16
jit = off
});
$node->start;

# mig_contract.  The release (0.1) has a race in worker.c: a contract
# worker that is done before WaitForBackgroundWorkerStartup looks makes
# mig_contract report "could not start a migrate_ext background worker"
# although the worker ran; with it, retried when the migration is not
# contracted, accepted when it is.  The new code takes a worker that has
# already finished for one that started and reads the result: one call.
sub contract
{
	my ($t, $release) = @_;
	if (!$release)
	{
		$node->safe_psql('postgres', "SELECT mig_contract('app.$t')");
		return;
	}
	for my $try (1 .. 3)
	{
		my ($rc, $out, $err) = $node->psql('postgres', "SELECT mig_contract('app.$t')");
		return if $rc == 0;
		die "mig_contract('app.$t'): $err" unless $err =~ /could not start a migrate_ext background worker/;
		diag("mig_contract('app.$t') with the release, try $try: $err");
		return if $node->safe_psql('postgres',
			"SELECT phase FROM migrate_ext.migration WHERE relid = 'app.$t'::regclass "
			  . "ORDER BY id DESC LIMIT 1") eq 'contracted';
	}
	die "mig_contract('app.$t') failed 3 times";
}

# --- migrations in every phase, with the release -----------------------------------
my $rows = 30000;
$node->safe_psql('postgres', qq{
CREATE EXTENSION migrate_ext;
CREATE SCHEMA app;
SET search_path = app, public;
CREATE TABLE t_expanded (id int PRIMARY KEY, v text);
CREATE TABLE t_running (id int PRIMARY KEY, v text);
CREATE TABLE t_paused (id int PRIMARY KEY, v text);
CREATE TABLE t_backfilled (id int PRIMARY KEY, v text);
CREATE TABLE t_validated (id int PRIMARY KEY, v text);
CREATE TABLE t_cutover (id int PRIMARY KEY, v text);
CREATE TABLE t_contracted (id int PRIMARY KEY, v text);
CREATE TABLE t_aborted (id int PRIMARY KEY, v text);
INSERT INTO t_running SELECT g, 'V' || g FROM generate_series(1, $rows) g;
INSERT INTO t_paused SELECT g, 'V' || g FROM generate_series(1, $rows) g;
});
for my $t (qw(t_expanded t_backfilled t_validated t_cutover t_contracted t_aborted))
{
	$node->safe_psql('postgres',
		"INSERT INTO app.$t SELECT g, 'V' || g FROM generate_series(1, 2000) g");
}
for my $t (qw(t_expanded t_running t_paused t_backfilled t_validated t_cutover t_contracted t_aborted))
{
	$node->safe_psql('postgres', "SELECT mig_expand('app.$t', 'v', up => 'lower(v)', down => 'upper(_mig_new_v)')");
}
for my $t (qw(t_backfilled t_validated t_cutover t_contracted))
{
	$node->safe_psql('postgres', "SELECT mig_backfill('app.$t'); SELECT mig_wait('app.$t')");
}
for my $t (qw(t_validated t_cutover t_contracted))
{
	is($node->safe_psql('postgres', "SELECT bool_and(passed) FROM mig_validate('app.$t')"),
		't', "$old_v: $t validated");
}
$node->safe_psql('postgres', "SELECT mig_cutover('app.$_')") for qw(t_cutover t_contracted);
contract('t_contracted', 'release');
$node->safe_psql('postgres', "SELECT mig_abort('app.t_aborted')");

# Two slow backfills: one paused, one running when the server stops.
$node->safe_psql('postgres', "SELECT mig_backfill('app.t_paused', batch_size => 200, max_rows_per_sec => 1000)");
$node->safe_psql('postgres', "SELECT mig_backfill('app.t_running', batch_size => 200, max_rows_per_sec => 1000)");
my $job = sub { "(SELECT j FROM migrate_ext.job j JOIN migrate_ext.migration m ON m.id = j.migration_id "
	  . "WHERE m.relid = 'app.$_[0]'::regclass ORDER BY j.id DESC LIMIT 1)" };
$node->poll_query_until('postgres', "SELECT (" . $job->('t_paused') . ").rows_done >= 1000")
  or die "the backfill of t_paused did not start";
$node->safe_psql('postgres', "SELECT mig_pause('app.t_paused')");
$node->poll_query_until('postgres', "SELECT (" . $job->('t_running') . ").rows_done >= 1000")
  or die "the backfill of t_running did not start";

# A database where a view of the DBA's uses mig_status: the update must stop
# and say so, rather than drop the view with CASCADE.
$node->safe_psql('postgres', 'CREATE DATABASE watched');
$node->safe_psql('watched', 'CREATE EXTENSION migrate_ext; CREATE VIEW my_watch AS SELECT table_name FROM mig_status');

my $phases = "SELECT m.table_name, m.phase FROM migrate_ext.migration m ORDER BY m.id";
is($node->safe_psql('postgres', $phases), join("\n",
		'app.t_expanded|expanded', 'app.t_running|backfilling', 'app.t_paused|backfilling',
		'app.t_backfilled|backfilled', 'app.t_validated|validated', 'app.t_cutover|cutover',
		'app.t_contracted|contracted', 'app.t_aborted|aborted'),
	"$old_v: a migration in every phase");

# The history as 0.1 recorded it: its columns only, so that columns the new
# version adds do not count.
my $history = q{
SELECT m.id, m.relid, m.table_name, m.created_at, m.created_by,
	   (SELECT string_agg(concat_ws(',', l.phase, l.at, l.by_role, l.detail), ';' ORDER BY l.at)
		  FROM migrate_ext.phase_log l WHERE l.migration_id = m.id),
	   (SELECT string_agg(concat_ws(',', p.ord, p.old_col, p.new_col, p.up_src, p.down_src), ';' ORDER BY p.ord)
		  FROM migrate_ext.column_pair p WHERE p.migration_id = m.id),
	   (SELECT string_agg(concat_ws(',', j.id, j.started_at), ';' ORDER BY j.id)
		  FROM migrate_ext.job j WHERE j.migration_id = m.id),
	   (SELECT string_agg(concat_ws(',', v.run, v.check_name, v.passed), ';' ORDER BY v.run, v.ord)
		  FROM migrate_ext.validation v WHERE v.migration_id = m.id)
  FROM migrate_ext.migration m ORDER BY m.id};
$node->safe_psql('postgres', 'CHECKPOINT');
my $history_before = $node->safe_psql('postgres', $history);
my ($running_id, $done_before) = split /\|/,
  $node->safe_psql('postgres', "SELECT (" . $job->('t_running') . ").id, (" . $job->('t_running') . ").rows_seen");

# --- the upgrade -------------------------------------------------------------------
my ($rc, $o, $e);
$node->stop('fast');
install_build($src);
my $log_offset = -s $node->logfile;
$node->start;

# Between the restart on the new library and ALTER EXTENSION ... UPDATE the
# new code runs against the old catalog: the launcher waits, the functions
# refuse with the way out, the dual-write trigger goes on.
ok($node->wait_for_log(qr/not resuming the backfill jobs of database "postgres" yet: the library is version \Q$new_v\E, the extension \Q$old_v\E/,
		$log_offset), 'before the update the launcher does not resume the backfill');
is($node->safe_psql('postgres', q{SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
	AND granted AND classid = 1835624306 AND objid = } . "(" . $job->('t_running') . ").id"),
	'0', 'no worker runs the interrupted backfill');
($rc, $o, $e) = $node->psql('postgres', "SELECT * FROM mig_validate('app.t_backfilled')",
	extra_params => [ '-v', 'VERBOSITY=verbose' ]);
like($e, qr/55000: the migrate_ext library is version \Q$new_v\E, but the extension in this database is version \Q$old_v\E/,
	'a function that needs the new catalog refuses (55000)');
like($e, qr/HINT:  Run ALTER EXTENSION migrate_ext UPDATE/, 'and says to update the extension');
$node->safe_psql('postgres', "UPDATE app.t_expanded SET v = 'Gate' WHERE id = 1");
is($node->safe_psql('postgres', 'SELECT _mig_new_v FROM app.t_expanded WHERE id = 1'), 'gate',
	'the dual-write trigger keeps working on the old catalog');

$node->safe_psql('postgres', 'ALTER EXTENSION migrate_ext UPDATE');
is($node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'migrate_ext'"),
	$new_v, "updated to $new_v");
($rc, $o, $e) = $node->psql('watched', 'ALTER EXTENSION migrate_ext UPDATE');
like($e, qr/cannot update extension migrate_ext: its views .*mig_status.* are used by objects outside the extension.*view my_watch depends on view mig_status/s,
	'a view of the DBA on mig_status stops the update, naming it');
is($node->safe_psql('watched', "SELECT extversion FROM pg_extension WHERE extname = 'migrate_ext'"),
	$old_v, 'and the failed update changed nothing');
$node->safe_psql('watched', 'DROP VIEW my_watch; ALTER EXTENSION migrate_ext UPDATE; CREATE VIEW my_watch AS SELECT table_name FROM mig_status');
is($node->safe_psql('watched', "SELECT extversion FROM pg_extension WHERE extname = 'migrate_ext'"),
	$new_v, 'without the view it updates');
is($node->safe_psql('postgres', $history), $history_before,
	'the history (migrations, phases, pairs, jobs, validations) is intact');

# The interrupted backfill goes on, with the new library, from its checkpoint:
# the launcher resumes it once the extension is updated.
$node->safe_psql('postgres', "SELECT mig_set('app.t_running', 'max_rows_per_sec', NULL)");
ok($node->poll_query_until('postgres', "SELECT (" . $job->('t_running') . ").state = 'done' OR EXISTS "
	  . q{(SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = 1835624306 AND objid = }
	  . "(" . $job->('t_running') . ").id)"),
	'after the update the launcher resumes the backfill');
is($node->safe_psql('postgres', "SELECT mig_wait('app.t_running')"), 'done',
	'the backfill interrupted by the upgrade finishes');
is($node->safe_psql('postgres', "SELECT (" . $job->('t_running') . ").id, (" . $job->('t_running') . ").rows_seen"),
	"$running_id|$rows", 'the same job, gone on from its checkpoint: no row seen twice');
cmp_ok($done_before, '>', 0, 'it had covered rows before the upgrade');
is($node->safe_psql('postgres', "SELECT (" . $job->('t_paused') . ").state"), 'paused',
	'the paused backfill is still paused');
$node->safe_psql('postgres', "SELECT mig_set('app.t_paused', 'max_rows_per_sec', NULL); SELECT mig_resume('app.t_paused')");
is($node->safe_psql('postgres', "SELECT mig_wait('app.t_paused')"), 'done', 'the paused backfill resumes and finishes');

# The dual-write trigger of the new library on the old migrations.
$node->safe_psql('postgres', q{
INSERT INTO app.t_expanded VALUES (100001, 'New');
INSERT INTO app.t_validated VALUES (100001, 'New');
UPDATE app.t_cutover SET _mig_new_v = 'changed' WHERE id = 1;
});
is($node->safe_psql('postgres', 'SELECT v, _mig_new_v FROM app.t_cutover WHERE id = 1'),
	'CHANGED|changed', 'after cutover the old column follows the new one (down)');

# Finish every migration with the new version.
$node->safe_psql('postgres', "SELECT mig_backfill('app.t_expanded'); SELECT mig_wait('app.t_expanded')");
for my $t (qw(t_expanded t_running t_paused t_backfilled t_validated))
{
	is($node->safe_psql('postgres', "SELECT bool_and(passed) FROM mig_validate('app.$t')"),
		't', "$new_v: $t validated");
	$node->safe_psql('postgres', "SELECT mig_cutover('app.$t')");
}
for my $t (qw(t_expanded t_running t_paused t_backfilled t_validated t_cutover))
{
	contract($t);
	is( $node->safe_psql('postgres',
			"SELECT count(*) FILTER (WHERE v IS DISTINCT FROM lower(v)), count(*) FROM app.$t"),
		'0|' . ($t =~ /running|paused/ ? $rows : 2000 + ($t =~ /expanded|validated/ ? 1 : 0)),
		"$t contracted: every row holds the lowered value");
}
is($node->safe_psql('postgres', "SELECT count(*) FROM migrate_ext.migration WHERE phase NOT IN ('contracted', 'aborted')"),
	'0', 'every migration finished');
my $n_log = $node->safe_psql('postgres', 'SELECT count(*) FROM migrate_ext.phase_log');
my @before = split /\n/, $history_before;
my @after = split /\n/, $node->safe_psql('postgres', $history);
is(scalar(@after), scalar(@before), 'no migration lost or added');
my $kept = 1;
for my $i (0 .. $#before)
{
	my @b = split /\|/, $before[$i], -1;
	my @a = split /\|/, $after[$i], -1;
	$kept &&= index($a[5], $b[5]) == 0 && join('|', @a[0 .. 4]) eq join('|', @b[0 .. 4]);
}
ok($kept, "each migration's phase log starts with what $old_v recorded");
cmp_ok($n_log, '>', scalar(@before), 'and goes on with the phases of the new version');

# --- fresh install = updated install ----------------------------------------------------
# Plain pg_dump leaves out an extension's member objects (CREATE EXTENSION
# makes them); in --binary-upgrade mode it prints every one of them, with
# OIDs, xids and sequence values that differ between databases, dropped here.
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('fresh', 'CREATE EXTENSION migrate_ext');
sub catalog_dump
{
	my $db = shift;
	my $dump = `'$inst$dir{bindir}/pg_dump' -s --binary-upgrade --exclude-schema=app -h '${\$node->host}' -p ${\$node->port} $db 2>&1`;
	die "pg_dump $db failed: $dump" if $?;
	my @keep;
	for (split /\n/, $dump)
	{
		next if /binary_upgrade_set_next_|binary_upgrade_set_pg_class_oids|^-- Dumped|^--$|^\\(un)?restrict /;
		s/(binary_upgrade_create_empty_extension\(.*?, )'\{[\d,]*\}'/$1'{oids}'/;
		next if /^SELECT pg_catalog\.setval\(/;    # sequences' values: data
		s/relfrozenxid = '\d+'/relfrozenxid = 'X'/;
		s/^WHERE oid = '\d+';/WHERE oid = 'X';/;
		push @keep, $_;
	}
	return join("\n", @keep) . "\n";
}
my $fresh = catalog_dump('fresh');
my $updated = catalog_dump('postgres');
like($fresh, qr/CREATE TABLE migrate_ext\.job/, 'the dump shows the extension catalog');
like($fresh, qr/CREATE FUNCTION public\.mig_expand/, 'and its functions');
like($fresh, qr/^GRANT SELECT ON TABLE migrate_ext\.\w+ TO /m, 'and their privileges');
if ($fresh eq $updated)
{
	pass("pg_dump of a fresh $new_v install and of a $old_v install updated to $new_v are the same");
}
else
{
	PostgreSQL::Test::Utils::append_to_file("$tmp/fresh.sql", $fresh);
	PostgreSQL::Test::Utils::append_to_file("$tmp/updated.sql", $updated);
	my $diff = `diff -u '$tmp/fresh.sql' '$tmp/updated.sql'`;
	fail("pg_dump of a fresh $new_v install and of a $old_v install updated to $new_v differ:\n$diff"
		  . "\n(add the catalog change to src/upgrade/$old_v--$new_v.sql)");
}
# The same for the plain dump the issue names: only the schema's non-member objects.
is(`'$inst$dir{bindir}/pg_dump' -s --schema=migrate_ext -h '${\$node->host}' -p ${\$node->port} fresh | grep -v -E '^-- Dumped|^.(un)?restrict '`,
	`'$inst$dir{bindir}/pg_dump' -s --schema=migrate_ext -h '${\$node->host}' -p ${\$node->port} postgres | grep -v -E '^-- Dumped|^.(un)?restrict '`,
	'plain pg_dump -s --schema=migrate_ext: the same');

$node->stop;
done_testing();
