# parallel => 2 on one plain heap: the walk is split into disjoint key
# ranges (or block ranges without a key), a slice each, claimed by two
# workers.  A kill -9 of one of the workers mid-run: the launcher resumes
# every slice, every row is written once (rows_done = rows), the job row and
# the slices agree.  A pgbench write mix during a parallel backfill leaves no
# row diverged (mig_validate).  The slices' keys are masked like the job's
# for a role that may not read the table.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use IPC::Run;
use Test::More;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;

my $rows = 20000;
my $node = mig_node('bf_parallel', conf => "restart_after_crash = on\nmax_connections = 20\n",
	setup => qq(
CREATE TABLE t (id bigint PRIMARY KEY, email text NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO t SELECT g, 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
CREATE TABLE c (email text NOT NULL);
INSERT INTO c SELECT 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
CREATE SEQUENCE t_new_id START $rows;
SELECT setval('t_new_id', $rows);
VACUUM ANALYZE t;
VACUUM ANALYZE c;
SELECT mig_expand('t', 'email', up => 'lower(email) || ''#'' || n::text');
SELECT mig_expand('c', 'email', up => 'lower(email)');
CREATE ROLE nosy;
));

my $jt = job_row('t');
my $jc = job_row('c');

# 1. key ranges, and a kill -9 of one of the two workers
$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 100, sleep_ms => 20, parallel => 2)");
$node->poll_query_until('postgres', qq{
	SELECT count(*) = 2 AND sum(rows_done) >= 2000 FROM migrate_ext.job_slices
	 WHERE job_id = ($jt).id AND state = 'running'})
  or die 'two workers did not get going';
is($node->safe_psql('postgres', "SELECT ($jt).key_kind"), 'slices', 'the job walks slices');
is($node->safe_psql('postgres', qq{
	SELECT count(*), count(DISTINCT relid), bool_and(key_kind = 'primary key')
	  FROM migrate_ext.job_slices WHERE job_id = ($jt).id}),
	'8|1|t', 'eight key ranges of the one table');
# the ranges are disjoint and cover the keys: their bounds rise, the last is the largest key
is($node->safe_psql('postgres', qq{
	SELECT bool_and(b > coalesce(p, 0)) AND max(b) = $rows FROM (
		SELECT upper_key[1]::bigint AS b, lag(upper_key[1]::bigint) OVER (ORDER BY slice_no) AS p
		  FROM migrate_ext.job_slices WHERE job_id = ($jt).id) s}),
	't', 'the ranges\' bounds rise to the largest key');
is($node->safe_psql('postgres', "SELECT workers FROM mig_status WHERE table_name = 't'"), '2',
	'mig_status shows two workers');

# a role that may not read t sees the slices' keys as NULL
my $tid = $node->safe_psql('postgres', "SELECT ($jt).id");
is($node->safe_psql('postgres', qq{
	SET ROLE nosy;
	SELECT count(*), count(lower_key), count(upper_key) FROM migrate_ext.job_slices
	 WHERE job_id = $tid}),
	'8|0|0', 'the slices\' keys are masked for a role that cannot read the table');
cmp_ok($node->safe_psql('postgres', qq{
	SELECT count(upper_key) FROM migrate_ext.job_slices WHERE job_id = ($jt).id}),
	'==', 8, 'and shown to one that can');

my $pid = $node->safe_psql('postgres', qq{
	SELECT min(worker_pid) FROM migrate_ext.job_slices WHERE job_id = ($jt).id AND state = 'running'});
my $offset = -s $node->logfile;
kill 'KILL', $pid;
$node->poll_query_until('postgres', "SELECT ($jt).state = 'done'")
  or die 'the job did not finish after the kill';
ok($node->log_contains(qr/resuming backfill job/, $offset), 'the launcher resumed the job');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email) || '#' || n"),
	'0', 'every row right after the kill');
is($node->safe_psql('postgres', "SELECT ($jt).rows_done, ($jt).rows_seen"), "$rows|$rows",
	'each row written and counted once');
