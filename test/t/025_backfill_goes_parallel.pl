# A plain table's running job that walks one key (started with parallel => 1)
# goes parallel when mig_set raises parallel (README "Slices and parallel
# workers", backfill_worker.c bf_to_parallel): its worker, between two
# striped windows, turns what is left of the walk into ranges and the part
# walked into a done slice, in one transaction under the job's lock, then
# starts the other workers.  Exact counters after it; every row written
# once; kill -9 and immediate shutdown right before, during and right after
# the conversion's transaction (migrate_ext.test_pause) resume the job
# whole, as the walk of one key or as the sliced job, never half; a
# pgbench mix across the conversion leaves no row diverged; a ctid walk
# paused, raised and resumed goes parallel on resume; lowering parallel
# afterwards works as for a sliced job; a partitioned table's job is
# unchanged.  No timing is asserted.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/../lib";
use MigTest;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $rows = 10000;
my $node = mig_node('bf_goes_parallel',
	conf => "restart_after_crash = on\nmax_connections = 20\nautovacuum = off\n",
	setup => qq(
CREATE TABLE t (id bigint PRIMARY KEY, email text NOT NULL, n int NOT NULL DEFAULT 0);
INSERT INTO t SELECT g, 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
CREATE SEQUENCE t_new_id START $rows;
SELECT setval('t_new_id', $rows);
CREATE TABLE c (email text NOT NULL);
INSERT INTO c SELECT 'User' || g || '\@Example.COM' FROM generate_series(1, $rows) g;
VACUUM ANALYZE t;
VACUUM ANALYZE c;
SELECT mig_expand('t', 'email', up => 'lower(email) || ''#'' || n::text');
SELECT mig_expand('c', 'email', up => 'lower(email)');
));
my $jt = job_row('t');
my $jc = job_row('c');
my $wrong_t = "SELECT count(*) FROM t WHERE _mig_new_email IS DISTINCT FROM lower(email) || '#' || n";
my $failed = q{SELECT coalesce(string_agg(check_name || ': ' || failing, ', '), '')
	FROM mig_validate('%s') WHERE NOT passed};

sub clear
{
	my ($tbl) = @_;
	$node->safe_psql('postgres', qq{
SET client_min_messages = error;
ALTER TABLE $tbl DISABLE TRIGGER zz_migrate_ext_dualwrite;
UPDATE $tbl SET _mig_new_email = NULL;
ALTER TABLE $tbl ENABLE ALWAYS TRIGGER zz_migrate_ext_dualwrite;
VACUUM $tbl;
});
}

# the job row and its slices agree, and count every row once
sub check_exact
{
	my ($j, $what, $n) = @_;
	$n //= $rows;
	is($node->safe_psql('postgres', qq{
		SELECT ($j).rows_done, ($j).rows_seen, s.done, s.seen, s.batches = ($j).batches
		  FROM (SELECT sum(rows_done) AS done, sum(rows_seen) AS seen, sum(batches) AS batches
				  FROM migrate_ext.job_slice WHERE job_id = ($j).id) s}),
		"$n|$n|$n|$n|t",
		"$what: rows_done and rows_seen count each row once, the slices' sums agree");
	is($node->safe_psql('postgres', qq{
		SELECT count(*) FILTER (WHERE slice_no = 0 AND state = 'done'),
			   bool_and(state = 'done'), count(*) FILTER (WHERE stripe_end IS NOT NULL)
		  FROM migrate_ext.job_slice WHERE job_id = ($j).id}),
		'1|t|0', "$what: the part walked before is slice 0, every slice done, no window open");
}

# 1. a running key walk raised to parallel 3: the NOTICE, the split, the workers
$node->safe_psql('postgres',
	"SELECT mig_backfill('t', batch_size => 200, sleep_ms => 20, max_rows_per_sec => 1500)");
$node->poll_query_until('postgres', "SELECT ($jt).rows_done >= 1000")
  or die 'the backfill did not get going';
my $offset = -s $node->logfile;
my ($ret, $out, $err) = $node->psql('postgres', "SELECT mig_set('t', 'parallel', '3')");
like($err, qr/NOTICE:  the backfill of table "t" goes parallel after its batch in flight/,
	'mig_set says the job goes parallel after its batch in flight');