is($node->safe_psql('postgres', qq{
	SELECT sum(rows_done), sum(rows_seen), bool_and(state = 'done')
	  FROM migrate_ext.job_slices WHERE job_id = ($jt).id}),
	"$rows|$rows|t", 'the slices agree with the job row');

# 2. block ranges of a table without a key
$node->safe_psql('postgres', "SELECT mig_backfill('c', batch_size => 500, parallel => 2)");
is(wait_job_ended($node, 'c'), 'done', 'a ctid walk in parallel: done');
is($node->safe_psql('postgres', qq{
	SELECT count(*) > 1, bool_and(key_kind = 'ctid') FROM migrate_ext.job_slices
	 WHERE job_id = ($jc).id}), 't|t', 'block ranges');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM c WHERE _mig_new_email IS DISTINCT FROM lower(email)"),
	'0', 'every row of the table without a key right');
is($node->safe_psql('postgres', "SELECT ($jc).rows_done"), $rows, 'each written once');

# 2b. a partitioned table without a key: every leaf walked by ctid ranges
mig_partition_tree($node, 'id int, created_at date, v int', name => 'pc');
$node->safe_psql('postgres', q{
INSERT INTO pc SELECT g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, 5000) g;
SELECT mig_expand('pc', 'v', type => 'bigint');
SELECT mig_backfill('pc', batch_size => 300, parallel => 3);
});
is(wait_job_ended($node, 'pc'), 'done', 'a partitioned table without a key, three workers: done');
my $jp = job_row('pc');
is($node->safe_psql('postgres', qq{
	SELECT count(*), bool_and(key_kind = 'ctid'), bool_and(state = 'done'), sum(rows_done)
	  FROM migrate_ext.job_slices WHERE job_id = ($jp).id}),
	'6|t|t|5000', 'a ctid slice per leaf, each row written once');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pc WHERE _mig_new_v IS DISTINCT FROM v'),
	'0', 'every row of every leaf right');

sub clear_t
{
	$node->safe_psql('postgres', q{
SET client_min_messages = error;
ALTER TABLE t DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE t SET _mig_new_email = NULL;
ALTER TABLE t ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
});
}

# 2c. pause and cancel reach every worker: once they committed, no batch does
clear_t();
$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 100, sleep_ms => 20, parallel => 2)");
$node->poll_query_until('postgres', qq{
	SELECT count(*) = 2 AND sum(rows_done) >= 1000 FROM migrate_ext.job_slices
	 WHERE job_id = ($jt).id AND state = 'running'})
  or die 'two workers did not get going';
my $slices_done = "SELECT sum(rows_done) FROM migrate_ext.job_slices WHERE job_id = ($jt).id";
for my $stop ('mig_pause', 'mig_cancel')
{
	$node->safe_psql('postgres', "SELECT $stop('t')");
	my $at = $node->safe_psql('postgres', $slices_done);
	sleep(2);
	is($node->safe_psql('postgres', $slices_done), $at, "$stop: no batch of either worker commits after it");
	$node->safe_psql('postgres', "SELECT mig_resume('t')");
}
is(wait_job_ended($node, 't'), 'done', 'resumed after the cancel: done');
is($node->safe_psql('postgres', "SELECT ($jt).rows_done"), $rows, 'each row written once across pause, cancel and resume');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email) || '#' || n"),
	'0', 'every row right');

# 3. a pgbench mix during a parallel backfill: nothing diverged
clear_t();
my ($pgbench, $err) = mig_pgbench($node, mig_pgbench_mix($rows), clients => 3, threads => 1, seconds => 10);
sleep(1);
$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 200, parallel => 2, max_rows_per_sec => 4000)");
$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench ran without errors') or diag($$err);
is(wait_job_ended($node, 't'), 'done', 'the parallel backfill finished under the mix');
is($node->safe_psql('postgres', q{
	SELECT string_agg(check_name || ': ' || failing, ', ') FROM mig_validate('t') WHERE NOT passed}),
	'', 'mig_validate: every check passed, 0 rows diverged');
is($node->safe_psql('postgres',
	"SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email) || '#' || n"),
	'0', 'no row has new <> up(old)');

$node->stop;
done_testing();