$node->poll_query_until('postgres', "SELECT ($jt).key_kind = 'slices'")
  or die 'the job did not go parallel';
ok($node->log_contains(qr/backfill job \d+ of table public\.t goes parallel with 3 workers/, $offset),
	'the worker logs it');
is($node->safe_psql('postgres', qq{
	SELECT s.state, s.key_kind, s.lower_key IS NULL, s.rows_done = s.rows_seen,
		   s.rows_done % 2000 = 0, s.upper_key[1]::bigint = s.rows_seen
	  FROM migrate_ext.job_slices s WHERE job_id = ($jt).id AND slice_no = 0}),
	'done|primary key|t|t|t|t',
	'slice 0 is the part walked: done, up to the checkpoint, a whole number of windows');
# the ranges of the rest follow it, disjoint, up to the frozen bound
is($node->safe_psql('postgres', qq{
	SELECT count(*) >= 3, bool_and(upper_key[1]::bigint > coalesce(p, 0)),
		   max(upper_key[1]::bigint) = $rows
	  FROM (SELECT upper_key, lag(upper_key[1]::bigint) OVER (ORDER BY slice_no) AS p
			  FROM migrate_ext.job_slices WHERE job_id = ($jt).id) s}),
	't|t|t', 'the rest is ranges whose bounds rise to the largest key');
$node->poll_query_until('postgres', qq{
	SELECT workers = 3 AND worker_progress ~ '^(public\\.t \\d+/\\d+(, )?){3}\$'
	  FROM mig_status WHERE table_name = 't'})
  or die 'mig_status did not show three workers';
pass('mig_status shows three workers and what each walks');
# lowering parallel works as for a sliced job (to 2: a window in flight keeps
# its two halves, see README "Slices and parallel workers")
$node->safe_psql('postgres', "SELECT mig_set('t', 'parallel', '2')");
$node->poll_query_until('postgres', qq{
	SELECT workers = 2 OR state = 'done' FROM mig_status WHERE table_name = 't'})
  or die 'the extra worker did not leave';
pass('lowered to 2: the third worker leaves');
$node->safe_psql('postgres', "SELECT mig_set('t', 'max_rows_per_sec', NULL)");
is(wait_job_ended($node, 't'), 'done', 'the job that went parallel is done');
check_exact($jt, 'went parallel');
is($node->safe_psql('postgres', $wrong_t), '0', 'every row right (new = up(old))');
is($node->safe_psql('postgres', sprintf($failed, 't')), '', 'mig_validate: 0 diverged');

# 2. kill -9 of the worker, and an immediate shutdown, right before, during
# and right after the conversion's transaction: the launcher resumes the job
# whole, never half
for my $case (
	[ 'to_parallel_begin', 'kill' ],
	[ 'to_parallel_written', 'kill' ],
	[ 'to_parallel_written', 'immediate' ],
	[ 'to_parallel_committed', 'immediate' ])
{
	my ($step, $how) = @$case;
	clear('t');
	$node->safe_psql('postgres',
		"ALTER SYSTEM SET migrate_ext.test_pause = '$step'; SELECT pg_reload_conf();");
	my $holder = $node->background_psql('postgres');
	$holder->query_safe('SELECT pg_advisory_lock(7387)');
	$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 250, sleep_ms => 50)");
	$node->poll_query_until('postgres', "SELECT ($jt).rows_done >= 500")
	  or die 'the backfill did not get going';
	$node->safe_psql('postgres', "SET client_min_messages = warning; SELECT mig_set('t', 'parallel', '2')");
	$node->poll_query_until('postgres', q{
		SELECT EXISTS (SELECT FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
						WHERE l.locktype = 'advisory' AND l.objid = 7387 AND NOT l.granted
						  AND a.application_name = 'migrate_ext backfill')})
	  or die "the worker did not stop at $step";
	my $committed = $step eq 'to_parallel_committed';
	is($node->safe_psql('postgres', qq{
		SELECT ($jt).key_kind, EXISTS (SELECT FROM migrate_ext.job_slice WHERE job_id = ($jt).id)}),
		$committed ? 'slices|t' : 'primary key|f',
		"at $step, others see the job " . ($committed ? 'sliced' : 'walking one key'));
	my $pid = $node->safe_psql('postgres', "SELECT ($jt).worker_pid");
	$node->safe_psql('postgres', 'ALTER SYSTEM RESET migrate_ext.test_pause; SELECT pg_reload_conf();');
	# a new backend has the postmaster's settings: the workers started after the crash will
	$node->poll_query_until('postgres', "SELECT current_setting('migrate_ext.test_pause') = ''")
	  or die 'the reload did not take';
	$offset = -s $node->logfile;
	mig_crash($node, $how, $pid);
	eval { $holder->quit };
	# whole: a job that walks slices has them, one that walks its key has none
	is($node->safe_psql('postgres', qq{
		SELECT (($jt).key_kind = 'slices')
			 = EXISTS (SELECT FROM migrate_ext.job_slice WHERE job_id = ($jt).id)}),
		't', "$how at $step: the job row and its slices agree after the restart");
	$node->safe_psql('postgres', "SELECT mig_set('t', 'sleep_ms', '0')");
	is(wait_job_ended($node, 't'), 'done', "$how at $step: resumed and done");
	ok($node->log_contains(qr/resuming backfill job/, $offset), "$how at $step: the launcher resumed it");
	check_exact($jt, "$how at $step");
	is($node->safe_psql('postgres', $wrong_t), '0', "$how at $step: every row right");
}

# 3. client writes across the conversion: nothing diverged
clear('t');
my ($pgbench, $perr) = mig_pgbench($node, mig_pgbench_mix($rows), clients => 3, threads => 1, seconds => 6);
$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 200, max_rows_per_sec => 3000)");
$node->poll_query_until('postgres', "SELECT ($jt).rows_seen >= 1000")
  or die 'the backfill did not get going under the mix';
$node->safe_psql('postgres', "SET client_min_messages = warning; SELECT mig_set('t', 'parallel', '2')");
$node->poll_query_until('postgres', "SELECT ($jt).key_kind = 'slices' OR ($jt).state = 'done'")
  or die 'the job did not go parallel under the mix';
is($node->safe_psql('postgres', "SELECT ($jt).key_kind"), 'slices', 'under the mix, the job went parallel');
$pgbench->finish;
is($pgbench->result(0), 0, 'pgbench ran without errors') or diag($$perr);
is(wait_job_ended($node, 't'), 'done', 'done under the mix');
is($node->safe_psql('postgres', sprintf($failed, 't')), '', 'mig_validate after the mix: 0 diverged');
is($node->safe_psql('postgres', $wrong_t), '0', 'no row has new <> up(old)');

# 3b. a cancelled walk of one key raised to parallel: mig_resume starts one
# worker, which goes parallel and starts the other (t holds the mix's rows now)
clear('t');
$node->safe_psql('postgres', "SELECT mig_backfill('t', batch_size => 250, sleep_ms => 50)");
$node->poll_query_until('postgres', "SELECT ($jt).rows_done >= 500")
  or die 'the backfill did not get going';
$node->safe_psql('postgres', "SELECT mig_cancel('t')");
$node->safe_psql('postgres', "SELECT mig_set('t', 'parallel', '2'); SELECT mig_set('t', 'sleep_ms', '0')");
is($node->safe_psql('postgres', "SELECT ($jt).key_kind, ($jt).state"), 'primary key|cancelled',
	'cancelled, raised: it still walks its one key');
$node->safe_psql('postgres', "SELECT mig_resume('t')");
$node->poll_query_until('postgres', qq{
	SELECT ($jt).state = 'done' OR (SELECT workers = 2 FROM mig_status WHERE table_name = 't')})
  or die 'the resumed job did not get a second worker';
is(wait_job_ended($node, 't'), 'done', 'resumed after the cancel: done');
check_exact($jt, 'resumed and gone parallel', $node->safe_psql('postgres', 'SELECT count(*) FROM t'));
is($node->safe_psql('postgres', $wrong_t), '0', 'resumed and gone parallel: every row right');

# 4. a ctid walk, paused, raised to parallel, resumed: it goes parallel then
my $cblocks = $node->safe_psql('postgres', "SELECT pg_relation_size('c') / 8192");
$node->safe_psql('postgres', "SELECT mig_backfill('c', batch_size => 200, sleep_ms => 20)");
$node->poll_query_until('postgres', "SELECT ($jc).rows_done >= 400")
  or die 'the ctid walk did not get going';
$node->safe_psql('postgres', "SELECT mig_pause('c')");
$node->poll_query_until('postgres', "SELECT ($jc).state = 'paused'") or die 'not paused';
($ret, $out, $err) = $node->psql('postgres', "SELECT mig_set('c', 'parallel', '2')");
like($err, qr/DETAIL:  .*for 2 workers once the job is resumed/, 'the NOTICE says: once resumed');
sleep(1);
is($node->safe_psql('postgres', "SELECT ($jc).key_kind, ($jc).state"), 'ctid|paused',
	'paused, it keeps walking its one key');
$node->safe_psql('postgres', "SELECT mig_resume('c')");
is(wait_job_ended($node, 'c'), 'done', 'resumed: done');
is($node->safe_psql('postgres', qq{
	SELECT ($jc).key_kind, count(*) >= 3, bool_and(key_kind = 'ctid'),
		   bool_and(upper_key[1]::tid > coalesce(p, '(0,0)')),
		   max(upper_key[1]::tid) = '($cblocks,0)'
	  FROM (SELECT key_kind, upper_key, lag(upper_key[1]::tid) OVER (ORDER BY slice_no) AS p
			  FROM migrate_ext.job_slices WHERE job_id = ($jc).id) s}),
	'slices|t|t|t|t', 'it went parallel on resume: block ranges that rise to the frozen bound');
# rows_seen of a ctid walk may count twice a row that a batch moved ahead of
# the walk (README "How it walks the table"): only rows_done is exact
is($node->safe_psql('postgres', qq{
	SELECT ($jc).rows_done, sum(rows_done), ($jc).rows_seen = sum(rows_seen),
		   ($jc).rows_seen >= $rows
	  FROM migrate_ext.job_slice WHERE job_id = ($jc).id}),
	"$rows|$rows|t|t", 'the ctid walk writes each row once; the job row and the slices agree');
is($node->safe_psql('postgres', 'SELECT count(*) FROM c WHERE _mig_new_email IS DISTINCT FROM lower(email)'),
	'0', 'every row of the table without a key right');
is($node->safe_psql('postgres', sprintf($failed, 'c')), '', 'mig_validate of c: 0 diverged');

# 5. a partitioned table's job walks slices from its start: unchanged
mig_partition_tree($node, 'id int, created_at date, v int, PRIMARY KEY (id, created_at)');
$node->safe_psql('postgres', q{
INSERT INTO ev SELECT g, date '2020-01-01' + (g % 1400), g FROM generate_series(1, 3000) g;
SELECT mig_expand('ev', 'v', type => 'bigint');
SELECT mig_backfill('ev', batch_size => 50, max_rows_per_sec => 500);
});
my $je = job_row('ev');
$node->poll_query_until('postgres', "SELECT ($je).key_kind = 'slices' AND ($je).rows_done > 0")
  or die 'the partitioned job did not start';
($ret, $out, $err) = $node->psql('postgres', "SELECT mig_set('ev', 'parallel', '2')");
unlike($err, qr/goes parallel/, 'a partitioned job: no NOTICE, it walks slices already');
$node->poll_query_until('postgres', "SELECT workers = 2 OR state = 'done' FROM mig_status WHERE table_name = 'ev'")
  or die 'no second worker';
$node->safe_psql('postgres', "SELECT mig_set('ev', 'max_rows_per_sec', NULL)");
is(wait_job_ended($node, 'ev'), 'done', 'the partitioned job is done');
is($node->safe_psql('postgres', qq{
	SELECT ($je).rows_done, count(*) FILTER (WHERE relid = 'ev'::regclass)
	  FROM migrate_ext.job_slice WHERE job_id = ($je).id}), '3000|0',
	'a slice per leaf, none of the parent: each row written once');

$node->stop;
done_testing();
